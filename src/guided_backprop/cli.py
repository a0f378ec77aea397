"""The ``guided-backprop`` command: arguments in, :func:`guided_backprop.batch.run` called, exit code out.

``guided-backprop INPUTS... -o OUT`` runs the main job (the ``run`` subcommand, implied when the first
argument is not a subcommand name); ``guided-backprop models`` lists the models; ``guided-backprop
report OUT`` writes the HTML gallery of an existing output folder; ``guided-backprop units INPUTS
--layer L -o OUT`` draws what single units of a layer respond to. Errors are printed as one line
``error: ...`` (a traceback only with ``--verbose``), and the exit code says what happened.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
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


def _echo_error(message: str, *, verbose: bool = False, err: BaseException | None = None) -> None:
    if verbose and err is not None:
        click.echo("".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip(), err=True)
    click.echo(f"error: {' '.join(str(message).split())}", err=True)


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


class _SizeOrNone(click.ParamType):
    """A positive number of pixels, or ``none``."""

    name = "PIXELS|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "model":  # the default: keep the model's own
            return text
        if text in ("none", "no", "off"):
            return None
        if text.isdigit() and int(text) > 0:
            return int(text)
        self.fail(f"{value!r} is not a positive number of pixels or 'none'", param, ctx)


class _Device(click.ParamType):
    name = "auto|cpu|cuda[:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
            return text
        self.fail(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N", param, ctx)


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
        sub = click.Context(cmd, info_name=self.default_command, parent=ctx)
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
            hint = f" (see '{PROG} --help')" if isinstance(err, click.UsageError) else ""
            _echo_error(err.format_message() + hint)
            code = err.exit_code
        except GuidedBackpropError as err:
            _echo_error(str(err))
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


@main.command("run", epilog=EXIT_CODES, context_settings={"max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (created if needed).")
@click.option("--model", default=None, metavar="NAME",
              help="Model: a registry name (see 'guided-backprop models'; default: the offline "
                   "efficientnet_lite0), 'timm:<name>', or a factory 'pkg.mod:fn' / 'path/file.py:fn'.")
@click.option("--weights", default=None, metavar="FILE|NAME", help="Checkpoint file or weights name.")
@click.option("--labels", default=None, metavar="FILE", help="Class names: one per line, or JSON.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classes of a factory model.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow a pickled checkpoint (runs code from the file: only for files you trust).")
@click.option("--input-size", type=click.IntRange(min=1), default=None, metavar="PIXELS",
              help="Size the network sees, in the model's own convention: its crop (the resize scaled like "
                   "the model's, e.g. 256/224), its direct resize, or the shorter side for whole pictures.")
@click.option("--resize", type=_SizeOrNone(), default="model", show_default=False, metavar="PIXELS|none",
              help="Resize the shorter side to PIXELS first, or 'none' (default: the model's).")
@click.option("--crop", type=_SizeOrNone(), default="model", show_default=False, metavar="PIXELS|none",
              help="Centre crop PIXELS x PIXELS, or 'none' for whole pictures of any size (default: the model's).")
@click.option("--methods", type=_Methods(), default="guided_backprop", show_default=True,
              help=f"Comma-separated: {', '.join(METHODS)} (aliases: gbp, deconv, gradient, ggcam).")
@click.option("--target", default="top1", show_default=True,
              help="What each map explains: top1 (the predicted class), topK (K best classes), a class index "
                   "or a class name (e.g. 'Egyptian cat').")
@click.option("--layer", default=None, metavar="NAME", help="Explain a unit of this layer instead (with --channel).")
@click.option("--channel", type=click.IntRange(min=0), default=None, help="Channel of --layer.")
@click.option("--neuron", default=None, metavar="max|Y,X",
              help="With --layer/--channel: the most active unit ('max') or the unit at Y,X; default: the "
                   "whole channel.")
@click.option("--gradcam-layer", default=None, metavar="NAME",
              help="Layer for Grad-CAM (default: the last one with a spatial output).")
@click.option("--smooth", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="SmoothGrad: average over N noisy copies (0: off).")
@click.option("--noise", type=click.FloatRange(min=0.0), default=0.15, show_default=True, metavar="F",
              help="SmoothGrad noise std as a fraction of the input's value range.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the SmoothGrad noise.")
@click.option("--norm", type=click.Choice(NORMALIZATIONS), default=None,
              help="How maps become pictures: percentile (default: clip |value| at its 99.5th percentile), "
                   "minmax (the seed's exact look), abs (grayscale magnitude), signed (diverging colours).")
@click.option("--seed-look", is_flag=True, help="The seed's exact look: same as --norm minmax.")
@click.option("--name", "name_template", default=None, metavar="TEMPLATE",
              help="Map file names; fields {idx} {stem} {label} {class_index} {method} {rank} {layer} {channel}. "
                   "Default: map_{idx}_class_{class_index}.png, plus _{method} when several methods and "
                   "_top{rank} when several classes are asked.")
@click.option("--input-name", default="im_{idx}.png", show_default=True, metavar="TEMPLATE",
              help="Name of the input picture as the network saw it; fields {idx} {stem}.")
@click.option("--panel", is_flag=True,
              help="Also write panel_{idx}.png: the input, then every method's map, titled with the class and "
                   "its probability (colour bars for Grad-CAM and signed maps).")
@click.option("--save-raw", is_flag=True, help="Also save the float maps as .npy (C, H, W), RGB channel order.")
@click.option("--device", type=_Device(), default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="auto picks CUDA when available; under torchrun each process takes cuda:LOCAL_RANK.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per batch.")
@click.option("--workers", type=click.IntRange(min=0), default=_default_workers, show_default="cores - 1, at most 4",
              help="Decoding processes (0: decode in the main process).")
@click.option("--overwrite", is_flag=True, help="Redo every input, even those a previous run finished.")
@click.option("--report", "with_report", is_flag=True, help="Also write the HTML gallery OUT/index.html.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary (errors are still printed).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def run_command(inputs: tuple[str, ...], output: Path, model: str | None, weights: str | None,
                labels: str | None, num_classes: int | None, trust_checkpoint: bool, input_size: int | None,
                resize: Any, crop: Any, methods: tuple[str, ...], target: str, layer: str | None,
                channel: int | None, neuron: str | None, gradcam_layer: str | None, smooth: int, noise: float,
                seed: int, norm: str | None, seed_look: bool, name_template: str | None, input_name: str,
                panel: bool, save_raw: bool, device: str, batch_size: int, workers: int, overwrite: bool,
                with_report: bool,
                quiet: bool, verbose: bool) -> int:
    """Compute maps for every image in INPUTS (files, folders walked recursively in sorted order, or
    quoted glob patterns) and write them to OUT.

    A file that cannot be read (empty, truncated, not an image, too large...) is reported in one line
    naming it and the reason, and the run goes on. Every file is written atomically; a killed run
    resumes where it stopped when the same command is run again.
    """
    from . import batch

    _keep_freed_memory()
    if seed_look:
        if norm not in (None, "minmax"):
            raise click.UsageError(f"--seed-look means --norm minmax; it cannot be combined with --norm {norm}")
        norm = "minmax"
    cfg = batch.BatchConfig(
        model=model, weights=weights, labels=labels, num_classes=num_classes, trust_checkpoint=trust_checkpoint,
        input_size=input_size, resize=resize, crop=crop, methods=methods,
        target=None if layer is not None and target == "top1" else target, layer=layer, channel=channel,
        neuron=neuron, gradcam_layer=gradcam_layer, smooth=smooth, noise=noise, seed=seed,
        norm=norm or "percentile", name=name_template, input_name=input_name, panel=panel, save_raw=save_raw,
        device=device,
        batch_size=batch_size, workers=workers, overwrite=overwrite,
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
        _echo_error(str(err), verbose=verbose, err=err)
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
        _echo_error(str(err), verbose=verbose, err=err)
        return ExitCode.USAGE
    except Exception as err:  # noqa: BLE001
        _echo_error(f"writing the report failed: {type(err).__name__}: {err}", verbose=verbose, err=err)
        return ExitCode.FAILED
    if not quiet:
        click.echo(f"report: {page}")
    return ExitCode.OK


# ------------------------------------------------------------------------------------- other commands


@main.command("models")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def models_command(verbose: bool) -> int:
    """List the models --model accepts by name (offline ones need no download)."""
    from . import models

    try:
        infos = list(models.available_models())
    except GuidedBackpropError as err:
        _echo_error(str(err), verbose=verbose, err=err)
        return ExitCode.USAGE
    width = max([len(str(i.name)) for i in infos] + [4])
    click.echo(f"{'NAME':<{width}}  OFFLINE  SOURCE        DESCRIPTION")
    for info in infos:
        offline = "yes" if info.offline else "no"
        click.echo(f"{info.name:<{width}}  {offline:<7}  {str(info.source):<12}  {info.description}")
    click.echo(f"default: {models.DEFAULT_MODEL}; also 'timm:<name>' and factories 'pkg.mod:fn' or 'file.py:fn'")
    return ExitCode.OK


@main.command("report")
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="OUT")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def report_command(output: Path, verbose: bool) -> int:
    """Write OUT/index.html, the HTML gallery of an existing output folder."""
    return _write_report(output, quiet=False, verbose=verbose)


@main.command("units", context_settings={"max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the grids (unit_<layer>_c<channel>.png) and units.json.")
@click.option("--layer", required=True, metavar="NAME", help="Layer whose units are shown (model.named_modules()).")
@click.option("--channel", "channels", type=click.IntRange(min=0), multiple=True,
              help="Channel to show (repeatable); default: the most active channels.")
@click.option("--top-channels", type=click.IntRange(min=1), default=4, show_default=True,
              help="Without --channel: how many of the layer's most active channels.")
@click.option("--top", "k", type=click.IntRange(min=1), default=9, show_default=True,
              help="Strongest activations shown per unit (9: a 3x3 grid).")
@click.option("--model", default=None, metavar="NAME", help="Model name or factory (see 'guided-backprop models').")
@click.option("--weights", default=None, metavar="FILE|NAME", help="Checkpoint file or weights name.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classes of a factory model.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow a checkpoint that needs full unpickling.")
@click.option("--norm", type=click.Choice(NORMALIZATIONS), default="percentile", show_default=True,
              help="How the maps are turned into pictures.")
@click.option("--device", type=_Device(), default="auto", show_default=True, metavar="auto|cpu|cuda[:N]")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def units_command(inputs: tuple[str, ...], output: Path, layer: str, channels: tuple[int, ...], top_channels: int,
                  k: int, model: str | None, weights: str | None, num_classes: int | None,
                  trust_checkpoint: bool, norm: str, device: str, batch_size: int, quiet: bool,
                  verbose: bool) -> int:
    """What units of a higher layer respond to (Springenberg et al. 2014, fig. 3): for each channel,
    the images and positions where it fires most, shown as the image patch in the unit's receptive
    field beside the unit's guided-backprop and deconvnet maps, cropped the same way (3x3 grids).
    Unreadable images are reported and skipped.
    """
    import torch
    from tqdm import tqdm

    from . import models, units

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    try:
        loaded = models.load_model(model or models.DEFAULT_MODEL, weights=weights, num_classes=num_classes,
                                   trust_checkpoint=trust_checkpoint, device=dev)
        bar = None if quiet or not sys.stderr.isatty() else tqdm(unit="img", desc="units")

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        with warnings.catch_warnings(record=True) as skipped:  # unreadable images: one line each, below
            warnings.simplefilter("always", UserWarning)
            grids = units.unit_grids_from_paths(
                loaded.model, list(inputs), layer, loaded.preprocessing, channels=list(channels) or None,
                top_channels=top_channels, k=k, norm=norm, batch_size=batch_size, on_error="skip",
                progress=progress,
            )
        if bar is not None:
            bar.close()
        units.save_unit_grids(grids, output)
    except GuidedBackpropError as err:
        _echo_error(str(err), verbose=verbose, err=err)
        return ExitCode.USAGE
    for w in skipped:
        _echo_error(str(w.message))
    if not quiet:
        click.echo(f"{len(grids)} unit grids of layer {layer} -> {output}")
    return ExitCode.SOME_FAILED if skipped else ExitCode.OK
