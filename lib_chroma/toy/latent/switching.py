"""Time-dependent prompts on the latent model: does a layout prompt followed by a detail prompt compose them?

Every sample ``i`` has a target attribute set ``t_i`` (:func:`text.prompt_set` with the run's seed). Its
**layout prompt** names the coarse attributes :data:`COARSE` of ``t_i`` ("a large red face on the left"), its
**detail prompt** the fine ones :data:`FINE` ("a face, slit eyes, striped background"). In **conflicting**
pairs the layout prompt also names the other eye style and another background texture than the detail
prompt ("a large red face on the left, round eyes, dotted background"; drawn from ``default_rng(seed + 1)``):
the detail prompt should win the fine attributes without moving the face. The target is always ``t_i``: coarse
attributes from the layout prompt, fine ones from the detail prompt.

Methods (:func:`methods`), each a pair of prompts and the model call from which the second one is used
(:class:`lib_chroma.toy.latent.runs.CFGDenoiser`, A1111's prompt editing):

- ``combined prompt`` (all five attributes in one prompt), ``layout prompt alone``, ``detail prompt alone``;
- A1111's ``[layout:detail:f]`` for ``f`` in :data:`FRACTIONS`: A1111 reads ``N = min(T, int(f T))`` over the
  pass's ``T`` model calls and uses the detail prompt from call ``N + 1`` (throughout when ``N < 1``;
  :func:`a1111_switch_call`);
- the extension's switch at latent level ``L``, ``q`` = :data:`lib_chroma.prompts.DEFAULT_SWITCH_Q`:
  the detail prompt from the first step after ``r_L(sigma) >= q``, i.e. after ``sigma <= L sqrt((1 - q) / q)``
  (:func:`lib_chroma.prompts.switch_step`, moved off step 1 as A1111 needs; :func:`extension_switch_call`).
  ``L`` and ``q`` only enter through that sigma threshold, so the rule is "switch at a fixed noise level",
  where A1111's fraction is "switch at a fixed share of the steps".
- ``marker mode``: the extension's marker mode at its default level, ``[layout : layout + detail]``.

Scores (:func:`switch_scores`, on the scorer's attribute readings): ``layout_kept`` (all coarse attributes
read as the layout prompt asked), ``detail_obtained`` (all fine ones as the detail prompt asked), ``both``,
``proper_face`` and the per-attribute rates.

:func:`attribute_settling` measures when each attribute is decided on this model: native sampling with the
prompt "a face" (no attribute named, so the noise decides every attribute, as it decides the attributes a
prompt leaves open), the decoded x0 prediction of every step read by the scorer; an attribute *settles* at
the first step from which at least :data:`SETTLE_AGREEMENT` of the samples read as their final image does.
(With the attribute named, the first prediction already shows it: the prompt, not the noise, decides it.)
Beside it, the step at which each latent level settles in energy (:func:`lib_chroma.empirical.
generated_fraction`, ``g >= 1/2``) and each band in projection on the final latent (:func:`lib_chroma.empirical.
projected_fraction`), and the theory's step for that level.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lib_chroma.empirical import generated_fraction, projected_fraction, settle_step, theory_settle_step
from lib_chroma.prompts import DEFAULT_SWITCH_LEVEL, DEFAULT_SWITCH_Q, realized_switch, switch_step

from . import data, runs, scorer, text
from .train import LatentModel

#: Attributes the layout prompt names (decided at coarse levels) and those the detail prompt names (fine).
COARSE = ("position", "size", "colour")
FINE = ("eyes", "texture")
#: A1111 ``[layout:detail:f]`` rows.
FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8)
#: Switch levels measured at native size; at factor m each is also measured times m (native-image units).
SWITCH_LEVELS = (1, 2, 4, 8)
#: An attribute is settled once this share of the samples reads as its final image.
SETTLE_AGREEMENT = 0.9
#: Latent levels whose settling (energy, band projection, theory) :func:`attribute_settling` reports.
LEVELS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Method:
    """One row: ``first`` prompts, then ``second`` from model call ``switch_call`` on (``None``: no switch)."""

    label: str
    kind: str  # "reference", "a1111", "extension", "marker"
    pairs: str  # "complementary" or "conflicting" ("-" for references)
    first: tuple[dict[str, str], ...]
    second: tuple[dict[str, str], ...] | None = None
    switch_call: int = 0
    level: float | None = None
    fraction: float | None = None


def prompt_pairs(n: int, seed: int, conflicting: bool = False
                 ) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """``(targets, layout, detail)`` attribute sets for ``n`` samples (module docstring)."""
    targets = text.prompt_set(n, seed)
    layout = [{k: t[k] for k in COARSE} for t in targets]
    detail = [{k: t[k] for k in FINE} for t in targets]
    if conflicting:
        rng = np.random.default_rng(seed + 1)
        for lay, t in zip(layout, targets):
            lay["eyes"] = next(e for e in data.EYES if e != t["eyes"])
            others = [x for x in data.TEXTURES if x != t["texture"]]
            lay["texture"] = others[int(rng.integers(len(others)))]
    return targets, layout, detail


def a1111_switch_call(fraction: float, calls: int) -> int:
    """First model call that uses ``b`` in A1111's ``[a:b:fraction]`` over ``calls`` calls (0: ``b`` throughout)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: must be in (0, 1), got {fraction}")
    n = min(calls, int(fraction * calls))
    return n + 1 if n >= 1 else 0


