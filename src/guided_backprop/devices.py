"""One resolver for device names: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``."""

from __future__ import annotations

import torch

from .errors import ModelError, UnknownNameError

__all__ = ["DEVICE_NAMES", "resolve_device"]

#: What a device may be called (besides ``cuda:N``).
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device = "auto", *, local_rank: int = 0, world: int = 1) -> torch.device:
    """The ``torch.device`` for a name; ``"auto"`` is CUDA where available, else the CPU.

    Plain ``"cuda"`` in a ``torchrun`` job of ``world`` processes takes GPU ``local_rank``
    (modulo the GPUs there are). A device that is not available here is a :class:`ModelError`
    (field ``device``) that says what to use instead.
    """
    if isinstance(device, torch.device):
        key = str(device)
    else:
        key = str(device).strip().lower()
    if key == "auto":
        key = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(key)
    except (RuntimeError, TypeError, ValueError) as err:
        raise UnknownNameError("device", str(device), DEVICE_NAMES, field="device") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UnknownNameError("device", str(device), DEVICE_NAMES, field="device")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {str(device)!r}: CUDA is not available on this machine; use the CPU",
                             field="device")
        if dev.index is None:
            return torch.device("cuda", local_rank % torch.cuda.device_count() if world > 1 else 0)
        if dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})", field="device")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {str(device)!r}: MPS is not available on this machine; use the CPU", field="device")
    return dev
