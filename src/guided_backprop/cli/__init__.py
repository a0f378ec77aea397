"""The ``guided-backprop`` command: :mod:`.options` (the command line's vocabulary: option types, the
library field -> flag table, grouped ``--help``, the model options, the console reporter) and
:mod:`.commands` (thin commands: arguments in, the library called, exit code out)."""

from .commands import main
from .options import cli_message

__all__ = ["cli_message", "main"]
