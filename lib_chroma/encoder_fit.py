"""Latent resamplers fitted to an image encoder alone, without the model's data: dead-leaves images.

:func:`lib_chroma.resampler.fit_resampler` needs latents of the same images at two sizes. A WebUI user's VAE comes
without its training images, so the pairs are made from a generic image model whose statistics resemble natural
images: *dead leaves* (Matheron; Lee, Mumford and Huang 2001), opaque discs of uniformly random colour dropped in
random order on the plane with radii of density

    p(r) ∝ r^-3   on [r_min, r_max],

which makes every octave of scale cover the same area (a scale-invariant, ``1/f²`` power spectrum with sharp
occluding edges), plus a weak ``1/f`` noise texture so that the inside of a disc is not flat. Each image ``X`` is
drawn at twice its size and box-averaged (anti-aliased edges); its native-size counterpart is ``x = R(X)``, ``R``
a bicubic resize with anti-aliasing (what resizing a photograph does). The pairs ``(E(X), E(x))`` then go to
:func:`~lib_chroma.resampler.fit_resampler`.

Only second-order statistics of the latents enter a linear least-squares fit, so a generic image model with the
right spectrum gets most of the way: on the latent reference model (docs/theory.md §10) the dead-leaves fit's
errors on the model's own scenes are 0.18 (down) and 0.25 (up) against 0.15 / 0.22 for a fit on those scenes and
0.27 / 0.35 for average pooling / bilinear upsampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lib_chroma.guidance import Factor
from lib_chroma.resampler import LatentResampler, fit_resampler
from lib_chroma.validation import check_int

__all__ = ["DEAD_LEAVES_SEED", "dead_leaves", "downscale", "fit_to_encoder", "FIT_IMAGES", "FIT_LATENT"]

#: the seed of the fitting images: the same images, hence the same fit, for the same encoder on every run
DEAD_LEAVES_SEED = 400
#: images per fit (the fit barely changes from 100 to 1 200 images: docs/theory.md §10)
FIT_IMAGES = 128
#: the native-size latent side of a fitting pair (16 latent pixels: 128 px at SD's f = 8)
FIT_LATENT = 16
TEXTURE_AMP = 0.12


def _noise_1f(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gaussian noise with a ``1/f`` amplitude spectrum (``1/f²`` power), unit standard deviation."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f
    spec[0, 0] = 0.0
    t = np.fft.irfft2(spec, s=(h, w))
    return (t / (t.std() + 1e-12)).astype(np.float32)


def dead_leaves(n: int, size: tuple[int, int], seed: int = DEAD_LEAVES_SEED, supersample: int = 2) -> torch.Tensor:
    """``n`` dead-leaves images ``(n, 3, h, w)`` in ``[-1, 1]`` (module docstring): discs of radius ``r_min = 1``
    px to ``r_max = 0.35 max(h, w)`` px with density ``∝ r^-3``, enough of them to cover the image about three
    times, uniformly random colours in ``[-1, 1]³``, drawn at ``supersample`` times the size and box-averaged,
    plus ``0.12`` times a ``1/f`` noise texture (one per image, shared by the channels), clipped to ``[-1, 1]``."""
    check_int("n", n, 1)
    h, w = (check_int("size", int(v), 4) for v in size)
    ss = check_int("supersample", supersample, 1, 8)
    rng = np.random.default_rng(seed)
    H, W = h * ss, w * ss
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    rmin, rmax = 1.0 * ss, 0.35 * max(H, W)
    # E[pi r^2] under p(r) ∝ r^-3 on [rmin, rmax]
    mean_area = math.pi * 2.0 * math.log(rmax / rmin) / (rmin**-2 - rmax**-2)
    count = max(1, int(round(3.0 * H * W / mean_area)))
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        img = np.empty((3, H, W), np.float32)
        img[:] = rng.uniform(-1, 1, (3, 1, 1))
        u = rng.random(count)
        r = 1.0 / np.sqrt(rmin**-2 - u * (rmin**-2 - rmax**-2))  # inverse CDF of r^-3
        cx, cy = rng.uniform(-0.1 * W, 1.1 * W, count), rng.uniform(-0.1 * H, 1.1 * H, count)
        col = rng.uniform(-1, 1, (count, 3)).astype(np.float32)
        for j in range(count):
            x0, x1 = max(0, int(cx[j] - r[j]) - 1), min(W, int(cx[j] + r[j]) + 2)
            y0, y1 = max(0, int(cy[j] - r[j]) - 1), min(H, int(cy[j] + r[j]) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            m = (xx[y0:y1, x0:x1] - cx[j]) ** 2 + (yy[y0:y1, x0:x1] - cy[j]) ** 2 <= r[j] ** 2
            img[:, y0:y1, x0:x1][:, m] = col[j][:, None]
        box = img.reshape(3, h, ss, w, ss).mean(axis=(2, 4))
        out[i] = np.clip(box + TEXTURE_AMP * _noise_1f(rng, h, w)[None], -1.0, 1.0)
    return torch.from_numpy(out)


def downscale(images: torch.Tensor, factor: Factor) -> torch.Tensor:
    """``R``: images ``(N, C, m_h h, m_w w)`` -> ``(N, C, h, w)``, bicubic with anti-aliasing, clipped to
    ``[-1, 1]``."""
    mh, mw = factor
    H, W = images.shape[-2:]
    if H % mh or W % mw:
        raise ValueError(f"images: size {H}x{W} must be a multiple of the factor {mh}x{mw}")
    small = F.interpolate(images.float(), size=(H // mh, W // mw), mode="bicubic", antialias=True,
                          align_corners=False)
    return small.clamp(-1.0, 1.0)


@torch.no_grad()
def fit_to_encoder(
    encode: Callable[[torch.Tensor], torch.Tensor],
    factor: Factor,
    *,
    f: int = 8,
    n: int = FIT_IMAGES,
    latent: int = FIT_LATENT,
    seed: int = DEAD_LEAVES_SEED,
    chunk: int = 8,
) -> LatentResampler:
    """Fit the :class:`~lib_chroma.resampler.LatentResampler` of ``factor`` to ``encode`` (images ``(B, 3, H, W)``
    in ``[-1, 1]``, float32 on the CPU, -> latents ``(B, C, H/f, W/f)``, the sampler's latent space): ``n``
    dead-leaves images of ``(latent m_h f, latent m_w f)`` px, the same resized to ``(latent f, latent f)`` px,
    encoded ``chunk`` at a time; least squares with ``fit_resampler``'s ``p = r = 2``."""
    mh, mw = (check_int("factor", int(v), 1, 8) for v in factor)
    check_int("f", f, 1, 64)
    check_int("latent", latent, 4, 256)
    check_int("chunk", chunk, 1)
    check_int("n", n, 16)
    big_px = dead_leaves(n, (latent * mh * f, latent * mw * f), seed)
    small_px = downscale(big_px, (mh, mw))

    def enc(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([encode(x[i:i + chunk]).detach().float().cpu() for i in range(0, len(x), chunk)])

    big, small = enc(big_px), enc(small_px)
    if big.shape[-2:] != (latent * mh, latent * mw) or small.shape[-2:] != (latent, latent):
        raise ValueError(f"encode: expected latents of {latent * mh}x{latent * mw} and {latent}x{latent} "
                         f"(f = {f}), got {tuple(big.shape[-2:])} and {tuple(small.shape[-2:])}")
    if not (torch.isfinite(big).all() and torch.isfinite(small).all()):
        # e.g. an SDXL VAE in half precision overflowing: a fit on NaN would turn every guided image black
        raise ValueError("encode: returned non-finite latents (a half-precision VAE that overflows?)")
    info = {"images": "dead leaves", "n": n, "seed": seed, "px": [latent * mh * f, latent * mw * f], "f": f}
    return fit_resampler(big, small, (mh, mw), info=info)
