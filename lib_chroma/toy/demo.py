"""The embedded demo: ``python -m lib_chroma demo`` (``./dev.sh demo``), no arguments needed.

Samples the toy model with the same seeds in every row: native 32x32, plain 2x (64x64), A1111's hires fix 2x
at its default strength 0.7 and at the chromatography strength
(:func:`lib_chroma.toy.runs.hires_chroma_strength`, level 2 kept 90 %: the WebUI preview's suggestion),
upsample guidance 2x and nested guidance 4x (128x128), by default with DPM++ 2M (A1111's default sampler,
Karras sigmas) and 20 steps. Writes to ``outputs/demo/``:

- ``grid.png``: the labelled comparison grid (rows = methods, columns = seeds; each cell shown at 128x128),
- ``latent_grid.png``: the latent model's rows (:mod:`lib_chroma.toy.latent.demo`: native, plain 2x, 2x guidance
  with the WebUI's and the library's defaults; prompts naming five attributes, CFG 5), unless ``--no-latent``,
- ``chromatogram.png``: the curve figure (:mod:`lib_chroma.plots`) of the 2x guided run,
- ``scores.json``: the score tables, which are also printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import runs, scorer
from .latent.demo import PROGRESS_UNITS as LATENT_PROGRESS_UNITS
from .latent.demo import latent_demo
from .train import load_model

DEFAULT_OUT = Path("outputs/demo")


class Progress:
    """A minimal text progress bar on stderr (``[####....] done/total label``)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.done, self.width, self.t0 = max(total, 1), 0, width, time.time()

    def __call__(self, n: int, label: str = "") -> None:
        self.done += n
        k = int(self.width * self.done / self.total)
        el = time.time() - self.t0
        sys.stderr.write(f"\r[{'#' * k}{'.' * (self.width - k)}] {self.done}/{self.total} {label:<28} {el:5.0f}s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _grid_png(rows: list[tuple[str, torch.Tensor]], path: Path, cell: int = 128) -> None:
    """Labelled grid: one row per method, images resized (nearest) to ``cell`` pixels high."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ncol = max(r[1].shape[0] for r in rows)
    fig = Figure(figsize=(1.3 * ncol + 2.2, 1.35 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < imgs.shape[0]:
                img = ((imgs[j].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                ax.imshow(img, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title(f"seed {j}", fontsize=7)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.95, bottom=0.01, wspace=0.04, hspace=0.08)
    fig.savefig(str(path), format="png")


def _fmt_table(table: list[dict[str, Any]]) -> str:
    head = "| method | size | one object | proper face | detail | blockiness | model calls | wall s |"
    lines = [head, "|" + "---|" * 8]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['size']} | {r['one_object']:.2f} | {r['proper_face']:.2f} | {r['detail']:.2f} | "
            f"{r['blockiness']:.2f} | {r['calls']} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def demo_main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m lib_chroma demo", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5, help="samples (seeds seed..seed+n-1) per row")
    p.add_argument("--steps", type=int, default=20, help="sampling steps; hires second pass too")
    p.add_argument("--sampler", default=runs.DEFAULT_SAMPLER, choices=tuple(runs.A1111_LABELS),
                   help="k-diffusion sampler (default dpmpp_2m: A1111's default, Karras sigmas)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--weights", type=Path, default=None, help="model weights (default: the shipped ones)")
    p.add_argument("--no-latent", action="store_true", help="the pixel toy only (no latent-model rows)")
    args = p.parse_args(argv)
    if args.n < 1 or args.steps < 2:
        raise ValueError("n: must be >= 1 and steps >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    model = runs.CountingModel(load_model(args.weights))
    n, steps, seed, smp = args.n, args.steps, args.seed, args.sampler
    s_chroma = runs.hires_chroma_strength(2, steps, smp)
    plan2 = runs.make_plan((2, 2), steps, smp)
    plan4 = runs.make_plan((4, 4), steps, smp)
    # progress in pixel-step units of native samples (cost ~ pixels)
    bar = Progress(n * (1 + 4 + 4 + 4 + 5 + 21) + (0 if args.no_latent else n * LATENT_PROGRESS_UNITS))
    rows: list[tuple[str, torch.Tensor]] = []
    table: list[dict[str, Any]] = []

    def record(label: str, method: str, imgs: torch.Tensor, t0: float, grid: int | None) -> None:
        s = scorer.score_batch(imgs)
        rows.append((label, imgs))
        table.append({
            "method": method, "size": f"{imgs.shape[-1]}x{imgs.shape[-2]}", "one_object": s["one_object"],
            "proper_face": s["proper_face"], "detail": s["detail"],
            "blockiness": s.get(f"blockiness_{grid}", float("nan")) if grid else float("nan"),
            "calls": dict(sorted((f"{k[0]}x{k[1]}", v) for k, v in model.calls.items())),
            "wall_s": time.time() - t0,
        })
        model.reset()

    t0 = time.time()
    native = runs.run_kdiff(model, n, 32, 32, steps, seed, sampler=smp, progress=lambda k: bar(k, "native 32x32"))
    record("native 32²", "native", native, t0, None)
    t0 = time.time()
    imgs = runs.run_kdiff(model, n, 64, 64, steps, seed, sampler=smp, progress=lambda k: bar(4 * k, "plain 2x"))
    record("plain 2×", "plain", imgs, t0, 2)
    for strength, name in ((runs.A1111_HIRES_STRENGTH, "A1111 default"), (s_chroma, "chromatography")):
        t0 = time.time()
        model.calls = {(32, 32): steps * ((n + 31) // 32)}  # the first pass (shared, counted once per row)
        imgs = runs.run_hires(model, native, 64, 64, steps, strength, seed, sampler=smp,
                              progress=lambda k, nm=name: bar(4 * k, f"hires {nm}"))
        record(f"hires 2×\nstrength {strength:.2f}\n({name})", f"hires {strength:.2f} ({name})", imgs, t0, 2)
    t0 = time.time()
    imgs = runs.run_kdiff(model, n, 64, 64, steps, seed, plan=plan2, sampler=smp,
                          progress=lambda k: bar(5 * k, "guidance 2x"))
    record("guidance 2×", "guidance", imgs, t0, 2)
    t0 = time.time()
    imgs = runs.run_kdiff(model, n, 128, 128, steps, seed, plan=plan4, batch=8, sampler=smp,
                          progress=lambda k: bar(21 * k, "guidance 4x (nested)"))
    record("guidance 4×\n(nested 2·2)", "guidance 4x", imgs, t0, 4)

    _grid_png(rows, args.out / "grid.png")
    latent = None
    if not args.no_latent:
        latent = latent_demo(n, seed, args.out, progress=bar)
    from lib_chroma.plots import save_png

    report = runs.toy_report(steps, (2, 2), plan2, smp)
    save_png(report, str(args.out / "chromatogram.png"))
    total = time.time() - t_start
    info = {
        "n": n, "steps": steps, "sampler": runs.a1111_label(smp), "seeds": [seed, seed + n - 1],
        "hires_strengths": {"a1111": runs.A1111_HIRES_STRENGTH, "chromatography": s_chroma},
        "guidance_2x_window": plan2.window_steps(report["sigmas"]),
        "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
        "wall_s": round(total, 1), "table": table, "latent": latent,
    }
    (args.out / "scores.json").write_text(json.dumps(info, indent=1, default=float))
    print(f"toy demo: {n} seeds, {runs.a1111_label(smp)} {steps} steps; hires strengths A1111 "
          f"{runs.A1111_HIRES_STRENGTH}, chromatography {s_chroma}; 2x guidance window steps "
          f"{info['guidance_2x_window']}")
    print(_fmt_table(table))
    if latent is not None:
        print(f"latent model (SD-like: autoencoder, attention, prompts, CFG {latent['cfg']:g}): {n} seeds, DPM++ 2M "
              f"{latent['steps']} steps, prompts such as \"{latent['prompts'][0]}\"")
        print(_fmt_table(latent["table"]))
    wrote = ["grid.png"] + ([] if latent is None else ["latent_grid.png"]) + ["chromatogram.png", "scores.json"]
    print(f"wrote {', '.join(str(args.out / w) for w in wrote)} in {total:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(demo_main())
