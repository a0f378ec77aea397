"""The ``guided-backprop`` command: arguments in, :func:`guided_backprop.batch.run` called, exit code out.

``guided-backprop INPUTS... -o OUT`` runs the main job (the ``run`` subcommand, implied when the first
argument is not a subcommand name); ``guided-backprop models`` lists the models; ``guided-backprop
report OUT`` writes the HTML gallery of an existing output folder; ``guided-backprop units INPUTS
--layer L -o OUT`` draws what single units of a layer respond to. Errors are printed as one line
``error: ...`` (a traceback only with ``--verbose``), and the exit code says what happened.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import ExitCode, GuidedBackpropError, exit_code, sigterm_as_interrupt
from ..methods import METHODS
from ..models.spec import DEFAULT_DEVICE, ModelSpec
from ..pictures.render import NORMALIZATIONS
from ..visible import visible
from .options import (
    COMMAND_SETTINGS,
    EXIT_CODES,
    FLAGS,
    OUTPUT,
    PERF,
    PROG,
    RESUME,
    TARGETS,
    ConsoleReporter,
    MethodsType,
    NeuronType,
    TargetType,
    cli_message,
    config_of,
    echo_error,
    echo_skipped,
    echo_unexpected,
    echo_warnings,
    exit_code_help,
    model_options,
    opt,
    plural,
    stopped_by,
)

__all__ = ["cli_message", "main"]

EVALUATE_EXIT_CODES = exit_code_help({
    ExitCode.OK: "every image evaluated (an image on which --target has nothing to explain: a 'note:' line, no "
                 "numbers)",
    ExitCode.SOME_FAILED: "some images could not be read (each named on stderr, the others evaluated)",
    ExitCode.USAGE: "usage error (bad option, unknown model, block or check, a --target the model does not have, no "
                    "readable image)",
    ExitCode.FAILED: "the evaluation failed unexpectedly (--verbose shows why)",
    ExitCode.DISK_FULL: "the output folder cannot be written (full or read-only disk; checked before computing, the "
                        "path named)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}, "After 130 or 143 the evaluation did not finish: a rerun starts over.")

def _keep_freed_memory() -> None:
    """Ask glibc to serve large buffers from the heap and keep freed memory for reuse.

    By default glibc maps every buffer over 128 KiB with mmap and returns it on free, so each
    batch page-faults its activations anew (measured: ~0.5 M faults and 15-20% of the time of a
    VGG19 batch of 8 on 2 cores), and it hands the top of its heap back whenever a backward pass
    frees it (a cascading MPRT on the default model: ~4 M faults, 13 s of system time in 45 s).
    The batch commands (run, evaluate, units) run as their own process (never ``main`` called from
    Python: a setting for the whole process cannot be undone) set what the environment variables
    MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_ would; memory then stays at the run's peak instead
    of going up and down, which a long-lived server (explore) should not do.
    GUIDED_BACKPROP_MALLOC=default keeps glibc's defaults.
    """
    if not sys.platform.startswith("linux") or os.environ.get("GUIDED_BACKPROP_MALLOC", "") == "default" \
            or not _own_process():
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):  # not glibc (musl...): nothing to tune
        return


def _started_at() -> float:
    """When the command started, as a :func:`time.perf_counter` value, so that the summary's time counts
    the start-up (the interpreter, the imports): the process's start (from ``/proc`` on Linux) when the
    process runs this command (``guided-backprop``, ``python -m guided_backprop``), else (a call from
    Python, as tests do) when ``main`` was entered."""
    now = time.perf_counter()
    if not _own_process():
        return _ENTERED[0] if _ENTERED else now
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _ENTERED[0] if _ENTERED else now
    return now - min(max(age, 0.0), 1e6)


_ENTERED: list[float] = []  # when _DefaultGroup.main was entered (the last call)


def _own_process() -> bool:
    """Whether this process was started to run the command (``guided-backprop``, ``python -m
    guided_backprop``, torchrun), not a Python program calling ``main`` (tests, notebooks)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # python -m: the module run as __main__
    if spec is not None:
        return bool(spec.name == "guided_backprop.__main__")  # not python -m pytest, IPython...
    return Path(sys.argv[0] if sys.argv else "").name == PROG


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


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

    #: The main command's options that ``--help`` shows; ``run --help`` shows every one, with defaults.
    common_options = ("--output", "--model", "--methods", "--target", "--layer", "--smooth", "--norm", "--panel",
                      "--report", "--overwrite", "--quiet")

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cmd = self.commands[self.default_command]
        formatter.write_usage(ctx.command_path, "[OPTIONS] INPUTS... -o OUT")
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        sub = click.Context(cmd, info_name=self.default_command, parent=ctx, **cmd.context_settings)
        options = {name: p for p in cmd.get_params(sub) if isinstance(p, click.Option) for name in p.opts}
        rows = []
        for name in self.common_options:
            record = options[name].get_help_record(sub)
            if record is not None:  # the text without its "[default: ...]": run --help has those
                rows.append((record[0], record[1].split("  [")[0]))
        for param in self.get_params(ctx):  # --version, --help
            record = param.get_help_record(ctx)
            if record is not None:
                rows.append(record)
        n_options = sum(isinstance(p, click.Option) for p in cmd.params)  # --help aside
        with formatter.section(f"Main options ({n_options} in all, with defaults: {PROG} run --help)"):
            formatter.write_dl(rows, col_max=24)
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
        _ENTERED[:] = [time.perf_counter()]
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
            echo_error(err.format_message() + hint)
            code = err.exit_code
        except GuidedBackpropError as err:
            echo_error(err)
            code = exit_code(err)
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
      guided-backprop 'photos/*.jpg' -o out --methods gbp,gradcam --target top3
      guided-backprop photos -o out --model vgg19 --norm minmax  # the seed's look
      torchrun --standalone --nproc-per-node 2 -m guided_backprop photos -o out
      guided-backprop units photos -o units --layer blocks.3 --top-channels 4

    Outputs in OUT: the maps (default names map_{idx}_class_{class_index}.png, as the seed),
    im_{idx}.png (the input as the network saw it), index.jsonl, predictions.csv and run.json.
    Rerunning the same command resumes: complete outputs are skipped (--overwrite redoes them).
    An input folder literally named like a subcommand is given as ./models.
    """


# ---------------------------------------------------------------------------------------------- run


#: Options of several commands, defined once (run, explore, evaluate).
gradcam_layer_option = opt(TARGETS, "--gradcam-layer", default=None, metavar="NAME",
                           show_default="the last spatial layer",
                           help="Layer for gradcam and guided_gradcam ('guided-backprop layers --spatial' lists them).")
noise_option = opt(TARGETS, "--noise", type=click.FloatRange(min=0.0), default=0.15, metavar="F",
                   help="SmoothGrad noise std as a fraction of the input's value range.")
mask_option = opt(TARGETS, "--mask", type=click.Path(exists=True, dir_okay=False), default=None, metavar="PNG",
                  help="With a segmenter's class: the region is this picture's non-zero pixels, not the predicted "
                       "ones.")


@main.command("run", short_help="Compute the maps of every image in INPUTS (the default command).",
              **COMMAND_SETTINGS)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@opt(OUTPUT, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
      help="Output folder (created if needed).")
@model_options
@opt(TARGETS, "--methods", type=MethodsType(), default="guided_backprop",
      help=f"Comma-separated: {', '.join(METHODS)} (aliases: gbp, deconv, gradient, ggcam).")
@opt(TARGETS, "--target", type=TargetType(), default="top1",
      help="What each map explains: top1, topK, a class index or name ('Egyptian cat'; a segmenter's: its "
           "pixels); detections:K or box:x0,y0,x1,y1[:label] (detectors); similar:REF.png; output:K.")
@mask_option
@opt(TARGETS, "--score-threshold", type=click.FloatRange(min=0.0), default=0.5, metavar="F",
      help="detections:K counts the detections scoring at least F.")
@opt(TARGETS, "--output-key", default=None, metavar="KEY",
      help="The entry of a dict or tuple output the targets read (e.g. logits; an index for a tuple).")
@opt(TARGETS, "--layer", default=None, metavar="NAME",
      help="Explain a unit of this layer instead (with --channel; 'guided-backprop layers' lists them).")
@opt(TARGETS, "--channel", type=click.IntRange(min=0), default=None, help="Channel of --layer.")
@opt(TARGETS, "--neuron", type=NeuronType(), default=None, show_default="the whole channel",
      help="With --layer/--channel: the most active unit ('max') or the unit at Y,X.")
@gradcam_layer_option
@opt(TARGETS, "--smooth", type=click.IntRange(min=0), default=0, metavar="N",
      help="SmoothGrad: average over N noisy copies (0: off).")
@noise_option
@opt(TARGETS, "--seed", type=int, default=0, help="Random seed of the SmoothGrad noise.")
@opt(OUTPUT, "--norm", type=click.Choice(NORMALIZATIONS), default="percentile",
      help="How maps become pictures: percentile (clip |value| at its 99.5th percentile), minmax (the seed's "
           "exact look), abs (grayscale magnitude), signed (diverging colours).")
@opt(OUTPUT, "--seed-look", is_flag=True, help="The seed's exact look: same as --norm minmax.")
@opt(OUTPUT, "--name", "name_template", default=None, metavar="TEMPLATE",
      show_default="map_{idx}_class_{class_index}.png, plus _{method} with several methods and _top{rank} with "
                   "several classes",
      help="Map file names; fields {idx} {stem} {label} {class_index} {method} {rank} {layer} {channel} {target} "
           "(what the map explains, e.g. detection_0).")
@opt(OUTPUT, "--input-name", default="im_{idx}.png", metavar="TEMPLATE",
      help="Name of the input picture as the network saw it; fields {idx} {stem}.")
@opt(OUTPUT, "--panel", is_flag=True,
      help="Also write panel_{idx}.png: the input, then every method's map, titled with the class and "
           "its probability (colour bars for Grad-CAM and signed maps).")
@opt(OUTPUT, "--save-raw", is_flag=True, help="Also save the float maps as .npy (C, H, W), RGB channel order.")
@opt(OUTPUT, "--report", "with_report", is_flag=True, help="Also write the HTML gallery OUT/index.html.")
@opt(PERF, "--batch-size", type=click.IntRange(min=1), default=8, help="Images per batch.")
@opt(PERF, "--workers", type=click.IntRange(min=0), default=_default_workers, show_default="cores - 1, at most 4",
      help="Decoding processes (0: decode in the main process).")
@opt(PERF, "--max-pixels", type=click.IntRange(min=1), default=2048 * 2048, metavar="N",
      help="Refuse (by name) an input that preprocessing would make larger than N pixels, e.g. a 30000x10 strip "
           "resized by its shorter side.")
@opt(RESUME, "--overwrite", is_flag=True,
      help="Redo every input, even those a previous run finished (default: rerunning resumes).")
@opt(OUTPUT, "-q", "--quiet", is_flag=True, help="No progress bar and no summary (errors are still printed).")
@opt(OUTPUT, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def run_command(inputs: tuple[str, ...], output: Path, model: ModelSpec, methods: tuple[str, ...],
                target: Any, mask: str | None, score_threshold: float, output_key: str | None, layer: str | None,
                channel: int | None, neuron: Any, gradcam_layer: str | None, smooth: int, noise: float, seed: int,
                norm: str, seed_look: bool, name_template: str | None,
                input_name: str, panel: bool, save_raw: bool, batch_size: int, workers: int, max_pixels: int,
                overwrite: bool, with_report: bool, quiet: bool, verbose: bool) -> int:
    """Compute maps for every image in INPUTS (files, folders walked recursively in sorted order, or
    quoted glob patterns) and write them to OUT.

    A file that cannot be read (empty, truncated, not an image, too large...) is reported in one line
    naming it and the reason, and the run goes on. Every file is written atomically; a killed run
    resumes where it stopped when the same command is run again.
    """
    from .. import batch
    from ..methods import get_method

    _keep_freed_memory()
    if seed_look:
        given = click.get_current_context().get_parameter_source("norm") is not click.core.ParameterSource.DEFAULT
        if given and norm != "minmax":
            raise click.UsageError(f"--seed-look means --norm minmax; it cannot be combined with --norm {norm}")
        norm = "minmax"
    if gradcam_layer is not None and not any(get_method(m).gradcam or m == "gradcam" for m in methods):
        click.echo(f"warning: --gradcam-layer {gradcam_layer} is not used: none of --methods {','.join(methods)} "
                   f"is gradcam or guided_gradcam", err=True)
    cfg = config_of(batch.BatchConfig, click.get_current_context().params, model=model, norm=norm, name=name_template,
                    output_key=_output_key(output_key))
    reporter = ConsoleReporter(bar=not quiet and sys.stderr.isatty())
    try:
        try:
            result = batch.run(list(inputs), output, cfg, reporter=reporter, started_at=_started_at())
        finally:
            reporter.close()  # the bar goes before any line below
    except batch.PeerFailed as err:  # another torchrun process failed and said why
        return exit_code(err)
    except GuidedBackpropError as err:  # a usage error (2); disk full (4), a decode worker killed (3): a rerun resumes
        echo_error(err, verbose=verbose, err=err)
        return exit_code(err)
    except KeyboardInterrupt as err:
        what, code = stopped_by(err)
        click.echo(f"{what}; rerun the same command to finish ({visible(str(output))})", err=True)
        return code
    except Exception as err:  # noqa: BLE001 - one line, the traceback with --verbose
        return echo_unexpected(err, verbose=verbose)
    if result.interrupted:
        what = "terminated (SIGTERM)" if result.signal == "SIGTERM" else "interrupted"
        click.echo(f"{what} after {result.computed} images; rerun the same command to finish "
                   f"({visible(str(result.output))})", err=True)
        if result.abandoned and _own_process():  # writer threads still busy: do not wait for them to end
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(result.exit_code)
        return result.exit_code
    if result.rank != 0:
        return result.exit_code
    if not quiet:
        click.echo(visible(result.summary()))
    if with_report:
        report_code = _write_report(output, quiet=quiet, verbose=verbose)
        if report_code:
            return report_code
    return result.exit_code


def _output_key(key: str | None) -> str | int | None:
    """--output-key as the library takes it: digits are a tuple's index, anything else a key."""
    return int(key) if key is not None and key.isdigit() else key


