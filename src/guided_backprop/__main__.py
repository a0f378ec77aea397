"""``python -m guided_backprop`` and ``torchrun ... -m guided_backprop``: the ``guided-backprop`` command."""

from .cli.commands import main

if __name__ == "__main__":
    main(prog_name="guided-backprop")
