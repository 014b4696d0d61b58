"""DemoFusion (Du et al., CVPR 2024; PRIS-CV/DemoFusion ``pipeline_demofusion_sdxl.py``), re-implemented for
any eps-model behind a k-diffusion VE denoiser ``den(x, sigma) -> x0``.

Progressive upscaling: a native pass, then for each scale ``s = 2 … S`` (``S`` the side factor): the previous
result ``z0`` is resized (bicubic) to ``s`` times the native size and one fixed noise ``n`` gives
``noised_i = z0 + sigma_i n`` (VE form of ``add_noise``) for every step; sampling starts from ``noised_0`` and
before step i (timestep t, ``cf = (1 + cos(pi (1000 - t) / 1000)) / 2``):

- skip residual: ``z <- (1 - c1) z + c1 noised_i``, ``c1 = cf^3`` (``cosine_scale_1 = 3``);
- local path (MultiDiffusion): the x0 predictions of native-size windows (stride half the native size,
  jittered by up to ``(window - stride) / 4`` inwards at the borders, on ``z`` zero-padded by that range)
  averaged where they overlap;
- global path (dilated sampling): each of the ``s²`` sub-lattices ``z[..., h::s, w::s]`` is denoised as a
  whole image, its UNet input taken from a Gaussian-blurred ``z`` (kernel ``2s - 1``, std ``sigma c3``,
  ``c3 = 0.99 cf + 0.01``, then rescaled to ``z``'s mean and std), the noise prediction applied to the unblurred
  sub-lattice: ``x0 = z_sub - sigma eps(blur_sub) = den(blur_sub) + (z_sub - blur_sub)``;
- ``x0 = (1 - c2) local + c2 global``, ``c2 = cf`` (``cosine_scale_2 = 1``), and one sampler step.

DemoFusion steps the scheduler once per view and averages the stepped latents; for Euler and DPM++ 2M the
step is linear in x0 with coefficients shared by all views, so stepping once on the averaged x0 is the same
(and keeps DPM++ 2M's history per image, which per-view scheduler calls would scramble). Its mean and std are
taken per image (DemoFusion generates one image per batch). Window jitter comes from a generator seeded by the
run's seed and scale.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lib_chroma.schedule import DiscreteSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_factor(t: float, num_train: int = 1000) -> float:
    """``cf = (1 + cos(pi (T - t) / T)) / 2``, ``T = num_train``: 1 at ``t = T``, 0 at ``t = 0``."""
    return 0.5 * (1.0 + math.cos(math.pi * (num_train - t) / num_train))


def coefficients(t: float, scale_1: float = 3.0, scale_2: float = 1.0, scale_3: float = 1.0
                 ) -> tuple[float, float, float]:
    """``(c1, c2, c3) = (cf^scale_1, cf^scale_2, 0.99 cf^scale_3 + 0.01)`` at timestep ``t``."""
    cf = cosine_factor(t)
    return cf**scale_1, cf**scale_2, 0.99 * cf**scale_3 + 0.01


def gaussian_blur(x: torch.Tensor, kernel: int, std: float) -> torch.Tensor:
    """Depthwise 2-D Gaussian (``kernel`` taps, zero padding ``kernel // 2``), as DemoFusion's filter."""
    c = torch.arange(kernel, dtype=x.dtype, device=x.device) - (kernel - 1) / 2
    g = torch.exp(-c * c / (2 * std * std))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, kernel, kernel)
    return F.conv2d(x, k, padding=kernel // 2, groups=x.shape[1])


def _jitter(rng: random.Random, a: int, b: int, size: int, jr: int) -> int:
    if a != 0 and b != size:
        return rng.randint(-jr, jr)
    if a == 0 and b != size:
        return rng.randint(-jr, 0)
    if a != 0 and b == size:
        return rng.randint(0, jr)
    return 0


def views(height: int, width: int, window: int, stride: int, rng: random.Random | None = None
          ) -> list[tuple[int, int, int, int]]:
    """DemoFusion's window placement ``(h0, h1, w0, w1)``: ``int((size - window) / stride - 1e-6) + 2`` windows
    per axis (1 if the size is at most the window), the last moved in to end at the border. With ``rng``
    (random jitter) the coordinates are in the frame padded by ``j = (window - stride) // 4`` on each side:
    interior windows move by ``U{-j..j}``, a window at the start border by ``U{-j..0}``, at the end by
    ``U{0..j}``, then ``+ j``."""
    def count(size: int) -> int:
        return int((size - window) / stride - 1e-6) + 2 if size > window else 1

    nh, nw = count(height), count(width)
    jr = (window - stride) // 4
    out = []
    for i in range(nh * nw):
        h0, w0 = (i // nw) * stride, (i % nw) * stride
        h1, w1 = h0 + window, w0 + window
        if h1 > height:
            h0, h1 = h0 + height - h1, height
        if w1 > width:
            w0, w1 = w0 + width - w1, width
        h0, w0 = max(h0, 0), max(w0, 0)
        h1, w1 = h0 + window, w0 + window
        if rng is not None:
            dw, dh = _jitter(rng, w0, w1, width, jr), _jitter(rng, h0, h1, height, jr)  # DemoFusion's order
            h0, h1, w0, w1 = h0 + dh + jr, h1 + dh + jr, w0 + dw + jr, w1 + dw + jr
        out.append((h0, h1, w0, w1))
    return out


def fused_x0(den: Denoiser, z: torch.Tensor, sigma: torch.Tensor, scale: int, native: int, t: float,
             rng: random.Random, blur_sigma: float = 1.0, cosine_scales: tuple[float, float, float] = (3, 1, 1)
             ) -> torch.Tensor:
    """The x0 of one DemoFusion step at scale ``scale`` on ``z`` (B, C, H, W), timestep ``t``:
    ``(1 - c2) local + c2 global`` (module docstring). One ``den`` call per window and per sub-lattice."""
    _, c2, c3 = coefficients(t, *cosine_scales)
    H, W = int(z.shape[-2]), int(z.shape[-1])
    stride = native // 2
    jr = (native - stride) // 4
    zp = F.pad(z, (jr, jr, jr, jr))
    val, cnt = torch.zeros_like(zp), torch.zeros_like(zp)
    for h0, h1, w0, w1 in views(H, W, native, stride, rng):
        val[..., h0:h1, w0:w1] += den(zp[..., h0:h1, w0:w1], sigma)
        cnt[..., h0:h1, w0:w1] += 1
    local = (val / cnt)[..., jr:jr + H, jr:jr + W]
    if H % scale or W % scale:
        raise ValueError(f"size {H}x{W} is not a multiple of the scale {scale}")
    dims = (1, 2, 3)
    mean, std = z.mean(dims, keepdim=True), z.std(dims, keepdim=True)
    g = gaussian_blur(z, 2 * scale - 1, blur_sigma * c3)
    g = (g - g.mean(dims, keepdim=True)) / g.std(dims, keepdim=True) * std + mean
    glob = torch.empty_like(z)
    for a in range(scale):
        for b in range(scale):
            gs = g[..., a::scale, b::scale]
            glob[..., a::scale, b::scale] = den(gs, sigma) + (z[..., a::scale, b::scale] - gs)
    return (1 - c2) * local + c2 * glob


def sample_prestep(model: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                   sampler: str, prestep: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """k-diffusion's ``sample_euler`` (no churn: ``x += (x - d) / s_i (s_{i+1} - s_i)``) or ``sample_dpmpp_2m``
    with ``x <- prestep(x, i)`` before the model call of step i; ``model(x, i)`` returns the x0 prediction.
    DPM++ 2M, ``lambda = -log sigma``, ``h = lambda_{i+1} - lambda_i``: ``x <- (s_{i+1}/s_i) x - (e^{-h} - 1) D``
    with ``D = d_i`` at the first and last step, else ``(1 + 1/(2r)) d_i - d_{i-1}/(2r)``,
    ``r = (lambda_i - lambda_{i-1}) / h``."""
    if sampler not in ("euler", "dpmpp_2m"):
        raise ValueError(f"sampler: DemoFusion runs euler and dpmpp_2m here, got {sampler!r}")
    old = None
    for i in range(len(sigmas) - 1):
        x = prestep(x, i)
        d = model(x, i)
        s, s_next = sigmas[i], sigmas[i + 1]
        if sampler == "euler":
            x = x + (x - d) / s * (s_next - s)
            continue
        lam, lam_next = -s.log(), -s_next.log()
        h = lam_next - lam
        if old is None or s_next == 0:
            x = (s_next / s) * x - (-h).expm1() * d
        else:
            r = (lam - (-sigmas[i - 1].log())) / h
            x = (s_next / s) * x - (-h).expm1() * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
        old = d
    return x


def run_scale(den: torch.nn.Module, z0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, sampler: str,
              scale: int, native: int, rng: random.Random, blur_sigma: float = 1.0) -> torch.Tensor:
    """One DemoFusion phase on the upsampled ``z0``: start from ``z0 + sigma_0 noise``; before step i the skip
    residual with ``noised_i = z0 + sigma_i noise``; x0 from :func:`fused_x0`."""
    ones = torch.ones(z0.shape[0], dtype=sigmas.dtype)
    ts = [float(den.sigma_to_t(s * ones[:1])[0]) for s in sigmas[:-1]]  # the (quantized) timestep the UNet sees

    def pre(x: torch.Tensor, i: int) -> torch.Tensor:
        c1 = coefficients(ts[i])[0]
        return (1 - c1) * x + c1 * (z0 + sigmas[i] * noise)

    def model(x: torch.Tensor, i: int) -> torch.Tensor:
        return fused_x0(den, x, sigmas[i] * ones, scale, native, ts[i], rng, blur_sigma)

    return sample_prestep(model, z0 + sigmas[0] * noise, sigmas, sampler, pre)


def schedule_table(sigmas: torch.Tensor, schedule: DiscreteSchedule) -> list[tuple[float, float, float, float]]:
    """``(t, c1, c2, c3)`` per step for a sigma sequence (the docs' and tests' view of the schedule)."""
    out = []
    for s in sigmas[:-1]:
        t = float(schedule.sigma_to_t(float(s)))
        out.append((t, *coefficients(t)))
    return out


@torch.no_grad()
def run_demofusion(model: torch.nn.Module, n: int, factor: int, steps: int, seed: int, sampler: str = "dpmpp_2m",
                   batch: int = 32, native: int = 32, blur_sigma: float = 1.0,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """DemoFusion at ``factor`` times the native size (square): the native pass (:func:`runs.run_kdiff`, the
    same samples as the benchmark's native row), then scales ``2 … factor`` (:func:`run_scale`), the fixed
    noise of scale s the seeds' initial noise at that size (as hires fix). Cost: native pass plus, per step of
    scale s, ``windows(s)`` + ``s²`` native-size calls."""
    from . import runs
    from .sampling import initial_noise, make_denoiser

    den = make_denoiser(model)  # type: ignore[arg-type]
    sigmas = runs.toy_sigmas(sampler, steps).to(torch.float32)

    def one(start: int, m: int) -> torch.Tensor:
        z = runs.run_kdiff(model, m, native, native, steps, seed + start, sampler=sampler, batch=m)
        for s in range(2, factor + 1):
            size = native * s
            z0 = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
            rng = random.Random((seed + start) * 100 + s)
            z = run_scale(den, z0, initial_noise(m, size, size, seed + start), sigmas, sampler, s, native, rng,
                          blur_sigma)
        return z

    return runs._batched(n, batch, one, progress)
