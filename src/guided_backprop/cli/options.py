"""The command line's vocabulary: library fields as flags, option types, grouped ``--help`` and the
model options every subcommand shares.

The library speaks Python and names the field at fault (``GuidedBackpropError.field``); this module
is the one place that knows each field's flag (:data:`FLAGS`) and turns strings into the typed
values the library takes (click ``ParamType``s, parsed once, at the edge).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import ExitCode, GuidedBackpropError, TargetError, exit_code, stopped_in_words
from ..methods import parse_methods
from ..models.spec import ModelSpec
from ..reporting import Reporter
from ..visible import passed_over_line, visible

__all__ = ["EXIT_CODES", "FLAGS", "PROG", "ConsoleReporter", "cli_message", "echo_skipped", "echo_unexpected",
           "echo_warnings", "model_options", "model_spec", "preprocessing_changes", "stopped_by"]

PROG = "guided-backprop"
T = TypeVar("T")


def exit_code_help(texts: Mapping[ExitCode, str], after: str = "") -> str:
    """A command's table of exit codes for its ``--help``: what each :class:`ExitCode` it can return
    means for it, then ``after``."""
    return "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in texts.items()) + "." + (
        f" {after}" if after else "")


EXIT_CODES = exit_code_help({
    ExitCode.OK: "every input done",
    ExitCode.SOME_FAILED: "some inputs failed (each named on stderr with the reason, all others done)",
    ExitCode.USAGE: "usage error (bad option, unknown model, layer or class, an output folder of another run): "
                    "nothing was computed",
    ExitCode.FAILED: "the run failed unexpectedly (--verbose shows why)",
    ExitCode.DISK_FULL: "the disk is full (or the output folder cannot be written): free space, rerun to resume",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}, "After 130 or 143, rerun the same command to finish: complete outputs are kept.")

# --------------------------------------------------------------------------- library fields -> flags

#: The library's errors name the setting at fault in Python (``GuidedBackpropError.field``, and
#: ``name=value`` in their text); on the command line they name the flag. One table for both.
FLAGS: dict[str, str] = {
    "model": "--model", "weights": "--weights", "labels": "--labels", "num_classes": "--num-classes",
    "trust_checkpoint": "--trust-checkpoint", "input_size": "--input-size", "resize": "--resize", "crop": "--crop",
    "mean": "--mean", "std": "--std", "channels": "--channels", "device": "--device", "method": "--methods",
    "methods": "--methods", "target": "--target", "layer": "--layer", "channel": "--channel", "neuron": "--neuron",
    "gradcam_layer": "--gradcam-layer", "smooth": "--smooth", "noise": "--noise", "seed": "--seed",
    "norm": "--norm", "name": "--name", "input_name": "--input-name", "batch_size": "--batch-size",
    "workers": "--workers", "output": "--output", "overwrite": "--overwrite",
    "output_key": "--output-key", "mask": "--mask", "score_threshold": "--score-threshold",
    "figure_image": "--figure-image", "steps": "--steps",
}
_PY_ARG = re.compile(r"\b(" + "|".join(sorted(FLAGS, key=len, reverse=True)) +
                     r")=('[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)|[^\s,;:)]+)")


def _flag_words(match: re.Match[str]) -> str:
    flag, value = FLAGS[match.group(1)], match.group(2)
    if value == "True":
        return flag
    if value[:1] in "'\"" and value[-1:] == value[:1] and " " not in value:
        value = value[1:-1]
    elif value[:1] in "[(":  # a Python sequence: the flag takes its items comma-separated
        value = ",".join(v.strip(" '\"") for v in value[1:-1].split(",") if v.strip())
    return f"{flag} {value}"


def cli_message(message: str, field: str | None = None) -> str:
    """A library message in the command line's words: ``num_classes=N`` becomes ``--num-classes N``,
    ``method='saliency'`` becomes ``--methods saliency``, and the flag of ``field`` leads when the
    message does not name it."""
    text = _PY_ARG.sub(_flag_words, " ".join(str(message).split()))
    flag = FLAGS.get(field or "")
    if flag and flag not in text:
        text = f"{flag}: {text}"
    return text


def echo_error(message: str | BaseException, *, verbose: bool = False, err: BaseException | None = None) -> None:
    """One line ``error: ...`` on stderr (the traceback first with ``--verbose``)."""
    if verbose and err is not None:
        click.echo("".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip(), err=True)
    field = getattr(message, "field", None) if isinstance(message, BaseException) else None
    click.echo(f"error: {visible(cli_message(str(message), field))}", err=True)  # one line, no hidden characters


def echo_skipped(path: object, reason: str) -> None:
    """One line ``skipped: 'PATH': REASON`` on stderr: an input passed over (never opened), named safely."""
    click.echo(passed_over_line(path, reason), err=True)


class ConsoleReporter(Reporter):
    """What a run tells its user, on the console: a progress bar on stderr (with ``bar``: the command
    asks for it when stderr is a terminal and ``--quiet`` is not given) and one line on stderr per message.

    ``flag_words``: a failed input is said as :func:`echo_error` says errors (the library's words for
    settings as flags). ``defer_failures``: failed inputs are kept in :attr:`failures` for the command
    to print once it is done.
    """

    def __init__(self, *, bar: bool = False, desc: str | None = None, unit: str = "img", flag_words: bool = False,
                 defer_failures: bool = False) -> None:
        self.bar, self.desc, self.unit = bar, desc, unit
        self.flag_words, self.defer_failures = flag_words, defer_failures
        self.failures: list[str] = []
        self._bar: Any = None

    def progress(self, done: int, total: int, task: str = "") -> None:
        if not self.bar:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                             smoothing=0.05)
        if task:
            self._bar.set_description(task, refresh=False)
        self._bar.total = total
        if done >= self._bar.n:
            self._bar.update(done - self._bar.n)
        else:
            self._bar.n = done
            self._bar.refresh()

    def failed(self, reason: str) -> None:
        if self.defer_failures:
            self.failures.append(reason)
        elif self.flag_words:
            echo_error(reason)
        else:
            super().failed(reason)

    def line(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)  # above the bar, when there is one

    def close(self) -> None:
        """Close the progress bar (if one was drawn)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def echo_warnings(logger: logging.Logger) -> Iterator[None]:
    """While inside, each warning ``logger`` logs is one line ``warning: ...`` on stderr (invisible
    characters spelled out), whatever the logging configuration."""

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            click.echo(f"warning: {visible(record.getMessage())}", err=True)

    handler = Echo(logging.WARNING)
    level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:  # a quieter logging setup must not hide them
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def echo_unexpected(err: BaseException, *, verbose: bool) -> ExitCode:
    """An error nobody raised on purpose: its type and text on one line (the traceback with ``--verbose``)."""
    hint = "" if verbose else " (rerun with --verbose for the traceback)"
    echo_error(f"{type(err).__name__}: {err}{hint}", verbose=verbose, err=err)
    return ExitCode.FAILED


