"""Sampling the latent model as the WebUI samples SD: k-diffusion samplers, A1111 sigmas, batched CFG, and upsample
guidance inside the CFG through :mod:`lib_chroma.guidance`.

The eps-UNet is wrapped like SD in A1111: ``k_diffusion.external.DiscreteEpsDDPMDenoiser`` over SD's
scaled-linear ``alphas_cumprod`` (:func:`lib_chroma.toy.sampling.make_denoiser`): ``denoised = x - sigma
eps(x / sqrt(1 + sigma²), t(sigma), context)``. Classifier-free guidance is A1111's ``CFGDenoiser``: one
batched call on ``x_in = cat([x, x])``, ``sigma_in = cat([sigma, sigma])`` with context ``cat([cond, uncond])``,
then ``uncond + cfg (cond - uncond)``. Upsample guidance sits *inside* the CFG, on that batched call, as the
WebUI adapter's ``on_cfg_denoised`` applies it: :class:`lib_chroma.guidance.UpsampleGuidedDenoiser` corrects
both halves, and its low-resolution call ``den(D(x_in), sigma_in / m, context=cat([cond, uncond]))`` gets the
same contexts.

Methods (every one starts from the same per-sample noise, sample ``i`` from seed ``seed + i``
(:func:`lib_chroma.toy.sampling.initial_noise`), and gets the same prompt ``prompts[i]``):

- :func:`run_txt2img`: plain (``plan=None``) or guided sampling at any latent size on the sigmas A1111 gives
  the sampler (:func:`latent_sigmas`; with the "Automatic" scheduler DPM++ 2M -> Karras, Euler / Euler a -> the
  discrete schedule, as :func:`lib_chroma.toy.runs.toy_sigmas`).
- :func:`run_hires`: A1111's hires fix second pass: bilinear latent upscale of first-pass latents ("Latent"
  upscaler), re-noised to the first sigma of ``img2img_sigmas(..., strength, fixed_steps=True)``, then
  ``steps`` sampler steps.
- :func:`run_cascade`: the chromatographic cascade (native pass stopped early, handover, guided full-size pass).
- :func:`run_demofusion`: DemoFusion's progressive phases (:mod:`lib_chroma.toy.demofusion`) on first-pass
  latents, each window and dilated sub-lattice through the same CFG.

:class:`PixelSpaceGuidedDenoiser` is an experiment, not the library's rule: the same low-resolution call on the
pooled latent, but the correction is made on the decoded images and brought back through the encoder (see its
docstring); it needs the autoencoder inside the sampling loop, which the WebUI adapter does not have.

:class:`CountingUNet` counts model calls (one per batched CFG evaluation) and pixel-evaluations
``sum(rows * h * w)`` at each latent size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from lib_chroma.cascade import DEFAULT_HANDOVER, CascadePlan
from lib_chroma.guidance import GuidancePlan, Resamplers, UpsampleGuidedDenoiser, pool, pool_image, unpool_image
from lib_chroma.schedule import img2img_sigmas, sampler_sigmas
from lib_chroma.toy import demofusion
from lib_chroma.toy.cascade_runs import sample_stages
from lib_chroma.toy.peers import guided_low_model
from lib_chroma.toy.runs import (
    A1111_HIRES_STRENGTH,
    DEFAULT_SAMPLER,
    a1111_label,
    hires_chroma_strength,
    toy_schedule,
)
from lib_chroma.toy.sampling import initial_noise, make_denoiser

from .text import prompt_text
from .train import LatentModel

__all__ = [
    "A1111_HIRES_STRENGTH", "DEFAULT_SAMPLER", "hires_chroma_strength", "a1111_label", "CountingUNet",
    "CFGDenoiser", "PixelSpaceGuidedDenoiser", "latent_sigmas", "make_plan",
    "run_txt2img", "run_hires", "run_demofusion", "run_cascade", "decode", "upscale_latents", "upscale_pixels",
]


class CountingUNet(torch.nn.Module):
    """Wraps the eps-UNet ``(x, t, context) -> eps``; counts calls and pixel-evaluations per latent size."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.calls: dict[tuple[int, int], int] = {}
        self.pixel_evals = 0

    def reset(self) -> None:
        """Zero the counters."""
        self.calls = {}
        self.pixel_evals = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # noqa: D102
        key = (int(x.shape[-2]), int(x.shape[-1]))
        self.calls[key] = self.calls.get(key, 0) + 1
        self.pixel_evals += int(x.shape[0]) * key[0] * key[1]
        return self.unet(x, t, context)