def extension_switch_call(sigmas: torch.Tensor, level: float, q: float = DEFAULT_SWITCH_Q) -> int:
    """First model call (first-order sampler) that uses the detail prompt under the extension's rule."""
    n = len(sigmas) - 1
    return realized_switch(switch_step(sigmas, level, q), n)


def switch_levels(factor: int) -> list[int]:
    """:data:`SWITCH_LEVELS`, and at ``factor`` > 1 each also times the factor."""
    return sorted({lv * k for lv in SWITCH_LEVELS for k in {1, factor}})


def methods(n: int, seed: int, sampler: str, steps: int, factor: int = 1,
            kinds: Sequence[str] = ("complementary", "conflicting"), scheduler: str = "Automatic") -> list[Method]:
    """The rows of one configuration, in table order (module docstring)."""
    targets, layout, detail = prompt_pairs(n, seed)
    sig = runs.latent_sigmas(sampler, steps, scheduler)
    tup = tuple
    out = [Method("combined prompt", "reference", "-", tup(targets)),
           Method("layout prompt alone", "reference", "-", tup(layout)),
           Method("detail prompt alone", "reference", "-", tup(detail))]
    for kind in kinds:
        _, lay, det = prompt_pairs(n, seed, conflicting=kind == "conflicting")
        for f in FRACTIONS:
            out.append(Method(f"A1111 [layout:detail:{f:g}]", "a1111", kind, tup(lay), tup(det),
                              a1111_switch_call(f, steps), fraction=f))
        for lv in switch_levels(factor):
            call = extension_switch_call(sig, lv)
            default = " (default)" if lv == DEFAULT_SWITCH_LEVEL else ""
            out.append(Method(f"switch at level {lv} q {DEFAULT_SWITCH_Q:g}{default}", "extension", kind, tup(lay),
                              tup(det), call, level=lv))
    call = extension_switch_call(sig, DEFAULT_SWITCH_LEVEL)
    out.append(Method(f"marker mode [layout:combined], level {DEFAULT_SWITCH_LEVEL}", "marker", "complementary",
                      tup(layout), tup(targets), call, level=DEFAULT_SWITCH_LEVEL))
    return out


def switch_scores(scores: Sequence[scorer.ImageScore], targets: Sequence[dict[str, str]]) -> dict[str, float]:
    """``layout_kept``, ``detail_obtained``, ``both``, ``proper_face`` and ``attr_<name>`` over a batch."""
    if len(scores) != len(targets):
        raise ValueError(f"targets: need one per score ({len(scores)}), got {len(targets)}")

    def rate(keys: Sequence[str]) -> float:
        return float(np.mean([all(s.attrs[k] == t[k] for k in keys) for s, t in zip(scores, targets)]))

    out = {"layout_kept": rate(COARSE), "detail_obtained": rate(FINE), "both": rate(COARSE + FINE),
           "proper_face": float(np.mean([s.proper_face for s in scores]))}
    out.update({f"attr_{k}": rate((k,)) for k in data.ATTRIBUTES})
    return out


