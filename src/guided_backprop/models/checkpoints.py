"""Reading weight files safely and fitting them to a model, with errors that name the keys.

* :func:`read_state_dict` loads ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` files with
  ``torch.load(..., weights_only=True)`` (tensors and plain containers only) and ``.safetensors``
  files; a file that would need full unpickling (which can run arbitrary code) is refused with a
  :class:`~guided_backprop.errors.CheckpointError` unless ``trust=True``.
* :func:`extract_state_dict` unwraps ``{"state_dict": ...}``, ``{"model": ...}`` and similar, and
  drops ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes.
* :func:`load_into` loads strictly and reports missing, unexpected and mis-shaped keys by name.
* :func:`convert_by_order` maps a state dict onto another naming scheme tensor by tensor.
* :func:`read_npy_dict` reads a pickled-dict ``.npy`` (the seed's ``vgg19.npy``) through an
  unpickler that only builds numpy arrays.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

__all__ = [
    "check_finite",
    "convert_by_order",
    "extract_state_dict",
    "fit_report",
    "load_into",
    "read_npy_dict",
    "read_state_dict",
]

_TRUST_HINT = "pass trust_checkpoint=True only if you trust where the file comes from"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "model_ema", "ema",
                 "weights", "params")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_SHOW = 5  # keys listed per category in error messages


#: The most a compressed zip entry may inflate (uncompressed / compressed size) above :data:`_RATIO_FROM` bytes.
#: ``torch.save`` stores entries uncompressed (ratio 1); a zip bomb's entries inflate ~1000 times.
MAX_INFLATION = 100
_RATIO_FROM = 16 << 20
#: Environment variable that raises the cap on a checkpoint's inflated size (GiB; default: this machine's memory).
MAX_CHECKPOINT_ENV = "GUIDED_BACKPROP_MAX_CHECKPOINT_GB"


def read_state_dict(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (CPU tensors), unwrapped by :func:`extract_state_dict`.

    Before anything is inflated, a zip checkpoint's sizes are read from its central directory
    (:func:`check_zip_sizes`): a file that would inflate beyond this machine's memory, or whose
    entries are compressed more than :data:`MAX_INFLATION` times (a zip bomb), is refused. A file
    that is damaged is called corrupt; ``trust`` is suggested only for a sound file holding more
    than tensors (or in PyTorch's legacy ``.tar`` format), and with ``trust`` such a file is loaded
    with full unpickling.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"checkpoint file not found: '{file}'" + (" (it is a folder)" if file.is_dir() else ""))
    if file.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - safetensors ships with timm
            raise CheckpointError(f"'{file}' is a safetensors file; install it with: pip install safetensors") from err
        try:
            return extract_state_dict(load_file(str(file), device="cpu"), source=str(file))
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"cannot read safetensors file '{file}': {err}") from err
    kind = _container(file)
    if kind == "zip":
        check_zip_sizes(file, trust=trust)
    elif kind == "tar":
        if not trust:
            raise CheckpointError(
                f"checkpoint '{file}' is in PyTorch's legacy .tar format (PyTorch before 0.4), which only full "
                f"unpickling can read, and that can run arbitrary code; {_TRUST_HINT}, then re-save it as "
                f"torch.save(model.state_dict(), path)", field="weights")
        return extract_state_dict(_load(file, trusted=True), source=str(file))
    elif kind == "damaged zip":
        raise CheckpointError(f"checkpoint '{file}' is corrupt or truncated: it starts as a zip archive (torch.save's "
                              f"format) but its directory is missing; download or copy it again", field="weights")
    elif kind is None:
        raise CheckpointError(f"cannot read checkpoint '{file}': it is not a file written by torch.save "
                              f"(neither a zip archive nor a pickle)", field="weights")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+) was not an allowed global", str(err))
        if found is None:  # bytes no pickle holds, or a global's name with junk in it: damaged, not unsafe
            raise _corrupt(file, err) from err
        if not trust:
            raise CheckpointError(
                f"checkpoint '{file}' holds more than tensors (it contains {found.group(1)}): loading it needs full "
                f"unpickling, which can run arbitrary code; {_TRUST_HINT}, or re-save it as "
                f"torch.save(model.state_dict(), path)", field="weights"
            ) from err
        obj = _load(file, trusted=True)
    except Exception as err:
        raise _corrupt(file, err) from err
    return extract_state_dict(obj, source=str(file))


def _load(file: Path, *, trusted: bool) -> Any:
    """``torch.load`` with full unpickling when ``trusted`` (the user said so); a failure: corrupt."""
    try:
        return torch.load(file, map_location="cpu", weights_only=not trusted)
    except Exception as err:
        raise _corrupt(file, err) from err


def _corrupt(file: Path, err: BaseException) -> CheckpointError:
    text = " ".join(str(err).split())
    # Only what torch found, not its advice (to trust the file, to file an issue), which is not ours.
    text = text.split("WeightsUnpickler error:")[-1].split(". This is an internal miniz error")[0]
    text = re.split(r"\s*(?:Please use|Check the documentation|was not an allowed global)", text)[0].strip()[:200]
    return CheckpointError(f"checkpoint '{file}' is corrupt or truncated ({type(err).__name__}: {text}); "
                           f"download or copy it again", field="weights")


def _container(file: Path) -> str | None:
    """``"zip"`` (torch.save since 1.6), ``"pickle"`` (the legacy format), ``"tar"`` (the legacy .tar
    format), ``"damaged zip"`` (a zip's start without its central directory: a truncated file), or None."""
    import tarfile

    with file.open("rb") as fh:
        head = fh.read(4)
    if zipfile.is_zipfile(file):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head == b"PK\x03\x04":
        return "damaged zip"
    try:
        if tarfile.is_tarfile(file):
            return "tar"
    except OSError:
        pass
    return None


def _max_checkpoint_bytes() -> tuple[int, str]:
    """The cap on a checkpoint's inflated size, and where it comes from (for the message)."""
    import os

    given = os.environ.get(MAX_CHECKPOINT_ENV, "").strip()
    if given:
        try:
            return int(float(given) * (1 << 30)), f"{MAX_CHECKPOINT_ENV}={given}"
        except ValueError:
            pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no cap but the ratio
        return 1 << 62, "no cap"
    return memory, "this machine's memory"


def check_zip_sizes(file: str | Path, *, trust: bool = False) -> None:
    """Refuse a zip checkpoint that would inflate beyond the cap (this machine's memory, or
    ``GUIDED_BACKPROP_MAX_CHECKPOINT_GB``), or (unless ``trust``) one with an entry over 16 MiB compressed
    more than :data:`MAX_INFLATION` times, from the sizes its central directory states: nothing is inflated."""
    file = Path(file)
    try:
        with zipfile.ZipFile(file) as zf:
            entries = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise _corrupt(file, err) from err
    total = sum(e.file_size for e in entries)
    cap, why = _max_checkpoint_bytes()
    if total > cap:
        raise CheckpointError(
            f"checkpoint '{file}' ({_gib(file.stat().st_size)}) would inflate to {_gib(total)}, more than the "
            f"{_gib(cap)} allowed ({why}); it is corrupt or a zip bomb, or set {MAX_CHECKPOINT_ENV} to a larger "
            f"number of GiB if it is real; nothing was inflated", field="weights")
    for e in entries:
        if (not trust and e.compress_type != zipfile.ZIP_STORED and e.file_size > _RATIO_FROM
                and e.file_size > MAX_INFLATION * max(e.compress_size, 1)):
            raise CheckpointError(
                f"checkpoint '{file}': its entry {e.filename!r} inflates {e.compress_size} bytes to "
                f"{_gib(e.file_size)} (over {MAX_INFLATION} times; torch.save does not compress), the mark of a zip "
                f"bomb; nothing was inflated; {_TRUST_HINT}", field="weights")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.1f} MiB"


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` mapping inside ``obj`` (a state dict, a wrapper dict or a module)."""
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict (a name -> tensor mapping)")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_prefixes({str(k): v for k, v in obj.items()})
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], (Mapping, nn.Module))), None)
        if inner is None:
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:  # a state dict with a few extras (e.g. a stored epoch number)
                return _strip_prefixes(tensors)
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise CheckpointError(
                f"{source} holds no tensors; its top-level keys are {keys or '(none)'}; expected a state dict or "
                f"a dict with one under 'state_dict' or 'model'"
            )
        obj = inner
    raise CheckpointError(f"{source}: state dict nested too deeply")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES[:2]:  # DataParallel / torch.compile wrappers; "model." is tried in load_into
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def check_finite(model: nn.Module, *, source: str, checkpoint: bool) -> None:
    """Raise one error naming the first tensor of ``model`` (parameter or buffer) that holds NaN or
    infinity: such weights make every map and score NaN (uniform grey pictures, ``NaN`` probabilities).

    ``source`` says where the weights came from (``"checkpoint 'w.pt'"``); the error is a
    :class:`CheckpointError` for weights read from a ``checkpoint`` file, else a
    :class:`~guided_backprop.errors.ModelError` (weights a model or factory made itself).
    """
    from ..errors import ModelError

    bad = []
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            bad.append((name, nan, int((~finite).sum()) - nan, tensor.numel()))
    if not bad:
        return
    name, nan, inf, total = bad[0]
    what = " and ".join(t for t in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if t)
    more = f" ({len(bad) - 1} more tensor(s) too: {_listing([b[0] for b in bad[1:]])})" if len(bad) > 1 else ""
    msg = (f"{source}: tensor {name!r} holds {what} value(s) of {total}{more}; every map and score would be NaN; "
           f"the weights are broken (a diverged training run, a bad conversion): use other weights")
    if checkpoint:
        raise CheckpointError(msg, field="weights")
    raise ModelError(msg, field="weights")


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def fit_report(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> tuple[
        list[str], list[str], list[str]]:
    """``(missing, unexpected, mis-shaped)`` keys of ``state`` against ``model_state``.

    Mis-shaped entries read ``"name: checkpoint (10, 512) vs model (1000, 512)"``. A missing
    BatchNorm ``num_batches_tracked`` counter (absent from older checkpoints) is not reported.
    """
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in model_state
        if k in state and tuple(state[k].shape) != tuple(model_state[k].shape)
    ]
    return missing, unexpected, misshaped


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint",
              hint: str = "") -> None:
    """Load ``state`` into ``model`` strictly; on any mismatch raise one error naming the keys."""
    own = model.state_dict()
    missing, unexpected, misshaped = fit_report(own, state)
    if missing and unexpected:  # a wrapper prefix such as "model." or "backbone."?
        for prefix in {k.split(".", 1)[0] + "." for k in state if "." in k}:
            if all(k.startswith(prefix) for k in state):
                trial = {k[len(prefix):]: v for k, v in state.items()}
                t_missing, t_unexpected, t_mis = fit_report(own, trial)
                if len(t_missing) + len(t_unexpected) < len(missing) + len(unexpected):
                    state, missing, unexpected, misshaped = trial, t_missing, t_unexpected, t_mis
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped key(s): {_listing(misshaped)}")
        msg = f"{source} does not fit the model: " + "; ".join(parts)
        if hint:
            msg += f" ({hint})"
        raise CheckpointError(msg)
    full = dict(own)
    full.update(state)
    model.load_state_dict(full, strict=True)


def convert_by_order(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    target_name: str = "the model",
) -> dict[str, torch.Tensor]:
    """Rename ``state``'s tensors to ``target``'s names, pairing them in order.

    BatchNorm ``num_batches_tracked`` counters are left out on both sides. Every pair must have
    the same shape and the same last name part (``weight``, ``bias``, ``running_mean``...);
    anything else raises :class:`CheckpointError` naming the first pair that does not fit.
    """
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise CheckpointError(
            f"{source} has {len(src)} tensors but {target_name} has {len(dst)}; it is not a checkpoint of "
            f"this architecture"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise CheckpointError(
                f"{source} does not fit {target_name}: tensor #{i} {sk} {tuple(sv.shape)} would become "
                f"{dk} {tuple(dv.shape)}; it is not a checkpoint of this architecture"
            )
        out[dk] = sv
    return out


# -- pickled-dict .npy files (the seed's vgg19.npy) ---------------------------------------
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists and numpy arrays; refuses every other global (no code can run)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_npy_dict(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """The dict stored in a pickled ``.npy`` file such as machrisaa's ``vgg19.npy``.

    Such a file is a 0-d object array holding a dict, which ``np.load`` can only read with
    ``allow_pickle=True``, and a pickle can run code. Here the pickle is read by an unpickler that
    only builds dicts, lists and numpy arrays (Python 2 pickles included, via ``latin1``); a file
    needing anything else is refused unless ``trust=True``, which falls back to
    ``np.load(allow_pickle=True)``.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"weights file not found: '{file}'")
    try:
        with file.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            if not dtype.hasobject:
                raise CheckpointError(
                    f"'{file}' holds a plain {dtype} array of shape {shape}, not a dict of layer weights"
                )
            try:
                obj = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
            except pickle.UnpicklingError as err:
                if not trust:
                    raise CheckpointError(
                        f"'{file}' refers to {err}, which is not part of a weights dict; loading it could run "
                        f"arbitrary code; {_TRUST_HINT}"
                    ) from err
                obj = np.load(file, allow_pickle=True, encoding="latin1")
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot read '{file}' as a .npy file ({type(err).__name__}: {err})") from err
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{file}' holds a {type(obj).__name__}, not a dict of layer weights")
    return obj