def stopped_by(err: KeyboardInterrupt) -> tuple[str, ExitCode]:
    """What stopped a command, in words, and its exit code: SIGTERM (143) or Ctrl-C (130)."""
    return stopped_in_words(err), exit_code(err)


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------------------- param types


class MethodsType(click.ParamType):
    """A comma-separated list of method names (aliases accepted): ``gbp,deconvnet``."""

    name = "METHODS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_methods([v for v in str(value).split(",") if v.strip()] or [""])
        except GuidedBackpropError as err:
            self.fail(cli_message(str(err)), param, ctx)


class _Size(click.ParamType):
    """A positive number of pixels, ``none``, or ``model`` (keep the model's own)."""

    name = "PIXELS|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..models.preprocessing import KEEP

        if value is None or value is KEEP or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "model":
            return KEEP
        if text in ("none", "no", "off"):
            return None
        if text.isdigit() and int(text) > 0:
            return int(text)
        self.fail(f"{value!r} is not a positive number of pixels or 'none'", param, ctx)


class _Floats(click.ParamType):
    """Comma-separated numbers, one per input channel (or one for all): ``0.5`` or ``0.485,0.456,0.406``."""

    name = "F[,F,F]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers (e.g. 0.5 or 0.485,0.456,0.406)",
                      param, ctx)
        if len(numbers) not in (1, 3):
            self.fail(f"{value!r}: give 1 number (grayscale, or the same for R, G and B) or 3 (R, G, B)", param, ctx)
        return numbers


class _Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (resolved on the machine that runs, see devices.py)."""

    name = "auto|cpu|cuda[:N]|mps"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
            return text
        self.fail(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps", param, ctx)


class TargetType(click.ParamType):
    """``top1`` -> ``None`` (each image's predicted class), ``topK`` -> :class:`TopK`, a class index ->
    ``int``, anything else -> the class name (checked against the model's names once it is loaded)."""

    name = "topK|INDEX|NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..targets import parse_class_target

        if isinstance(value, str) and not value.strip():
            self.fail("give top1, topK, a class index or a class name", param, ctx)
        try:
            return parse_class_target(value)
        except TargetError as err:
            self.fail(str(err), param, ctx)


class NeuronType(click.ParamType):
    """``max`` (the most active unit of the channel) or ``Y,X`` -> ``(y, x)``."""

    name = "max|Y,X"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..targets import parse_neuron

        try:
            return parse_neuron(value)
        except TargetError as err:
            self.fail(str(err), param, ctx)


# ------------------------------------------------------------------------------ grouped --help


class _Option(click.Option):
    """An option that belongs to a section of ``--help`` (``group``)."""

    def __init__(self, *args: Any, group: str = "Other options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


def opt(group: str, *decls: str, **attrs: Any) -> Callable[[Any], Any]:
    return click.option(*decls, cls=_Option, group=group, **attrs)


class _GroupedCommand(click.Command):
    """``--help`` with the options in sections (inputs, model, methods and targets, output...).

    click has no option groups; ``click-option-group`` adds them, but for what we need, titled
    sections in ``--help``, ten lines here cost less than a dependency (and its own ``--help``
    layout) on every install.
    """

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):  # arguments are in the usage line
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "Other options"), []).append(record)
        order = [INPUTS, MODEL, TARGETS, OUTPUT, PERF, RESUME]
        for title in sorted(sections, key=lambda t: order.index(t) if t in order else len(order)):
            with formatter.section(title):
                formatter.write_dl(sections[title])