class PixelSpaceGuidedDenoiser(torch.nn.Module):
    """Upsample guidance with the correction made in pixel space (one level, ``m`` x ``m``).

    With ``G`` the decoder, ``E`` the encoder (posterior mean, scaled) and ``D_p``, ``U_p`` the ``m`` x ``m``
    average pooling and bilinear upsampling of *pixels*:

        d_low = den(D(x), sigma / m)                         (the library's low-resolution call, unchanged)
        img = G(denoised),   img' = img + U_p(G(d_low) - D_p(img))
        denoised' = denoised + w (E(img') - E(img))

    so the coarse part of the decoded prediction is replaced by the decoded low-resolution prediction, and the
    change goes back through the encoder (``E(img)`` is subtracted so that the autoencoder's round-trip error
    does not enter). The weight ``w`` and the window are the plan's (level 0). Pooling latents does not commute
    with the decoder (``G(D z) != D_p G(z)``); this form pools only pixels. Cost per guided step: one
    low-resolution model call plus two decodes and two encodes of the batch.

    With the plan's moving grid, the latent blocks of ``D`` move by :func:`lib_chroma.guidance.grid_offset` from
    call to call (:meth:`reset` starts a run at phase 0) and ``D_p``, ``U_p`` pool and place the pixels on the same
    blocks (:func:`lib_chroma.guidance.pool_image` / ``unpool_image``, ``f`` pixels per latent pixel). The
    low-resolution call goes to ``low_model`` when given (as in :class:`lib_chroma.guidance.UpsampleGuidedDenoiser`)."""

    def __init__(self, model: Callable[..., torch.Tensor], plan: GuidancePlan, ae: torch.nn.Module,
                 low_model: Callable[..., torch.Tensor] | None = None) -> None:
        super().__init__()
        if len(plan.levels) != 1:
            raise ValueError(f"plan: pixel-space guidance takes one level, got {plan.levels}")
        self.inner = model
        self.low_model = low_model if low_model is not None else model
        self.plan = plan
        self.ae = ae
        self.phase = 0

    def reset(self) -> None:
        """Start a new sampling run (the moving grid's phase)."""
        self.phase = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: D102
        denoised = self.inner(x, sigma, **kwargs)
        phase, self.phase = self.phase, self.phase + 1
        w = torch.tensor([self.plan.weight(0, float(s)) for s in sigma.reshape(-1)], dtype=x.dtype)
        if not bool((w != 0).any()):
            return denoised
        mh, mw = self.plan.levels[0]
        off = self.plan.offset(0, phase)
        d_low = self.low_model(pool(x, mh, mw, off), sigma / math.sqrt(mh * mw), **kwargs)
        img, img_low = self.ae.decode(denoised), self.ae.decode(d_low)
        lat, f = (int(x.shape[-2]), int(x.shape[-1])), img.shape[-1] // x.shape[-1]
        corr = unpool_image(img_low - pool_image(img, mh, mw, lat, off, f), mh, mw, lat, "bilinear", off, f)
        delta = self.ae.encode(img + corr) - self.ae.encode(img)
        return denoised + w.view(-1, 1, 1, 1) * delta


