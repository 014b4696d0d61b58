"""The cascade inside A1111's txt2img hires fix: what the adapter's hooks do to ``p`` and to each pass's sampler.

Host objects are duck-typed (``p`` a ``StableDiffusionProcessingTxt2Img``, ``sampler`` a ``KDiffusionSampler``);
this module imports nothing from the WebUI. :mod:`lib_chroma.webui.a1111` keeps the per-generation state and
calls these in its hooks:

- ``before_process`` → :func:`apply_cascade`: the first-pass size, hires fix on with the output size as "Hires
  resize", the hires steps and the strength (:mod:`lib_chroma.webui.cascade_setup` says which settings win).
  It runs before A1111 prepares the hires prompts, so an unticked Hires. fix works like a ticked one.
- first pass → :func:`first_pass`: the plan again on the sigmas A1111 really gives (its own ``get_sigmas``), and
  the sampler's ``get_sigmas`` replaced on this sampler object only (A1111 makes a new one for every pass) by
  ``sigma_0 … sigma_k, 0``: the sampler's step to 0 returns the x0 prediction at ``sigma_k``, the first pass's
  output, which A1111 then upscales.
- hires pass → :func:`hires_pass`: ``get_sigmas`` gives the second-pass sigmas, front-padded to the length A1111's
  img2img arithmetic expects (it samples ``sigmas[total - t_enc - 1:]``, the last ``hires steps + 1``), and
  :func:`handover_noise` turns A1111's hires noise into the renoise handover's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from lib_chroma import settings as S
from lib_chroma.cascade import Stage, renoise
from lib_chroma.guidance import GuidancePlan
from lib_chroma.webui import cascade_setup as CS
from lib_chroma.webui import vae_resamplers

__all__ = [
    "hr_sampler",
    "apply_cascade",
    "sigma_sampler",
    "first_pass",
    "hires_pass",
    "handover_noise",
    "debug_plan",
    "debug_pass",
]


def hr_sampler(p: Any) -> str | None:
    """The hires sampler's name, None when it is the first pass's."""
    name = getattr(p, "hr_sampler_name", None)
    return None if name in (None, "", "Use same sampler") else name


def apply_cascade(p: Any, s: S.RCSettings, family: str, old_hires_sizes: bool = False) -> CS.CascadeSetup | str:
    """Set ``p``'s size and hires fields for the cascade; returns the setup, or why the cascade steps aside (then
    ``p`` is unchanged). ``old_hires_sizes``: A1111's option that reads width/height as the final size."""
    if not hasattr(p, "enable_hr") or getattr(p, "init_images", None):
        return "the cascade is for txt2img"
    if getattr(p, "firstpass_image", None) is not None:
        return "the image is upscaled from an existing first pass"
    if old_hires_sizes:
        return "the option 'For hires fix, use width/height sliders to set final resolution' is on"
    hires = bool(p.enable_hr)
    if hires:
        width, height = CS.hires_target(int(p.width), int(p.height), float(p.hr_scale or 1.0),
                                        int(p.hr_resize_x or 0), int(p.hr_resize_y or 0))
    else:
        width, height = int(p.width), int(p.height)
    setup = CS.setup_cascade(s, family, p.sampler_name, getattr(p, "scheduler", None) or "Automatic", int(p.steps),
                             width, height, hr_sampler=hr_sampler(p) if hires else None)
    if isinstance(setup, str):
        return setup
    p.width, p.height = setup.first
    p.enable_hr = True
    p.hr_resize_x, p.hr_resize_y = setup.target
    if not hires:
        p.hr_upscaler = "Latent"
    p.denoising_strength = setup.strength
    p.hr_second_pass_steps = setup.hires_steps
    return setup


def sigma_sampler(p: Any) -> Any:
    """The pass's sampler if it samples on a sigma sequence (``get_sigmas`` and a function taking ``sigmas``),
    else a ValueError."""
    sampler = getattr(p, "sampler", None)
    func = getattr(sampler, "func", None)
    if sampler is None or not hasattr(sampler, "get_sigmas") or func is None:
        raise ValueError("the pass's sampler has no sigma schedule")
    if "sigmas" not in inspect.signature(func).parameters:
        raise ValueError(f"{getattr(sampler, 'funcname', func)} takes no sigmas")
    return sampler


