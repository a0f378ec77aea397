"""The ``guided-backprop`` command: arguments in, :func:`guided_backprop.batch.run` called, exit code out.

``guided-backprop INPUTS... -o OUT`` runs the main job (the ``run`` subcommand, implied when the first
argument is not a subcommand name); ``guided-backprop models`` lists the models; ``guided-backprop
report OUT`` writes the HTML gallery of an existing output folder; ``guided-backprop units INPUTS
--layer L -o OUT`` draws what single units of a layer respond to. Errors are printed as one line
``error: ...`` (a traceback only with ``--verbose``), and the exit code says what happened.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ExitCode, GuidedBackpropError
from .methods import METHODS, parse_methods
from .render import NORMALIZATIONS

__all__ = ["main"]

PROG = "guided-backprop"
EXIT_CODES = (
    "Exit codes: 0 every input done; 1 some inputs failed (each named on stderr with the reason, all "
    "others done); 2 usage error (bad option, unknown model, layer or class, an output folder of "
    "another run); 3 the run failed unexpectedly (--verbose shows why); 130 interrupted (Ctrl-C): "
    "rerun the same command to finish, complete outputs are kept."
)


def _keep_freed_memory() -> None:
    """Ask glibc to serve large buffers from the heap and keep freed memory for reuse.

    By default glibc maps every buffer over 128 KiB with mmap and returns it on free, so each
    batch page-faults its activations anew (measured: ~0.5 M faults and 15-20% of the time of a
    VGG19 batch of 8 on 2 cores). The command owns its process, so it sets what the environment
    variables MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_ would; memory then stays at the run's
    peak instead of going up and down. GUIDED_BACKPROP_MALLOC=default keeps glibc's defaults.
    """
    if not sys.platform.startswith("linux") or os.environ.get("GUIDED_BACKPROP_MALLOC", "") == "default":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):  # not glibc (musl...): nothing to tune
        return


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


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


def _echo_error(message: str | BaseException, *, verbose: bool = False, err: BaseException | None = None) -> None:
    """One line ``error: ...`` on stderr (the traceback first with ``--verbose``)."""
    if verbose and err is not None:
        click.echo("".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip(), err=True)
    field = getattr(message, "field", None) if isinstance(message, BaseException) else None
    click.echo(f"error: {cli_message(str(message), field)}", err=True)


def _plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------------------- param types


class _Methods(click.ParamType):
    """A comma-separated list of method names (aliases accepted): ``gbp,deconvnet``."""

    name = "METHODS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_methods([v for v in str(value).split(",") if v.strip()] or [""])
        except GuidedBackpropError as err:
            self.fail(str(err), param, ctx)


class _Size(click.ParamType):
    """A positive number of pixels, ``none``, or ``model`` (keep the model's own)."""

    name = "PIXELS|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .preprocessing import KEEP

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


class _Target(click.ParamType):
    """``top1`` -> ``None`` (each image's predicted class), ``topK`` -> :class:`TopK`, a class index ->
    ``int``, anything else -> the class name (checked against the model's names once it is loaded)."""

    name = "topK|INDEX|NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .targets import TopK

        if value is None or isinstance(value, (int, TopK)):
            return value
        text = str(value).strip()
        m = re.fullmatch(r"top-?(\d*)", text.lower())
        if m:
            k = int(m.group(1) or 1)
            if k < 1:
                self.fail(f"{value!r}: k of topK must be 1 or more", param, ctx)
            return None if k == 1 else TopK(k)
        if re.fullmatch(r"\d+", text):
            return int(text)
        if not text:
            self.fail("give top1, topK, a class index or a class name", param, ctx)
        return text


class _Neuron(click.ParamType):
    """``max`` (the most active unit of the channel) or ``Y,X`` -> ``(y, x)``."""

    name = "max|Y,X"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text == "max":
            return "max"
        m = re.fullmatch(r"(\d+)\s*,\s*(\d+)", text)
        if not m:
            self.fail(f"{value!r}: give 'max' or 'Y,X' (a unit's row and column, from 0)", param, ctx)
        return int(m.group(1)), int(m.group(2))


# ------------------------------------------------------------------------------ grouped --help


class _Option(click.Option):
    """An option that belongs to a section of ``--help`` (``group``)."""

    def __init__(self, *args: Any, group: str = "Other options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


def _opt(group: str, *decls: str, **attrs: Any) -> Callable[[Any], Any]:
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
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "Other options"), []).append(record)
        order = [_INPUTS, _MODEL, _METHODS, _IO, _PERF, _RESUME]
        for title in sorted(sections, key=lambda t: order.index(t) if t in order else len(order)):
            with formatter.section(title):
                formatter.write_dl(sections[title])


