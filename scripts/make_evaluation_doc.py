"""Regenerate the results part of docs/evaluation.md from a real run of ``guided-backprop evaluate``.

Runs the evaluation of the five sample photos (``scripts/sample_images.py``, as they are: different sizes)
with the offline default model and every method and check, then writes

* ``docs/bench/evaluation-samples.json`` -- the run's ``evaluation.json``;
* ``docs/figures/evaluation_*.png`` -- its figures;
* the section of ``docs/evaluation.md`` from ``## What it finds on the default model`` to the end: every
  number and count in it comes from this run.

Usage: python scripts/make_evaluation_doc.py [--smooth-samples N (0: no Smooth MPRT)] [--docs docs]
(minutes on a laptop CPU; Smooth MPRT multiplies the randomisation's cost by N)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HEADING = "## What it finds on the default model"
METHODS = ["guided_backprop", "deconvnet", "saliency", "gradcam", "guided_gradcam"]
TITLES = {"guided_backprop": "guided backprop", "deconvnet": "deconvnet", "saliency": "saliency",
          "gradcam": "Grad-CAM", "guided_gradcam": "Guided Grad-CAM"}


def _f(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)


def _ms(values: np.ndarray, spec: str = ".3f") -> str:
    from guided_backprop.evaluate import summarize

    s = summarize(values)
    spread = spec.lstrip("+")  # a spread has no sign
    return "–" if s.n == 0 else f"{s.mean:{spec}} ± {s.std:{spread}}" + (f" (n={s.n})" if s.n < len(values) else "")


def _step_table(rnd: Any, columns: list[int]) -> list[str]:
    from guided_backprop.evaluate import summarize

    head = "| step (cascading) | " + " | ".join(rnd.steps[j] + (" (all)" if j == len(rnd.steps) - 1 else "")
                                               for j in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for m in rnd.methods:
        cells = []
        for j in columns:
            s = summarize(rnd.values[m]["spearman_abs"][:, j])
            cell = _f(s.mean)
            if s.n < rnd.values[m]["spearman_abs"].shape[0]:
                cell += f" (n={s.n})"
            cells.append(cell)
        lines.append(f"| {TITLES[m]} | " + " | ".join(cells) + " |")
    return lines


def _constant_sentence(rnd: Any, names: list[str]) -> list[str]:
    out = []
    for m in rnd.methods:
        c = rnd.constant[m]
        hit = [i for i in range(c.shape[0]) if c[i].any()]
        if not hit:
            continue
        parts = [f"{names[i]} from `{rnd.steps[int(np.argmax(c[i]))]}` on" if c[i, int(np.argmax(c[i])):].all()
                 else f"{names[i]} at " + ", ".join(f"`{rnd.steps[j]}`" for j in np.flatnonzero(c[i])) + " only"
                 for i in hit]
        out.append(f"{TITLES[m]}'s map became constant (all zero: Spearman undefined, left out of the means and "
                   f"drawn hollow with its n) for {len(hit)} of the {c.shape[0]} photos: {', '.join(parts)}.")
    return out


def results_section(ev: Any, *, command: str, seconds: float, smooth_samples: int, load: str) -> str:
    from guided_backprop.evaluate.figures import worse_than_random
    from guided_backprop.evaluate.verdict import summary_table

    names = [Path(p).name for p in ev.images]
    rnd = ev.randomization
    n_img = len(names)
    last = len(rnd.steps) - 1
    picks = sorted({j for j in (1, 2, 3, 4, last // 2 + 1, last - 2, last) if 1 <= j <= last})
    lines = [HEADING, "",
             f"`{command}`", "",
             f"on the {n_img} sample photos (`python scripts/sample_images.py samples`: {', '.join(names)}; "
             f"different sizes, evaluated as they are) with the offline {ev.model} and its own preprocessing "
             f"({ev.settings.preprocessing}): cascading randomisation, `{rnd.granularity}` granularity "
             f"({len(rnd.steps) - 1} steps), seed {ev.seed}, {ev.settings.deletion_steps} deletion / insertion "
             f"steps, BatchNorm running statistics kept" +
             (f", Smooth MPRT with {smooth_samples} SmoothGrad samples. " if ev.smooth_mprt is not None else
              " (Smooth MPRT not run here: it costs its SmoothGrad samples at every step). ") +
             f"The whole `evaluation.json` is in [bench/evaluation-samples.json](bench/evaluation-samples.json); "
             f"the run took {seconds / 60:.0f} min (load average {load} on {os.cpu_count()} CPU cores). This "
             f"section is written by `python scripts/make_evaluation_doc.py` from that run: the numbers below "
             f"are the run's.", "",
             "What the command printed at the end (the thresholds of the readings are stated above):", "", "```",
             *summary_table(ev), "```", "",
             f"![figure 2 layout for {Path(ev.settings.figure_image).name}: rows are methods, columns the "
             f"input, the trained map, then the maps after cascading steps](figures/evaluation_randomization.png)",
             "",
             "![similarity to the trained map along the cascading steps, four metrics, mean over the photos where "
             "defined (hollow: fewer, n shown), and the count of maps that became constant]"
             "(figures/evaluation_similarity.png)", "",
             f"**Randomisation** (Adebayo et al.). Spearman rank correlation of |map| with the trained model's map, "
             f"mean over the photos where it is defined (n when fewer than {n_img}):", "",
             *_step_table(rnd, picks), "",
             *_constant_sentence(rnd, names), ""]
    em = ev.efficient_mprt
    if em is not None:
        rise = em.rise
        lines += ["![Efficient MPRT: map entropy for the trained and the fully randomised model]"
                  "(figures/evaluation_efficient_mprt.png)", "",
                  f"**Efficient MPRT** (Hedström et al. 2023): the entropy of the |map| histogram ({em.bins} bins) "
                  f"for the trained model and after every block is randomised, and its relative rise (mean ± std "
                  f"over the photos; high is good):", "",
                  "| | trained | randomised | rise |", "|---|---:|---:|---:|"]
        for m in em.methods:
            lines.append(f"| {TITLES[m]} | {_ms(em.trained[m], '.2f')} | {_ms(em.randomized[m], '.2f')} | "
                         f"{_ms(rise[m], '+.2f')} |")
        lines.append("")
    sm = ev.smooth_mprt
    if sm is not None:
        lines += ["![Smooth MPRT: similarity of SmoothGrad maps along the cascading steps]"
                  "(figures/evaluation_smooth_mprt.png)", "",
                  f"**Smooth MPRT** (Hedström et al. 2023): the same randomisation on SmoothGrad maps "
                  f"({sm.smooth['samples']} samples, noise {sm.smooth['noise']} of each input's range), which "
                  f"removes the gradient noise that makes plain MPRT look as if the map changed:", "",
                  *_step_table(sm, picks), ""]
    cs = ev.class_sensitivity
    lines += [f"**Class sensitivity** (Nie et al.; Sixt et al.'s random logit). Similarity of the map of the "
              f"predicted class with the map of another class (mean ± std over the {n_img} photos, Spearman of "
              f"|map|):", "", "| | random other class | second-ranked class |", "|---|---:|---:|"]
    for m in cs.methods:
        lines.append(f"| {TITLES[m]} | {_ms(cs.values['random'][m]['spearman_abs'])} | "
                     f"{_ms(cs.values['second'][m]['spearman_abs'])} |")
    lines += ["", "![deletion and insertion curves, mean over the photos, random order dashed]"
              "(figures/evaluation_faithfulness.png)", "",
              f"**Deletion and insertion** (area under the curve, mean ± std over the {n_img} photos):", "",
              "| | deletion AUC (lower is better) | insertion AUC (higher is better) |", "|---|---:|---:|",
              f"| random order | {_ms(ev.deletion.random_auc)} | {_ms(ev.insertion.random_auc)} |"]
    for m in ev.deletion.curves:
        lines.append(f"| {TITLES[m]} | {_ms(ev.deletion.auc[m])} | {_ms(ev.insertion.auc[m])} |")
    worse = {mode.mode: [TITLES[m] for m in mode.curves if worse_than_random(mode, m)]
             for mode in (ev.deletion, ev.insertion)}
    lines += ["", "Worse than the random pixel order: on deletion " +
              (", ".join(worse["deletion"]) or "none") + "; on insertion " + (", ".join(worse["insertion"]) or "none")
              + f". {n_img} photos are too few to rank the methods: the spread over images is as large as the "
              "differences. The two kinds of check answer different questions: a map that reconstructs the image "
              "ranks its edges first, and removing those destroys any prediction, so a good deletion score does "
              "not show that a map explains the model.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs"))
    p.add_argument("--smooth-samples", type=int, default=10)
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args(argv)
    import sample_images

    from guided_backprop.evaluate.run import FIGURES, EvaluateConfig, evaluate_folder

    docs = Path(args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        samples, out = Path(tmp) / "samples", Path(tmp) / "eval"
        sample_images.main(str(samples))
        checks = ["randomization", "emprt", "smprt", "class", "deletion", "insertion"]
        if args.smooth_samples <= 0:  # Smooth MPRT costs its samples at every step: left out
            checks.remove("smprt")
        cfg = EvaluateConfig(methods=METHODS, checks=checks, steps=args.steps,
                             smooth_samples=max(args.smooth_samples, 1))
        load = "/".join(f"{v:.1f}" for v in os.getloadavg())
        t0 = time.perf_counter()
        run = evaluate_folder(samples, out, cfg)
        seconds = time.perf_counter() - t0
        load = f"{load} at the start, " + "/".join(f"{v:.1f}" for v in os.getloadavg()) + " at the end"
        command = (f"guided-backprop evaluate samples -o eval --methods {','.join(METHODS)} --checks "
                   f"{','.join(checks)}" + (f" --smooth-samples {args.smooth_samples}" if "smprt" in checks else ""))
        (docs / "bench").mkdir(parents=True, exist_ok=True)
        # the inputs as the command above names them (samples/...), not under this run's temporary folder
        text = (out / "evaluation.json").read_text(encoding="utf-8").replace(json.dumps(tmp + "/")[1:-1], "")
        if tmp in text:  # written in another form (a resolved symlink): stop rather than publish it
            raise SystemExit(f"evaluation.json names the temporary folder {tmp} in a form not replaced")
        doc = json.loads(text)
        (docs / "bench" / "evaluation-samples.json").write_text(text, encoding="utf-8")
        for name in doc["figures"].values():
            shutil.copyfile(out / name, docs / "figures" / name)
        stale = set(FIGURES.values()) - set(doc["figures"].values())
        for name in stale:
            (docs / "figures" / name).unlink(missing_ok=True)
    page = docs / "evaluation.md"
    text = page.read_text(encoding="utf-8")
    head = text.split(HEADING)[0] if HEADING in text else text.rstrip() + "\n\n"
    page.write_text(head + results_section(run.evaluation, command=command, seconds=seconds,
                                           smooth_samples=args.smooth_samples, load=load), encoding="utf-8")
    print(f"{page} regenerated from a run of {len(run.evaluation.images)} photos ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