class CFGDenoiser(torch.nn.Module):
    """A1111's CFG on a k-diffusion denoiser ``den(x, sigma, context=...) -> x0``:
    ``out = inner(cat([x, x]), cat([sigma, sigma]), context=cat([cond, uncond]))``, ``inner = den`` or
    ``UpsampleGuidedDenoiser(den, plan)`` (``PixelSpaceGuidedDenoiser(den, plan, pixel_ae)`` with
    ``pixel_ae``); returns ``out_u + cfg (out_c - out_u)``.

    Prompt editing as A1111's ``[cond:detail:N]``: with ``detail`` given, calls ``0 .. switch_call - 1`` use
    ``cond`` and calls from ``switch_call`` on use ``detail`` (A1111 counts model calls, ``N = switch_call -
    1``); the unconditional context stays. ``low_model``: the guidance's low-resolution call goes there;
    ``resamplers``: fitted latent resamplers for its ``D`` and ``U`` (both as in
    :class:`lib_chroma.guidance.UpsampleGuidedDenoiser`)."""

    def __init__(self, den: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor, cfg: float,
                 plan: GuidancePlan | None = None, pixel_ae: torch.nn.Module | None = None,
                 detail: torch.Tensor | None = None, switch_call: int = 0,
                 low_model: Callable[..., torch.Tensor] | None = None,
                 resamplers: Resamplers | None = None) -> None:
        super().__init__()
        if cond.shape != uncond.shape:
            raise ValueError(f"uncond: shape {tuple(uncond.shape)} differs from cond {tuple(cond.shape)}")
        if detail is not None and detail.shape != cond.shape:
            raise ValueError(f"detail: shape {tuple(detail.shape)} differs from cond {tuple(cond.shape)}")
        if switch_call < 0:
            raise ValueError(f"switch_call: must be >= 0, got {switch_call}")
        if plan is None:
            self.inner: torch.nn.Module = den
        elif pixel_ae is not None:
            self.inner = PixelSpaceGuidedDenoiser(den, plan, pixel_ae, low_model)
        else:
            self.inner = UpsampleGuidedDenoiser(den, plan, low_model=low_model, resamplers=resamplers)
        self.context = torch.cat([cond, uncond])
        self.detail_context = None if detail is None else torch.cat([detail, uncond])
        self.switch_call = int(switch_call)
        self.calls = 0
        self.cfg = float(cfg)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[0] * 2 != self.context.shape[0]:
            raise ValueError(f"x: {x.shape[0]} rows for {self.context.shape[0] // 2} prompts")
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        switched = self.detail_context is not None and self.calls >= self.switch_call
        self.calls += 1
        ctx = self.detail_context if switched else self.context
        out = self.inner(torch.cat([x, x]), torch.cat([s, s]), context=ctx)
        cond, uncond = out.chunk(2)
        return uncond + self.cfg * (cond - uncond)


def latent_sigmas(sampler: str, steps: int, scheduler: str = "Automatic") -> torch.Tensor:
    """The sigmas A1111 gives ``sampler`` (k-diffusion name) with ``scheduler`` (an A1111 scheduler label) on SD's
    schedule."""
    return sampler_sigmas(a1111_label(sampler), scheduler, steps, toy_schedule())


def make_plan(factor: tuple[int, int], steps: int, sampler: str = DEFAULT_SAMPLER, scheduler: str = "Automatic",
              **kw: Any) -> GuidancePlan:
    """``GuidancePlan.build(factor, sigmas=<the sampler's sigmas>, **kw)``."""
    return GuidancePlan.build(factor, sigmas=latent_sigmas(sampler, steps, scheduler), **kw)


def _ks(sampler: str) -> Callable[..., torch.Tensor]:
    import k_diffusion.sampling as ks

    a1111_label(sampler)
    return getattr(ks, f"sample_{sampler}")


def _contexts(model: LatentModel, prompts: Sequence[dict[str, str] | str]) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [p if isinstance(p, str) else prompt_text(p) for p in prompts]
    with torch.no_grad():
        return model.text.encode(texts), model.text.encode([""] * len(texts))