def _write_report(output: Path, *, quiet: bool, verbose: bool) -> int:
    try:
        from .. import report
    except ImportError as err:
        echo_error(f"--report: the report module is not available ({err})", verbose=verbose, err=err)
        return ExitCode.FAILED

    try:
        with echo_warnings(report.log):
            page = report.write_report(output)
    except GuidedBackpropError as err:  # not a run's folder (2); the folder or thumbs/ cannot be written (4)
        echo_error(err, verbose=verbose, err=err)
        return exit_code(err)
    except Exception as err:  # noqa: BLE001
        echo_error(f"writing the report failed: {type(err).__name__}: {err}", verbose=verbose, err=err)
        return ExitCode.FAILED
    if not quiet:
        click.echo(f"report: {visible(str(page))}")
    return ExitCode.OK


# ------------------------------------------------------------------------------------- other commands

_RELU_MARK = {"yes": "yes", "partly": "partly", "no": "no", "depends": "-"}


@main.command("models", short_help="The models --model accepts, and where guided backprop applies.")
@click.option("--all", "show_all", is_flag=True,
              help="Every torchvision model by name (default: the offline ones and a line for the rest).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def models_command(show_all: bool, verbose: bool) -> int:
    """List the models --model accepts by name: offline ones need no download; GBP says whether
    guided backprop and deconvnet apply (they change only ReLUs: 'no' for GELU/SiLU networks such as
    ViT, Swin, ConvNeXt, MaxViT and EfficientNet-B; 'partly' where other activations keep plain gradients).
    The list fits a screen; --all names every torchvision model."""
    import shutil
    import textwrap

    from .. import models

    try:
        infos = list(models.available_models())
    except GuidedBackpropError as err:
        echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    vision = [i for i in infos if i.source == "torchvision" and i.name not in models.MODEL_NAMES
              and i.kind == "classifier"]  # segmenters and detectors are listed one by one
    if not show_all and len(vision) > 1:  # one line for the torchvision models that need a download
        hidden = [i for i in vision if not i.offline]
        infos = [i for i in infos if i not in hidden]
        examples = ", ".join(i.name for i in hidden if i.name in ("resnet50", "densenet121", "vit_b_16")) or \
            hidden[0].name
        infos.insert(len(models.MODEL_NAMES), models.ModelInfo(
            "<torchvision name>", "torchvision", False,
            f"any of torchvision's {len(vision)} ImageNet models by name ({examples}...): weights download on "
            f"first use, then cached; --all lists each with its GBP support", "depends"))
    tasks = [i for i in infos if i.kind in ("segmenter", "detector")]
    if not show_all and tasks:  # one line for torchvision's segmenters and detectors too
        infos = [i for i in infos if i not in tasks]
        infos.insert(len(models.MODEL_NAMES) + 1, models.ModelInfo(
            "<segmenter|detector>", "torchvision", False,
            "torchvision's segmenters and detectors (fcn_resnet50...); --all lists them", "depends", "depends"))
    width = min(max(shutil.get_terminal_size((100, 24)).columns, 72), 100)
    # name, offline, GBP (and with --all the output kind); the description wraps beside them
    heads = ("NAME", "OFFLINE", "GBP", "OUTPUT")[:4 if show_all else 3]
    columns = (max(len(i.name) for i in infos), 7, 6, 10) if show_all else (max(len(i.name) for i in infos), 7, 3)
    indent = sum(columns) + 2 * len(columns)
    click.echo("  ".join(h.ljust(w) for h, w in zip(heads, columns)) + "  DESCRIPTION")
    for info in infos:
        cells = (info.name, "yes" if info.offline else "no", _RELU_MARK[info.relu], info.kind)[:len(heads)]
        lead = "  ".join(c.ljust(w) for c, w in zip(cells, columns)) + "  "
        click.echo(textwrap.fill(cli_message(info.description), width, initial_indent=lead,
                                 subsequent_indent=" " * indent))
    click.echo(textwrap.fill(
        f"default: {models.DEFAULT_MODEL}; also 'timm:<name>' and factories 'pkg.mod:fn' or 'file.py:fn'; "
        f"GBP -: depends on the network (saliency and gradcam work on any)", width))
    return ExitCode.OK


REPORT_EXIT_CODES = exit_code_help({
    ExitCode.OK: "written (pictures that are missing or unreadable are counted on 'warning:' lines)",
    ExitCode.USAGE: "OUT is not a run's folder (an evaluate or units folder is named as such)",
    ExitCode.FAILED: "failed unexpectedly (--verbose shows why)",
    ExitCode.DISK_FULL: "OUT or OUT/thumbs cannot be written (full, read-only: checked before any thumbnail; the "
                        "previous page is kept)",
}, "The page and each thumbnail are written atomically: rerun at any time.")


@main.command("report", short_help="Write the HTML gallery OUT/index.html of an output folder.",
              epilog=REPORT_EXIT_CODES)
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="OUT")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def report_command(output: Path, verbose: bool) -> int:
    """Write OUT/index.html, the HTML gallery of an existing output folder (up-to-date thumbnails in
    OUT/thumbs are kept)."""
    return _write_report(output, quiet=False, verbose=verbose)