_COMMAND = {"cls": _GroupedCommand, "epilog": EXIT_CODES,
            "context_settings": {"max_content_width": 100, "show_default": True}}


# ----------------------------------------------------------------------------- model options


@dataclass(frozen=True)
class ModelOptions:
    """The model options every subcommand takes, parsed: which network, and how pictures become its input."""

    model: str | None = None
    weights: str | None = None
    labels: Path | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    input_size: int | None = None
    resize: Any = "model"
    crop: Any = "model"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None
    device: str = "auto"

    def preprocessing_changes(self) -> dict[str, Any]:
        """Arguments of :meth:`Preprocessing.adjust` (for ``load_model(preprocessing=...)``)."""
        from .preprocessing import KEEP

        changes = {"input_size": self.input_size, "resize": self.resize, "crop": self.crop, "mean": self.mean,
                   "std": self.std, "channels": self.channels}
        return {k: v for k, v in changes.items() if v is not None and v is not KEEP and v != "model"} | {
            k: None for k in ("resize", "crop") if changes[k] is None}

    def load(self) -> Any:
        """The :class:`~guided_backprop.models.LoadedModel`, preprocessing changes applied."""
        from . import models
        from .devices import resolve_device

        return models.load_model(
            self.model or models.DEFAULT_MODEL, weights=self.weights, labels=self.labels,
            num_classes=self.num_classes, trust_checkpoint=self.trust_checkpoint, device=resolve_device(self.device),
            preprocessing=self.preprocessing_changes() or None,
        )


