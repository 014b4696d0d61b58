"""Sampling methods of the toy model that the demo and the benchmark compare, all through the core library.

Every method starts from the same per-sample noise (:func:`lib_chroma.toy.sampling.initial_noise`, sample
``i`` from seed ``seed + i``), so rows of a grid are comparable.

- ``plain``: a k-diffusion sampler at the output size (VE form ``x = x0 + sigma eps``) on A1111's sigmas for
  it (scheduler "Automatic").
- ``upscale``: native samples, bilinearly upscaled (no diffusion at the output size).
- ``hires``: A1111's hires fix: native first pass, bilinear upscale by m (A1111's "Latent" upscaler on the
  toy's pixel "latents"), then img2img with ``steps`` second-pass steps on
  :func:`lib_chroma.schedule.img2img_sigmas` (``fixed_steps=True``: the schedule is stretched to
  ``int(steps / strength)`` steps and the last ``steps`` run), starting from
  ``x = up + sigma_start * noise`` with the noise of the same seeds at the output size.
- ``guided``: the same sampler on :class:`lib_chroma.guidance.UpsampleGuidedDenoiser`:
  ``denoised' = denoised + w U(model(D x, sigma/m) - D denoised)`` (nested for 4x).
- ``ddim``: deterministic DDIM in VP/eps form on A1111's DDIM timesteps, guided through
  :func:`lib_chroma.guidance.guide_eps` (``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps``).

Model evaluations are counted per resolution by :class:`CountingModel`; ``pixel_evals`` is
``sum over calls of batch * H * W``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from lib_chroma import chromatography as chroma
from lib_chroma.guidance import GuidancePlan, UpsampleGuidedDenoiser, guide_eps
from lib_chroma.schedule import DiscreteSchedule, img2img_sigmas, sampler_sigmas
from lib_chroma.validation import check_choice

from .model import TinyUNet, scaled_linear_alphas_cumprod
from .sampling import initial_noise, make_denoiser

#: k-diffusion sampler function name -> A1111 label (for the schedule arithmetic).
A1111_LABELS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpmpp_2m": "DPM++ 2M"}
#: A1111 v1.10's default sampler (its "Automatic" scheduler is Karras): the demo's and the benchmark's.
DEFAULT_SAMPLER = "dpmpp_2m"
#: A1111's default hires-fix denoising strength.
A1111_HIRES_STRENGTH = 0.7
#: ``keep`` of the chromatography strength: the one the WebUI preview suggests (level m 90 % kept).
CHROMA_KEEP = 0.9


def toy_schedule() -> DiscreteSchedule:
    """The toy's discrete schedule (SD's scaled-linear, 1000 steps)."""
    return DiscreteSchedule(scaled_linear_alphas_cumprod())


class CountingModel(torch.nn.Module):
    """Wraps the eps-model and counts its calls and pixel-evaluations (``batch * H * W``) per input size."""

    def __init__(self, model: TinyUNet) -> None:
        super().__init__()
        self.model = model
        self.calls: dict[tuple[int, int], int] = {}
        self.pixel_evals = 0

    def reset(self) -> None:
        """Zero the counters."""
        self.calls = {}
        self.pixel_evals = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        key = (int(x.shape[-2]), int(x.shape[-1]))
        self.calls[key] = self.calls.get(key, 0) + 1
        self.pixel_evals += int(x.shape[0]) * key[0] * key[1]
        return self.model(x, t)


def a1111_label(sampler: str) -> str:
    """The A1111 label of a k-diffusion sampler name, or a ValueError naming the allowed ones."""
    return A1111_LABELS[check_choice("sampler", sampler, A1111_LABELS)]


def toy_sigmas(sampler: str, steps: int) -> torch.Tensor:
    """The sigmas A1111 gives ``sampler`` with the "Automatic" scheduler on the toy's schedule (float64):
    the discrete schedule for Euler, Karras for DPM++ 2M."""
    return sampler_sigmas(a1111_label(sampler), "Automatic", steps, toy_schedule())


def hires_chroma_strength(m: float, steps: int, sampler: str = DEFAULT_SAMPLER, keep: float = CHROMA_KEEP,
                          power: float = 1.0) -> float:
    """:func:`lib_chroma.chromatography.hires_strength` on the toy schedule: the largest strength whose first
    hires sigma keeps ``m² P / (m² P + sigma_start²) >= keep``, i.e. ``sigma_start <= m sqrt(P (1 - keep) /
    keep)``. ``P = 1`` is the WebUI's rule (SD latents have unit variance); a level of power P behaves as the
    level ``m sqrt(P)`` of unit power, which is what is passed on."""
    return chroma.hires_strength(m * math.sqrt(power), keep, a1111_label(sampler), "Automatic", steps,
                                 toy_schedule())


@functools.lru_cache(maxsize=4)
def centred_data(n: int = 512, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0 - mu, mu)`` for ``n`` seeded native training images (float64), ``mu`` their mean image: the toy's
    data are not zero-mean (a light disc near the centre of every image), and ``mu`` is what the x0 prediction
    tends to as ``sigma -> inf``."""
    from .data import BASE, make_batch

    x0 = torch.from_numpy(make_batch(n, seed, BASE)[0]).double()
    mu = x0.mean(dim=0, keepdim=True)
    return x0 - mu, mu