@torch.no_grad()
def run_methods(model: LatentModel, ms: Sequence[Method], targets: Sequence[dict[str, str]], seed: int,
                sampler: str, steps: int, cfg: float, factor: int = 1, guided: bool = True,
                batch: int = 32, tag: str = "", scheduler: str = "Automatic") -> list[dict[str, Any]]:
    """Sample, decode and score every method; at ``factor`` > 1 with ``guided``, under the library's default
    upsample guidance (:func:`runs.make_plan`)."""
    size = 16 * factor
    plan = runs.make_plan((factor, factor), steps, sampler, scheduler) if factor > 1 and guided else None
    unet = runs.CountingUNet(model.unet)
    rows = []
    for m in ms:
        t0 = time.time()
        z = runs.run_txt2img(model, unet, list(m.first), size, size, steps, seed, cfg=cfg, plan=plan,
                             sampler=sampler, batch=batch, detail=None if m.second is None else list(m.second),
                             switch_call=m.switch_call, scheduler=scheduler)
        sc = scorer.score_images(runs.decode(model, z))
        row: dict[str, Any] = {"method": m.label, "kind": m.kind, "pairs": m.pairs, "level": m.level,
                               "fraction": m.fraction, "switch_step": m.switch_call if m.second else None,
                               **switch_scores(sc, targets), "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(f"[{tag}] {fmt(row)}", flush=True)
    return rows


def fmt(row: dict[str, Any]) -> str:
    """One line of a row."""
    step = "" if row.get("switch_step") is None else f" (step {row['switch_step'] + 1})"
    return (f"{row['pairs']:>13} {row['method']}{step}: layout {row['layout_kept']:.2f} detail "
            f"{row['detail_obtained']:.2f} both {row['both']:.2f} proper {row['proper_face']:.2f}")


@torch.no_grad()
def attribute_settling(model: LatentModel, n: int, seed: int, sampler: str, steps: int, cfg: float,
                       batch: int = 32, scheduler: str = "Automatic") -> dict[str, Any]:
    """When each attribute and each latent level settles along native sampling of the prompt "a face".

    Returns ``agreement[attr][i]`` (fraction of samples whose step-``i`` x0 prediction reads as their final
    image), ``settle_step[attr]`` (first step from which the agreement stays >= :data:`SETTLE_AGREEMENT`;
    ``steps`` if never), ``level_settle[L]`` (empirical, energy ``g_L >= 1/2``), ``band_settle[L]`` (projection of
    band ``L`` of each prediction on the final latent reaches 1/2, :func:`lib_chroma.empirical.projected_fraction`),
    ``level_theory[L]`` (first step with ``r_L >= 1/2``) and ``switch_step[L]`` (the extension's switch at level
    L, default q)."""
    prompts = [text.prompt_text({})] * n
    preds: list[list[torch.Tensor]] = [[] for _ in range(steps)]

    def keep(start: int, info: dict[str, Any]) -> None:
        preds[int(info["i"])].append(info["denoised"].detach().clone())

    unet = runs.CountingUNet(model.unet)
    final = runs.run_txt2img(model, unet, prompts, 16, 16, steps, seed, cfg=cfg, sampler=sampler, batch=batch,
                             callback=keep, scheduler=scheduler)
    stacked = torch.stack([torch.cat(p) for p in preds])  # (steps, n, 4, 16, 16)
    final_attrs = [s.attrs for s in scorer.score_images(runs.decode(model, final))]
    agreement: dict[str, list[float]] = {k: [] for k in data.ATTRIBUTES}
    for i in range(steps):
        attrs = [s.attrs for s in scorer.score_images(runs.decode(model, stacked[i]))]
        for k in data.ATTRIBUTES:
            agreement[k].append(float(np.mean([a[k] == f[k] for a, f in zip(attrs, final_attrs)])))
    settle = {}
    for k, ag in agreement.items():
        last_bad = max((i for i, a in enumerate(ag) if a < SETTLE_AGREEMENT), default=-1)
        settle[k] = last_bad + 1
    sig = runs.latent_sigmas(sampler, steps, scheduler)
    frac = {lv: generated_fraction(stacked, final, lv) for lv in LEVELS}
    proj = {lv: projected_fraction(stacked, final, lv, use_band=True) for lv in LEVELS}
    return {
        "agreement": agreement,
        "settle_step": settle,
        "level_settle": {lv: settle_step(f) for lv, f in frac.items()},
        "level_fraction": {lv: [round(float(x), 3) for x in f] for lv, f in frac.items()},
        "band_settle": {lv: settle_step(f) for lv, f in proj.items()},
        "band_fraction": {lv: [round(float(x), 3) for x in f] for lv, f in proj.items()},
        "level_theory": {lv: theory_settle_step(sig, lv) for lv in LEVELS},
        "switch_step": {lv: extension_switch_call(sig, lv) for lv in SWITCH_LEVELS},
        "sigmas": [round(float(s), 3) for s in sig],
    }
