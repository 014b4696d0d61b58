"""Empirical chromatography: when does each resolution level of a real sampling trajectory settle?

Record the model's x0 predictions ``p_0, …, p_{N-1}`` along a trajectory and its final image ``p_N``. For
level m (m×m average pooling ``D_m``) the fraction of the final level-m energy already present at step i is

    g_m[i] = sum_b ||D_m(p_i,b) - mean||² / sum_b ||D_m(p_N,b) - mean||²    (means per sample and channel,
                                                                          sums over the batch; at most 1).

Early predictions are blurred posterior means, so the energy of a level grows as it is generated. For
Gaussian data and an exact denoiser the posterior mean holds the fraction ``r = m² P_m / (m² P_m + sigma²)``
of the level's variance, for deterministic and stochastic samplers alike, where ``P_m`` is the per-pixel
variance of ``D_m(x0)``: the theory's signal ratio ``r_m`` with the data's level power in place of 1.
A correlation-based measure would not do: along an ODE trajectory every prediction of a Gaussian model is
proportional to the final image. A level *settles*
at the first step with ``g_m >= 1/2``; the theory's counterpart is the first step whose sigma has
``r_m >= 1/2`` (``sigma <= m``), or ``sigma <= m sqrt(P_m)`` with the power correction.

A learned model's early predictions also carry its own error, which adds energy; the *projection* of each
prediction on the final image (:func:`projected_fraction`, on a stochastic sampler) has the same expectation
for an exact model while that error averages out. The *band* ``B_m = D_m - U D_2 D_m`` (:func:`band`) isolates
the content of scale m that the coarser levels do not hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lib_chroma.chromatography import signal_ratio
from lib_chroma.guidance import pool, unpool
from lib_chroma.validation import check_number, check_sigmas

__all__ = [
    "level_power", "generated_fraction", "settle_step", "theory_fraction", "theory_settle_step", "band",
    "band_power", "projected_fraction",
]


def level_power(data: torch.Tensor, m: int) -> float:
    """``P_m``: variance per pixel of ``D_m(x0)`` over a batch of data (B, C, H, W), means removed per channel."""
    d = pool(data.double(), m, m)
    d = d - d.mean(dim=(0, 2, 3), keepdim=True)
    return float(d.pow(2).mean())


def generated_fraction(preds: Sequence[torch.Tensor] | torch.Tensor, final: torch.Tensor, m: int) -> torch.Tensor:
    """``g_m[i]`` for each recorded prediction (N, B, C, H, W) against the final images (B, C, H, W)."""
    p = torch.stack(list(preds)) if not isinstance(preds, torch.Tensor) else preds
    if p.dim() != 5 or p.shape[1:] != final.shape:
        raise ValueError(f"preds: must be (N, *final.shape), got {tuple(p.shape)} vs {tuple(final.shape)}")
    def energy(x: torch.Tensor) -> torch.Tensor:
        d = pool(x.double(), m, m)
        return (d - d.mean(dim=(2, 3), keepdim=True)).pow(2).sum(dim=(1, 2, 3))

    denom = energy(final).sum().clamp_min(1e-12)
    return torch.stack([(energy(pi).sum() / denom).clamp(0, 1) for pi in p])


def settle_step(fraction: torch.Tensor, q: float = 0.5) -> int:
    """First step whose generated fraction reaches q (the last step if none does)."""
    check_number("q", q, 0.0, 1.0)
    hit = torch.nonzero(fraction >= q)
    return int(hit[0]) if hit.numel() else int(fraction.numel() - 1)


def theory_fraction(sigmas: Sequence[float] | torch.Tensor, m: float, power: float = 1.0) -> torch.Tensor:
    """``m² P / (m² P + sigma_i²)`` at each step's model sigma (``sigmas[:-1]``); P = 1 is the plain ``r_m``."""
    s = check_sigmas("sigmas", sigmas)[:-1]
    p = check_number("power", power, 1e-12)
    return signal_ratio(s / p**0.5, m)


def theory_settle_step(sigmas: Sequence[float] | torch.Tensor, m: float, power: float = 1.0, q: float = 0.5) -> int:
    """First step whose model sigma has theory fraction >= q."""
    return settle_step(theory_fraction(sigmas, m, power), q)


def band(x: torch.Tensor, m: int) -> torch.Tensor:
    """Band m of (…, H, W) images: ``B_m x = D_m x - U D_2 D_m x`` (level m minus its own 2x2 block means, i.e.
    the content at scale m that level 2m does not hold). White noise of std ``s`` per pixel becomes std
    ``s / m`` in ``D_m x`` and variance ``(3/4) s² / m²`` in ``B_m x``."""
    d = pool(x, m, m)
    return d - unpool(pool(d, 2, 2), 2, 2, (d.shape[-2], d.shape[-1]))


def band_power(x0: torch.Tensor, m: int) -> float:
    """``Q_m``: mean square per pixel of ``B_m x0`` over a batch (the band's signal power)."""
    return float(band(x0.double(), m).pow(2).mean())


def projected_fraction(preds: torch.Tensor, final: torch.Tensor, m: int, use_band: bool = False) -> torch.Tensor:
    """``h_m[i] = sum_b <D_m p_i,b, D_m p_N,b> / sum_b ||D_m p_N,b||²`` (means per sample and channel removed;
    ``use_band``: with ``B_m`` in place of ``D_m``).

    The projection of each prediction on the final image. Along a stochastic sampler with an exact model the
    final image is a posterior sample given ``x_i``, so ``E<p_i, x0> = E||p_i||²``: the same expectation as
    the energy fraction of :func:`generated_fraction` (Gaussian data:
    ``m² P / (m² P + sigma²)``), but the model's error in ``p_i`` (``sigma`` times its eps error, large early
    on), being uncorrelated with the final image, averages out instead of adding energy."""
    def centred(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten(0, -4) if x.dim() > 4 else x.double()
        d = band(x, m) if use_band else pool(x, m, m)
        return d - d.mean(dim=(-2, -1), keepdim=True)

    fin = centred(final)
    denom = fin.pow(2).sum().clamp_min(1e-12)
    return torch.stack([(centred(pi) * fin).sum() / denom for pi in preds])
