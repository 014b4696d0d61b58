"""The cascade ("Cascade (faster)") as A1111's hires fix runs it: sizes, stop step, strength, hires steps, readout.

Host-agnostic (no ``modules`` import): the adapter (:mod:`lib_chroma.webui.a1111`) and the accordion preview
(:mod:`lib_chroma.webui.preview`) both call :func:`setup_cascade`.

Which settings win, in txt2img with the cascade on:

- The **output size** is the user's: width × height, or the hires-fix target when Hires. fix is ticked ("Upscale
  by" or "Resize width/height to", as A1111 computes it).
- The **factor** per axis is the extension's (``factor_h``/``factor_w``; 0 = auto from the model's native size).
- The cascade sets the **first-pass size** (output / factor, rounded to a multiple of 8), the **hires target**
  (the output size, as "Hires resize"), the **hires steps** (the second pass's steps: the user's schedule below
  the handover, thinned to half its density) and the **denoising
  strength** (second-pass steps / steps; A1111 only uses it in its step arithmetic, the cascade gives the sigmas):
  whatever Hires. fix said about these is replaced, and the infotext records the values that ran.
- Kept from Hires. fix when it is ticked: the upscaler, hires sampler and schedule type (a hires sampler without
  a sigma schedule makes the cascade step aside), hires prompts and checkpoint. Not ticked: the latent
  upscaler ``Latent`` (bilinear).
- The first pass is never guided; the second pass is guided by the extension's guidance settings (``passes`` does
  not apply).

The cascade steps aside (the image is made as without it, guided as the settings say, and the infotext says why)
for img2img, a factor of 1, a sampler without a sigma schedule (DDIM, DDIM CFG++, PLMS, UniPC, DPM fast,
DPM adaptive) and a schedule with no step to stop at.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib_chroma import settings as S
from lib_chroma.cascade import (
    DEFAULT_DENSITY,
    DEFAULT_HANDOVER,
    CascadeCost,
    CascadePlan,
    pass_cost,
    plan_cascade,
)
from lib_chroma.guidance import GuidancePlan, auto_factor
from lib_chroma.schedule import MODEL_FAMILIES, model_schedule, sampler_info, sampler_sigmas

__all__ = [
    "CASCADE_POWER",
    "HANDOVER",
    "NO_SIGMA_SCHEDULE",
    "CascadeSetup",
    "cascade_unavailable",
    "hires_target",
    "setup_cascade",
    "guidance_kwargs",
    "size_text",
]

#: Signal power per pooled latent pixel in the stop rule: SD latents are scaled to unit variance.
CASCADE_POWER = 1.0
#: How the hires pass starts: ``renoise`` (A1111's hires noise is rewritten in place, see
#: :func:`lib_chroma.cascade.renoise`) or ``fresh`` (A1111's own: the upscaled x0 plus fresh noise).
HANDOVER = DEFAULT_HANDOVER if DEFAULT_HANDOVER in ("renoise", "fresh") else "fresh"
#: Why the cascade steps aside in Forge (the request, the infotext's ``RC note`` and the readout say it).
FORGE_NOTE = "the cascade runs in A1111 (Forge samples its passes differently)"
#: k-diffusion samplers that take no sigma sequence (their steps cannot be stopped or given).
NO_SIGMA_SCHEDULE = ("DPM fast", "DPM adaptive")


def size_text(w: int, h: int) -> str:
    """``512²`` for a square, ``512×768`` otherwise."""
    return f"{w}²" if w == h else f"{w}×{h}"


def hires_target(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """The size Hires. fix produces from a ``width × height`` first pass: ``int(size · scale)`` without a resize;
    a resize of one side keeps the aspect ratio (the other side ``resize · other / side``, floored); a resize of both
    sides is that size (A1111 covers it and crops)."""
    if resize_x == 0 and resize_y == 0:
        return int(width * scale), int(height * scale)
    if resize_y == 0:
        return resize_x, resize_x * height // width
    if resize_x == 0:
        return resize_y * width // height, resize_y
    return resize_x, resize_y


def cascade_unavailable(sampler: str, hr_sampler: str | None = None) -> str | None:
    """Why the cascade cannot run with these samplers, or None: both passes need a k-diffusion sampler that
    samples on a sigma sequence (the cascade stops the first pass and gives the second its sigmas)."""
    for name in (sampler, hr_sampler):
        if not name:
            continue
        info, _ = sampler_info(name)
        if info.kind != "k" or info.name in NO_SIGMA_SCHEDULE:
            return f"{info.name} has no sigma schedule to stop and resume"
    return None


def guidance_kwargs(s: S.RCSettings) -> dict:
    """:meth:`GuidancePlan.build` keywords from the settings (factor and sigmas are the cascade's)."""
    return {
        "scale": s.scale, "window": s.window, "window_range": s.window_range(), "shape": s.shape,
        "q_end": s.q_end, "operator": s.operator, "nested": s.nested, "grid": s.grid,
    }


@dataclass(frozen=True)
class CascadeSetup:
    """A cascade as A1111 runs it: first pass ``first`` (width, height) over ``plan.stages[0]``, hires pass to
    ``target`` over ``plan.stages[1]``. ``calls_per_step``: 2 for second-order samplers and ``second_call``
    where their second call is (:func:`lib_chroma.cascade.call_sigmas`; cost estimate)."""

    target: tuple[int, int]
    first: tuple[int, int]
    factor: tuple[int, int]
    plan: CascadePlan
    calls_per_step: int = 1
    second_call: str = "next"

    @property
    def steps(self) -> int:
        """The user's steps N."""
        return len(self.plan.user_sigmas) - 1

    @property
    def hires_steps(self) -> int:
        """Steps of the second (hires) pass."""
        return self.plan.stages[1].steps

    @property
    def strength(self) -> float:
        """The denoising strength written for A1111: second-pass steps / N, in [0.01, 1]."""
        return min(1.0, max(0.01, round(self.hires_steps / self.steps, 2)))

    @property
    def rel_cost(self) -> float:
        """Expected pixel-evaluations relative to plain sampling at the output size (low-res calls included)."""
        return self.cost().rel_pixel_evals

    def cost(self) -> CascadeCost:
        """:meth:`CascadePlan.cost` for this sampler."""
        return self.plan.cost(self.calls_per_step, self.second_call)

    def readout(self) -> str:
        """``native 512² steps 1–8, then 1024² steps 5–20 in 8 steps, guided 5–20 · ≈0.60× plain model time``
        (1-based, inclusive user steps; "in n steps" when the second pass thins the user's schedule)."""
        nat, full = self.plan.stages
        a, b = nat.user_steps
        c, d = full.user_steps
        g = full.guided_user_steps()
        thin = f" in {full.steps} steps," if full.thinned else ""
        guided = "" if g is None else f" guided {g[0] + 1}–{g[1] + 1}"
        out = size_text(*self.target)
        return (f"native {size_text(*self.first)} steps {a + 1}–{b + 1}, then {out} steps {c + 1}–{d + 1}{thin}"
                f"{guided} · ≈{self.rel_cost:.2f}× plain model time")


def _round8(v: float) -> int:
    return max(64, int(round(v / 8.0)) * 8)


def setup_cascade(
    s: S.RCSettings,
    family: str,
    sampler: str,
    scheduler: str,
    steps: int,
    width: int,
    height: int,
    *,
    sigmas: list[float] | torch.Tensor | None = None,
    hr_sampler: str | None = None,
    loss: float | None = None,
    density: float = DEFAULT_DENSITY,
) -> CascadeSetup | str:
    """The cascade to ``width × height`` (the output size), or the reason it steps aside.

    ``sigmas``: the first pass's actual sigma sequence for ``steps`` (A1111's ``get_sigmas``); default: the
    family's schedule through :func:`lib_chroma.schedule.sampler_sigmas`. ``loss``, ``density``: the stop rule's
    bound (default :func:`lib_chroma.settings.latent_cascade_loss` of the factor) and the second pass's step density
    (:func:`lib_chroma.cascade.plan_cascade`)."""
    why = cascade_unavailable(sampler, hr_sampler)
    if why:
        return why
    native = int(MODEL_FAMILIES[family]["native"])
    fh = s.factor_h or auto_factor(int(height), native)
    fw = s.factor_w or auto_factor(int(width), native)
    if (fh, fw) == (1, 1):
        return f"{size_text(int(width), int(height))} is within the model's native size: nothing to cascade"
    if sigmas is None:
        sigmas = sampler_sigmas(sampler, scheduler or "Automatic", int(steps), model_schedule(family),
                                ays_table=MODEL_FAMILIES[family]["ays"])
    q = S.latent_cascade_loss((fh, fw)) if loss is None else loss
    plan = plan_cascade(sigmas, (fh, fw), loss=q, power=CASCADE_POWER, density=density,
                        guidance=guidance_kwargs(s))
    if plan is None:
        return f"{int(steps)} steps leave no step to stop the native pass at"
    info, _ = sampler_info(hr_sampler or sampler)
    first = (_round8(width / fw), _round8(height / fh))
    return CascadeSetup((int(width), int(height)), first, (fh, fw), plan, 2 if info.second_order else 1,
                        second_call(info.name))


def second_call(sampler: str) -> str:
    """Where an A1111 second-order sampler's second model call of a step is: Heun at the step's end, the others
    (DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, Restart) near the geometric midpoint."""
    return "next" if sampler == "Heun" else "mid"


def guidance_cost(sigmas: list[float] | torch.Tensor, plan: GuidancePlan, sampler: str = "Euler") -> float:
    """Pixel-evaluations of one guided pass relative to the same pass unguided (``1 + Σ_l low calls / m_l²``)."""
    info, _ = sampler_info(sampler)
    cost = pass_cost(sigmas, plan, 1.0, 2 if info.second_order else 1, second_call(info.name))
    return cost["pixel_evals"] / max(cost["calls"], 1)