@main.command("evaluate", short_help="Can these maps be trusted? Sanity checks and faithfulness.",
              **{**COMMAND_SETTINGS, "epilog": EVALUATE_EXIT_CODES})
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...")
@opt(OUTPUT, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
      help="Folder for evaluation.json, evaluation.csv and the figures.")
@opt(TARGETS, "--methods", type=MethodsType(), default="guided_backprop,saliency,gradcam",
      help=f"Comma-separated: {', '.join(METHODS)}.")
@opt(TARGETS, "--checks", default="randomization,emprt,class,deletion,insertion", metavar="CHECKS",
     help="Comma-separated checks to run: randomization, emprt (Efficient MPRT), smprt (Smooth MPRT), class, "
          "deletion, insertion.")
@opt(TARGETS, "--randomization", "order", type=click.Choice(["cascading", "independent"]), default="cascading",
      help="Re-initialise blocks cumulatively from the output, or one at a time.")
@opt(TARGETS, "--granularity", type=click.Choice(["blocks", "modules"]), default="blocks",
      help="Steps: the model's top-level stages, or every module with parameters (Quantus's choice).")
@opt(TARGETS, "--blocks", default=None, metavar="A,B,...",
      help="Randomise these modules (model.named_modules() names) instead of --granularity.")
@opt(TARGETS, "--seed", type=int, default=0, help="Seed of re-initialisations and random draws.")
@opt(TARGETS, "--steps", type=click.IntRange(min=1, max=1024), default=32, help="Deletion / insertion steps.")
@opt(TARGETS, "--smooth-samples", type=click.IntRange(min=1, max=1000), default=50,
     help="Smooth MPRT: SmoothGrad samples per map (noise 0.1 of each input's range, as Hedström et al.).")