def first_pass(p: Any, sampler: Any, setup: CS.CascadeSetup, s: S.RCSettings, family: str) -> CS.CascadeSetup:
    """Re-plan on A1111's own sigmas for ``p.steps``, stop the first pass's sampler at ``sigma_k`` and set the
    hires steps (and their infotext) to the plan's; returns the plan as it runs (sizes as set before)."""
    full = sampler.get_sigmas(p, int(p.steps))
    again = CS.setup_cascade(s, family, p.sampler_name, getattr(p, "scheduler", None) or "Automatic", int(p.steps),
                             *setup.target, sigmas=[float(v) for v in full], hr_sampler=hr_sampler(p))
    if isinstance(again, str):
        raise ValueError(again)
    setup = CS.CascadeSetup(setup.target, setup.first, setup.factor, again.plan, again.calls_per_step,
                            again.second_call)
    seq = torch.tensor(setup.plan.stages[0].sigmas, dtype=full.dtype)
    sampler.get_sigmas = lambda p_, steps_: seq.clone()
    p.hr_second_pass_steps = setup.hires_steps
    p.extra_generation_params["Hires steps"] = setup.hires_steps
    return setup


def hires_pass(p: Any, sampler: Any, stage: Stage, fail: Callable[[str], None]) -> None:
    """Give the hires sampler the second-pass sigmas. Should A1111 ask for fewer steps than planned (another
    extension changed the hires steps), the sampler keeps its own sigmas and ``fail`` says why."""
    seq = torch.tensor(stage.sigmas, dtype=torch.float32)
    own = sampler.get_sigmas

    def second(p_: Any, steps_: int) -> torch.Tensor:
        pad = int(steps_) + 1 - seq.numel()
        if pad < 0:
            fail(f"the hires pass asks for {steps_} steps, the cascade needs {seq.numel() - 1}")
            return own(p_, steps_)
        return torch.cat([seq[:1].repeat(pad), seq])

    sampler.get_sigmas = second


def handover_noise(handover: dict | None, noise: torch.Tensor | None, sigma_s: float, sigma_k: float | None,
                   factor: tuple[int, int]) -> str:
    """With the renoise handover, rewrite A1111's hires ``noise`` in place into :func:`lib_chroma.cascade.renoise`
    of the first pass's last latent and x0 (``handover``: ``x_k``, ``x0``, ``sigma`` of its last call). Returns the
    handover used: ``renoise``, or ``fresh (why)`` when A1111's own noise stays."""
    if CS.HANDOVER != "renoise":
        return CS.HANDOVER
    if noise is None or handover is None or handover.get("x0") is None or not sigma_k:
        return "fresh (no first-pass latent)"
    if abs(handover["sigma"] - sigma_k) > 1e-3 * sigma_k:
        return f"fresh (the first pass's last call was at sigma {handover['sigma']:.4g}, not {sigma_k:.4g})"
    x_k, x0 = handover["x_k"], handover["x0"]
    if noise.shape[0] != x_k.shape[0] or tuple(noise.shape[-2:]) != (x_k.shape[-2] * factor[0],
                                                                      x_k.shape[-1] * factor[1]):
        return "fresh (sizes do not match by the factor)"
    noise.copy_(renoise(x0.to(noise), x_k.to(noise), noise, float(sigma_s), float(sigma_k), factor))
    return "renoise"


def debug_plan(setup: CS.CascadeSetup) -> dict[str, Any]:
    """The debug record's ``cascade`` entry: readout, sizes, stop step, the user's sigmas, expected calls."""
    cost = setup.cost()
    return {
        "readout": setup.readout(),
        "target": list(setup.target),
        "first": list(setup.first),
        "factor": list(setup.factor),
        "stop_step": setup.plan.stop_step,
        "user_sigmas": list(setup.plan.user_sigmas),
        "stage_calls": list(cost.stage_calls),
        "low_calls": [list(v) for v in cost.low_calls],
        "plain_calls": cost.plain_calls,
        "rel_pixel_evals": cost.rel_pixel_evals,
        "hires_steps": setup.hires_steps,
        "strength": setup.strength,
    }


def debug_pass(stage: Stage, plan: GuidancePlan, factor: tuple[int, int], latent: tuple[int, int],
               handover: str | None, resamplers: dict | None = None) -> dict[str, Any]:
    """A debug record ``passes`` entry of a cascade pass (``resamplers``: the fitted ones it uses, by factor)."""
    sigmas = [float(v) for v in stage.sigmas]
    win = plan.window_steps(sigmas) if plan.enabled else None
    out = {
        "pass": "first" if stage.stop is not None else "hires",
        "latent": list(latent),
        "factor": list(factor),
        "levels": [list(lv) for lv in plan.levels],
        "sigmas": sigmas,
        "window": None if win is None else list(win),
        "weights": [plan.weight(0, v) for v in sigmas[:-1]],
        "user_steps": list(stage.user_steps),
        **vae_resamplers.record(resamplers),
    }
    if handover is not None:
        out["handover"] = handover
    return out
