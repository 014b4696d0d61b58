"""The curves report: everything the accordion preview and ``python -m lib_chroma curves`` show, as plain data.

For a model family, sampler, scheduler, step count and output size it gives the sampler's sigma sequence,
each level's signal ratio ``r_m`` and per-step chromatogram ``c_m`` with its peak step, the guidance factor and
window (from :class:`lib_chroma.guidance.GuidancePlan`), and the layout → detail prompt switch
(:func:`lib_chroma.prompts.switch_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lib_chroma import chromatography as chroma
from lib_chroma.guidance import DEFAULT_SCALE, DEFAULT_SHAPE, GuidancePlan, auto_factor
from lib_chroma.prompts import DEFAULT_SWITCH_LEVEL, DEFAULT_SWITCH_Q, realized_switch, switch_step, when_fraction
from lib_chroma.schedule import MODEL_FAMILIES, model_schedule, sampler_info, sampler_sigmas
from lib_chroma.settings import LATENT_Q_END
from lib_chroma.validation import check_choice, check_int, check_number

__all__ = ["curves_report"]


def curves_report(
    model: str = "sd1",
    sampler: str = "Euler",
    scheduler: str = "Automatic",
    steps: int = 20,
    width: int = 1024,
    height: int = 1024,
    levels: Sequence[int] = chroma.DEFAULT_LEVELS,
    *,
    factor: tuple[int, int] | None = None,
    scale: float = DEFAULT_SCALE,
    window: str = "auto",
    window_range: tuple[float, float] | None = None,
    shape: str = DEFAULT_SHAPE,
    q_end: float = LATENT_Q_END,
    nested: bool = True,
    switch_level: float = DEFAULT_SWITCH_LEVEL,
    switch_q: float = DEFAULT_SWITCH_Q,
) -> dict[str, Any]:
    """Build the report (JSON-serialisable). ``factor=None`` picks (m_h, m_w) with
    :func:`lib_chroma.guidance.auto_factor` from the size and the family's native size; the window end defaults
    to the WebUI's for its latent families (:data:`lib_chroma.settings.LATENT_Q_END`)."""
    check_choice("model", model, MODEL_FAMILIES)
    check_int("steps", steps, 1, 1000)
    check_int("width", width, 64, 16384)
    check_int("height", height, 64, 16384)
    if not levels:
        raise ValueError("levels: need at least one level")
    lv = [check_number("levels", m, 0.0) for m in levels]
    if any(m <= 0 for m in lv):
        raise ValueError("levels: every level must be > 0")
    fam = MODEL_FAMILIES[model]
    sched = model_schedule(model)
    info, _ = sampler_info(sampler)
    sig = sampler_sigmas(sampler, scheduler, steps, sched, ays_table=fam["ays"])
    native = int(fam["native"])
    if factor is None:
        factor = (auto_factor(height, native), auto_factor(width, native))
    plan = GuidancePlan.build(
        (int(factor[0]), int(factor[1])), scale=scale, window=window, window_range=window_range, sigmas=sig,
        shape=shape, q_end=q_end, nested=nested,
    )
    win = plan.window_steps(sig)
    n = sig.numel() - 1
    s_switch = realized_switch(switch_step(sig, switch_level, switch_q), n)
    mult = 2 if info.second_order else 1
    report_levels = {}
    for m in lv:
        key = str(int(m)) if float(m).is_integer() else str(m)
        report_levels[key] = {
            "ratio": [round(float(v), 6) for v in chroma.signal_ratio(sig, m)],
            "per_step": [round(float(v), 6) for v in chroma.chromatogram(sig, m)],
            "peak_step": chroma.peak_step(sig, m),
        }
    return {
        "model": model,
        "sampler": info.name,
        "scheduler": scheduler,
        "steps": int(steps),
        "sigmas": [round(float(v), 6) for v in sig],
        "levels": report_levels,
        "dominant_level": [float(v) for v in chroma.dominant_level(sig, lv)],
        "native": {"width": native, "height": native},
        "size": {"width": int(width), "height": int(height)},
        "factor": {"h": int(factor[0]), "w": int(factor[1])},
        "guidance_levels": [list(f) for f in plan.levels],
        "guidance_window": None if win is None else {"first_step": win[0], "last_step": win[1]},
        "guidance_weights": [round(plan.weight(0, float(sig[i])), 6) for i in range(n)],
        "switch": {
            "level": switch_level,
            "q": switch_q,
            "step": s_switch,
            "fraction": None if s_switch in (0, n) else when_fraction(s_switch, n, mult),
        },
    }
