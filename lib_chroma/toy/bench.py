"""Quality-and-cost benchmark of the toy model: ``python -m lib_chroma bench [--quick] [--out DIR]``.

For each factor (2x: 64x64; 3x: 96x64, per-axis factors 3 and 2; 4x: 128x128) and method, ``n`` samples at
fixed seeds (sample ``i`` from seed ``seed + i`` in every cell) are scored by :mod:`lib_chroma.toy.scorer`.
Every row but DDIM uses one k-diffusion sampler on A1111's sigmas for it (default DPM++ 2M, whose "Automatic"
scheduler is Karras: A1111 v1.10's default sampler) and 20 steps.
Methods: ``plain`` sampling at the output size; ``upscale`` (bilinear upscale of the native samples, no
diffusion); ``hires`` (A1111's hires fix at its default strength 0.7 and at the chromatography strength);
``guidance`` with the default chromatography window ("auto", the library's default shape: with ``hold``,
full weight until level m is ``q_end`` generated, then off) and fixed windows for contrast (first 30 %,
first 60 % and all steps, constant weight); at 2x also deterministic DDIM, plain and guided through ``guide_eps``;
with ``--cascade``, the chromatographic cascade (:mod:`lib_chroma.cascade`, :func:`cascade_rows`): a native pass
stopped by the rule, its handover, and a full-size pass guided with the library's defaults (for 4x also the chain
1x → 2x → 4x); ``--cascade-variants`` compares handovers, upscalers and fixed hires strengths.

``--peers`` adds, at 2x and 4x, the methods users pick instead (:mod:`lib_chroma.toy.peers`,
:mod:`lib_chroma.toy.demofusion`, docs/theory.md §9) with their defaults: Deep Shrink, HiDiffusion's RAU-Net,
ScaleCrafter's re-dilation, DemoFusion, and Deep Shrink with the default guidance, its low-resolution call
bypassing the shrink (as the library's hosts do) and going through it (unprotected).

Cost columns, relative to plain sampling at the same size in the same run:
``calls`` = model evaluations (any size) / plain's; ``pixel_evals`` = ``sum(batch * H * W)`` / plain's
(one guided level with ``a`` active steps of ``N``: ``1 + (a / N) / m²``); ``wall`` = sampling seconds /
plain's (scoring excluded). Hires, upscale and DemoFusion include their native first pass; DemoFusion's calls
count one per window and sub-lattice. Pixel-evals count the model's input pixels, so the savings of Deep Shrink
and RAU-Net inside the UNet (deep levels at a quarter of the pixels) show only in the wall time. The methods of
a factor run interleaved, batch by batch (their order rotated each batch), so that load drift on a shared
machine falls on every method alike and the wall ratios are side by side.

Empirical chromatography (:mod:`lib_chroma.empirical`): along native trajectories (relative to the data's
mean image), the fraction ``g_m[i]`` of the final level-m energy present in the step-i x0 prediction (Euler),
and the projection ``h_m[i]`` of the prediction on the final image (Euler a,
:func:`lib_chroma.empirical.projected_fraction`); level m settles at the first step with fraction
``>= 1/2``. Theory: the first step with
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lib_chroma import empirical
from lib_chroma import guidance as G
from lib_chroma.cascade import DEFAULT_DENSITY, DEFAULT_HANDOVER, DEFAULT_LOSS, HANDOVERS, CascadePlan, plan_cascade
from lib_chroma.schedule import img2img_sigmas, sampler_sigmas

from . import cascade_runs, demofusion, runs, scorer
from . import peers as P
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


def cascade_method(
    model: runs.CountingModel, factor: tuple[int, int], steps: int, seed: int, sampler: str = runs.DEFAULT_SAMPLER,
    *, loss: float = DEFAULT_LOSS, power: float | None = None, handover: str = cascade_runs.TOY_HANDOVER,
    upscaler: str = "bilinear", chain: bool = False, strength: float | None = None, grid: str = G.DEFAULT_GRID,
    q_end: float | None = None, scale: float | None = None, density: float = DEFAULT_DENSITY,
) -> tuple[CascadePlan | None, Method]:
    """A cascade row: its plan on the toy's sigmas (guidance: the library's defaults but for the pooling ``grid``,
    the bench's ``--grid`` unless the row says otherwise) and the method running it.

    ``power``: the stop rule's data power (None: the toy's, :func:`lib_chroma.toy.runs.data_power`).
    ``strength``: start the full-size pass where A1111's hires fix at this denoising strength starts
    (``img2img_sigmas(...)[0]``) instead of by the stop rule. ``q_end``, ``scale``: the guided stages' window end
    and weight (None: the library's). ``density``: the full-size pass's step density
    (:func:`lib_chroma.cascade.thin_sigmas`)."""
    p = runs.data_power() if power is None else power
    sig = runs.toy_sigmas(sampler, steps)
    start = None
    if strength is not None:
        start = float(img2img_sigmas(runs.a1111_label(sampler), "Automatic", steps, strength, runs.toy_schedule())[0])
    gkw: dict[str, Any] = {"grid": grid}
    if q_end is not None:
        gkw["q_end"] = q_end
    if scale is not None:
        gkw["scale"] = scale
    plan = plan_cascade(sig, factor, loss=loss, power=p, chain=chain, sigma_start=start, density=density, guidance=gkw)

    def method(s: int, k: int) -> torch.Tensor:
        assert plan is not None
        return cascade_runs.run_cascade(model, k, plan, seed + s, handover_mode=handover, upscaler=upscaler,
                                        sampler=sampler, batch=k)

    return plan, method


def cascade_rows(factor: tuple[int, int], variants: bool = False, grid: str = G.DEFAULT_GRID
                 ) -> dict[str, dict[str, Any]]:
    """The cascade rows of ``--cascade`` (and ``--cascade-variants``): label -> :func:`cascade_method` keywords.

    Default: the stop rule (q = ``DEFAULT_LOSS``, second-pass density ``DEFAULT_DENSITY``) with the toy's data power
    and with unit power (the WebUI's stop), the toy's handover (``TOY_HANDOVER``), bilinear; for factors with several
    prime levels also the chain (with the library's ``DEFAULT_HANDOVER``). Variants: every handover, the other
    upscalers, and fixed hires strengths 0.3, 0.5 and 0.7 in place of the rule."""
    h, g = cascade_runs.TOY_HANDOVER, f"{grid} grid"
    q = f"{DEFAULT_LOSS}" + ("" if DEFAULT_DENSITY == 1 else f", density {DEFAULT_DENSITY}")
    rows: dict[str, dict[str, Any]] = {
        f"cascade (q {q}, data power, {h}, bilinear, {g})": {},
        f"cascade (q {q}, unit power, {h}, bilinear, {g})": {"power": 1.0},
    }
    if len(G.factor_levels(*factor)) > 1:
        c = DEFAULT_HANDOVER
        rows[f"cascade chain (q {q}, data power, {c}, bilinear, {g})"] = {"chain": True, "handover": c}
        rows[f"cascade chain (q {q}, unit power, {c}, bilinear, {g})"] = {"chain": True, "power": 1.0, "handover": c}
    if variants:
        for mode in HANDOVERS:
            if mode != h:
                rows[f"cascade (q {q}, data power, {mode}, bilinear, {g})"] = {"handover": mode}
        for up in ("bicubic", "nearest-exact"):
            rows[f"cascade (q {q}, data power, {h}, {up}, {g})"] = {"upscaler": up}
        for st in (0.3, 0.5, runs.A1111_HIRES_STRENGTH):
            rows[f"cascade (start of hires strength {st}, {h}, bilinear, {g})"] = {"strength": st}
    return {label: {"grid": grid, **kw} for label, kw in rows.items()}


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


def _cell(name: str, imgs: torch.Tensor, acc: _Acc, grid: str | None) -> dict:
    s = scorer.score_batch(imgs)
    row = {"method": name, "wall_s": round(acc.wall, 3), "calls": sum(acc.calls.values()),
           "calls_by_size": {f"{h}x{w}": c for (h, w), c in sorted(acc.calls.items())},
           "pixel_evals": acc.pixel_evals}
    row.update({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in s.items()})
    row["blockiness"] = s.get(f"blockiness_{grid}", math.nan) if grid else math.nan
    return row


class _Acc:
    """Per-method accumulators of an interleaved run: image batches, seconds, calls by size, pixel-evals."""

    def __init__(self) -> None:
        self.imgs: list[torch.Tensor] = []
        self.wall = 0.0
        self.calls: dict[tuple[int, int], int] = {}
        self.pixel_evals = 0

    def add(self, counts: runs.CountingModel | _Acc, seconds: float) -> None:
        """Add ``seconds`` and the calls and pixel-evals of a model's counters or of another accumulator."""
        self.wall += seconds
        for size, c in counts.calls.items():
            self.calls[size] = self.calls.get(size, 0) + c
        self.pixel_evals += counts.pixel_evals

    def images(self) -> torch.Tensor:
        return torch.cat(self.imgs)


#: a method of the benchmark: (first sample index, number of samples) -> images of those samples
Method = Callable[[int, int], torch.Tensor]


def interleaved(model: runs.CountingModel, n: int, batch: int, methods: dict[str, Method],
                progress: Callable[[int], None],
                checkpoint: Callable[[dict[str, _Acc], int], None] | None = None) -> dict[str, _Acc]:
    """Run every method on samples ``[start, start + batch)`` before any moves to the next batch, rotating the
    order each batch, and time each call: slow phases of a shared machine then fall on all methods alike.
    ``checkpoint(acc, samples_done)`` is called after every batch (all methods then have the same samples)."""
    acc = {k: _Acc() for k in methods}
    names = list(methods)
    for b, start in enumerate(range(0, n, batch)):
        k = min(batch, n - start)
        r = b % len(names)
        for name in names[r:] + names[:r]:
            model.reset()
            t0 = time.perf_counter()
            imgs = methods[name](start, k)
            acc[name].add(model, time.perf_counter() - t0)
            acc[name].imgs.append(imgs)
            progress(k)
        if checkpoint is not None:
            checkpoint(acc, start + k)
    return acc


def empirical_chromatography(
    preds: list[torch.Tensor], final: torch.Tensor, preds_anc: list[torch.Tensor], final_anc: torch.Tensor,
    steps: int, n_data: int = 512, seed: int = 7,
) -> list[dict[str, Any]]:
    """Per level m: measured settle steps against the theory's with power 1 and ``P_m``.

    ``energy``: :func:`lib_chroma.empirical.generated_fraction` on Euler trajectories (``preds``/``final``);
    ``projection``: :func:`lib_chroma.empirical.projected_fraction` on Euler-ancestral trajectories. A level
    settles at the first step with fraction ``>= 1/2``. The toy's data are not zero-mean (a light disc near the
    centre of every image), so predictions, finals and data are taken relative to the data's mean image
    ``mu = E[x0]`` (the x0 prediction as ``sigma -> inf``), and ``P_m = level_power(x0 - mu)``."""
    sig = runs.toy_sigmas("euler", steps)
    x0, mu = runs.centred_data(n_data, seed)
    p = torch.stack(preds).double() - mu
    fin = final.double() - mu
    pa = torch.stack(preds_anc).double() - mu
    fina = final_anc.double() - mu
    out = []
    for m in LEVELS:
        g = empirical.generated_fraction(p, fin, m)
        h = empirical.projected_fraction(pa, fina, m)
        hb = empirical.projected_fraction(pa, fina, m, use_band=True)
        pm = empirical.level_power(x0, m)
        qb = empirical.band_power(x0, m)
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


def peer_methods(model: runs.CountingModel, f: int, h: int, w: int, steps: int, seed: int, sampler: str,
                 plan: G.GuidancePlan) -> dict[str, Method]:
    """The peers' rows at square factor ``f`` (:mod:`lib_chroma.toy.peers`, :mod:`lib_chroma.toy.demofusion`)
    with their defaults, and Deep Shrink with the default guidance ``plan``, its low-resolution call bypassing
    the shrink (as the library's hosts do) or going through it (the unprotected combination)."""
    pm = P.toy_map(model.model)
    ds = "Deep Shrink (x1/2 bicubic after the first downsample, 0-35 %)"
    hd = f"HiDiffusion RAU-Net (T1 {'40' if f == 2 else '70'} %{'' if f == 2 else ', T2 30 %'})"
    sc = f"ScaleCrafter re-dilation ({'d 2, 60 %' if f == 2 else 'd 2/4, 70 %, progressive'} of steps)"

    def patched(name: str, pl: G.GuidancePlan | None = None, bypass_low: bool = True) -> Method:
        return lambda s, k: runs.run_kdiff(model, k, h, w, steps, seed + s, plan=pl, batch=k, sampler=sampler,
                                           patch=lambda: P.make_peer(name, pm, f, steps), bypass_low=bypass_low)

    return {
        ds: patched("deep_shrink"),
        hd: patched("hidiffusion"),
        sc: patched("scalecrafter"),
        f"DemoFusion (scales 2-{f}, cosine 3/1/1, sigma 1)": lambda s, k: demofusion.run_demofusion(
            model, k, f, steps, seed + s, sampler, batch=k),
        "Deep Shrink + default guidance (low-res call bypasses the shrink)": patched("deep_shrink", plan),
        "Deep Shrink + default guidance, low-res call shrunk too (unprotected)": patched("deep_shrink", plan,
                                                                                         False),
    }


PEER_KEYS = {"deep_shrink": ("start", "end", "block", "factor", "guided", "bypass"),
             "hidiffusion": ("guided", "bypass"), "scalecrafter": ("guided", "bypass"), "demofusion": ("sigma",)}


def parse_peer(spec: str) -> tuple[str, dict[str, float]]:
    """``NAME[:K=V,...]`` -> ``(NAME, {K: float(V)})``, names and keys checked against ``PEER_KEYS``."""
    name, _, rest = spec.partition(":")
    if name not in PEER_KEYS:
        raise ValueError(f"peer: unknown {name!r}; allowed: {', '.join(PEER_KEYS)}")
    kw: dict[str, float] = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        if k not in PEER_KEYS[name]:
            raise ValueError(f"peer: unknown key {k!r} for {name}; allowed: {', '.join(PEER_KEYS[name])}")
        kw[k] = float(v)
    return name, kw


def spec_methods(model: runs.CountingModel, f: int, h: int, w: int, steps: int, seed: int, sampler: str,
                 plan: G.GuidancePlan, specs: tuple[str, ...]) -> dict[str, Method]:
    """Rows from ``--peer NAME[:K=V,...]`` specs (``PEER_KEYS``): ``deep_shrink:end=0.6,block=1`` changes Deep
    Shrink's window or block; ``guided=1`` adds the default guidance to a UNet-patching peer and ``bypass=0``
    sends its low-resolution call through the patch; ``demofusion:sigma=0.8`` changes DemoFusion's blur."""
    pm = P.toy_map(model.model)
    out: dict[str, Method] = {}
    for spec in specs:
        name, kw = parse_peer(spec)
        label = f"peer {spec}"
        if name == "demofusion":
            blur = kw.get("sigma", 1.0)
            out[label] = lambda s, k, b=blur: demofusion.run_demofusion(
                model, k, f, steps, seed + s, sampler, batch=k, blur_sigma=b)
            continue
        guided, bypass = bool(kw.pop("guided", 0)), bool(kw.pop("bypass", 1))
        ds = {"block": int(kw.pop("block", 0)), **kw}

        def factory(name: str = name, ds: dict = ds) -> P.Patch:
            return P.DeepShrink(pm, **ds) if name == "deep_shrink" else P.make_peer(name, pm, f, steps)

        out[label] = lambda s, k, fac=factory, g=guided, b=bypass: runs.run_kdiff(
            model, k, h, w, steps, seed + s, plan=plan if g else None, batch=k, sampler=sampler, patch=fac,
            bypass_low=b)
    return out


def _factor_cells(
    model: runs.CountingModel, fname: str, native: torch.Tensor, n: int, steps: int, seed: int, batch: int,
    scale: float, q_end: float, shape: str, operator: str, fixed: bool, ddim: bool,
    extra_plans: dict[str, dict[str, Any]], baselines: bool = True, sampler: str = runs.DEFAULT_SAMPLER,
    grid: str = G.DEFAULT_GRID, cascades: dict[str, dict[str, Any]] | None = None, skip: tuple[str, ...] = (),
    peers: bool = False, partial: Path | None = None, peer_specs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """All cells of one factor (plain first: the reference of the relative cost columns). ``cascades``: cascade
    rows by label, keyword arguments of :func:`cascade_method`. ``skip``: rows whose label contains one of these
    texts are not run (never plain, nor the native pass the hires and upscale rows include). With ``partial``,
    the scores and costs of the samples done so far are written there after every batch."""
    h, w = FACTORS[fname]
    mh, mw = h // 32, w // 32
    m = math.sqrt(mh * mw)
    block_grid = f"{mh}x{mw}" if mh != mw else str(mh)  # the scorer's blockiness key
    s_chroma = runs.hires_chroma_strength(m, steps, sampler)
    s_power: float | None = None
    methods: dict[str, Method] = {
        "plain": lambda s, k: runs.run_kdiff(model, k, h, w, steps, seed + s, batch=k, sampler=sampler),
    }
    if baselines:
        # the native first pass, rerun here so that its seconds are measured beside the others
        methods["native pass"] = lambda s, k: runs.run_kdiff(model, k, 32, 32, steps, seed + s, batch=k,
                                                              sampler=sampler)
        methods["upscale only (bilinear)"] = lambda s, k: runs.upscale(native[s:s + k], h, w)
        pw = runs.data_power()
        s_power = runs.hires_chroma_strength(m, steps, sampler, power=pw)
        for strength, label in ((runs.A1111_HIRES_STRENGTH, "A1111 default"), (s_chroma, "chromatography"),
                                (s_power, f"chromatography, data power {pw:.2f}")):
            methods[f"hires fix {strength:.2f} ({label})"] = lambda s, k, st=strength: runs.run_hires(
                model, native[s:s + k], h, w, steps, st, seed + s, sampler=sampler, batch=k)
    plans: dict[str, G.GuidancePlan] = {
        f"guidance auto ({shape} {q_end}, {operator}, w={scale}, {grid} grid)": runs.make_plan(
            (mh, mw), steps, sampler, scale=scale, window="auto", shape=shape, q_end=q_end, operator=operator,
            grid=grid),
    }
    if fixed:
        for wl, fr in FIXED_WINDOWS.items():
            plans[f"guidance {wl} (constant, {operator}, w={scale}, {grid} grid)"] = runs.make_plan(
                (mh, mw), steps, sampler, scale=scale, window="fraction", window_range=fr, operator=operator,
                grid=grid)
    for label, kw in (extra_plans or {}).items():
        plans[label] = runs.make_plan((mh, mw), steps, sampler, **kw)
    # every guided row with its plan and the sigmas its sampler calls the model at (expected cost)
    guided = {label: (plan, runs.toy_sigmas(sampler, steps)) for label, plan in plans.items()}
    for label, plan in plans.items():
        methods[label] = lambda s, k, p=plan: runs.run_kdiff(model, k, h, w, steps, seed + s, plan=p, batch=k,
                                                             sampler=sampler)
    cascade_plans: dict[str, CascadePlan] = {}
    for label, kw in (cascades or {}).items():
        plan, method = cascade_method(model, (mh, mw), steps, seed, sampler, **{"grid": grid, **kw})
        if plan is not None:
            cascade_plans[label] = plan
            methods[label] = method
    if ddim and fname == "2x":
        dplan = runs.make_plan((mh, mw), steps, scale=scale, window="auto", shape=shape, q_end=q_end,
                               operator=operator, grid=grid)
        ddim_guided = f"DDIM guidance auto via guide_eps ({shape} {q_end})"
        guided[ddim_guided] = (dplan, sampler_sigmas("DDIM", "Automatic", steps, runs.toy_schedule()))
        methods["DDIM plain (eps)"] = lambda s, k: runs.run_ddim(model, k, h, w, steps, seed + s, batch=k)
        methods[ddim_guided] = lambda s, k: runs.run_ddim(model, k, h, w, steps, seed + s, plan=dplan, batch=k)
    if peers and mh == mw and mh in (2, 4):
        methods.update(peer_methods(model, mh, h, w, steps, seed, sampler, plans[next(iter(plans))]))
    if peer_specs and mh == mw and mh in (2, 4):
        methods.update(spec_methods(model, mh, h, w, steps, seed, sampler, plans[next(iter(plans))], peer_specs))
    def checkpoint(acc_now: dict[str, _Acc], done: int) -> None:
        if partial is None:
            return
        rows = {k: {"samples": done, "wall_s": round(a.wall, 3), "calls": sum(a.calls.values()),
                    "pixel_evals": a.pixel_evals, **scorer.score_batch(a.images())} for k, a in acc_now.items()}
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"factor": fname, "samples_done": done, "rows": rows}, indent=1,
                                      default=float))

    methods = {k: v for k, v in methods.items()
               if k in ("plain", "native pass") or not any(t in k for t in skip)}
    acc = interleaved(model, n, batch, methods, _Progress(f"{fname}: {len(methods)} methods", n * len(methods)),
                      checkpoint)
    nat = acc.pop("native pass", None)
    rows: list[dict[str, Any]] = []
    for label, a in acc.items():
        if nat is not None and (label.startswith("hires") or label.startswith("upscale")):
            a.add(nat, nat.wall)  # these include their first pass
        row = _cell(label, a.images(), a, block_grid)
        if label in cascade_plans:
            cp = cascade_plans[label]
            row["expected_pixel_evals"] = round(cp.cost().rel_pixel_evals, 4)
            row["cascade"] = [{"factor": list(st.factor), "user_steps": list(st.user_steps),
                               "guided_user_steps": st.guided_user_steps(), "start": round(st.start, 4),
                               "stop": None if st.stop is None else round(st.stop, 4),
                               "model_steps": st.steps, "thinned": st.thinned} for st in cp.stages]
        if label in guided:
            plan, sig = guided[label]
            calls = len(sig) - 1
            row["active_steps"] = len(plan.active_steps(sig))
            row["expected_pixel_evals"] = round(1 + sum(
                len([i for i in range(calls) if plan.weight(k, float(sig[i])) != 0]) / calls
                / math.prod(fh * fw for fh, fw in plan.levels[:k + 1])
                for k in range(len(plan.levels))), 4)
        rows.append(row)
    base = rows[0]
    ddim_base = next((r for r in rows if r["method"].startswith("DDIM plain")), base)
    for r in rows:
        ref = ddim_base if r["method"].startswith("DDIM") else base
        r["rel_calls"] = round(r["calls"] / ref["calls"], 4)
        r["rel_pixel_evals"] = round(r["pixel_evals"] / ref["pixel_evals"], 4)
        r["rel_wall"] = round(r["wall_s"] / ref["wall_s"], 4)
    return {"size": f"{w}x{h}", "factor": [mh, mw], "hires_chroma_strength": s_chroma, "rows": rows,
            "hires_chroma_strength_data_power": s_power}


def run_bench(
    n: int = 128,
    steps: int = 20,
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
    sampler: str = runs.DEFAULT_SAMPLER,
    grid: str = G.DEFAULT_GRID,
    cascade: bool = False,
    cascade_variants: bool = False,
    extra_cascades: dict[str, dict[str, Any]] | None = None,
    skip: tuple[str, ...] = (),
    peers: bool = False,
    out: Path | None = None,
    peer_specs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run every cell; returns the JSON-serialisable result (see the module docstring). With ``out``, each
    factor's partial results go to ``out/partial-<factor>.json`` after every batch."""
    model = runs.CountingModel(load_model(weights))
    t_all = time.time()
    res: dict[str, Any] = {
        "config": {"n": n, "steps": steps, "sampler": runs.a1111_label(sampler), "seed": seed, "batch": batch,
                   "scale": scale, "q_end": q_end, "shape": shape, "operator": operator, "grid": grid, "peers": peers,
                   "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")},
        "factors": {},
    }
    # native reference (the ceiling and the first pass of hires fix)
    model.reset()
    t0 = time.time()
    native = runs.run_kdiff(model, n, 32, 32, steps, seed, batch=batch, sampler=sampler,
                            progress=_Progress("native 32x32", n))
    nat = _Acc()
    nat.add(model, time.time() - t0)
    res["native"] = _cell("native", native, nat, None)
    # recorded trajectories (empirical chromatography): Euler and Euler a share the discrete sigmas
    preds: list[torch.Tensor] = []
    final = runs.run_kdiff(model, n, 32, 32, steps, seed, batch=batch, record=preds, sampler="euler",
                           progress=_Progress("native 32x32 Euler (empirical)", n))
    preds_anc: list[torch.Tensor] = []
    final_anc = runs.run_kdiff(model, n, 32, 32, steps, seed, batch=batch, record=preds_anc,
                               sampler="euler_ancestral",
                               progress=_Progress("native 32x32 Euler a (empirical)", n))
    res["empirical"] = empirical_chromatography(preds, final, preds_anc, final_anc, steps)
    del preds, preds_anc
    for fname in factors:
        h, w = FACTORS[fname]
        rows = cascade_rows((h // 32, w // 32), cascade_variants, grid) if cascade or cascade_variants else {}
        rows.update(extra_cascades or {})
        res["factors"][fname] = _factor_cells(
            model, fname, native, n, steps, seed, batch, scale, q_end, shape, operator, fixed, ddim,
            extra_plans or {}, baselines, sampler, grid, rows, skip, peers,
            None if out is None else out / f"partial-{fname}.json", peer_specs)
    res["wall_s"] = round(time.time() - t_all, 1)
    return res


def _f(v: Any, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def markdown(res: dict[str, Any]) -> str:
    """The benchmark tables (quality and cost; empirical chromatography) as markdown."""
    c = res["config"]
    nat = res["native"]
    out = [f"Toy benchmark: {c['n']} samples per cell (seeds {c['seed']}…{c['seed'] + c['n'] - 1}), "
           f"{c['sampler']} (scheduler Automatic) {c['steps']} steps; native 32×32 ceiling: one object "
           f"{_f(nat['one_object'])}, proper face "
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
    plans = [(f, r) for f, fv in res["factors"].items() for r in fv["rows"] if "cascade" in r]
    if plans:
        out += ["", "Cascade stages (1-based user steps, inclusive; the size of each stage):", "",
                "| factor | method | stages |", "|---|---|---|"]
        for f, r in plans:
            parts = []
            for st in r["cascade"]:
                g = st["guided_user_steps"]
                fh, fw = st["factor"]
                side = f"{32 * fh}²" if fh == fw else f"{32 * fh}×{32 * fw}"
                parts.append(f"{side} steps {st['user_steps'][0] + 1}–{st['user_steps'][1] + 1}"
                             + (f" in {st['model_steps']}" if st.get("thinned") else "")
                             + (f" guided {g[0] + 1}–{g[1] + 1}" if g else "")
                             + (f" (from sigma {st['start']:.3g})" if st["user_steps"][0] else ""))
            out.append(f"| {f} | {r['method']} | {' → '.join(parts)} |")
    out.append("")
    out.append(f"Wall time {res['wall_s']:.0f} s, {c['threads']} torch threads.")
    return "\n".join(out)


def _parse_plan(text: str) -> tuple[str, dict[str, Any]]:
    kw: dict[str, Any] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in ("shape", "q_end", "operator", "scale", "sigma_lo", "grid", "power"):
            raise ValueError(f"plan: unknown key {k!r} in {text!r}")
        if k == "sigma_lo":  # a sigma window from the start down to sigma_lo
            kw["window"], kw["window_range"] = "sigma", (1e6, float(v))
        else:
            kw[k] = float(v) if k in ("q_end", "scale", "power") else v.strip()
    return f"plan {text}", kw


def _parse_cascade(text: str) -> tuple[str, dict[str, Any]]:
    kw: dict[str, Any] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if k in ("loss", "power", "strength", "q_end", "scale", "density"):
            kw[k] = float(v)
        elif k in ("handover", "upscaler", "grid"):
            kw[k] = v
        elif k == "chain":
            kw[k] = v.lower() in ("1", "true")
        else:
            raise ValueError(f"cascade-row: unknown key {k!r} in {text!r}; allowed: loss, power, handover, "
                             "upscaler, chain, strength, grid, q_end, scale, density")
    return f"cascade {text}", kw


def bench_main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m lib_chroma bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized: 4 samples, 10 steps, factor 2x only")
    p.add_argument("--n", type=int, default=None, help="samples per cell (default 128; quick 4)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; quick 10)")
    p.add_argument("--sampler", default=runs.DEFAULT_SAMPLER, choices=tuple(runs.A1111_LABELS),
                   help="k-diffusion sampler of every row but DDIM (default dpmpp_2m: A1111's default, Karras)")
    p.add_argument("--factors", default=None, help="comma-separated of 2x,3x,4x (default all; quick 2x)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    # the library's defaults (what the WebUI and the demo use)
    p.add_argument("--scale", type=float, default=G.DEFAULT_SCALE)
    p.add_argument("--q-end", type=float, default=G.DEFAULT_Q_END)
    p.add_argument("--shape", default=G.DEFAULT_SHAPE)
    p.add_argument("--operator", default=G.DEFAULT_OPERATOR)
    p.add_argument("--grid", default=G.DEFAULT_GRID, choices=G.GRIDS)
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed-window guidance rows")
    p.add_argument("--no-ddim", action="store_true", help="skip the DDIM rows")
    p.add_argument("--no-baselines", action="store_true", help="skip the upscale and hires rows")
    p.add_argument("--candidates", action="store_true", help="add the default-tuning candidate rows")
    p.add_argument("--peers", action="store_true",
                   help="add the peers (Deep Shrink, HiDiffusion, ScaleCrafter, DemoFusion, Deep Shrink + guidance) "
                        "at 2x and 4x")
    p.add_argument("--peer", action="append", default=[], metavar="NAME[:K=V,...]",
                   help="one peer row at 2x and 4x, e.g. deep_shrink:end=0.6,block=1 or "
                        "scalecrafter:guided=1 (repeatable; names and keys: bench.PEER_KEYS)")
    p.add_argument("--plan", action="append", default=[], metavar="K=V,...",
                   help="extra guidance row from GuidancePlan.build keywords, e.g. shape=fade,q_end=0.99,"
                        "operator=bilinear,scale=1,grid=fixed or shape=constant,sigma_lo=0.5 (repeatable)")
    p.add_argument("--cascade", action="store_true",
                   help="add the chromatographic cascade rows (stop rule with the data's and with unit power; "
                        "the chain for 4x)")
    p.add_argument("--cascade-variants", action="store_true",
                   help="add cascade rows comparing handovers, upscalers and fixed hires strengths")
    p.add_argument("--cascade-row", action="append", default=[], metavar="K=V,...",
                   help="extra cascade row: loss=0.2,power=1,handover=fresh,upscaler=bicubic,chain=1,strength=0.5,"
                        "grid=fixed,q_end=1,scale=1.5,density=1")
    p.add_argument("--skip", action="append", default=[], metavar="TEXT",
                   help="leave out the rows whose label contains TEXT (repeatable; plain always runs)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    n = args.n or (4 if args.quick else 128)
    steps = args.steps or (10 if args.quick else 20)
    factors = tuple(f for f in args.factors.split(",") if f and f != "none") if args.factors is not None else (
        ("2x",) if args.quick else tuple(FACTORS))
    for f in factors:
        if f not in FACTORS:
            raise ValueError(f"factors: unknown {f!r}; allowed: {', '.join(FACTORS)}")
    for spec in args.peer:
        parse_peer(spec)
    if n < 1 or steps < 2:
        raise ValueError("n: must be >= 1 and steps >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_bench(n, steps, factors, args.seed, args.batch, args.scale, args.q_end, args.shape, args.operator,
                    fixed=not args.no_fixed, ddim=not args.no_ddim, weights=args.weights,
                    extra_plans={**(candidate_plans(args.scale) if args.candidates else {}),
                                 **dict(_parse_plan(t) for t in args.plan)},
                    baselines=not args.no_baselines, sampler=args.sampler, grid=args.grid,
                    cascade=args.cascade, cascade_variants=args.cascade_variants,
                    extra_cascades=dict(_parse_cascade(t) for t in args.cascade_row), skip=tuple(args.skip),
                    peers=args.peers, out=args.out, peer_specs=tuple(args.peer))
    res["command"] = "python -m lib_chroma bench " + " ".join(argv or [])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    (args.out / "bench.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main())