_MODEL = "Model"
_INPUTS = "Inputs (how pictures become the network's input)"
_IO = "Output"
_METHODS = "Methods and targets"
_PERF = "Performance"
_RESUME = "Resume"
_MODEL_OPTIONS = [
    _opt(_MODEL, "--model", default=None, metavar="NAME", show_default="efficientnet_lite0, offline",
         help="A registry name (see 'guided-backprop models'), 'timm:<name>', or your factory 'pkg.mod:fn' / "
              "'path/file.py:fn' (returning the model, or (model, preprocessing[, labels]): see the README)."),
    _opt(_MODEL, "--weights", default=None, metavar="FILE|NAME", show_default="the model's own",
         help="A checkpoint file, a weights name (torchvision: IMAGENET1K_V2; timm: pretrained), or 'random' "
              "(random initialisation: for tests and sanity checks, the maps then show no learned features)."),
    _opt(_MODEL, "--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
         metavar="FILE", show_default="the model's", help="Class names: one per line, or JSON; one per class."),
    _opt(_MODEL, "--num-classes", type=click.IntRange(min=1), default=None, show_default="the checkpoint's",
         help="Classes of a checkpoint or factory model."),
    _opt(_MODEL, "--trust-checkpoint", is_flag=True,
         help="Allow a pickled checkpoint (runs code from the file: only for files you trust)."),
    _opt(_MODEL, "--device", type=_Device(), default="auto", metavar="auto|cpu|cuda[:N]|mps",
         help="auto picks CUDA when available; under torchrun each process takes cuda:LOCAL_RANK."),
    _opt(_INPUTS, "--input-size", type=click.IntRange(min=1), default=None, metavar="PIXELS",
         show_default="the model's",
         help="Size the network sees, in the model's own convention: its crop (the resize scaled like the "
              "model's, e.g. 256/224), its direct resize, or the shorter side for whole pictures."),
    _opt(_INPUTS, "--resize", type=_Size(), default="model", metavar="PIXELS|none",
         help="Resize the shorter side to PIXELS first (aspect ratio kept), or 'none'."),
    _opt(_INPUTS, "--crop", type=_Size(), default="model", metavar="PIXELS|none",
         help="Centre crop PIXELS x PIXELS, or 'none' for whole pictures of any size."),
    _opt(_INPUTS, "--mean", type=_Floats(), default=None, show_default="the model's; ImageNet's for factories",
         help="Per-channel mean subtracted after scaling pixels to 0-1: R,G,B or one value."),
    _opt(_INPUTS, "--std", type=_Floats(), default=None, show_default="the model's; ImageNet's for factories",
         help="Per-channel standard deviation divided by: R,G,B or one value."),
    _opt(_INPUTS, "--channels", type=click.Choice(["1", "3"]), default=None, show_default="the model's, 3: RGB",
         help="1: the network takes grayscale pictures (mean/std default to the average of the model's)."),
]
_MODEL_FIELDS = ("model", "weights", "labels", "num_classes", "trust_checkpoint", "input_size", "resize", "crop",
                 "mean", "std", "channels", "device")


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model options to a command; it receives them as one ``model_options: ModelOptions``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {k: kwargs.pop(k) for k in _MODEL_FIELDS}
        if values["channels"] is not None:
            values["channels"] = int(values["channels"])
        return fn(*args, model_options=ModelOptions(**values), **kwargs)

    for option in reversed(_MODEL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


# ------------------------------------------------------------------------------------------- the group


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand name, starts the default command.

    It also turns every error into one line and an exit code, for the console script and for
    ``CliRunner`` alike.
    """

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in (*ctx.help_option_names, "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cmd = self.commands[self.default_command]
        formatter.write_usage(ctx.command_path, "[OPTIONS] INPUTS... -o OUT")
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        sub = click.Context(cmd, info_name=self.default_command, parent=ctx, **cmd.context_settings)
        cmd.format_options(sub, formatter)
        self.format_commands(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name or PROG, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.ctx.get_help() if err.ctx else "", err=True)
            code = ExitCode.USAGE
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            code = ExitCode.INTERRUPTED
        except click.ClickException as err:
            hint = ""
            if isinstance(err, click.UsageError):  # the --help that shows the option at fault
                sub = err.ctx.command.name if err.ctx is not None and err.ctx.parent is not None else None
                hint = f" (see '{PROG}{'' if sub in (None, 'run') else ' ' + sub} --help')"
            _echo_error(err.format_message() + hint)
            code = err.exit_code
        except GuidedBackpropError as err:
            _echo_error(err)
            code = ExitCode.USAGE
        if standalone_mode:
            sys.exit(int(code))
        return code


@click.group(
    cls=_DefaultGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES,
    no_args_is_help=True,
)
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def main() -> None:
    """Guided backpropagation maps (Springenberg et al. 2014, arXiv:1412.6806) for every image in
    files, folders or glob patterns, with any ReLU CNN; also deconvnet, saliency, Grad-CAM and
    Guided Grad-CAM.

    \b
    Examples:
      guided-backprop photos/ -o out
      guided-backprop 'photos/**/*.jpg' -o out --methods gbp,deconvnet,guided_gradcam --target top5
      guided-backprop photos -o out --model vgg19 --norm minmax          # the seed's look
      torchrun --standalone --nproc-per-node 2 -m guided_backprop photos -o out
      guided-backprop units photos -o units --layer blocks.5 --top-channels 4

    Outputs in OUT: the maps (default names map_{idx}_class_{class_index}.png, as the seed),
    im_{idx}.png (the input as the network saw it), index.jsonl, predictions.csv and run.json.
    Rerunning the same command resumes: complete outputs are skipped (--overwrite redoes them).
    An input folder literally named like a subcommand is given as ./models.
    """


# ---------------------------------------------------------------------------------------------- run


@main.command("run", **_COMMAND)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@_opt(_IO, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
      help="Output folder (created if needed).")
@model_options
@_opt(_METHODS, "--methods", type=_Methods(), default="guided_backprop",
      help=f"Comma-separated: {', '.join(METHODS)} (aliases: gbp, deconv, gradient, ggcam).")
@_opt(_METHODS, "--target", type=_Target(), default="top1",
      help="What each map explains: top1 (the predicted class), topK (K best classes), a class index or a "
           "class name (e.g. 'Egyptian cat').")
@_opt(_METHODS, "--layer", default=None, metavar="NAME",
      help="Explain a unit of this layer instead (with --channel; 'guided-backprop layers' lists them).")
@_opt(_METHODS, "--channel", type=click.IntRange(min=0), default=None, help="Channel of --layer.")
@_opt(_METHODS, "--neuron", type=_Neuron(), default=None, show_default="the whole channel",
      help="With --layer/--channel: the most active unit ('max') or the unit at Y,X.")
@_opt(_METHODS, "--gradcam-layer", default=None, metavar="NAME", show_default="the last spatial layer",
      help="Layer for gradcam and guided_gradcam ('guided-backprop layers' lists them).")
@_opt(_METHODS, "--smooth", type=click.IntRange(min=0), default=0, metavar="N",
      help="SmoothGrad: average over N noisy copies (0: off).")
@_opt(_METHODS, "--noise", type=click.FloatRange(min=0.0), default=0.15, metavar="F",
      help="SmoothGrad noise std as a fraction of the input's value range.")
@_opt(_METHODS, "--seed", type=int, default=0, help="Random seed of the SmoothGrad noise.")
@_opt(_IO, "--norm", type=click.Choice(NORMALIZATIONS), default="percentile",
      help="How maps become pictures: percentile (clip |value| at its 99.5th percentile), minmax (the seed's "
           "exact look), abs (grayscale magnitude), signed (diverging colours).")
@_opt(_IO, "--seed-look", is_flag=True, help="The seed's exact look: same as --norm minmax.")
@_opt(_IO, "--name", "name_template", default=None, metavar="TEMPLATE",
      show_default="map_{idx}_class_{class_index}.png, plus _{method} with several methods and _top{rank} with "
                   "several classes",
      help="Map file names; fields {idx} {stem} {label} {class_index} {method} {rank} {layer} {channel}.")
@_opt(_IO, "--input-name", default="im_{idx}.png", metavar="TEMPLATE",
      help="Name of the input picture as the network saw it; fields {idx} {stem}.")
@_opt(_IO, "--panel", is_flag=True,
      help="Also write panel_{idx}.png: the input, then every method's map, titled with the class and "
           "its probability (colour bars for Grad-CAM and signed maps).")
@_opt(_IO, "--save-raw", is_flag=True, help="Also save the float maps as .npy (C, H, W), RGB channel order.")
@_opt(_IO, "--report", "with_report", is_flag=True, help="Also write the HTML gallery OUT/index.html.")
@_opt(_PERF, "--batch-size", type=click.IntRange(min=1), default=8, help="Images per batch.")
@_opt(_PERF, "--workers", type=click.IntRange(min=0), default=_default_workers, show_default="cores - 1, at most 4",
      help="Decoding processes (0: decode in the main process).")
@_opt(_RESUME, "--overwrite", is_flag=True,
      help="Redo every input, even those a previous run finished (default: rerunning resumes).")
@_opt(_IO, "-q", "--quiet", is_flag=True, help="No progress bar and no summary (errors are still printed).")
@_opt(_IO, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def run_command(inputs: tuple[str, ...], output: Path, model_options: ModelOptions, methods: tuple[str, ...],
                target: Any, layer: str | None, channel: int | None, neuron: Any, gradcam_layer: str | None,
                smooth: int, noise: float, seed: int, norm: str, seed_look: bool, name_template: str | None,
                input_name: str, panel: bool, save_raw: bool, batch_size: int, workers: int, overwrite: bool,
                with_report: bool, quiet: bool, verbose: bool) -> int:
    """Compute maps for every image in INPUTS (files, folders walked recursively in sorted order, or
    quoted glob patterns) and write them to OUT.

    A file that cannot be read (empty, truncated, not an image, too large...) is reported in one line
    naming it and the reason, and the run goes on. Every file is written atomically; a killed run
    resumes where it stopped when the same command is run again.
    """
    from . import batch
    from .methods import get_method

    _keep_freed_memory()
    if seed_look:
        given = click.get_current_context().get_parameter_source("norm") is not click.core.ParameterSource.DEFAULT
        if given and norm != "minmax":
            raise click.UsageError(f"--seed-look means --norm minmax; it cannot be combined with --norm {norm}")
        norm = "minmax"
    if gradcam_layer is not None and not any(get_method(m).gradcam or m == "gradcam" for m in methods):
        click.echo(f"warning: --gradcam-layer {gradcam_layer} is not used: none of --methods {','.join(methods)} "
                   f"is gradcam or guided_gradcam", err=True)
    mo = model_options
    cfg = batch.BatchConfig(
        model=mo.model, weights=mo.weights, labels=None if mo.labels is None else str(mo.labels),
        num_classes=mo.num_classes, trust_checkpoint=mo.trust_checkpoint, input_size=mo.input_size,
        resize=mo.resize, crop=mo.crop, mean=mo.mean, std=mo.std, channels=mo.channels, methods=methods,
        target=target, layer=layer, channel=channel, neuron=neuron, gradcam_layer=gradcam_layer, smooth=smooth,
        noise=noise, seed=seed, norm=norm, name=name_template, input_name=input_name, panel=panel,
        save_raw=save_raw, device=mo.device, batch_size=batch_size, workers=workers, overwrite=overwrite,
    )
    progress = not quiet and sys.stderr.isatty()
    try:
        result = batch.run(list(inputs), output, cfg, progress=progress)
    except batch.PeerFailed as err:  # another torchrun process failed and said why
        return err.exit_code
    except batch.RunStopped as err:  # disk full, a decode worker killed: what is done stays, a rerun resumes
        _echo_error(str(err), verbose=verbose, err=err)
        return err.exit_code
    except GuidedBackpropError as err:
        _echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    except KeyboardInterrupt as err:
        terminated = isinstance(err, batch.Terminated)
        click.echo(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; rerun the same command to finish "
                   f"({output})", err=True)
        return ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
    except Exception as err:  # noqa: BLE001 - one line, the traceback with --verbose
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        _echo_error(f"{type(err).__name__}: {err}{hint}", verbose=verbose, err=err)
        return ExitCode.FAILED
    if result.interrupted:
        what = "terminated (SIGTERM)" if result.signal == "SIGTERM" else "interrupted"
        click.echo(f"{what} after {result.computed} images; rerun the same command to finish "
                   f"({result.output})", err=True)
        return result.exit_code
    if result.rank != 0:
        return result.exit_code
    if not quiet:
        click.echo(result.summary())
    if with_report:
        code = _write_report(output, quiet=quiet, verbose=verbose)
        if code:
            return code
    return result.exit_code


def _write_report(output: Path, *, quiet: bool, verbose: bool) -> int:
    try:
        from . import report
    except ImportError as err:
        _echo_error(f"--report: the report module is not available ({err})", verbose=verbose, err=err)
        return ExitCode.FAILED
    try:
        page = report.write_report(output)
    except GuidedBackpropError as err:
        _echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    except Exception as err:  # noqa: BLE001
        _echo_error(f"writing the report failed: {type(err).__name__}: {err}", verbose=verbose, err=err)
        return ExitCode.FAILED
    if not quiet:
        click.echo(f"report: {page}")
    return ExitCode.OK


# ------------------------------------------------------------------------------------- other commands

_RELU_MARK = {"yes": "yes", "partly": "partly", "no": "no", "depends": "-"}


@main.command("models")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def models_command(verbose: bool) -> int:
    """List the models --model accepts by name: offline ones need no download; GBP says whether
    guided backprop and deconvnet apply (they change only ReLUs: 'no' for GELU/SiLU networks such as
    ViT, Swin, ConvNeXt, MaxViT and EfficientNet-B; 'partly' where other activations keep plain gradients)."""
    from . import models

    try:
        infos = list(models.available_models())
    except GuidedBackpropError as err:
        _echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    width = max([len(str(i.name)) for i in infos] + [4])
    click.echo(f"{'NAME':<{width}}  OFFLINE  GBP     SOURCE        DESCRIPTION")
    for info in infos:
        offline = "yes" if info.offline else "no"
        click.echo(f"{info.name:<{width}}  {offline:<7}  {_RELU_MARK[info.relu]:<6}  {str(info.source):<12}  "
                   f"{cli_message(info.description)}")
    click.echo(f"default: {models.DEFAULT_MODEL}; also 'timm:<name>' and factories 'pkg.mod:fn' or 'file.py:fn'; "
               f"GBP -: depends on the network (saliency and gradcam work on any)")
    return ExitCode.OK


@main.command("report")
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="OUT")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def report_command(output: Path, verbose: bool) -> int:
    """Write OUT/index.html, the HTML gallery of an existing output folder."""
    return _write_report(output, quiet=False, verbose=verbose)


@main.command("evaluate", **_COMMAND)
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...")
@_opt(_IO, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
      help="Folder for evaluation.json, evaluation.csv and the figures.")
@_opt(_METHODS, "--methods", type=_Methods(), default="guided_backprop,saliency,gradcam",
      help=f"Comma-separated: {', '.join(METHODS)}.")
@_opt(_METHODS, "--checks", default="randomization,class,deletion,insertion", help="Comma-separated checks to run.")
@_opt(_METHODS, "--randomization", "order", type=click.Choice(["cascading", "independent"]), default="cascading",
      help="Re-initialise blocks cumulatively from the output, or one at a time.")
@_opt(_METHODS, "--granularity", type=click.Choice(["blocks", "modules"]), default="blocks",
      help="Steps: the model's top-level stages, or every module with parameters (Quantus's choice).")
@_opt(_METHODS, "--blocks", default=None, metavar="A,B,...",
      help="Randomise these modules (model.named_modules() names) instead of --granularity.")
@_opt(_METHODS, "--seed", type=int, default=0, help="Seed of re-initialisations and random draws.")
@_opt(_METHODS, "--steps", type=click.IntRange(min=1), default=32, help="Deletion / insertion steps.")
@model_options
@_opt(_PERF, "--batch-size", type=click.IntRange(min=1), default=16, help="Images per batch.")
@_opt(_IO, "-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@_opt(_IO, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def evaluate_command(inputs: tuple[str, ...], output: Path, methods: tuple[str, ...], checks: str, order: str,
                     granularity: str, blocks: str | None, seed: int, steps: int, model_options: ModelOptions,
                     batch_size: int, quiet: bool, verbose: bool) -> int:
    """Can these maps be trusted? Sanity checks (Adebayo et al. 2018: model-parameter randomisation;
    Nie et al. 2018 / Sixt et al. 2020: class sensitivity) and faithfulness (Petsiuk et al. 2018:
    deletion, insertion) of each method's maps on IMAGES. Writes OUT/evaluation.json, evaluation.csv
    and the figures; unreadable images are reported and skipped (exit 1).
    """
    from tqdm import tqdm

    from .evaluate import parse_checks
    from .evaluate.run import EvaluateConfig, evaluate_folder

    bar = None if quiet or not sys.stderr.isatty() else tqdm(desc="evaluate", unit="step")

    def progress(check: str, done: int, total: int) -> None:
        if bar is not None:
            bar.set_description(check)
            bar.total, bar.n = total, done
            bar.refresh()

    try:
        cfg = EvaluateConfig(
            methods=methods, checks=parse_checks(checks), order=order,  # type: ignore[arg-type]
            granularity=[b.strip() for b in blocks.split(",") if b.strip()] if blocks else granularity,
            seed=seed, steps=steps, batch_size=batch_size)
        result = evaluate_folder(list(inputs), output, cfg, loaded=model_options.load(), progress=progress,
                                 on_skip=lambda path, reason: _echo_error(reason))
    except GuidedBackpropError as err:
        _echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    except Exception as err:  # noqa: BLE001 - one line, the traceback with --verbose
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        _echo_error(f"{type(err).__name__}: {err}{hint}", verbose=verbose, err=err)
        return ExitCode.FAILED
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        n = len(result.evaluation.images)
        click.echo(f"{n} image{'s' if n != 1 else ''} evaluated ({len(result.skipped)} skipped) -> "
                   f"{result.output / 'evaluation.json'}")
    return result.exit_code


@main.command("units", **_COMMAND)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@_opt(_IO, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
      help="Folder for the grids (unit_<layer>_c<channel>.png) and units.json.")
@_opt(_METHODS, "--layer", required=True, metavar="NAME",
      help="Layer whose units are shown ('guided-backprop layers' lists them with their receptive fields).")
@_opt(_METHODS, "--channel", "unit_channels", type=click.IntRange(min=0), multiple=True,
      show_default="the most active channels", help="Channel to show (repeatable).")
@_opt(_METHODS, "--top-channels", type=click.IntRange(min=1), default=4,
      help="Without --channel: how many of the layer's most active channels.")
@_opt(_METHODS, "--top", "k", type=click.IntRange(min=1), default=9,
      help="Strongest activations shown per unit (9: a 3x3 grid).")
@model_options
@_opt(_IO, "--norm", type=click.Choice(NORMALIZATIONS), default="percentile",
      help="How the maps are turned into pictures.")
@_opt(_PERF, "--batch-size", type=click.IntRange(min=1), default=16, help="Images per batch.")
@_opt(_IO, "-q", "--quiet", is_flag=True, help="No progress bar.")
@_opt(_IO, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def units_command(inputs: tuple[str, ...], output: Path, layer: str, unit_channels: tuple[int, ...], top_channels: int,
                  k: int, model_options: ModelOptions, norm: str, batch_size: int, quiet: bool,
                  verbose: bool) -> int:
    """What units of a higher layer respond to (Springenberg et al. 2014, fig. 3): for each channel,
    the images and positions where it fires most, shown as the image patch in the unit's receptive
    field beside the unit's guided-backprop and deconvnet maps, cropped the same way (3x3 grids).
    Unreadable images are reported and skipped.
    """
    from tqdm import tqdm

    from . import units

    try:
        loaded = model_options.load()
        bar = None if quiet or not sys.stderr.isatty() else tqdm(unit="img", desc="units")

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        with warnings.catch_warnings(record=True) as skipped:  # unreadable images: one line each, below
            warnings.simplefilter("always", UserWarning)
            grids = units.unit_grids_from_paths(
                loaded.model, list(inputs), layer, loaded.preprocessing, channels=list(unit_channels) or None,
                top_channels=top_channels, k=k, norm=norm, batch_size=batch_size, on_error="skip",
                progress=progress,
            )
        if bar is not None:
            bar.close()
        units.save_unit_grids(grids, output)
    except GuidedBackpropError as err:
        _echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    for w in skipped:
        _echo_error(str(w.message))
    if not quiet:
        click.echo(f"{_plural(len(grids), 'unit grid')} of layer {layer} -> {output}")
    return ExitCode.SOME_FAILED if skipped else ExitCode.OK


@main.command("layers", **_COMMAND)
@model_options
@_opt(_IO, "--spatial", is_flag=True, help="Only layers with a spatial (N, C, H, W) output (for Grad-CAM and units).")
@_opt(_IO, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def layers_command(model_options: ModelOptions, spatial: bool, verbose: bool) -> int:
    """Every layer of the model with its type, output shape and receptive field for the model's input
    size (--input-size changes it): the names --layer, --gradcam-layer and 'units --layer' take.
    A field of the whole input means every unit sees all of the picture: patches of such a layer show
    nothing more than the picture itself; pick an earlier layer for units.
    """
    from .receptive import layer_table

    try:
        loaded = model_options.load()
        rows = layer_table(loaded.model, loaded.preprocessing)
    except GuidedBackpropError as err:
        _echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    if spatial:
        rows = [r for r in rows if r.spatial]
    size = rows[0].input_size if rows else None
    header = ("NAME", "TYPE", "OUTPUT", "RECEPTIVE FIELD")
    table = [header] + [(r.name, r.type, r.shape_text, r.field_text) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    if size is not None:
        click.echo(f"{_plural(len(rows), 'layer')} of {loaded.name} for a {size[0]}x{size[1]} input; "
                   f"default Grad-CAM layer: the last with a spatial output")
    return ExitCode.OK