def data_power(level: int = 1) -> float:
    """The toy data's signal power per pixel at ``level`` of the native image: the variance of
    ``D_level(x0 - mu)`` (:func:`centred_data`, :func:`lib_chroma.empirical.level_power`). The levels an
    upscale keeps are the native image's pixels, level 1: about 0.15 (SD latents: 1)."""
    from lib_chroma.empirical import level_power

    return level_power(centred_data()[0], level)


def make_plan(factor: tuple[int, int], steps: int, sampler: str = DEFAULT_SAMPLER, **kw: Any) -> GuidancePlan:
    """``GuidancePlan.build(factor, sigmas=<the sampler's sigmas>, **kw)`` for the toy schedule."""
    return GuidancePlan.build(factor, sigmas=toy_sigmas(sampler, steps), **kw)


def _ks(sampler: str) -> Callable[..., torch.Tensor]:
    import k_diffusion.sampling as ks

    return getattr(ks, f"sample_{sampler}")


def _batched(n: int, batch: int, fn: Callable[[int, int], torch.Tensor], progress: Callable[[int], None] | None
             ) -> torch.Tensor:
    outs = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        outs.append(fn(start, m))
        if progress is not None:
            progress(m)
    return torch.cat(outs)


@torch.no_grad()
def run_kdiff(
    model: CountingModel,
    n: int,
    h: int,
    w: int,
    steps: int,
    seed: int,
    plan: GuidancePlan | None = None,
    sampler: str = DEFAULT_SAMPLER,
    batch: int = 32,
    record: list[torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    patch: Callable[[], AbstractContextManager] | None = None,
    bypass_low: bool = True,
) -> torch.Tensor:
    """Plain (``plan=None``) or guided k-diffusion sampling at ``h x w`` on the sigmas A1111 gives the sampler
    with the "Automatic" scheduler (:func:`sampler_sigmas`: the discrete schedule for Euler, Karras for DPM++
    2M); ``record`` collects each step's x0 prediction ``(steps, n, C, h, w)`` as a list of per-step tensors
    (concatenated over batches).

    ``patch``: a factory of a UNet patch (:mod:`lib_chroma.toy.peers`) entered around each batch, a sampling
    run of its own. With a plan, the low-resolution call bypasses such patches (``bypass_low``, the
    default; ``False`` reproduces a host whose low-resolution call goes through them)."""
    from .peers import guided_low_model

    den = make_denoiser(model)  # type: ignore[arg-type]
    sigmas = toy_sigmas(sampler, steps).to(torch.float32)
    low = guided_low_model(den, model.model) if bypass_low else None
    model_fn = den if plan is None else UpsampleGuidedDenoiser(den, plan, low_model=low)
    fn = _ks(sampler)
    per_step: list[list[torch.Tensor]] = [[] for _ in range(steps)]

    def one(start: int, m: int) -> torch.Tensor:
        torch.manual_seed(seed + start)
        x = initial_noise(m, h, w, seed + start) * sigmas[0]
        if isinstance(model_fn, UpsampleGuidedDenoiser):
            model_fn.reset()  # each batch is its own sampling run: the moving grid starts at phase 0
        cb = None
        if record is not None:
            def cb(d: dict) -> None:
                per_step[d["i"]].append(d["denoised"].clone())
        with patch() if patch is not None else nullcontext():
            return fn(model_fn, x, sigmas, disable=True, callback=cb)

    out = _batched(n, batch, one, progress)
    if record is not None:
        record.extend(torch.cat(p) for p in per_step)
    return out


def upscale(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resize to ``h x w`` (``align_corners=False``, no antialias: A1111's latent upscaler)."""
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def run_hires(
    model: CountingModel,
    low: torch.Tensor,
    h: int,
    w: int,
    steps: int,
    strength: float,
    seed: int,
    sampler: str = DEFAULT_SAMPLER,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Second pass of hires fix on first-pass samples ``low``: ``x = upscale(low) + sigmas[0] * noise``, then
    the sampler on ``img2img_sigmas(..., steps, strength, fixed_steps=True)`` (``steps`` model calls)."""
    den = make_denoiser(model)  # type: ignore[arg-type]
    sig = img2img_sigmas(a1111_label(sampler), "Automatic", steps, strength, toy_schedule(), fixed_steps=True)
    sig = sig.to(torch.float32)
    fn = _ks(sampler)

    def one(start: int, m: int) -> torch.Tensor:
        torch.manual_seed(seed + start)
        x = upscale(low[start:start + m], h, w) + initial_noise(m, h, w, seed + start) * sig[0]
        return fn(den, x, sig, disable=True)

    return _batched(low.shape[0], batch, one, progress)


@torch.no_grad()
def run_ddim(
    model: CountingModel,
    n: int,
    h: int,
    w: int,
    steps: int,
    seed: int,
    plan: GuidancePlan | None = None,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) on A1111's DDIM timesteps (``sampler_sigmas("DDIM", ...)``, one model call
    per timestep), eps/VP form; with a plan, each eps goes through :func:`guide_eps`.

    ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``, ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps``
    (``abar_prev = 1`` after the last call)."""
    sched = toy_schedule()
    sig = sampler_sigmas("DDIM", "Automatic", steps, sched)
    ts = [float(sched.sigma_to_t(float(s))) for s in sig[:-1]]
    abars = [1.0 / (1.0 + float(s) ** 2) for s in sig]

    def one(start: int, m: int) -> torch.Tensor:
        x = initial_noise(m, h, w, seed + start)
        for i, t in enumerate(ts):
            tt = torch.full((m,), t)
            eps = model(x, tt)
            if plan is not None:
                eps = guide_eps(x, tt, eps, model, plan, sched, phase=i)
            a, ap = abars[i], abars[i + 1]
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            x = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
        return x

    return _batched(n, batch, one, progress)


def toy_report(steps: int, factor: tuple[int, int], plan: GuidancePlan | None, sampler: str = DEFAULT_SAMPLER,
               levels: tuple[int, ...] = (1, 2, 4, 8), native: int = 32) -> dict[str, Any]:
    """A curves report (the keys of :func:`lib_chroma.curves.curves_report`, which is SD-family based) for the
    toy's schedule and sampler: ``r_m`` and ``c_m[i] = r_m(sigma_{i+1}) - r_m(sigma_i)`` per level, the
    guidance window and weights of ``plan``; no prompt switch."""
    sig = toy_sigmas(sampler, steps)
    n = sig.numel() - 1
    win = plan.window_steps(sig) if plan is not None else None
    return {
        "model": "toy",
        "sampler": a1111_label(sampler),
        "scheduler": "Automatic",
        "steps": int(steps),
        "sigmas": [round(float(v), 6) for v in sig],
        "levels": {
            str(m): {
                "ratio": [round(float(v), 6) for v in chroma.signal_ratio(sig, m)],
                "per_step": [round(float(v), 6) for v in chroma.chromatogram(sig, m)],
                "peak_step": chroma.peak_step(sig, m),
            }
            for m in levels
        },
        "dominant_level": [float(v) for v in chroma.dominant_level(sig, levels)],
        "native": {"width": native, "height": native},
        "size": {"width": native * factor[1], "height": native * factor[0]},
        "factor": {"h": int(factor[0]), "w": int(factor[1])},
        "guidance_levels": [list(f) for f in plan.levels] if plan is not None else [],
        "guidance_window": None if win is None else {"first_step": win[0], "last_step": win[1]},
        "guidance_weights": [round(plan.weight(0, float(sig[i])), 6) if plan else 0.0 for i in range(n)],
        "switch": {"level": None, "q": None, "step": None, "fraction": None},
    }
