"""Resolution chromatography: how much of each resolution level a sampler generates in each step.

Definitions (VE form ``x = x0 + sigma * eps``):

- Level m is the image seen through m×m average pooling ``D``. Pooling divides white noise's standard deviation
  by m, so level m sees noise ``sigma / m``: its SNR is ``m² / sigma²``.
- Signal ratio ``r_m(sigma) = m² / (m² + sigma²) = sigmoid(log SNR + 2 ln m)``: the signal fraction of the
  variance of ``D(x)``, assuming unit signal power per pooled pixel.
- Chromatogram of level m along the sampler's sigmas ``sigma_0 > … > sigma_N``:
  ``c_m[i] = r_m(sigma_{i+1}) - r_m(sigma_i)``, the fraction of level m generated in step i. Its density
  in log sigma, ``-dr_m/dln sigma = 2 r_m (1 - r_m)``, peaks (value 1/2) at ``sigma = m``.
- Band m (content at scale m but not at 2m): ``r_m - r_{2m}`` and its per-step increase ``c_m - c_{2m}``.
- Level m is "q generated" once ``r_m >= q``, i.e. once ``sigma <= m sqrt((1 - q) / q)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from lib_chroma.schedule import DiscreteSchedule, img2img_steps, sampler_sigmas
from lib_chroma.validation import check_int, check_number, check_positive, check_sigmas

__all__ = [
    "signal_ratio",
    "ratio_density",
    "chromatogram",
    "band_chromatogram",
    "peak_step",
    "dominant_level",
    "sigma_at_fraction",
    "step_generated",
    "hires_strength",
    "DEFAULT_LEVELS",
]

#: Levels shown by default (latent pixels; image scale is 8× for SD).
DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 4, 8)


def _level(name: str, m: float) -> float:
    return check_positive(name, m)


def signal_ratio(sigma: torch.Tensor | float | Sequence[float], m: float) -> torch.Tensor:
    """``r_m(sigma) = m² / (m² + sigma²)`` (float64)."""
    mm = _level("m", m)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if s.is_floating_point() and not bool(torch.isfinite(s).all()):
        raise ValueError("sigma: contains NaN or infinity")
    if bool((s < 0).any()):
        raise ValueError("sigma: must be >= 0")
    return mm * mm / (mm * mm + s * s)


def ratio_density(sigma: torch.Tensor | float, m: float) -> torch.Tensor:
    """Generation rate per unit of ``-ln sigma``: ``2 r_m (1 - r_m)``, peak 1/2 at ``sigma = m``."""
    r = signal_ratio(sigma, m)
    return 2 * r * (1 - r)


def chromatogram(sigmas: Sequence[float] | torch.Tensor, m: float) -> torch.Tensor:
    """Per-step generated fraction of level m: ``c_m[i] = r_m(sigma_{i+1}) - r_m(sigma_i)``, i = 0..N-1."""
    s = check_sigmas("sigmas", sigmas)
    r = signal_ratio(s, m)
    return r[1:] - r[:-1]


def band_chromatogram(sigmas: Sequence[float] | torch.Tensor, m: float) -> torch.Tensor:
    """Per-step generated fraction of band m (level m minus level 2m): ``c_m[i] - c_{2m}[i]``."""
    return chromatogram(sigmas, m) - chromatogram(sigmas, 2 * _level("m", m))


def peak_step(sigmas: Sequence[float] | torch.Tensor, m: float) -> int:
    """The step (0-based) that generates the largest fraction of level m."""
    return int(torch.argmax(chromatogram(sigmas, m)))


def dominant_level(sigmas: Sequence[float] | torch.Tensor, levels: Iterable[float] = DEFAULT_LEVELS) -> list[float]:
    """For each step, the level whose *band* gains most signal in that step.

    Bands are taken between consecutive given levels (``r_a - r_b`` for neighbours a < b); the coarsest level
    keeps its cumulative ratio, since nothing coarser is listed."""
    lv = sorted({_level("levels", m) for m in levels})
    if not lv:
        raise ValueError("levels: need at least one level")
    s = check_sigmas("sigmas", sigmas)
    rows = []
    for k, m in enumerate(lv):
        c = chromatogram(s, m)
        if k + 1 < len(lv):
            c = c - chromatogram(s, lv[k + 1])
        rows.append(c)
    idx = torch.argmax(torch.stack(rows), dim=0)
    return [lv[int(i)] for i in idx]


def sigma_at_fraction(m: float, q: float) -> float:
    """The sigma at which level m is fraction q generated: ``r_m(sigma) = q`` ⇔ ``sigma = m sqrt((1-q)/q)``."""
    mm = _level("m", m)
    qq = check_number("q", q, 0.0, 1.0)
    if qq <= 0.0:
        return math.inf
    return mm * math.sqrt((1.0 - qq) / qq)


def step_generated(sigmas: Sequence[float] | torch.Tensor, m: float, q: float) -> int:
    """The first step i (0-based) at whose end level m is at least fraction q generated
    (``r_m(sigma_{i+1}) >= q``). Returns 0 when the level already holds q at the start, and N - 1 at most
    (the sequence ends at sigma = 0, where every level is complete)."""
    s = check_sigmas("sigmas", sigmas)
    qq = check_number("q", q, 0.0, 1.0)
    r = signal_ratio(s, m)
    ok = torch.nonzero(r[1:] >= qq - 1e-12)
    return int(ok[0]) if ok.numel() else s.numel() - 2


def hires_strength(
    m: float,
    keep: float,
    sampler: str,
    scheduler: str,
    steps: int,
    schedule: DiscreteSchedule,
    *,
    fixed_steps: bool = True,
    ays_table: str = "sd1",
    resolution: float = 0.01,
) -> float:
    """Denoising strength for an upscale-by-m img2img/hires pass that keeps levels >= m and regenerates finer ones.

    The upscaled latent already holds the levels >= m. Re-noising to ``sigma_start`` keeps the fraction
    ``r_m(sigma_start)`` of level m and destroys finer levels the more the larger ``sigma_start`` is, so the
    rule takes the largest strength whose actual first sigma (A1111's img2img step arithmetic for this sampler,
    scheduler and step count) still keeps ``r_m >= keep``: ``sigma_start <= m sqrt((1-keep)/keep)``.
    Strengths are searched on a grid of ``resolution``."""
    check_int("steps", steps, 1)
    kk = check_number("keep", keep, 0.0, 1.0)
    if not 0.0 < kk < 1.0:
        raise ValueError(f"keep: must lie in (0, 1), got {keep}")
    target = sigma_at_fraction(m, kk)
    best = resolution
    n = int(round(1.0 / check_positive("resolution", resolution)))
    for i in range(1, n + 1):
        ds = i / n
        total, t_enc = img2img_steps(steps, ds, fixed_steps)
        if total < 1:
            continue
        full = sampler_sigmas(sampler, scheduler, total, schedule, ays_table=ays_table)
        start = float(full[total - t_enc - 1])
        if start <= target * (1 + 1e-9):
            best = ds
    return round(best, 6)
