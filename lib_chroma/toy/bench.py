"""Quality-and-cost benchmark of the toy model: ``python -m lib_chroma bench [--quick] [--out DIR]``.

For each factor (2x: 64x64; 3x: 96x64, per-axis factors 3 and 2; 4x: 128x128) and method, ``n`` samples at
fixed seeds (sample ``i`` from seed ``seed + i`` in every cell) are scored by :mod:`lib_chroma.toy.scorer`.
Methods: ``plain`` sampling at the output size; ``upscale`` (bilinear upscale of the native samples, no
diffusion); ``hires`` (A1111's hires fix at its default strength 0.7 and at the chromatography strength);
``guidance`` with the default chromatography window ("auto": full weight until level m is half generated,
fading to 0 when it is ``q_end`` generated) and fixed windows for contrast (first 30 %, first 60 % and all
steps, constant weight); at 2x also deterministic DDIM, plain and guided through ``guide_eps``.

Cost columns, relative to plain sampling at the same size in the same run:
``calls`` = model evaluations (any size) / plain's; ``pixel_evals`` = ``sum(batch * H * W)`` / plain's
(one guided level with ``a`` active steps of ``N``: ``1 + (a / N) / m²``); ``wall`` = sampling seconds /
plain's (scoring excluded). Hires and upscale include their native first pass.

Empirical chromatography (:mod:`lib_chroma.empirical`): along native trajectories (relative to the data's
mean image), the fraction ``g_m[i]`` of the final level-m energy present in the step-i x0 prediction (Euler),
and the projection ``h_m[i]`` of the prediction on the final image (Euler a, see :func:`projected_fraction`);
level m settles at the first step with fraction ``>= 1/2``. Theory: the first step with
``m² P / (m² P + sigma_i²) >= 1/2`` for ``P = 1`` (the plain signal ratio ``r_m``, i.e. ``sigma <= m``) and
for ``P = P_m``, the data's per-pixel variance of ``D_m(x0)`` (``sigma <= m sqrt(P_m)``).

Writes ``bench.json`` and ``bench.md`` to ``--out`` (default ``outputs/bench``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lib_chroma import empirical
from lib_chroma import guidance as G
from lib_chroma.guidance import pool, unpool
from lib_chroma.schedule import sampler_sigmas

from . import data, runs, scorer
from .train import load_model

DEFAULT_OUT = Path("outputs/bench")
#: factor name -> (height, width) of the output; the native size is 32x32.
FACTORS: dict[str, tuple[int, int]] = {"2x": (64, 64), "3x": (96, 64), "4x": (128, 128)}
FIXED_WINDOWS: dict[str, tuple[float, float]] = {"first 30%": (0.0, 0.3), "first 60%": (0.0, 0.6),
                                                 "all steps": (0.0, 1.0)}
LEVELS = (1, 2, 4, 8)


def candidate_plans(scale: float = 1.0) -> dict[str, dict[str, Any]]:
    """Default-tuning candidates (``--candidates``): ``GuidancePlan.build`` keyword arguments by label."""
    return {
        f"cand. auto fade 0.97, nearest, w={scale}": {"scale": scale, "q_end": 0.97, "operator": "nearest"},
        f"cand. auto fade 0.9, bilinear, w={scale}": {"scale": scale, "q_end": 0.9, "operator": "bilinear"},
        f"cand. auto fade 0.97, bilinear, w={scale}": {"scale": scale, "q_end": 0.97, "operator": "bilinear"},
        f"cand. all steps constant, bilinear, w={scale}": {"scale": scale, "shape": "constant",
                                                            "operator": "bilinear"},
        "cand. auto fade 0.9, nearest, w=1.25": {"scale": 1.25, "q_end": 0.9, "operator": "nearest"},
    }


class _Progress:
    """Text progress bar on stderr for one cell; called with the number of samples just finished."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.t0 = label, max(total, 1), 0, time.time()

    def __call__(self, k: int) -> None:
        self.done += k
        bar = int(30 * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * bar}{'.' * (30 - bar)}] {self.done}/{self.total} {self.label:<34} "
                         f"{time.time() - self.t0:6.0f}s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _cell(name: str, imgs: torch.Tensor, model: runs.CountingModel, wall: float, grid: str | None) -> dict:
    s = scorer.score_batch(imgs)
    row = {"method": name, "wall_s": round(wall, 3), "calls": sum(model.calls.values()),
           "calls_by_size": {f"{h}x{w}": c for (h, w), c in sorted(model.calls.items())},
           "pixel_evals": model.pixel_evals}
    row.update({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in s.items()})
    row["blockiness"] = s.get(f"blockiness_{grid}", math.nan) if grid else math.nan
    return row