@torch.no_grad()
def run_txt2img(
    model: LatentModel,
    unet: CountingUNet,
    prompts: Sequence[dict[str, str] | str],
    h: int,
    w: int,
    steps: int,
    seed: int,
    cfg: float = 5.0,
    plan: GuidancePlan | None = None,
    sampler: str = DEFAULT_SAMPLER,
    batch: int = 16,
    progress: Callable[[int], None] | None = None,
    pixel_space: bool = False,
    detail: Sequence[dict[str, str] | str] | None = None,
    switch_call: int = 0,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    scheduler: str = "Automatic",
    patch: Callable[[], AbstractContextManager] | None = None,
    bypass_low: bool = True,
    resamplers: Resamplers | None = None,
) -> torch.Tensor:
    """Latents ``(len(prompts), 4, h, w)`` (scaled) from plain or guided CFG sampling (module docstring);
    ``pixel_space``: the plan's correction through the autoencoder (:class:`PixelSpaceGuidedDenoiser`);
    ``detail``: the prompts that replace ``prompts`` from model call ``switch_call`` on (A1111's prompt
    editing, :class:`CFGDenoiser`); ``callback(start, info)``: k-diffusion's per-step callback for the batch
    starting at sample ``start``; ``scheduler``: an A1111 scheduler label (:func:`latent_sigmas`); ``patch``: a
    factory of a UNet patch (:mod:`lib_chroma.toy.peers`) entered around each batch, whose guided low-resolution
    call bypasses it (``bypass_low``, as the WebUI adapters do; ``False``: it goes through the patch too);
    ``resamplers``: the guidance's fitted latent resamplers (:mod:`lib_chroma.resampler`)."""
    if detail is not None and len(detail) != len(prompts):
        raise ValueError(f"detail: need one per prompt ({len(prompts)}), got {len(detail)}")
    den = make_denoiser(unet)  # type: ignore[arg-type]
    low = guided_low_model(den, unet.unet) if patch is not None and bypass_low else None
    sigmas = latent_sigmas(sampler, steps, scheduler).to(torch.float32)
    fn = _ks(sampler)

    def one(start: int, size: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        dcond = None if detail is None else _contexts(model, detail[start:start + size])[0]
        x = initial_noise(size, h, w, seed + start, channels=4) * sigmas[0]
        cfg_den = CFGDenoiser(den, cond, uncond, cfg, plan, model.ae if pixel_space else None, dcond, switch_call,
                              low, resamplers)
        cb = None if callback is None else (lambda info: callback(start, info))
        with patch() if patch is not None else nullcontext():
            return fn(cfg_den, x, sigmas, disable=True, callback=cb)

    return _batched(model, prompts, seed, batch, progress, one)


def _batched(model: LatentModel, prompts: Sequence[dict[str, str] | str], seed: int, batch: int,
             progress: Callable[[int], None] | None,
             run: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``cat`` of ``run(start, size, cond, uncond)`` over batches of ``prompts``, the global RNG seeded with
    ``seed + start`` before each (the ancestral samplers draw from it)."""
    outs = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        cond, uncond = _contexts(model, chunk)
        torch.manual_seed(seed + start)
        outs.append(run(start, len(chunk), cond, uncond))
        if progress is not None:
            progress(len(chunk))
    return torch.cat(outs)


def upscale_latents(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A1111's "Latent" upscaler: bilinear, ``align_corners=False``, no antialias."""
    return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)


def upscale_pixels(model: LatentModel, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A1111's image upscalers (Lanczos, ESRGAN, …) on latents: decode, upscale the image bilinearly to the latent
    size ``(h, w)`` times ``f``, encode: ``E(U_p(G(z)))``."""
    img = model.ae.decode(z).clamp(-1, 1)
    f = img.shape[-1] // z.shape[-1]
    up = F.interpolate(img, size=(h * f, w * f), mode="bilinear", align_corners=False)
    return model.ae.encode(up.clamp(-1, 1))


@torch.no_grad()
def run_hires(
    model: LatentModel,
    unet: CountingUNet,
    low: torch.Tensor,
    prompts: Sequence[dict[str, str] | str],
    h: int,
    w: int,
    steps: int,
    seed: int,
    strength: float = A1111_HIRES_STRENGTH,
    cfg: float = 5.0,
    sampler: str = DEFAULT_SAMPLER,
    batch: int = 16,
    progress: Callable[[int], None] | None = None,
    upscaler: str = "latent",
) -> torch.Tensor:
    """Hires-fix second pass on first-pass latents ``low``: ``x = upscale(low) + sigmas[0] noise`` (noise of the
    same seeds at the output size), then the sampler on ``img2img_sigmas(label, "Automatic", steps, strength,
    fixed_steps=True)`` (``steps`` model calls). ``upscaler``: ``latent`` (:func:`upscale_latents`) or ``pixel``
    (:func:`upscale_pixels`)."""
    if upscaler not in ("latent", "pixel"):
        raise ValueError(f"upscaler: must be latent or pixel, got {upscaler!r}")
    den = make_denoiser(unet)  # type: ignore[arg-type]
    sig = img2img_sigmas(a1111_label(sampler), "Automatic", steps, strength, toy_schedule(), fixed_steps=True)
    sig = sig.to(torch.float32)
    fn = _ks(sampler)

    def one(start: int, size: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        z = low[start:start + size]
        x = upscale_latents(z, h, w) if upscaler == "latent" else upscale_pixels(model, z, h, w)
        x = x + initial_noise(size, h, w, seed + start, channels=4) * sig[0]
        return fn(CFGDenoiser(den, cond, uncond, cfg), x, sig, disable=True)

    return _batched(model, prompts, seed, batch, progress, one)


class _ScheduledCFG(torch.nn.Module):
    """A :class:`CFGDenoiser` with its inner denoiser's ``sigma_to_t``, the form DemoFusion's phases call."""

    def __init__(self, cfg_den: CFGDenoiser, den: torch.nn.Module) -> None:
        super().__init__()
        self.cfg_den, self.den = cfg_den, den

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.den.sigma_to_t(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.cfg_den(x, sigma)


@torch.no_grad()
def run_demofusion(
    model: LatentModel,
    unet: CountingUNet,
    low: torch.Tensor,
    prompts: Sequence[dict[str, str] | str],
    factor: int,
    steps: int,
    seed: int,
    cfg: float = 5.0,
    sampler: str = DEFAULT_SAMPLER,
    batch: int = 16,
    blur_sigma: float = 1.0,
) -> torch.Tensor:
    """DemoFusion (:mod:`lib_chroma.toy.demofusion`) on first-pass latents ``low`` (native size ``n``): for each
    scale ``s = 2 … factor`` the previous result is resized (bicubic) to ``s n`` and
    :func:`lib_chroma.toy.demofusion.run_scale` samples it with native-size windows (stride ``n / 2``) and the
    ``s²`` dilated sub-lattices, every view through A1111's CFG with the sample's prompt; the phase noise is the
    seeds' initial noise at that size. Cost per step of scale s: ``windows(s) + s²`` native-size CFG calls."""
    den = make_denoiser(unet)  # type: ignore[arg-type]
    sigmas = latent_sigmas(sampler, steps).to(torch.float32)
    native = int(low.shape[-1])
    if int(low.shape[-2]) != native:
        raise ValueError(f"low: DemoFusion runs square latents here, got {tuple(low.shape[-2:])}")

    def one(start: int, size: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        scheduled = _ScheduledCFG(CFGDenoiser(den, cond, uncond, cfg), den)
        z = low[start:start + size]
        for s in range(2, factor + 1):
            side = native * s
            z0 = F.interpolate(z, size=(side, side), mode="bicubic", align_corners=False)
            rng = random.Random((seed + start) * 100 + s)  # the toy's per-run jitter seed
            noise = initial_noise(size, side, side, seed + start, channels=4)
            z = demofusion.run_scale(scheduled, z0, noise, sigmas, sampler, s, native, rng, blur_sigma)
        return z

    return _batched(model, prompts, seed, batch, None, one)


def fitted_up(resamplers: Resamplers, x0: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Enlarge ``x0`` to ``h × w`` with the fitted ``up`` maps: the ratio's own resampler where there is one, else a
    chain of the available factors that multiply to it (4× = 2× then 2×, as nested guidance chains its levels)."""
    size = (x0.shape[-2], x0.shape[-1])
    while size != (h, w):
        ratio = (h // size[0], w // size[1])
        if (h, w) != (size[0] * ratio[0], size[1] * ratio[1]):
            raise ValueError(f"upscaler: fitted needs an integer ratio, got {size} -> {(h, w)}")
        step = ratio if ratio in resamplers else next(
            (f for f in sorted(resamplers, reverse=True)
             if f != (1, 1) and ratio[0] % f[0] == 0 and ratio[1] % f[1] == 0), None)
        if step is None:
            raise ValueError(f"upscaler: fitted has no resampler chain for ×{ratio}; "
                             f"fitted factors: {sorted(resamplers)}")
        size = (size[0] * step[0], size[1] * step[1])
        x0 = resamplers[step].up(x0, size)
    return x0


@torch.no_grad()
def run_cascade(
    model: LatentModel,
    unet: CountingUNet,
    prompts: Sequence[dict[str, str] | str],
    plan: CascadePlan,
    seed: int,
    cfg: float = 5.0,
    sampler: str = DEFAULT_SAMPLER,
    batch: int = 16,
    handover_mode: str = DEFAULT_HANDOVER,
    native: int = 16,
    upscaler: str = "bilinear",
    resamplers: Resamplers | None = None,
) -> torch.Tensor:
    """The chromatographic cascade (:mod:`lib_chroma.cascade`) through A1111's CFG, as
    :func:`lib_chroma.toy.cascade_runs.run_cascade` on the toy: the native stage starts from the native samples'
    own noise (``initial_noise(seed + i) · sigma_0``), stops at ``stage.stop`` (its last call's x0 prediction is
    handed over, upscaled by ``upscaler``, with the stage's noisy latent for ``renoise``), and each later stage
    starts from :func:`lib_chroma.cascade.handover` with the seeds' noise at its size and runs guided by its plan.
    ``upscaler``:
    a latent upscaler of :data:`lib_chroma.cascade.UPSCALERS` (A1111's "Latent" is ``bilinear``) or ``pixel``: the
    x0 prediction goes through the images (:func:`upscale_pixels`, as A1111's image upscalers in the hires fix the
    WebUI's cascade runs through) and the handover's noise is added as the WebUI adapter adds it
    (:func:`lib_chroma.toy.cascade_runs.sample_stages`; ``fresh`` or ``renoise`` only), or ``fitted``: the fitted
    resampler's ``up`` of the stage's factor ratio (``resamplers``, :mod:`lib_chroma.resampler`). ``resamplers``: the
    guided stages' ``D`` and ``U`` too. Returns the last stage's latents."""
    if upscaler in ("pixel", "fitted") and handover_mode == "noisy":
        raise ValueError(f"upscaler: {upscaler} needs the fresh or renoise handover (noisy upscales the noisy latent)")
    den = make_denoiser(unet)  # type: ignore[arg-type]
    fn = _ks(sampler)
    enlarge = None
    if upscaler == "pixel":
        enlarge = lambda x0, h, w: upscale_pixels(model, x0, h, w)  # noqa: E731
    elif upscaler == "fitted":
        if not resamplers:
            raise ValueError("upscaler: fitted needs resamplers")
        enlarge = lambda x0, h, w: fitted_up(resamplers, x0, h, w)  # noqa: E731

    def one(start: int, size: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return sample_stages(plan, fn, lambda gplan: CFGDenoiser(den, cond, uncond, cfg, gplan, resamplers=resamplers),
                             lambda h, w: initial_noise(size, h, w, seed + start, channels=4), seed + start, native,
                             handover_mode=handover_mode, upscaler=upscaler, enlarge=enlarge)

    return _batched(model, prompts, seed, batch, None, one)


@torch.no_grad()
def decode(model: LatentModel, z: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """RGB images ``(N, 3, 4h, 4w)`` of scaled latents, clamped to ``[-1, 1]``."""
    return torch.cat([model.ae.decode(z[i:i + batch]).clamp(-1, 1) for i in range(0, z.shape[0], batch)])


def expected_pixel_evals(plan: GuidancePlan, sigmas: torch.Tensor) -> float:
    """Pixel-evaluations of guided sampling relative to plain (first-order sampler, one call per step):
    ``1 + sum_levels (active steps of the level / N) / M²`` with ``M²`` the level's cumulative area factor."""
    s = sigmas.tolist()
    n = len(s) - 1
    extra = 0.0
    for k, mcum in enumerate(plan.cumulative):
        extra += sum(1 for i in range(n) if plan.weight(k, s[i]) != 0.0) / n / mcum**2
    return 1.0 + extra if not math.isnan(extra) else math.nan