COMMAND_SETTINGS = {"cls": _GroupedCommand, "epilog": EXIT_CODES,
            "context_settings": {"max_content_width": 100, "show_default": True}}


# ----------------------------------------------------------------------------- model options


def preprocessing_changes(*, input_size: int | None = None, resize: Any = "model", crop: Any = "model",
                          mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                          channels: int | None = None) -> dict[str, Any]:
    """The input flags as :meth:`Preprocessing.adjust` arguments: only those given (``--resize none`` is
    ``resize=None``; the default ``model`` keeps the model's own)."""
    from ..models.preprocessing import KEEP

    changes = {"input_size": input_size, "resize": resize, "crop": crop, "mean": mean, "std": std,
               "channels": channels}
    return {k: v for k, v in changes.items() if v is not None and v is not KEEP and v != "model"} | {
        k: None for k in ("resize", "crop") if changes[k] is None}


MODEL = "Model"
INPUTS = "Inputs (how pictures become the network's input)"
OUTPUT = "Output"
TARGETS = "Methods and targets"
PERF = "Performance"
RESUME = "Resume"
_MODEL_OPTIONS = [
    opt(MODEL, "--model", default=None, metavar="NAME", show_default="efficientnet_lite0, offline",
         help="A registry name (see 'guided-backprop models'), 'timm:<name>', or your factory 'pkg.mod:fn' / "
              "'path/file.py:fn' (returning the model, or (model, preprocessing[, labels]): see the README)."),
    opt(MODEL, "--weights", default=None, metavar="FILE|NAME", show_default="the model's own",
         help="A checkpoint file, a weights name (torchvision: IMAGENET1K_V2; timm: pretrained), or 'random' "
              "(random initialisation: for tests and sanity checks, the maps then show no learned features)."),
    opt(MODEL, "--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
         metavar="FILE", show_default="the model's", help="Class names: one per line, or JSON; one per class."),
    opt(MODEL, "--num-classes", type=click.IntRange(min=1), default=None, show_default="the checkpoint's",
         help="Classes of a checkpoint or factory model."),
    opt(MODEL, "--trust-checkpoint", is_flag=True,
         help="Allow a pickled checkpoint (runs code from the file: only for files you trust)."),
    opt(MODEL, "--device", type=_Device(), default="auto", metavar="auto|cpu|cuda[:N]|mps",
         help="auto picks CUDA when available; under torchrun each process takes cuda:LOCAL_RANK."),
    opt(INPUTS, "--input-size", type=click.IntRange(min=1), default=None, metavar="PIXELS",
         show_default="the model's",
         help="Size the network sees, in the model's own convention: its crop (the resize scaled like the "
              "model's, e.g. 256/224), its direct resize, or the shorter side for whole pictures."),
    opt(INPUTS, "--resize", type=_Size(), default="model", metavar="PIXELS|none",
         help="Resize the shorter side to PIXELS first (aspect ratio kept), or 'none'."),
    opt(INPUTS, "--crop", type=_Size(), default="model", metavar="PIXELS|none",
         help="Centre crop PIXELS x PIXELS, or 'none' for whole pictures of any size."),
    opt(INPUTS, "--mean", type=_Floats(), default=None, show_default="the model's; ImageNet's for factories",
         help="Per-channel mean subtracted after scaling pixels to 0-1: R,G,B or one value."),
    opt(INPUTS, "--std", type=_Floats(), default=None, show_default="the model's; ImageNet's for factories",
         help="Per-channel standard deviation divided by: R,G,B or one value."),
    opt(INPUTS, "--channels", type=click.Choice(["1", "3"]), default=None, show_default="the model's, 3: RGB",
         help="1: the network takes grayscale pictures (mean/std default to the average of the model's)."),
]
_MODEL_FIELDS = ("model", "weights", "labels", "num_classes", "trust_checkpoint", "input_size", "resize", "crop",
                 "mean", "std", "channels", "device")


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model options to a command; it receives them parsed, as one ``model: ModelSpec``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, model=model_spec(kwargs), **kwargs)

    for option in reversed(_MODEL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def config_of(cls: type[T], params: Mapping[str, Any], **changes: Any) -> T:
    """A command's config (a dataclass: ``BatchConfig``, ``EvaluateConfig``) from its parsed options:
    each field from the option of the same name, ``changes`` on top."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**({k: v for k, v in params.items() if k in names} | changes))


def model_spec(params: dict[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of the model flags' values (taken out of ``params``, a command's keyword arguments)."""
    values = {k: params.pop(k) for k in _MODEL_FIELDS}
    channels = values.pop("channels")
    changes = preprocessing_changes(**{k: values.pop(k) for k in ("input_size", "resize", "crop", "mean", "std")},
                                    channels=None if channels is None else int(channels))
    return ModelSpec(values.pop("model"), preprocessing=changes or None, **values)