def band(x: torch.Tensor, m: int) -> torch.Tensor:
    """Band m of (…, H, W) images: ``B_m x = D_m x - U D_2 D_m x`` (level m minus its own 2x2 block means, i.e.
    the content at scale m that level 2m does not hold). White noise of std ``s`` per pixel becomes std
    ``s / m`` in ``D_m x`` and variance ``(3/4) s² / m²`` in ``B_m x``."""
    d = pool(x, m, m)
    return d - unpool(pool(d, 2, 2), 2, 2, (d.shape[-2], d.shape[-1]))


def band_power(x0: torch.Tensor, m: int) -> float:
    """``Q_m``: mean square per pixel of ``B_m x0`` over a batch (the band's signal power)."""
    return float(band(x0.double(), m).pow(2).mean())


def projected_fraction(preds: torch.Tensor, final: torch.Tensor, m: int, use_band: bool = False) -> torch.Tensor:
    """``h_m[i] = sum_b <D_m p_i,b, D_m p_N,b> / sum_b ||D_m p_N,b||²`` (means per sample and channel removed;
    ``use_band``: with ``B_m`` in place of ``D_m``).

    The projection of each prediction on the final image. Along a stochastic sampler with an exact model the
    final image is a posterior sample given ``x_i``, so ``E<p_i, x0> = E||p_i||²``: the same expectation as
    the energy fraction of :func:`lib_chroma.empirical.generated_fraction` (Gaussian data:
    ``m² P / (m² P + sigma²)``), but the model's error in ``p_i`` (``sigma`` times its eps error, large early
    on), being uncorrelated with the final image, averages out instead of adding energy."""
    def centred(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten(0, -4) if x.dim() > 4 else x.double()
        d = band(x, m) if use_band else pool(x, m, m)
        return d - d.mean(dim=(-2, -1), keepdim=True)

    fin = centred(final)
    denom = fin.pow(2).sum().clamp_min(1e-12)
    return torch.stack([(centred(pi) * fin).sum() / denom for pi in preds])


def empirical_chromatography(
    preds: list[torch.Tensor], final: torch.Tensor, preds_anc: list[torch.Tensor], final_anc: torch.Tensor,
    steps: int, n_data: int = 512, seed: int = 7,
) -> list[dict[str, Any]]:
    """Per level m: measured settle steps against the theory's with power 1 and ``P_m``.

    ``energy``: :func:`lib_chroma.empirical.generated_fraction` on Euler trajectories (``preds``/``final``);
    ``projection``: :func:`projected_fraction` on Euler-ancestral trajectories. A level settles at the first
    step with fraction ``>= 1/2``. The toy's data are not zero-mean (a light disc near the centre of every
    image), so predictions, finals and data are taken relative to the data's mean image ``mu = E[x0]`` (the
    x0 prediction as ``sigma -> inf``), and ``P_m = level_power(x0 - mu)``."""
    sig = sampler_sigmas("Euler", "Automatic", steps, runs.toy_schedule())
    x0 = torch.from_numpy(data.make_batch(n_data, seed, data.BASE)[0]).double()
    mu = x0.mean(dim=0, keepdim=True)
    x0 = x0 - mu
    p = torch.stack(preds).double() - mu
    fin = final.double() - mu
    pa = torch.stack(preds_anc).double() - mu
    fina = final_anc.double() - mu
    out = []
    for m in LEVELS:
        g = empirical.generated_fraction(p, fin, m)
        h = projected_fraction(pa, fina, m)
        hb = projected_fraction(pa, fina, m, use_band=True)
        pm = empirical.level_power(x0, m)
        qb = band_power(x0, m)
        me, mp, mb = empirical.settle_step(g), empirical.settle_step(h), empirical.settle_step(hb)
        t1 = empirical.theory_settle_step(sig, m, 1.0)
        tp = empirical.theory_settle_step(sig, m, pm)
        # band: signal Q_m against noise (3/4) sigma² / m²  ->  effective power 4 Q_m / 3
        tb = empirical.theory_settle_step(sig, m, 4 * qb / 3)
        out.append({
            "level": m, "power": round(pm, 4), "band_power": round(qb, 4), "energy_step": me,
            "projection_step": mp, "band_step": mb, "theory_step_p1": t1, "theory_step_pm": tp,
            "theory_step_band": tb, "sigma_band": round(float(sig[mb]), 4),
            "sigma_theory_band": round(m * math.sqrt(4 * qb / 3), 4),
            "band_fraction": [round(float(v), 4) for v in hb],
            "sigma_energy": round(float(sig[me]), 4), "sigma_projection": round(float(sig[mp]), 4),
            "sigma_theory_p1": round(float(m), 4), "sigma_theory_pm": round(m * math.sqrt(pm), 4),
            "energy_fraction": [round(float(v), 4) for v in g],
            "projection_fraction": [round(float(v), 4) for v in h],
            "theory_fraction_pm": [round(float(v), 4) for v in empirical.theory_fraction(sig, m, pm)],
        })
    return out


def _factor_cells(
    model: runs.CountingModel, fname: str, native: torch.Tensor, native_wall: float,
    native_cost: tuple[int, int], n: int, steps: int, seed: int, batch: int, scale: float, q_end: float,
    shape: str, operator: str, fixed: bool, ddim: bool, extra_plans: dict[str, dict[str, Any]],
    baselines: bool = True,
) -> dict[str, Any]:
    """All cells of one factor (plain first: the reference of the relative cost columns)."""
    h, w = FACTORS[fname]
    mh, mw = h // 32, w // 32
    m = math.sqrt(mh * mw)
    grid = f"{mh}x{mw}" if mh != mw else str(mh)
    rows: list[dict[str, Any]] = []
    bsz = batch

    def timed(label: str, fn: Any) -> tuple[torch.Tensor, float]:
        model.reset()
        t0 = time.time()
        imgs = fn(_Progress(f"{fname} {label}", n))
        return imgs, time.time() - t0

    imgs, wall = timed("plain", lambda pr: runs.run_kdiff(model, n, h, w, steps, seed, batch=bsz, progress=pr))
    rows.append(_cell("plain", imgs, model, wall, grid))
    s_chroma = runs.hires_chroma_strength(m, steps)
    if baselines:
        # upscale only: the native run's cost
        t0 = time.time()
        imgs = runs.upscale(native, h, w)
        model.reset()
        model.calls = {(32, 32): native_cost[0]}
        model.pixel_evals = native_cost[1]
        rows.append(_cell("upscale only (bilinear)", imgs, model, native_wall + time.time() - t0, grid))
        for strength, label in ((runs.A1111_HIRES_STRENGTH, "A1111 default"), (s_chroma, "chromatography")):
            imgs, wall = timed(f"hires {strength}", lambda pr, s=strength: runs.run_hires(
                model, native, h, w, steps, s, seed, batch=bsz, progress=pr))
            model.calls[(32, 32)] = model.calls.get((32, 32), 0) + native_cost[0]
            model.pixel_evals += native_cost[1]
            rows.append(_cell(f"hires fix {strength:.2f} ({label})", imgs, model, wall + native_wall, grid))
    plans: dict[str, Any] = {
        f"guidance auto ({shape} {q_end}, {operator}, w={scale})": runs.make_plan(
            (mh, mw), steps, scale=scale, window="auto", shape=shape, q_end=q_end, operator=operator),
    }
    if fixed:
        for wl, fr in FIXED_WINDOWS.items():
            plans[f"guidance {wl} (constant, {operator}, w={scale})"] = runs.make_plan(
                (mh, mw), steps, scale=scale, window="fraction", window_range=fr, operator=operator)
    for label, kw in (extra_plans or {}).items():
        plans[label] = runs.make_plan((mh, mw), steps, **kw)
    sig = sampler_sigmas("Euler", "Automatic", steps, runs.toy_schedule())
    for label, plan in plans.items():
        imgs, wall = timed(label[:30], lambda pr, p=plan: runs.run_kdiff(
            model, n, h, w, steps, seed, plan=p, batch=bsz, progress=pr))
        row = _cell(label, imgs, model, wall, grid)
        act = len(plan.active_steps(sig))
        row["active_steps"] = act
        row["expected_pixel_evals"] = round(1 + sum(
            (act if k == 0 else len([i for i in range(steps) if plan.weight(k, float(sig[i])) != 0]))
            / steps / math.prod(math.sqrt(a * b) for a, b in plan.levels[:k + 1]) ** 2
            for k in range(len(plan.levels))), 4)
        rows.append(row)
    if ddim and fname == "2x":
        dplan = runs.make_plan((mh, mw), steps, scale=scale, window="auto", shape=shape, q_end=q_end,
                               operator=operator)
        imgs, wall = timed("DDIM plain", lambda pr: runs.run_ddim(model, n, h, w, steps, seed, batch=bsz,
                                                                    progress=pr))
        rows.append(_cell("DDIM plain (eps)", imgs, model, wall, grid))
        imgs, wall = timed("DDIM guided", lambda pr: runs.run_ddim(model, n, h, w, steps, seed, plan=dplan,
                                                                     batch=bsz, progress=pr))
        rows.append(_cell(f"DDIM guidance auto via guide_eps ({shape} {q_end})", imgs, model, wall, grid))
    base = rows[0]
    ddim_base = next((r for r in rows if r["method"].startswith("DDIM plain")), base)
    for r in rows:
        ref = ddim_base if r["method"].startswith("DDIM") else base
        r["rel_calls"] = round(r["calls"] / ref["calls"], 4)
        r["rel_pixel_evals"] = round(r["pixel_evals"] / ref["pixel_evals"], 4)
        r["rel_wall"] = round(r["wall_s"] / ref["wall_s"], 4)
    return {"size": f"{w}x{h}", "factor": [mh, mw], "hires_chroma_strength": s_chroma, "rows": rows}


def run_bench(
    n: int = 128,
    steps: int = 40,
    factors: tuple[str, ...] = ("2x", "3x", "4x"),
    seed: int = 1000,
    batch: int = 32,
    scale: float = G.DEFAULT_SCALE,
    q_end: float = G.DEFAULT_Q_END,
    shape: str = G.DEFAULT_SHAPE,
    operator: str = G.DEFAULT_OPERATOR,
    fixed: bool = True,
    ddim: bool = True,
    weights: Path | None = None,
    extra_plans: dict[str, dict[str, Any]] | None = None,
    baselines: bool = True,
) -> dict[str, Any]:
    """Run every cell; returns the JSON-serialisable result (see the module docstring)."""
    model = runs.CountingModel(load_model(weights))
    t_all = time.time()
    res: dict[str, Any] = {
        "config": {"n": n, "steps": steps, "sampler": "Euler", "seed": seed, "batch": batch, "scale": scale,
                   "q_end": q_end, "shape": shape, "operator": operator, "threads": torch.get_num_threads(),
                   "omp": os.environ.get("OMP_NUM_THREADS")},
        "factors": {},
    }
    # native reference + recorded trajectories (empirical chromatography)
    model.reset()
    t0 = time.time()
    preds: list[torch.Tensor] = []
    native = runs.run_kdiff(model, n, 32, 32, steps, seed, batch=batch, record=preds,
                            progress=_Progress("native 32x32", n))
    native_wall = time.time() - t0
    native_cost = (sum(model.calls.values()), model.pixel_evals)
    res["native"] = _cell("native", native, model, native_wall, None)
    preds_anc: list[torch.Tensor] = []
    final_anc = runs.run_kdiff(model, n, 32, 32, steps, seed, batch=batch, record=preds_anc,
                               sampler="euler_ancestral",
                               progress=_Progress("native 32x32 Euler a (empirical)", n))
    res["empirical"] = empirical_chromatography(preds, native, preds_anc, final_anc, steps)
    del preds, preds_anc
    for fname in factors:
        res["factors"][fname] = _factor_cells(
            model, fname, native, native_wall, native_cost, n, steps, seed, batch, scale, q_end, shape, operator,
            fixed, ddim, extra_plans or {}, baselines)
    res["wall_s"] = round(time.time() - t_all, 1)
    return res


def _f(v: Any, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def markdown(res: dict[str, Any]) -> str:
    """The benchmark tables (quality and cost; empirical chromatography) as markdown."""
    c = res["config"]
    nat = res["native"]
    out = [f"Toy benchmark: {c['n']} samples per cell (seeds {c['seed']}…{c['seed'] + c['n'] - 1}), Euler "
           f"{c['steps']} steps; native 32×32 ceiling: one object {_f(nat['one_object'])}, proper face "
           f"{_f(nat['proper_face'])}, detail {_f(nat['detail'])}.", "",
           "| factor | method | one object | proper face | proper at scale | detail | blockiness (m-grid) | "
           "calls × | pixel-evals × | wall × |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for fname, f in res["factors"].items():
        for r in f["rows"]:
            exp = f" (exp. {r['expected_pixel_evals']:.3f})" if "expected_pixel_evals" in r else ""
            out.append(f"| {fname} {f['size']} | {r['method']} | {_f(r['one_object'])} | {_f(r['proper_face'])} | "
                       f"{_f(r['proper_at_scale'])} | {_f(r['detail'])} | {_f(r['blockiness'])} | "
                       f"{_f(r['rel_calls'])} | {_f(r['rel_pixel_evals'], 3)}{exp} | {_f(r['rel_wall'])} |")
    out += ["", "Empirical chromatography (native 32×32 trajectories, relative to the data's mean image): settle "
            "step = first step (0-based) whose fraction reaches 1/2; energy = lib_chroma.empirical."
            "generated_fraction on Euler, projection = <D p_i, D p_N>/||D p_N||² on Euler a; theory: first step "
            "with sigma ≤ m (P = 1) or sigma ≤ m·sqrt(P_m) (P_m: the data's level power).", "",
            "Band m = D_m x − U D_2 D_m x (scale m minus scale 2m), its power Q_m, theory sigma ≤ m·sqrt(4Q_m/3).",
            "",
            "| level m | P_m | energy step (sigma) | projection step (sigma) | theory P=1 step (sigma ≤) | "
            "theory P_m step (sigma ≤) | projection − theory P_m | Q_m | band step (sigma) | "
            "band theory step (sigma ≤) | band − theory |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in res["empirical"]:
        out.append(f"| {e['level']} | {e['power']:.3f} | {e['energy_step']} ({e['sigma_energy']:.2f}) | "
                   f"{e['projection_step']} ({e['sigma_projection']:.2f}) | "
                   f"{e['theory_step_p1']} ({e['sigma_theory_p1']:.2f}) | "
                   f"{e['theory_step_pm']} ({e['sigma_theory_pm']:.2f}) | "
                   f"{e['projection_step'] - e['theory_step_pm']:+d} | {e['band_power']:.3f} | "
                   f"{e['band_step']} ({e['sigma_band']:.2f}) | {e['theory_step_band']} "
                   f"({e['sigma_theory_band']:.2f}) | {e['band_step'] - e['theory_step_band']:+d} |")
    out.append("")
    out.append(f"Wall time {res['wall_s']:.0f} s, {c['threads']} torch threads.")
    return "\n".join(out)


def _parse_plan(text: str) -> tuple[str, dict[str, Any]]:
    kw: dict[str, Any] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in ("shape", "q_end", "operator", "scale", "sigma_lo"):
            raise ValueError(f"plan: unknown key {k!r} in {text!r}")
        if k == "sigma_lo":  # a sigma window from the start down to sigma_lo
            kw["window"], kw["window_range"] = "sigma", (1e6, float(v))
        else:
            kw[k] = float(v) if k in ("q_end", "scale") else v.strip()
    return f"plan {text}", kw


def bench_main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m lib_chroma bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized: 4 samples, 10 steps, factor 2x only")
    p.add_argument("--n", type=int, default=None, help="samples per cell (default 128; quick 4)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default 40; quick 10)")
    p.add_argument("--factors", default=None, help="comma-separated of 2x,3x,4x (default all; quick 2x)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    # the library's defaults (what the WebUI and the demo use)
    p.add_argument("--scale", type=float, default=G.DEFAULT_SCALE)
    p.add_argument("--q-end", type=float, default=G.DEFAULT_Q_END)
    p.add_argument("--shape", default=G.DEFAULT_SHAPE)
    p.add_argument("--operator", default=G.DEFAULT_OPERATOR)
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed-window guidance rows")
    p.add_argument("--no-ddim", action="store_true", help="skip the DDIM rows")
    p.add_argument("--no-baselines", action="store_true", help="skip the upscale and hires rows")
    p.add_argument("--candidates", action="store_true", help="add the default-tuning candidate rows")
    p.add_argument("--plan", action="append", default=[], metavar="K=V,...",
                   help="extra guidance row from GuidancePlan.build keywords, e.g. shape=fade,q_end=0.99,"
                        "operator=bilinear,scale=1 or shape=constant,sigma_lo=0.5 (repeatable)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    n = args.n or (4 if args.quick else 128)
    steps = args.steps or (10 if args.quick else 40)
    factors = tuple(f for f in args.factors.split(",") if f and f != "none") if args.factors is not None else (
        ("2x",) if args.quick else tuple(FACTORS))
    for f in factors:
        if f not in FACTORS:
            raise ValueError(f"factors: unknown {f!r}; allowed: {', '.join(FACTORS)}")
    if n < 1 or steps < 2:
        raise ValueError("n: must be >= 1 and steps >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_bench(n, steps, factors, args.seed, args.batch, args.scale, args.q_end, args.shape, args.operator,
                    fixed=not args.no_fixed, ddim=not args.no_ddim, weights=args.weights,
                    extra_plans={**(candidate_plans(args.scale) if args.candidates else {}),
                                 **dict(_parse_plan(t) for t in args.plan)},
                    baselines=not args.no_baselines)
    res["command"] = "python -m lib_chroma bench " + " ".join(argv or [])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    (args.out / "bench.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main())
