"""The user's own models: a factory ``"package.module:function"`` or ``"path/to/file.py:function"``.

:func:`build_factory` imports the factory (a file's folder on the import path while it is imported
and while the factory runs), calls it (with ``num_classes`` when given), reads what it returned (an
``nn.Module``, ``(model, preprocessing[, labels])``, a dict or an object with those fields) and
loads ``weights=PATH`` into it. :func:`output_classes` runs the model once on a blank input, so that
a model that cannot take its preprocessing's input fails at load time, once, with the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GuidedBackpropError, ModelError, UnknownNameError
from ..hooks import logits_of, model_state
from .builder import Built, Request, bad_weights, read_checkpoint, weights_kind
from .checkpoints import load_into
from .labels import read_labels
from .preprocessing import Preprocessing

__all__ = ["build_factory", "output_classes"]


def _factory_file(spec: str) -> tuple[str, str, Path | None]:
    """``(module or file, function, file path or None)`` of a factory spec."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelError(f"a factory is 'package.module:function' or 'path/to/file.py:function', got {spec!r}",
                         field="model")
    if target.endswith(".py") or "/" in target or os.sep in target:
        return target, attr, Path(target).expanduser().resolve()
    return target, attr, None


@contextlib.contextmanager
def _import_path(folder: Path | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the block (so a factory file's ``from blocks import block``
    finds its neighbours), then taken off again; modules imported meanwhile stay imported."""
    entry = None if folder is None else str(folder)
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


_IMPORT_ADVICE = ("a factory module must not parse the command line or exit when imported (put that code under "
                  "'if __name__ == \"__main__\":')")


@contextlib.contextmanager
def _guarded(what: str, program: str, advice: str) -> Iterator[None]:
    """Run the user's code (a factory module's import, the factory call) as a library call: with a
    neutral ``sys.argv`` (only ``program``), so that a module parsing the command line on import sees
    none of ours; its printed output held back and a ``sys.exit`` (argparse's error included) turned into
    one :class:`ModelError` that quotes what it printed. On success the held output is passed on."""
    import io

    argv = sys.argv
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [program]
    exited = False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except SystemExit as exit_:
        exited = True
        printed = " ".join((err.getvalue() + " " + out.getvalue()).split())
        said = f"; it printed: {printed[:300]!r}" if printed else ""
        raise ModelError(
            f"{what} called sys.exit({exit_.code!r}) instead of returning{said}; {advice}", field="model") from None
    finally:
        sys.argv = argv
        if not exited:  # quoted in the error otherwise: never printed as if it were ours
            sys.stdout.write(out.getvalue())
            sys.stderr.write(err.getvalue())


def _import_factory(spec: str) -> Callable[..., Any]:
    target, attr, file = _factory_file(spec)
    if file is not None:
        if not file.is_file():
            raise ModelError(f"factory file not found: '{file}' (from {spec!r})", field="model")
        mod_name = "_guided_backprop_factory_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(mod_name, file)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import '{file}' as a Python module", field="model")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            with _guarded(f"importing '{file}'", str(file), _IMPORT_ADVICE):
                loader_spec.loader.exec_module(module)
        except ModelError:
            sys.modules.pop(mod_name, None)
            raise
        except Exception as err:
            sys.modules.pop(mod_name, None)
            raise ModelError(f"importing '{file}' failed: {type(err).__name__}: {err}", field="model") from err
        where = f"'{file}'"
    else:
        try:
            with _guarded(f"importing {target!r}", target, _IMPORT_ADVICE):
                module = importlib.import_module(target)
        except ModelError:
            raise
        except ModuleNotFoundError as err:
            if err.name and (target == err.name or target.startswith(err.name + ".")):
                raise ModelError(
                    f"cannot import module {target!r} for the factory {spec!r}: no module named {err.name!r}; "
                    f"install it or add it to PYTHONPATH, or give a file: 'path/to/file.py:{attr}'", field="model"
                ) from err
            raise ModelError(f"importing {target!r} failed: {err}", field="model") from err
        except Exception as err:
            raise ModelError(f"importing {target!r} failed: {type(err).__name__}: {err}", field="model") from err
        where = f"module {target!r}"
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        choices = [n for n, v in vars(module).items()
                   if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
        raise UnknownNameError("factory function", attr, choices, hint=f"in {where}", field="model")
    return factory


def _factory_preprocessing(value: Any, spec: str) -> Preprocessing | None:
    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, Mapping):
        try:
            return Preprocessing(**value)
        except TypeError as err:
            raise ModelError(f"the factory {spec!r} returned preprocessing {dict(value)!r}: {err}; use the "
                             f"fields of guided_backprop.Preprocessing") from err
    raise ModelError(f"the factory {spec!r} returned preprocessing of type {type(value).__name__}; return a "
                     f"guided_backprop.Preprocessing or a dict of its fields")


def _factory_labels(value: Any, spec: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return read_labels(value)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ModelError(f"the factory {spec!r} returned labels of type {type(value).__name__}; return a list of "
                     f"class names in index order, or a label file's path")


def _unpack_factory(result: Any, spec: str) -> tuple[nn.Module, Preprocessing | None, list[str] | None]:
    """What a factory may return: an ``nn.Module``; ``(model, preprocessing)`` or ``(model, preprocessing,
    labels)``; a dict with ``"model"`` and optional ``"preprocessing"``/``"labels"``; or an object with
    ``.model`` and optional ``.preprocessing``/``.labels`` attributes (a :class:`LoadedModel` works)."""
    parts: tuple[Any, Any, Any]
    if isinstance(result, nn.Module):
        parts = (result, None, None)
    elif isinstance(result, tuple) and len(result) in (2, 3):
        parts = (result[0], result[1], result[2] if len(result) == 3 else None)
    elif isinstance(result, Mapping) and "model" in result:
        unknown = sorted(set(result) - {"model", "preprocessing", "labels"})
        if unknown:
            raise ModelError(f"the factory {spec!r} returned a dict with unknown keys {unknown}; the keys are "
                             f"'model', 'preprocessing' and 'labels'")
        parts = (result["model"], result.get("preprocessing"), result.get("labels"))
    elif isinstance(getattr(result, "model", None), nn.Module):
        parts = (result.model, getattr(result, "preprocessing", None), getattr(result, "labels", None))
    else:
        raise ModelError(f"the factory {spec!r} returned {type(result).__name__}; return a torch.nn.Module, "
                         f"(model, preprocessing[, labels]), or a dict with 'model', 'preprocessing', 'labels'")
    model, prep, labels = parts
    if not isinstance(model, nn.Module):
        raise ModelError(f"the factory {spec!r} returned a model of type {type(model).__name__}, not a "
                         f"torch.nn.Module")
    return model, _factory_preprocessing(prep, spec), _factory_labels(labels, spec) or None


def build_factory(spec: str, req: Request) -> Built:
    _, _, file = _factory_file(spec)
    with _import_path(None if file is None else file.parent):  # also while it runs: it may import lazily
        factory = _import_factory(spec)
        kwargs: dict[str, Any] = {}
        if req.num_classes is not None:
            params: Mapping[str, inspect.Parameter]
            try:
                params = inspect.signature(factory).parameters
            except (TypeError, ValueError):
                params = {}
            if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ModelError(f"num_classes={req.num_classes} was given but the factory {spec!r} takes no "
                                 f"num_classes argument", field="num_classes")
            kwargs["num_classes"] = req.num_classes
        try:
            with _guarded(f"the factory {spec!r}", spec, "a factory returns the model; it must not exit"):
                result = factory(**kwargs)
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(f"the factory {spec!r} failed: {type(err).__name__}: {err}", field="model") from err
    model, prep, labels = _unpack_factory(result, spec)
    kind, value = weights_kind(req.weights)
    if kind in ("pretrained", "name"):
        raise bad_weights(spec, str(req.weights), "'random' (a factory loads no named weights)")
    desc = "as built by the factory (no checkpoint)"
    if kind == "path":
        load_into(model, read_checkpoint(value, req.trust), source=f"checkpoint '{value}'",
                  hint=f"does {spec!r} build the network the checkpoint was saved from? pass num_classes=N if "
                       f"only the class count differs")
        desc = f"checkpoint {value}"
    n = req.num_classes if req.num_classes is not None else (len(labels) if labels else None)
    return Built(model, prep or Preprocessing(), n, labels, desc, "factory")


def output_classes(model: nn.Module, pre: Preprocessing, device: torch.device, name: str,
                   kind: list[str] | None = None) -> int | None:
    """One forward pass of a blank input shaped as ``pre`` makes it: the model's class count (the last
    dimension of an ``(N, K)`` output), and a clear error now if the model cannot take such inputs,
    rather than the same error once per image. ``kind``, if given, receives what the output is
    (:func:`~guided_backprop.targets.output_kind`)."""
    size = pre.nominal_size
    if size is None:
        return None
    x = torch.zeros(1, pre.channels, *size, device=device)
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is not None and first.in_channels != pre.channels:
        fix = (f"give channels={first.in_channels} (grayscale)" if first.in_channels in (1, 3) else
               "wrap the model so that it takes 1 or 3 channels")
        raise ModelError(
            f"model {name!r}: its first layer takes {first.in_channels}-channel input but the images are given as "
            f"{pre.channels}-channel tensors (shape {tuple(x.shape)}) by its preprocessing; {fix}, or return the "
            f"preprocessing from the factory", field="preprocessing")
    try:
        with model_state(model), torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported with the fix
        one_line = " ".join(str(err).split())[:300]
        other = 3 if pre.channels == 1 else 1
        raise ModelError(
            f"model {name!r} cannot take the input its preprocessing makes, shape {tuple(x.shape)} "
            f"({pre.channels} channel{'s' if pre.channels != 1 else ''}, {size[0]}x{size[1]}): "
            f"{type(err).__name__}: {one_line}; give the preprocessing it expects, e.g. channels={other} or "
            f"input_size=N", field="preprocessing",
        ) from err
    if kind is not None:
        from ..targets import output_kind

        kind.append(output_kind(out))
    if isinstance(out, dict) and isinstance(out.get("out"), torch.Tensor):
        return int(out["out"].shape[1])  # a segmenter's classes
    try:
        logits = logits_of(out)
    except GuidedBackpropError:  # not a classifier's output: nothing to count
        return None
    return int(logits.shape[1]) if logits.ndim == 2 else None
