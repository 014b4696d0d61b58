"""What the accordion shows besides its inputs: the header readout, the curve SVG and the switch/hires info.

Gradio-free and WebUI-free (the model family is passed in), so it is unit-tested and timed directly; one
update is a :func:`lib_chroma.curves.curves_report` plus :func:`lib_chroma.webui.svgplot.curves_svg` (a few
ms).
"""

from __future__ import annotations

from typing import Any

from lib_chroma import settings as S
from lib_chroma.chromatography import hires_strength
from lib_chroma.curves import curves_report
from lib_chroma.guidance import GuidancePlan, auto_factor
from lib_chroma.schedule import MODEL_FAMILIES, model_schedule
from lib_chroma.webui.cascade_setup import FORGE_NOTE, guidance_cost, guidance_kwargs, hires_target, setup_cascade
from lib_chroma.webui.svgplot import curves_svg


def preview(
    values: dict[str, Any],
    sampler: str,
    scheduler: str,
    steps: float,
    width: float,
    height: float,
    *,
    family: str = "sd1",
    hires: tuple[float, int, int] | None = None,
    forge: bool = False,
) -> tuple[str, str, str]:
    """(header readout, curve SVG, switch info) for the current controls.

    Readout: ``{W/m_w}×{H/m_h} → {W}×{H} (×m_w, ×m_h) · guided steps a–b of N · ≈c× plain {W}×{H}'s model
    time`` (1-based, inclusive steps; ``c`` the expected pixel-evaluations of the guided pass over the unguided
    one). With the cascade on (txt2img): its plan (:meth:`CascadeSetup.readout`) to the output size, which is the
    hires-fix target when ``hires`` = (upscale by, resize width, resize height) is given (Hires. fix ticked), or
    the guided readout followed by why the cascade steps aside (always with ``forge``: Forge's host, where it
    does not run). Prefixed ``off ·`` while disabled. Invalid values give a ``⚠ field: …`` message instead of
    raising."""
    try:
        s = S.RCSettings(**{k: v for k, v in values.items() if k in S.FIELD_BY_NAME})
        native = int(MODEL_FAMILIES[family]["native"])
        w, h, n = int(width), int(height), int(steps)
        fh = s.factor_h or auto_factor(h, native)
        fw = s.factor_w or auto_factor(w, native)
        rep = curves_report(
            family,
            sampler or "Euler",
            scheduler or "Automatic",
            n,
            w,
            h,
            factor=(fh, fw),
            scale=s.scale,
            window=s.window,
            window_range=s.window_range(),
            shape=s.shape,
            q_end=s.q_end,
            nested=s.nested,
            switch_level=s.switch_level,
            switch_q=s.switch_q,
        )
    except (ValueError, KeyError) as e:
        return f"⚠ {e}", "", f"⚠ {e}"
    win = rep["guidance_window"]
    lo_w, lo_h = -(-w // fw), -(-h // fh)
    guided = (
        "no guided steps"
        if win is None or (fh, fw) == (1, 1)
        else (f"guided steps {win['first_step'] + 1}–{win['last_step'] + 1} of {n}")
    )
    readout = f"{lo_w}×{lo_h} → {w}×{h} (×{fw}, ×{fh}) · {guided}"
    try:
        plan = GuidancePlan.build((fh, fw), **guidance_kwargs(s), sigmas=rep["sigmas"])
        cost = guidance_cost(rep["sigmas"], plan, sampler or "Euler")
        readout += f" · ≈{cost:.2f}× plain model time"
    except ValueError:
        pass
    if s.cascade:
        tw, th = (w, h) if hires is None else hires_target(w, h, *hires)
        setup = FORGE_NOTE if forge else setup_cascade(s, family, sampler or "Euler", scheduler or "Automatic", n,
                                                        tw, th)
        readout = setup.readout() if not isinstance(setup, str) else f"{readout} · no cascade: {setup}"
    if not s.enabled:
        readout = "off · " + readout
    sw = rep["switch"]
    if s.prompt_mode == "off":
        rep["switch"] = {**sw, "step": None}
        info = "Time-dependent prompts are off."
    elif sw["step"] >= n:  # "from step N+1 of N" would read as a typo
        info = f"Layout prompt throughout: the switch level is not generated within the {n} steps."
    else:
        info = f"Detail prompt from step {sw['step'] + 1} of {n}" + (
            f" (when `{sw['fraction']}`)" if sw["fraction"] else ""
        ) + ". " + handover(s.switch_level, s.switch_q, sw["step"] == 0, MODEL_FAMILIES[family]["latent_factor"])
    return readout, curves_svg(rep), info


def handover(level: float, q: float, from_start: bool = False, latent_factor: int = 8) -> str:
    """What the switch hands over, in words: level ``m`` is ``latent_factor m`` image pixels (8 for every SD
    family, :data:`lib_chroma.schedule.MODEL_FAMILIES`); at the switch it is ``q``
    generated. On the latent reference model (docs/theory.md §11) an attribute carried by a shape of ``s`` latent
    pixels settled about when level ``s / 2`` was half generated: at the switch, shapes of twice the level's size
    and more are decided and stay as the layout prompt made them; those of the level's size and finer are not,
    and follow the detail prompt."""
    px = int(round(latent_factor * level))
    if from_start:
        return f"Shapes of {px} px are already {q:.0%} formed at the start: the detail prompt is used throughout."
    formed = "half" if abs(q - 0.5) < 1e-9 else f"{q:.0%}"
    examples = " (eyes, hands, small objects, textures)" if px <= 64 else ""
    return (f"Hands over at {px} px: shapes of {px} px are {formed} formed by then, so the layout (where things "
            f"are, how large, their main colours: shapes of {2 * px} px and more) stays as the layout prompt made "
            f"it, and details of about {px} px and finer{examples} follow the detail prompt.")


def suggested_strength(
    sampler: str, scheduler: str, steps: float, upscale: float, *, family: str = "sd1", keep: float = 0.9
) -> float:
    """Hires denoising strength that keeps levels >= the upscale factor ``keep`` generated
    (:func:`lib_chroma.chromatography.hires_strength` on the family's schedule)."""
    return hires_strength(
        max(1.0, float(upscale)),
        keep,
        sampler or "Euler",
        scheduler or "Automatic",
        int(steps),
        model_schedule(family),
        ays_table=MODEL_FAMILIES[family]["ays"],
    )


def factor_note(values: dict[str, Any], width: float, height: float, *, family: str = "sd1") -> str:
    """The line under the factor sliders: what "0 = automatic" picks now, for this size and model family.

    E.g. ``Factor 0 = automatic: ×2 (height), ×2 (width) for 1024×1024 (SD1.x: native 512)``; a manual factor says
    that it overrides the automatic one."""
    try:
        native = int(MODEL_FAMILIES[family]["native"])
        w, h = int(width), int(height)
        auto = (auto_factor(h, native), auto_factor(w, native))
        fh, fw = int(values.get("factor_h") or 0), int(values.get("factor_w") or 0)
    except (ValueError, KeyError, TypeError):
        return ""
    names = {"sd1": "SD1.x", "sd2": "SD2.x", "sd2-v": "SD2.x 768-v", "sdxl": "SDXL"}
    where = f"for {w}×{h} ({names.get(family, family)}: native {native})"
    if fh == 0 and fw == 0:
        return f"Factor 0 = automatic: ×{auto[0]} (height), ×{auto[1]} (width) {where}"
    if fh and fw:
        return f"Manual factor ×{fh} (height), ×{fw} (width); automatic would be ×{auto[0]}, ×{auto[1]} {where}"
    parts = [
        f"×{f or a} ({axis}, {'manual' if f else 'automatic'})"
        for f, a, axis in ((fh, auto[0], "height"), (fw, auto[1], "width"))
    ]
    return f"Factor {', '.join(parts)} {where}"