@opt(OUTPUT, "--figure-image", default=None, metavar="NAME", show_default="the first image",
     help="The input (file name, stem or path) whose maps the randomisation figure shows.")
@opt(OUTPUT, "--figure-steps", type=click.IntRange(min=1, max=200), default=10,
     help="Randomisation steps shown in that figure (evenly spread, the last one included).")
@model_options
@opt(PERF, "--batch-size", type=click.IntRange(min=1), default=16, help="Images per batch.")
@opt(OUTPUT, "-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@opt(OUTPUT, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@gradcam_layer_option
@opt(TARGETS, "--output-key", default=None, metavar="KEY",
     help="The entry of a dict or tuple output that holds the class logits (e.g. logits; an index for a tuple).")
@opt(TARGETS, "--target", type=TargetType(), default=None, show_default="each image's predicted class",
     help="What every check explains, as run's --target: a class; a segmenter's class (its pixels); detections:1 "
          "or box:x0,y0,x1,y1[:label]; similar:REF.png; output:K. Deletion / insertion then follow its raw score.")
@mask_option
@opt(TARGETS, "--score-threshold", type=click.FloatRange(min=0.0), default=0.5, metavar="F",
     help="detections:1 takes the most confident detection scoring at least F.")
def evaluate_command(inputs: tuple[str, ...], output: Path, methods: tuple[str, ...], checks: str, order: str,
                     granularity: str, blocks: str | None, seed: int, steps: int, smooth_samples: int,
                     figure_image: str | None,
                     figure_steps: int, model: ModelSpec,
                     batch_size: int, quiet: bool, verbose: bool, gradcam_layer: str | None,
                     output_key: str | None, target: Any, mask: str | None, score_threshold: float) -> int:
    """Can these maps be trusted? Sanity checks (Adebayo et al. 2018: model-parameter randomisation;
    Nie et al. 2018 / Sixt et al. 2020: class sensitivity) and faithfulness (Petsiuk et al. 2018:
    deletion, insertion) of each method's maps on IMAGES. Writes OUT/evaluation.json, evaluation.csv
    and the figures; unreadable images are reported and skipped (exit 1).
    """
    from ..evaluate import parse_checks
    from ..evaluate.run import EvaluateConfig, evaluate_folder
    from ..evaluate.verdict import summary_table

    _keep_freed_memory()
    reporter = ConsoleReporter(bar=not quiet and sys.stderr.isatty(), desc="evaluate", unit="step", flag_words=True)
    try:
        default_checks = click.get_current_context().get_parameter_source("checks") is \
            click.core.ParameterSource.DEFAULT  # the defaults: class sensitivity only for a class target
        cfg = config_of(EvaluateConfig, click.get_current_context().params, model=model,
                        checks=None if default_checks else parse_checks(checks),
                        granularity=[b.strip() for b in blocks.split(",") if b.strip()] if blocks else granularity,
                        output_key=_output_key(output_key))
        with sigterm_as_interrupt():
            result = evaluate_folder(list(inputs), output, cfg, reporter=reporter)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (systemd, Slurm, kill): one line, its own code
        what, code = stopped_by(err)
        click.echo(f"{what}: the evaluation did not finish; a rerun starts over", err=True)
        return code
    except GuidedBackpropError as err:  # a usage error (2), the output folder cannot be written (WriteError: 4)
        echo_error(err, verbose=verbose, err=err)
        return exit_code(err)
    except Exception as err:  # noqa: BLE001 - one line, the traceback with --verbose
        return echo_unexpected(err, verbose=verbose)
    finally:
        reporter.close()
    if not quiet:
        for line in summary_table(result.evaluation):
            click.echo(line)
        if result.evaluation.target is not None:
            settings = result.evaluation.settings
            click.echo(f"explained: {visible(result.evaluation.target['explained'])} (target "
                       f"{visible(str(settings.target if settings else None))}); deletion and insertion follow "
                       f"its raw score, not a softmax probability")
        n = len(result.evaluation.images)
        skipped = len(result.failed) + len(result.passed_over)  # the user reads both as "skipped"
        click.echo(f"{n} image{'s' if n != 1 else ''} evaluated ({skipped} skipped) -> "
                   f"{visible(str(result.output / 'evaluation.json'))}")
    return result.exit_code


UNITS_EXIT_CODES = exit_code_help({
    ExitCode.OK: "every image read",
    ExitCode.SOME_FAILED: "some images could not be read (each named on stderr, the others used)",
    ExitCode.USAGE: "usage error (bad option, unknown model or layer, channel out of range, no readable image): "
                    "nothing written",
    ExitCode.FAILED: "failed unexpectedly (--verbose shows why)",
    ExitCode.DISK_FULL: "OUT cannot be written (full, read-only: checked before computing)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}, "Each grid and units.json is written atomically (whole or not at all), units.json last, listing the grids of "
   "the run that wrote it; units does not resume: after 130 or 143 the grids already written are kept, and a "
   "rerun starts over.")


@main.command("units", short_help="What units of a higher layer respond to: top-9 grids.",
              **{**COMMAND_SETTINGS, "epilog": UNITS_EXIT_CODES})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@opt(OUTPUT, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
      help="Folder for the grids (unit_<layer>_c<channel>.png) and units.json.")
@opt(TARGETS, "--layer", required=True, metavar="NAME",
      help="Layer whose units are shown ('guided-backprop layers' lists them with their receptive fields).")
@opt(TARGETS, "--channel", "unit_channels", type=click.IntRange(min=0), multiple=True,
      show_default="the most active channels", help="Channel to show (repeatable).")
@opt(TARGETS, "--top-channels", type=click.IntRange(min=1), default=4,
      help="Without --channel: how many of the layer's most active channels.")
@opt(TARGETS, "--top", "k", type=click.IntRange(min=1), default=9,
      help="Strongest activations shown per unit (9: a 3x3 grid; at most 100, a 10x10 grid).")
@model_options
@opt(OUTPUT, "--norm", type=click.Choice(NORMALIZATIONS), default="percentile",
      help="How the maps are turned into pictures.")
@opt(PERF, "--batch-size", type=click.IntRange(min=1), default=16, help="Images per batch.")
@opt(OUTPUT, "-q", "--quiet", is_flag=True, help="No progress bar.")
@opt(OUTPUT, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def units_command(inputs: tuple[str, ...], output: Path, layer: str, unit_channels: tuple[int, ...], top_channels: int,
                  k: int, model: ModelSpec, norm: str, batch_size: int, quiet: bool,
                  verbose: bool) -> int:
    """What units of a higher layer respond to (Springenberg et al. 2014, fig. 3): for each channel,
    the images and positions where it fires most, shown as the image patch in the unit's receptive
    field beside the unit's guided-backprop and deconvnet maps, cropped the same way (3x3 grids).
    Unreadable images are reported and skipped; FIFOs and other non-files, and folders holding this
    tool's output (OUT among them), are passed over with a 'skipped:' line. Images are read in batches
    and grids written one at a time: memory does not grow with the number of images.
    """
    from ..batch.config import RunStopped, check_writable
    from ..hooks import find_layer
    from ..images import search_images
    from ..units import grids as units

    _keep_freed_memory()
    if k > units.MAX_TOP:  # every one is explained and drawn: a grid that cannot fit in memory is refused
        raise click.UsageError(f"--top {k}: a unit grid shows at most {units.MAX_TOP} activations (a "
                               f"{math.isqrt(units.MAX_TOP)}x{math.isqrt(units.MAX_TOP)} grid); give --top "
                               f"{units.MAX_TOP} or fewer")
    reporter = ConsoleReporter(bar=not quiet and sys.stderr.isatty(), desc="units", flag_words=True,
                               defer_failures=True)  # unreadable images: one line each, once done
    created = False
    try:
        with sigterm_as_interrupt():
            loaded = model.load()
            found = search_images(list(inputs), exclude=output)
            for passed in found.passed_over:
                reporter.passed_over(passed.path, passed.reason)
            if not found.paths:
                raise GuidedBackpropError(f"no image to read among {', '.join(map(repr, inputs))} (every path was "
                                          f"passed over, see the skipped: lines)")
            find_layer(loaded.model, layer)  # an unknown layer is a usage error before the folder is made
            created = not output.exists()
            check_writable(output, "rerun the same command")
            tops = None
            if unit_channels:  # where they fire, as the explorer (or an earlier run) left it in OUT/.unit-cache
                from ..units.cache import cached_tops

                tops, _reused = cached_tops(output, loaded.model, found.paths, layer, loaded.preprocessing,
                                            list(unit_channels), k, batch_size=batch_size, reporter=reporter)
            grids = units.iter_unit_grids(
                loaded.model, units.ImageFiles(found.paths, loaded.preprocessing), layer,
                channels=list(unit_channels) or None, top_channels=top_channels, k=k, norm=norm,
                display=loaded.preprocessing, batch_size=batch_size, on_error="skip",
                sources=[str(p) for p in found.paths], reporter=reporter, tops=tops,
            )
            written = units.save_unit_grids(grids, output)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (systemd, Slurm, kill): one line, its own code
        what, code = stopped_by(err)
        click.echo(f"{what}: the unit grids did not finish; those already written are kept, units.json is not "
                   f"updated; a rerun starts over ({visible(str(output))})", err=True)
        return code
    except GuidedBackpropError as err:  # OUT cannot be written (RunStopped: 4, with the path); a channel out of
        if created and not isinstance(err, RunStopped):  # range, no readable image (2): the folder is left as it was
            with contextlib.suppress(OSError):
                output.rmdir()  # only if still empty
        echo_error(err, verbose=verbose, err=err)
        return exit_code(err)
    except Exception as err:  # noqa: BLE001 - one line, the traceback with --verbose
        return echo_unexpected(err, verbose=verbose)
    finally:
        reporter.close()
    for reason in reporter.failures:
        echo_error(reason)
    if not quiet:
        click.echo(f"{plural(len(written), 'unit grid')} of layer {layer} -> {visible(str(output))}")
    return exit_code(failed=len(reporter.failures))


@main.command("layers", short_help="The model's layers: type, output shape, receptive field.",
              **COMMAND_SETTINGS)
@model_options
@opt(OUTPUT, "--spatial", is_flag=True, help="Only layers with a spatial (N, C, H, W) output (for Grad-CAM and units).")
@opt(OUTPUT, "--all", "show_all", is_flag=True,
     help="Every layer, at every depth, Identity and dropout included (default: what fits a screen).")
@opt(OUTPUT, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def layers_command(model: ModelSpec, spatial: bool, show_all: bool, verbose: bool) -> int:
    """The model's layers with their type, output shape and receptive field for the model's input
    size (--input-size changes it): the names --layer, --gradcam-layer and 'units --layer' take.
    By default the list fits a screen: no Identity or dropout layers, and names only as deep as
    fits 50 rows (--all lists everything). A field of the whole input means every unit sees all of
    the picture: patches of such a layer show nothing more than the picture itself; pick an earlier
    layer for units.
    """
    from ..units.receptive import layer_table, screen_rows

    try:
        loaded = model.load()
        rows = layer_table(loaded.model, loaded.preprocessing)
    except GuidedBackpropError as err:
        echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    if spatial:
        rows = [r for r in rows if r.spatial]
    size = rows[0].input_size if rows else None
    every = len(rows)
    depth = None
    if not show_all:
        rows, depth = screen_rows(rows)
    header = ("NAME", "TYPE", "OUTPUT", "RECEPTIVE FIELD")
    table = [header] + [(r.name, r.type, r.shape_text, r.field_text) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    if size is not None:
        shown = plural(len(rows), "layer") if len(rows) == every else f"{len(rows)} of {every} layers"
        click.echo(f"{shown} of {loaded.name} for a {size[0]}x{size[1]} input; "
                   f"default Grad-CAM layer: {_default_gradcam_layer(loaded, size) or 'none (no spatial output)'}")
        if len(rows) < every:
            click.echo(f"(Identity and dropout layers left out{'' if depth is None else f', names to depth {depth}'}; "
                       f"--all lists every layer)")
    return ExitCode.OK


def _default_gradcam_layer(loaded: Any, size: tuple[int, int]) -> str | None:
    """The layer Grad-CAM takes by default, found as the engine finds it: one forward of a blank input."""
    import torch

    from ..attribution import Explainer

    channels = int(getattr(loaded.preprocessing, "channels", 3) or 3)
    try:
        blank = torch.zeros(1, channels, *size, device=next(loaded.model.parameters()).device)
        return Explainer(loaded.model).explain(blank, 0, methods=["gradcam"]).gradcam_layer
    except (GuidedBackpropError, StopIteration):
        return None


# ------------------------------------------------------------------------------------------- explore


def _model_words(spec: ModelSpec) -> list[str]:
    """The model options as given, back as command-line words (for the explorer's reproducing command)."""
    words: list[str] = []
    for value, flag in ((spec.name, "--model"), (spec.weights, "--weights"), (spec.labels, "--labels"),
                        (spec.num_classes, "--num-classes")):
        if value is not None:
            words += [flag, str(value)]
    changes = spec.changes()
    for key in ("input_size", "channels"):
        if changes.get(key) is not None:
            words += [FLAGS[key], str(changes[key])]
    for key in ("resize", "crop"):
        if key in changes:
            words += [FLAGS[key], "none" if changes[key] is None else str(changes[key])]
    for key in ("mean", "std"):
        if changes.get(key) is not None:
            words += [FLAGS[key], ",".join(f"{v:g}" for v in changes[key])]
    if spec.trust_checkpoint:
        words.append("--trust-checkpoint")
    if spec.device != DEFAULT_DEVICE:
        words += ["--device", str(spec.device)]
    return words


@main.command("explore", short_help="A local web app: maps of IMAGES computed on demand.", **COMMAND_SETTINGS)
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...")
@model_options
@gradcam_layer_option
@opt(TARGETS, "--smooth", type=click.IntRange(min=1), default=16, metavar="N",  # run's: 0 (off) by default
     help="Noisy copies when SmoothGrad is switched on in the page.")
@noise_option
@opt(OUTPUT, "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("out/units"),
     help="Folder where the channels' top images over IMAGES are kept (OUT/.unit-cache): "
          "'guided-backprop units IMAGES --channel C -o OUT' reuses them.")
@opt(OUTPUT, "--host", default="127.0.0.1", show_default=True,
     help="Address to listen on. Anything but 127.0.0.1 / localhost lets other machines reach the app "
          "(they still need the token).")
@opt(OUTPUT, "--port", type=click.IntRange(min=0, max=65535), default=0, show_default="a free port",
     help="Port to listen on.")
@opt(OUTPUT, "--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
@opt(OUTPUT, "-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
def explore_command(inputs: tuple[str, ...], model: ModelSpec, gradcam_layer: str | None, smooth: int,
                    noise: float, output: Path, host: str, port: int, no_browser: bool, verbose: bool) -> int:
    """A local web app that computes maps on demand: pick an image of IMAGES, a class, methods, a
    layer, a channel or a unit, and see its maps. Prints one URL with an access token (as Jupyter
    does) and opens it; Ctrl-C stops it. Only the given images are served.
    """
    from ..explore import ExploreService, serve
    from ..images import search_images

    try:
        found = search_images(list(inputs))
        if not found.paths:
            raise click.UsageError("no image files found in IMAGES")
        loaded = model.load()
        names = _display_names(found.paths)
        service = ExploreService(loaded, found.paths, names=names, gradcam_layer=gradcam_layer,
                                 smooth_samples=smooth, noise=noise, model_args=_model_words(model),
                                 units_folder=output)
    except GuidedBackpropError as err:
        echo_error(err, verbose=verbose, err=err)
        return ExitCode.USAGE
    for passed in found.passed_over:
        echo_skipped(passed.path, passed.reason)
    if host not in ("127.0.0.1", "localhost"):
        click.echo(f"warning: --host {host}: the explorer is reachable from other machines on this network "
                   "(the token still guards it; use it only on a network you trust)", err=True)
    try:
        serve(service, host=host, port=port, open_browser=not no_browser, echo=lambda s: click.echo(s, err=True))
    except OSError as err:
        echo_error(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port or --host")
        return ExitCode.USAGE
    except KeyboardInterrupt:
        pass
    click.echo("explorer stopped", err=True)
    return ExitCode.OK


def _display_names(paths: Sequence[Path]) -> list[str]:
    """Each file's path relative to the inputs' common folder (what the strip shows)."""
    if len(paths) == 1:
        return [paths[0].name]
    root = os.path.commonpath([str(p.parent) for p in paths])
    return [os.path.relpath(p, root) for p in paths]
