"""Benchmark of the latent model: ``python -m lib_chroma bench --model latent [--quick] [--out DIR]``.

Every row samples ``n`` images with prompts naming all five attributes (:func:`text.prompt_set` with the run's
seed: prompt ``i`` and noise seed ``seed + i`` in every row, so rows differ only by method), decodes them and
scores them in pixels (:mod:`lib_chroma.toy.latent.scorer`): one object, two eyes (one object with exactly two
eyes), proper face, each prompt attribute (fraction of images whose reading matches the prompt), all attributes
at once, detail, blockiness on the ``m f``-pixel grid (``f = 4``; 1 = no grid imprint; at phase 0, at the worst
phase, and over the decoder's other cell boundaries, ``grid_over_cells``), and the colour shift
``||mean RGB - mean RGB of the native samples||``.

Native rows (``--native``): 16 x 16 latents (64 px) at each CFG scale and sampler: the ceiling every factor row
is read against. Factor rows at ``m``x (``16 m`` latents, ``64 m`` px), ``--factors 2 3 4``:

- ``native 64 px (reference)``: the first pass (the ceiling of this column);
- ``plain``; ``upscale only`` (bilinear pixel upscale of the native samples, no diffusion); the truth at the output
  size through the autoencoder (:func:`truth_through_autoencoder`: scenes with the prompts' attributes rendered at
  ``64 m`` px, encoded and decoded: the blockiness and detail of true images as the decoder renders them);
- ``hires fix`` (A1111's second pass on bilinearly upscaled latents) at A1111's default strength 0.70 and at
  the chromatography strength (level m kept 90 % at the first hires sigma) for the latents' measured level-1
  power ``P`` (``meta["level_power"]["1"]``, :func:`lib_chroma.toy.runs.hires_chroma_strength`), and at that
  strength with an image upscaler (decode, bilinear pixels, encode: :func:`runs.upscale_pixels`);
- guidance through :mod:`lib_chroma.guidance` inside the CFG (:data:`STANDARD_PLANS`): the library's defaults
  (``GuidancePlan.build((m, m), sigmas=...)``), the WebUI's (the same with ``q_end = LATENT_Q_END``), the
  paper's latent recipe (constant ``w = 1.2`` over the first ``eta = 60 %`` and ``30 %`` of the steps), all
  steps at constant ``w = 1``, and any ``--plan`` given.

``--plan`` takes ``key=value`` pairs: the :meth:`GuidancePlan.build` keywords ``scale``, ``shape``, ``q_end``,
``operator``, ``grid``, ``power``, and ``eta`` (constant weight over the first ``eta`` of the steps) or
``sigma_lo`` (from the start down to that sigma); ``coarse=1`` also guides one level coarser than native (the
plan's levels become the factor's levels followed by ``(2, 2)``: the native-size prediction is itself guided by
the model at half its native size, nested as in :func:`lib_chroma.guidance.guide_x0`); ``space=pixel`` makes the
correction on decoded images and encodes it back (:class:`lib_chroma.toy.latent.runs.PixelSpaceGuidedDenoiser`,
one level, on the plan's grid); ``space=resampled`` uses the latent resamplers fitted to the autoencoder
(:mod:`lib_chroma.resampler`, shipped in ``weights/latent_resamplers.safetensors``) for ``D`` and ``U``
(``--resamplers dead-leaves``: fitted as the WebUI fits them; ``--resampler-keep K``: used with ``keep = K``;
``--resampler-damp-min S``: no damping below full-size sigma ``S``).

``--peers``: the UNet-patching peers (:data:`PEER_ROWS`) with their SD 1.5 defaults for the factor, Deep Shrink
with the library's default guidance, its low-resolution call bypassing the shrink (as the WebUI adapters do) or
not, and DemoFusion (:func:`lib_chroma.toy.latent.runs.run_demofusion`: native-size windows and dilated
sub-lattices through the same CFG; DPM++ 2M and Euler only). ``--skip TEXT`` leaves out the guided and peer rows
whose label contains TEXT.

``--cascade``: the chromatographic cascade (:func:`cascade_plans`, :func:`lib_chroma.toy.latent.runs.run_cascade`):
the WebUI's stop rule (unit power) and the same with the latents' measured power (``--cascade-loss Q``: and with
other loss bounds; ``--cascade-rule Q,D``: loss bound Q and second-pass density D), the full-size pass guided with
the WebUI's window; each with A1111's "Latent" upscaler (bilinear latents) and with an image upscaler (decode,
bilinear pixels, encode) for the first pass's x0 prediction; the library's handover (``--cascade-handover H``: also
with handover H); ``--cascade-chain``: the WebUI's rule as a chain too, one stage per level (4×: 1× → 2× → 4×).

``--prompts``: the time-dependent prompt rows of :mod:`lib_chroma.toy.latent.switching` at each factor
(``--factors 1 2``: native, and 2x under the library's default guidance) and CFG scale, and at native size when
each attribute and latent level settles; written to ``prompts_<factors>_<sampler>_<steps>.json``.

Cost columns relative to plain sampling at the same size: model calls (batched CFG evaluations, any size),
pixel-evaluations ``sum(rows h w)`` and wall time (sampling and decoding; scoring excluded). Rows run one
after another, so wall ratios on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from lib_chroma.cascade import DEFAULT_DENSITY, DEFAULT_HANDOVER, CascadePlan, plan_cascade
from lib_chroma.guidance import GuidancePlan, factor_levels
from lib_chroma.settings import LATENT_Q_END, latent_cascade_loss
from lib_chroma.toy import peers as P

from . import data, runs, scorer, switching, text
from . import resamplers as latent_resamplers
from .train import LatentModel, load_model

DEFAULT_OUT = Path("outputs/latent_bench")
F_DOWN = 4
NATIVE_LATENT = 16
SUMMARY_KEYS = ("one_object", "two_eyes", "proper_face", "attr_position", "attr_size", "attr_colour", "attr_eyes",
                "attr_texture", "all_attrs", "detail")
#: Default seeds: held out (training draws data from seeds 0-4 and per-step seeds; 2000+ are the tuning seeds).
HELD_OUT_SEED = 5000
TUNING_SEED = 2000

#: The guided rows every factor gets: label -> plan spec (see :func:`make_plan`).
STANDARD_PLANS: dict[str, dict[str, Any]] = {
    "guidance, library defaults": {},
    f"guidance, WebUI default (hold to r2 = {LATENT_Q_END:g})": {"q_end": LATENT_Q_END},
    "guidance, paper's latent recipe (first 60 %, w=1.2)": {"scale": 1.2, "eta": 0.6},
    "guidance, first 30 %, w=1.2": {"scale": 1.2, "eta": 0.3},
    "guidance, all steps, constant w=1": {"scale": 1.0, "eta": 1.0},
}
PLAN_KEYS = ("scale", "shape", "q_end", "operator", "grid", "power", "eta", "sigma_lo", "coarse", "space")
#: ``space=``: average pooling of latents, the correction through the autoencoder, or the fitted resamplers
SPACES = ("latent", "pixel", "resampled")


def parse_plan(spec: str) -> dict[str, Any]:
    """``"scale=1.2,eta=0.6"`` -> ``{"scale": 1.2, "eta": 0.6}`` (keys :data:`PLAN_KEYS`)."""
    out: dict[str, Any] = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if k not in PLAN_KEYS or not v:
            raise ValueError(f"plan: unknown or empty key {k!r} in {spec!r}; keys: {', '.join(PLAN_KEYS)}")
        if k == "space" and v not in SPACES:
            raise ValueError(f"plan: space must be one of {', '.join(SPACES)}, got {v!r}")
        out[k] = v if k in ("shape", "operator", "grid", "space") else int(v) if k == "coarse" else float(v)
    return out


def make_plan(m: int, steps: int, sampler: str, spec: dict[str, Any]) -> GuidancePlan:
    """The plan of a spec (:func:`parse_plan`) at factor ``m`` x ``m`` on the sampler's A1111 sigmas.

    ``eta``: ``window="fraction", window_range=(0, eta)`` (constant weight); ``sigma_lo``: ``window="sigma",
    window_range=(inf, sigma_lo)``; ``coarse=1``: levels ``factor_levels(m, m) + ((2, 2),)`` with the other
    settings of the built plan."""
    kw = {k: v for k, v in spec.items() if k not in ("eta", "sigma_lo", "coarse", "space")}
    if "eta" in spec:
        kw.update(window="fraction", window_range=(0.0, float(spec["eta"])))
    elif "sigma_lo" in spec:
        kw.update(window="sigma", window_range=(math.inf, float(spec["sigma_lo"])))
    plan = runs.make_plan((m, m), steps, sampler, **kw)
    if spec.get("coarse"):
        plan = GuidancePlan(factor_levels(m, m) + ((2, 2),), plan.scale, plan.sigma_hi, plan.sigma_lo, plan.shape,
                            plan.q_end, plan.operator, plan.power, plan.grid)
    return plan


def tile(imgs: torch.Tensor, cols: int = 8) -> Any:
    """``(N, 3, H, W)`` images in ``[-1, 1]`` as one uint8 ``(rows H, cols W, 3)`` array, row-major, black fill."""
    import numpy as np

    n, _, h, w = imgs.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    a = ((imgs.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = a[i]
    return out


#: The resamplers file ``space=resampled`` rows use (``None``: the shipped one) and the ``keep`` and
#: ``damp_sigma_min`` they are used with.
RESAMPLERS: dict[str, Any] = {"path": None, "keep": 1.0, "damp_sigma_min": 0.0}


def _resamplers(model: LatentModel) -> dict[tuple[int, int], Any]:
    rs = latent_resamplers.load(RESAMPLERS["path"], model)
    keep, floor = float(RESAMPLERS["keep"]), float(RESAMPLERS.get("damp_sigma_min", 0.0))
    if keep == 1.0:
        return rs
    return {k: dataclasses.replace(v, keep=keep, damp_sigma_min=floor) for k, v in rs.items()}


#: Where :func:`_row` saves the first images of each row (``None``: nowhere), and how many.
SAMPLES: dict[str, Any] = {"dir": None, "count": 16}


def _save_samples(label: str, imgs: torch.Tensor) -> None:
    if SAMPLES["dir"] is None or SAMPLES["count"] <= 0:
        return
    import re

    from matplotlib.image import imsave

    d = Path(SAMPLES["dir"])
    d.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    if len(name) > 80:  # long labels may differ only at the end: keep them apart
        name = f"{name[:71]}_{zlib.crc32(name.encode()):08x}"
    imsave(d / f"{name}.png", tile(imgs[:SAMPLES["count"]]))


def _row(label: str, imgs: torch.Tensor, prompts: list[dict[str, str]], grid: int | None,
         unet: runs.CountingUNet | None, seconds: float, tag: str = "") -> dict[str, Any]:
    _save_samples(f"{tag} {label}", imgs)
    s = scorer.summarize(scorer.score_images(imgs, (grid,) if grid else ()), prompts)
    row: dict[str, Any] = {"method": label, **{k: s[k] for k in SUMMARY_KEYS}, "seconds": round(seconds, 1),
                           "summary": s}
    if grid:
        row["blockiness"] = s[f"blockiness_{grid}"]
        row["blockiness_worst"] = s[f"blockiness_worst_{grid}"]
        row["grid_over_cells"] = s[f"grid_over_cells_{grid}"]
    print(f"[{tag}] {_fmt(row)} seconds {row['seconds']}", flush=True)  # as it comes; the table follows
    if unet is not None:
        row["calls"] = sum(unet.calls.values())
        row["pixel_evals"] = unet.pixel_evals
        row["calls_by_size"] = {f"{h}x{w}": c for (h, w), c in unet.calls.items()}
    return row


TRUTH_LABEL = "{px} px truth through the autoencoder (render, E, G; no diffusion)"


@torch.no_grad()
def truth_through_autoencoder(model: LatentModel, prompts: list[dict[str, str]], seed: int, px: int,
                              chunk: int = 32) -> torch.Tensor:
    """``G(E(render(scene, px)))`` for scenes with the prompts' attributes (data seed ``seed``): what the
    autoencoder makes of true images at the output size, the reference for the decoded rows' blockiness and
    detail (the decoder's own cell pattern included)."""
    scenes = data.sample_scenes(len(prompts), seed, list(prompts))
    out = []
    for i in range(0, len(scenes), chunk):
        x = torch.from_numpy(data.render(scenes[i:i + chunk], px)).float()
        out.append(model.ae.decode(model.ae.encode(x)).clamp(-1, 1))
    return torch.cat(out)


def run_native(model: LatentModel, n: int, seed: int, cfgs: list[float], samplers: list[tuple[str, int]],
               batch: int = 32) -> list[dict[str, Any]]:
    """Native 64 px rows for every (sampler, steps) and CFG scale."""
    prompts = text.prompt_set(n, seed)
    unet = runs.CountingUNet(model.unet)
    out = []
    for sampler, steps in samplers:
        for cfg in cfgs:
            unet.reset()
            t0 = time.time()
            z = runs.run_txt2img(model, unet, prompts, NATIVE_LATENT, NATIVE_LATENT, steps, seed, cfg=cfg,
                                 sampler=sampler, batch=batch)
            imgs = runs.decode(model, z)
            row = _row(f"native, {runs.a1111_label(sampler)} {steps} steps, CFG {cfg:g}", imgs, prompts, None,
                       unet, time.time() - t0, tag=f"seed {seed}")
            row.update(sampler=sampler, steps=steps, cfg=cfg, n=n, seed=seed)
            out.append(row)
    return out


#: ``--peers`` rows: label -> (peer name for :func:`lib_chroma.toy.peers.make_peer`, guided with the library's
#: default plan, low call bypasses).
PEER_ROWS: dict[str, tuple[str, bool, bool]] = {
    "Deep Shrink (x1/2 bicubic after the first downsample, 0-35 %)": ("deep_shrink", False, True),
    "HiDiffusion RAU-Net (its SD 1.5 defaults for the factor)": ("hidiffusion", False, True),
    "ScaleCrafter re-dilation (its SD 1.5 defaults for the factor)": ("scalecrafter", False, True),
    "Deep Shrink + guidance, library default (low-res call bypasses the shrink)": ("deep_shrink", True, True),
    "Deep Shrink + guidance, library default, low-res call shrunk too (unprotected)": ("deep_shrink", True, False),
}


def demofusion_label(m: int) -> str:
    """The DemoFusion row's label at factor ``m``."""
    return f"DemoFusion (native pass + scales 2-{m}, cosine 3/1/1, sigma 1)"


#: ``--cascade`` upscalers: label part -> :func:`lib_chroma.toy.latent.runs.run_cascade` ``upscaler``.
CASCADE_UPSCALERS = {"Latent upscaler": "bilinear", "image upscaler": "pixel"}
#: ``--cascade-resampled``: the same cascades with the fitted resamplers in the guided stages, enlarged by these
CASCADE_RESAMPLED_UPSCALERS = {"fitted resamplers, Latent upscaler": "bilinear",
                               "fitted resamplers, image upscaler": "pixel",
                               "fitted resamplers, fitted up": "fitted"}


def cascade_plans(model: LatentModel, m: int, steps: int, sampler: str,
                  losses: tuple[float, ...] = (), rules: tuple[tuple[float, float], ...] = (),
                  chain: bool = False) -> dict[str, CascadePlan]:
    """``--cascade`` rows: the WebUI's rule (unit power, loss ``latent_cascade_loss`` of the factor, its guidance held
    to ``LATENT_Q_END``) and the same rule with the latents' measured level-1 power when that moves a step; ``losses``:
    the WebUI's rule with these loss bounds q as well (``--cascade-loss``); ``rules``: (loss, density) pairs, unit
    power (``--cascade-rule``); ``chain``: the WebUI's rule as a chain too, one stage per level of a factor with
    several (4× = 1× → 2× → 4×, ``--cascade-chain``; the WebUI's hires fix has one handover, so this is the bench's
    only). Labels name the stages' user steps (1-based), the full-size pass's model steps when it
    thins the user's schedule, and its guided steps."""
    sig = runs.latent_sigmas(sampler, steps)
    out: dict[str, CascadePlan] = {}
    q_webui = latent_cascade_loss((m, m))
    todo = [("the WebUI's rule, unit power", 1.0, q_webui, DEFAULT_DENSITY, False)]
    if "level_power" in model.meta:
        power = float(model.meta["level_power"]["1"])
        todo.append((f"latent power {power:.2f}", power, q_webui, DEFAULT_DENSITY, False))
    todo += [(f"unit power, q {q:g}", 1.0, q, DEFAULT_DENSITY, False) for q in losses if q != q_webui]
    todo += [(f"unit power, q {q:g}, density {d:g}", 1.0, q, d, False) for q, d in rules]
    if chain and len(factor_levels(m, m, nested=True)) > 1:
        todo.append(("chain, the WebUI's rule, unit power", 1.0, q_webui, DEFAULT_DENSITY, True))
    for what, power, loss, density, chained in todo:
        plan = plan_cascade(sig, (m, m), power=power, loss=loss, density=density, chain=chained,
                            guidance={"q_end": LATENT_Q_END})
        if plan is None:
            continue
        parts = []
        for st in plan.stages:
            a, b = st.user_steps
            side = NATIVE_LATENT * st.factor[0] * F_DOWN
            g = st.guided_user_steps()
            parts.append(f"{side}² steps {a + 1}–{b + 1}" + (f" in {st.steps}" if st.thinned else "")
                         + ("" if g is None else f" guided {g[0] + 1}–{g[1] + 1}"))
        if not any(label.endswith(": " + " → ".join(parts)) for label in out):  # a power that moves no step
            out[f"cascade, {what}: {' → '.join(parts)}"] = plan
    return out


def run_factor(model: LatentModel, m: int, n: int, seed: int, cfg: float, sampler: str, steps: int,
               plans: dict[str, dict[str, Any]], baselines: bool = True, batch: int = 16,
               peers: bool = False, skip: tuple[str, ...] = (), cascade: bool = False,
               cascade_losses: tuple[float, ...] = (), cascade_resampled: bool = False,
               cascade_rules: tuple[tuple[float, float], ...] = (),
               cascade_handovers: tuple[str, ...] = (), cascade_chain: bool = False) -> list[dict[str, Any]]:
    """The rows of factor ``m`` (module docstring); colour shift against the native row of the same prompts and
    seeds, costs relative to ``plain``. ``peers``: the :data:`PEER_ROWS` (the UNet-patching peers of
    :mod:`lib_chroma.toy.peers` on the latent UNet, mapped by :func:`lib_chroma.toy.peers.toy_map`) and DemoFusion
    (its native pass is the native row's, whose cost it includes). ``skip``: guided and peer rows whose label
    contains one of these are left out. ``cascade``: the :func:`cascade_plans` rows (``cascade_losses``,
    ``cascade_rules``: its extra loss bounds and (loss, density) rules; ``cascade_chain``: its chain row too;
    ``cascade_resampled``: also with the fitted
    resamplers, :data:`CASCADE_RESAMPLED_UPSCALERS`; ``cascade_handovers``: also with these handovers, each named in
    its label)."""
    prompts = text.prompt_set(n, seed)
    unet = runs.CountingUNet(model.unet)
    size, grid = NATIVE_LATENT * m, m * F_DOWN
    tag = f"{m}x {sampler} {steps} cfg {cfg:g} seed {seed}"
    rows = []
    t0 = time.time()
    low = runs.run_txt2img(model, unet, prompts, NATIVE_LATENT, NATIVE_LATENT, steps, seed, cfg=cfg,
                           sampler=sampler, batch=batch)
    t_native = time.time() - t0
    native_img = runs.decode(model, low)
    native = _row("native 64 px (reference)", native_img, prompts, None, unet, t_native, tag=tag)
    rows.append(native)
    unet.reset()
    t0 = time.time()
    z = runs.run_txt2img(model, unet, prompts, size, size, steps, seed, cfg=cfg, sampler=sampler, batch=batch)
    rows.append(_row("plain", runs.decode(model, z), prompts, grid, unet, time.time() - t0, tag=tag))
    if baselines:
        t0 = time.time()
        up = torch.nn.functional.interpolate(native_img, scale_factor=m, mode="bilinear", align_corners=False)
        rows.append(_row("upscale only (bilinear pixels, no diffusion)", up, prompts, grid, None,
                         t_native + time.time() - t0, tag=tag))
        rows.append(_row(TRUTH_LABEL.format(px=64 * m), truth_through_autoencoder(model, prompts, seed, 64 * m),
                         prompts, grid, None, 0.0, tag=tag))
        power = float(model.meta["level_power"]["1"])
        s_chroma = runs.hires_chroma_strength(m, steps, sampler, power=power)
        for strength, what, upscaler in ((runs.A1111_HIRES_STRENGTH, "A1111 default", "latent"),
                                         (s_chroma, f"chromatography, latent power {power:.2f}", "latent"),
                                         (s_chroma, f"chromatography, latent power {power:.2f}", "pixel")):
            unet.reset()
            t0 = time.time()
            z = runs.run_hires(model, unet, low, prompts, size, size, steps, seed, strength=strength, cfg=cfg,
                               sampler=sampler, batch=batch, upscaler=upscaler)
            label = f"hires fix {strength:.2f} ({what})" + ("" if upscaler == "latent" else ", pixel upscaler")
            row = _row(label, runs.decode(model, z), prompts, grid, unet, t_native + time.time() - t0, tag=tag)
            row["calls"] += native["calls"]
            row["pixel_evals"] += native["pixel_evals"]
            rows.append(row)
    sig = runs.latent_sigmas(sampler, steps)
    for label, spec in plans.items():
        if any(t in label for t in skip):
            continue
        plan = make_plan(m, steps, sampler, spec)
        unet.reset()
        t0 = time.time()
        rsm = _resamplers(model) if spec.get("space") == "resampled" else None
        z = runs.run_txt2img(model, unet, prompts, size, size, steps, seed, cfg=cfg, plan=plan, sampler=sampler,
                             batch=batch, pixel_space=spec.get("space") == "pixel", resamplers=rsm)
        row = _row(label, runs.decode(model, z), prompts, grid, unet, time.time() - t0, tag=tag)
        row["plan"] = {"spec": spec, "levels": plan.levels, "scale": plan.scale, "shape": plan.shape,
                       "q_end": plan.q_end, "operator": plan.operator, "grid": plan.grid, "power": plan.power,
                       "window_steps": plan.window_steps(sig)}
        rows.append(row)
    cplans = cascade_plans(model, m, steps, sampler, cascade_losses, cascade_rules, cascade_chain) if cascade else {}
    handovers = (DEFAULT_HANDOVER, *(h for h in cascade_handovers if h != DEFAULT_HANDOVER))
    for base, cplan in cplans.items():
        ups = {**CASCADE_UPSCALERS, **(CASCADE_RESAMPLED_UPSCALERS if cascade_resampled else {})}
        for what, upscaler in ups.items():
            rsm = _resamplers(model) if what.startswith("fitted") else None  # once for all its handovers
            for handover in handovers:
                label = f"{base}, {what}" + ("" if handover == DEFAULT_HANDOVER else f", {handover} handover")
                if any(t in label for t in skip):
                    continue
                unet.reset()
                t0 = time.time()
                z = runs.run_cascade(model, unet, prompts, cplan, seed, cfg=cfg, sampler=sampler, batch=batch,
                                     upscaler=upscaler, resamplers=rsm, handover_mode=handover)
                rows.append(_row(label, runs.decode(model, z), prompts, grid, unet, time.time() - t0, tag=tag))
    if peers:
        pm = P.toy_map(model.unet)
        for label, (name, guided, bypass) in PEER_ROWS.items():
            if any(t in label for t in skip):
                continue
            plan = make_plan(m, steps, sampler, {}) if guided else None
            unet.reset()
            t0 = time.time()
            z = runs.run_txt2img(model, unet, prompts, size, size, steps, seed, cfg=cfg, plan=plan, sampler=sampler,
                                 batch=batch, patch=lambda name=name: P.make_peer(name, pm, m, steps),
                                 bypass_low=bypass)
            rows.append(_row(label, runs.decode(model, z), prompts, grid, unet, time.time() - t0, tag=tag))
        label = demofusion_label(m)
        if not any(t in label for t in skip):
            unet.reset()
            t0 = time.time()
            z = runs.run_demofusion(model, unet, low, prompts, m, steps, seed, cfg=cfg, sampler=sampler, batch=batch)
            row = _row(label, runs.decode(model, z), prompts, grid, unet, t_native + time.time() - t0, tag=tag)
            row["calls"] += native["calls"]
            row["pixel_evals"] += native["pixel_evals"]
            rows.append(row)
    plain = rows[1]
    for r in rows:
        r.update(factor=m, sampler=sampler, steps=steps, cfg=cfg, n=n, seed=seed)
        r["colour_shift"] = scorer.colour_shift(r["summary"], native["summary"])
        if "calls" in r:
            r["calls_x"] = r["calls"] / plain["calls"]
            r["pixel_evals_x"] = r["pixel_evals"] / plain["pixel_evals"]
        r["wall_x"] = r["seconds"] / plain["seconds"]
        print(_fmt(r), flush=True)
    return rows


def _fmt(row: dict[str, Any]) -> str:
    parts = [f"{row['method']}:"] + [f"{k.replace('attr_', '')} {row[k]:.3f}" for k in SUMMARY_KEYS]
    for k in ("blockiness", "grid_over_cells", "colour_shift", "calls_x", "pixel_evals_x", "wall_x"):
        if k in row:
            parts.append(f"{k} {row[k]:.3f}")
    return " ".join(parts)


def markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows."""
    cols = ["method", *SUMMARY_KEYS, "blockiness", "blockiness_worst", "grid_over_cells", "colour_shift", "calls_x",
            "pixel_evals_x", "wall_x"]
    out = ["| " + " | ".join(c.replace("attr_", "") for c in cols) + " |", "|" + "---|" * len(cols)]
    three = ("colour_shift", "blockiness", "blockiness_worst", "grid_over_cells")  # columns read to 3 decimals
    for r in rows:
        cells = [r["method"]] + [("" if c not in r else f"{r[c]:.2f}" if c not in three else f"{r[c]:.3f}")
                                 for c in cols[1:]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def run_prompts(model: LatentModel, n: int, seed: int, cfgs: list[float], sampler: str, steps: int,
                factors: list[int], kinds: tuple[str, ...] = ("complementary", "conflicting"),
                scheduler: str = "Automatic") -> dict[str, Any]:
    """The prompt-switch rows (:mod:`switching`) per factor and CFG, and the native settling record per CFG."""
    targets = text.prompt_set(n, seed)
    rows, settling = [], {}
    for cfg in cfgs:
        tag = f"{sampler} {scheduler} {steps} cfg {cfg:g}"
        settling[f"{cfg:g}"] = st = switching.attribute_settling(model, n, seed, sampler, steps, cfg,
                                                                 scheduler=scheduler)
        print(f"[{tag}] attribute settle steps (0-based) {st['settle_step']}; level settle {st['level_settle']}, "
              f"band {st['band_settle']}, theory {st['level_theory']}; extension switch {st['switch_step']}",
              flush=True)
        for m in factors:
            ms = switching.methods(n, seed, sampler, steps, m, kinds, scheduler)
            for r in switching.run_methods(model, ms, targets, seed, sampler, steps, cfg, factor=m, tag=f"{m}x {tag}",
                                           scheduler=scheduler):
                rows.append({**r, "factor": m, "cfg": cfg, "sampler": sampler, "scheduler": scheduler,
                             "steps": steps, "n": n, "seed": seed})
    return {"rows": rows, "settling": settling}


def prompts_markdown(rows: list[dict[str, Any]]) -> str:
    """One markdown table per (factor, CFG)."""
    out = []
    for key in dict.fromkeys((r["factor"], r["cfg"]) for r in rows):
        out += [f"\n**{key[0]}x, CFG {key[1]:g}**\n", "| pairs | method | detail from step | layout kept | detail "
                "obtained | both | proper face |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if (r["factor"], r["cfg"]) == key:
                step = "" if r["switch_step"] is None else str(r["switch_step"] + 1)
                out.append(f"| {r['pairs']} | {r['method']} | {step} | {r['layout_kept']:.2f} | "
                           f"{r['detail_obtained']:.2f} | {r['both']:.2f} | {r['proper_face']:.2f} |")
    return "\n".join(out)


def bench_main(argv: list[str] | None = None) -> int:
    """CLI entry (module docstring); returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m lib_chroma bench --model latent",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                   help=f"first seed (held out: {HELD_OUT_SEED}; tuning seeds start at {TUNING_SEED})")
    p.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    p.add_argument("--sampler", default=runs.DEFAULT_SAMPLER, help="k-diffusion name: dpmpp_2m, euler_ancestral")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--factors", type=int, nargs="+", default=[2])
    p.add_argument("--native", action="store_true", help="native rows only: CFG scales x (DPM++ 2M 20, Euler a 30)")
    p.add_argument("--prompts", action="store_true",
                   help="time-dependent prompt rows at --factors (1 = native) and --cfg")
    p.add_argument("--pairs", nargs="+", choices=("complementary", "conflicting"),
                   default=["complementary", "conflicting"], help="with --prompts: which prompt pairs")
    p.add_argument("--scheduler", default="Automatic", help="with --prompts: an A1111 scheduler label (Karras, Beta…)")
    p.add_argument("--plan", action="append", default=[], metavar="K=V,...", help="an extra guided row")
    p.add_argument("--only-plans", action="store_true", help="no standard guided rows, only --plan rows")
    p.add_argument("--no-baselines", action="store_true", help="no upscale and hires rows")
    p.add_argument("--peers", action="store_true",
                   help="add the UNet-patching peers (Deep Shrink, HiDiffusion RAU-Net, ScaleCrafter, Deep Shrink + "
                        "guidance) at each factor")
    p.add_argument("--cascade", action="store_true", help="add the chromatographic cascade rows")
    p.add_argument("--cascade-loss", type=float, action="append", default=[], metavar="Q",
                   help="with --cascade: also the WebUI's rule with loss bound Q (repeatable)")
    p.add_argument("--cascade-rule", action="append", default=[], metavar="Q,D",
                   help="with --cascade: also the rule with loss bound Q and second-pass density D (repeatable)")
    p.add_argument("--cascade-handover", action="append", default=[], choices=("fresh", "renoise"), metavar="H",
                   help=f"with --cascade: also every cascade row with handover H (default {DEFAULT_HANDOVER}; fresh or "
                        "renoise, the two an image upscaler allows; repeatable)")
    p.add_argument("--cascade-chain", action="store_true",
                   help="with --cascade: the WebUI's rule as a chain too at factors of several levels (4x: 1x 2x 4x)")
    p.add_argument("--cascade-resampled", action="store_true",
                   help="with --cascade: also the cascades with the fitted resamplers (guided stages and handover)")
    p.add_argument("--skip", action="append", default=[], metavar="TEXT",
                   help="leave out guided and peer rows whose label contains TEXT (repeatable)")
    p.add_argument("--quick", action="store_true", help="8 samples, 2x, 6 steps (CI smoke run)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--resamplers", default=None,
                   help="the fitted resamplers of space=resampled rows: a file (default: the shipped ones) or "
                        "'dead-leaves' (fitted to the autoencoder without the model's data, as the WebUI does)")
    p.add_argument("--resampler-keep", type=float, default=1.0, metavar="K",
                   help="the share of the residual the resamplers keep, every factor (lib_chroma.resampler; the "
                        "WebUI's fitted resamplers: 0.9 at 2x2 levels, 1 at 3x)")
    p.add_argument("--resampler-damp-min", type=float, default=0.0, metavar="S",
                   help="with --resampler-keep below 1: the full-size sigma below which nothing is damped")
    p.add_argument("--images", type=int, default=16, help="save the first N images of each row as PNG (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    extra = {f"plan {t}": parse_plan(t) for t in args.plan}
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    SAMPLES.update(dir=args.out / "samples", count=args.images)
    RESAMPLERS.update(path=args.resamplers, keep=args.resampler_keep, damp_sigma_min=args.resampler_damp_min)
    n, steps, factors = (8, 6, [2]) if args.quick else (args.n, args.steps, args.factors)
    t0 = time.time()
    if args.prompts:
        factors = [1] if args.quick else factors
        rec = run_prompts(model, n, args.seed, args.cfg[:1] if args.quick else args.cfg, args.sampler, steps,
                          factors, tuple(args.pairs), args.scheduler)
        sched = "" if args.scheduler == "Automatic" else f"_{args.scheduler.lower().replace(' ', '_')}"
        name = f"prompts_{'_'.join(f'{m}x' for m in factors)}_{args.sampler}{sched}_{steps}"
        table = prompts_markdown(rec["rows"])
    else:
        if args.native:
            rows = run_native(model, n, args.seed, args.cfg, [("dpmpp_2m", 20), ("euler_ancestral", 30)])
            name = "native"
        else:
            plans = {**({} if args.only_plans else STANDARD_PLANS), **extra}
            rows = []
            for m in factors:
                for cfg in args.cfg:
                    rows += run_factor(model, m, n, args.seed, cfg, args.sampler, steps, plans,
                                       baselines=not args.no_baselines, peers=args.peers, skip=tuple(args.skip),
                                       cascade=args.cascade, cascade_losses=tuple(args.cascade_loss),
                                       cascade_resampled=args.cascade_resampled,
                                       cascade_rules=tuple(tuple(float(v) for v in r.split(","))
                                                           for r in args.cascade_rule),
                                       cascade_handovers=tuple(args.cascade_handover),
                                       cascade_chain=args.cascade_chain)
            name = f"{'_'.join(f'{m}x' for m in factors)}_{args.sampler}_{steps}"
        for r in rows:
            r.pop("summary", None)
        rec = {"rows": rows}
        table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "n": n, "wall_s": round(time.time() - t0, 1),
              "threads": args.threads, **rec}
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))
    (args.out / f"{name}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main())
