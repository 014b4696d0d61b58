"""Upsample guidance (Hwang, Park, Jo, arXiv 2404.01709) on any denoiser, in x0/VE and eps/VP form.

With ``D`` the (m_h × m_w) average pooling and ``U`` its upsampling, one guided level replaces the coarse part
of the full-resolution x0 prediction by the model's own prediction at the resolution it was trained for:

    denoised' = denoised + w · U(denoised_low - D(denoised)),   denoised_low = model(D(x), sigma / m)

where ``m = sqrt(m_h m_w)``: pooling ``m_h m_w`` pixels of white noise divides its standard deviation by m, so
the pooled latent is a valid noisy sample at ``sigma / m`` and needs no rescaling in VE form (the model
wrapper's own ``c_in`` does the VP scaling). Factors of 4 and more are nested: ``4 = 2·2`` guides the full
resolution by a half-resolution prediction that is itself guided by the quarter resolution, one model call per
level and step.

Timestep samplers work in VP/eps form (``x_t = sqrt(abar) x0 + sqrt(1-abar) eps``); :func:`guide_eps` converts
to VE (``x = x_t / sqrt(abar)``, ``sigma = sqrt((1-abar)/abar)``, ``x0 = x - sigma eps``), applies the same rule
and converts back, which equals the paper's ``eps + w U(eps_low / m - D(eps))``.

Latent sizes a factor does not divide are replicate-padded (split evenly on both sides) up to the next multiple
before pooling and the correction is cropped back: every pixel, the border too, gets a correction from the
block that contains it, so no unguided strip and no seam appear.

Moving grid (``grid="moving"``): a fixed pooling grid imprints itself, because the correction of every call
changes the same m×m blocks. With the moving grid, model call ``phase`` of a pass pools on blocks shifted up
and left by an offset ``(o_h, o_w)`` (:func:`grid_offset`: every offset of ``[0, m_h) × [0, m_w)`` once per
``m_h m_w`` calls, the two axes moving together; nested levels take the digits of one such cycle over
the total factor, see :meth:`GuidancePlan.offset`). The shifted grid
keeps the pooled size ``ceil(H / m_h)``: the first block row starts up to ``m_h - 1`` rows above the image and
is completed by replicating the image's first row (as for sizes a factor does not divide); where the last block
row ends above the image's bottom, the rows below it take the correction of the block row above them, as
bilinear upsampling does at a border. No block wraps around the image: content never crosses from one border
to the other. ``D_o(denoised') = denoised_low`` holds on every block (nearest ``U``, w = 1) for every offset.

Window: guidance is active while the finest level the low-resolution model knows (level m) is still being
generated. By default ("auto" window, shape ``hold``) the weight is ``w`` until level m is ``q_end`` generated
(``r_m = q_end``, i.e. ``sigma = m sqrt((1 - q_end) / q_end)``) and zero after; shape ``fade`` instead holds
``w`` until level m is half generated (``r_m = 1/2``, its chromatogram peak at ``sigma = m``) and then fades
linearly in ``r_m`` to zero at ``q_end``. No model call is made where the weight is zero. Manual windows are a
sigma range or step fractions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lib_chroma.chromatography import signal_ratio
from lib_chroma.schedule import DiscreteSchedule
from lib_chroma.validation import check_choice, check_int, check_number, check_sigmas

if TYPE_CHECKING:  # resampler imports this module's grid placement
    from lib_chroma.resampler import LatentResampler

__all__ = [
    "Factor",
    "GuidancePlan",
    "auto_factor",
    "factor_levels",
    "pool",
    "pool_image",
    "unpool",
    "unpool_image",
    "guide_x0",
    "guide_eps",
    "UpsampleGuidedDenoiser",
    "Resamplers",
    "WINDOW_MODES",
    "DEFAULT_SCALE",
    "DEFAULT_SHAPE",
    "DEFAULT_Q_END",
    "DEFAULT_OPERATOR",
    "SHAPES",
    "OPERATORS",
    "GRIDS",
    "DEFAULT_GRID",
    "grid_offset",
]

Factor = tuple[int, int]
LowDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Resamplers = Mapping[Factor, "LatentResampler"]

WINDOW_MODES = ("auto", "sigma", "fraction")

# Defaults chosen on tuning seeds (README, docs/theory.md §7): full weight until the finest guided level is
# 98 % generated, then off; bilinear U; w = 1.5; the moving pooling grid. The moving grid removed the m x m
# imprint; with it, holding to 98 % (was 94 %) gained proper faces at 3x and closes later on models whose
# deciding features form late. Fading from the chromatogram peak or stopping earlier lost proper faces;
# nearest U left block streaks; w = 1.25 lost proper faces at 2x and 3x.
DEFAULT_SCALE = 1.5
DEFAULT_SHAPE = "hold"
DEFAULT_Q_END = 0.98
DEFAULT_OPERATOR = "bilinear"
SHAPES = ("fade", "hold", "constant")
OPERATORS = ("nearest", "bilinear")
GRIDS = ("fixed", "moving")
DEFAULT_GRID = "moving"


# --------------------------------------------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------------------------------------------

def auto_factor(size: int, native: int) -> int:
    """The integer factor m whose low-resolution size ``size / m`` is closest to ``native`` in log scale
    (boundaries at ``sqrt(m (m+1))``: 1→2 above 1.414×, 2→3 above 2.449×)."""
    check_int("size", size, 1)
    check_int("native", native, 1)
    ratio = size / native
    m = 1
    while ratio > math.sqrt(m * (m + 1)):
        m += 1
    return m


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def factor_levels(m_h: int, m_w: int, nested: bool = True) -> tuple[Factor, ...]:
    """Per-level (m_h, m_w) factors, finest level first.

    Nested: each axis factor splits into primes, largest first (so the intermediate resolutions are the
    smallest multiples of native), padded with 1 on the shorter axis; ``4×4 → ((2,2), (2,2))``,
    ``6×6 → ((3,3), (2,2))``, ``4×2 → ((2,2), (2,1))``. Not nested: one level ``((m_h, m_w),)``.
    Factor 1×1 gives no level."""
    check_int("factor_h", m_h, 1, 64)
    check_int("factor_w", m_w, 1, 64)
    if m_h == 1 and m_w == 1:
        return ()
    if not nested:
        return ((m_h, m_w),)
    ph = sorted(_prime_factors(m_h), reverse=True)
    pw = sorted(_prime_factors(m_w), reverse=True)
    n = max(len(ph), len(pw))
    ph += [1] * (n - len(ph))
    pw += [1] * (n - len(pw))
    return tuple(zip(ph, pw))


# --------------------------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------------------------

def grid_offset(phase: int, m_h: int, m_w: int) -> tuple[int, int]:
    """Offset ``(o_h, o_w)`` of the moving pooling grid at model call ``phase`` (0-based, per pass).

    With ``j = phase mod (m_h m_w)``: ``o_h = j mod m_h``, ``o_w = (floor(j / m_h) + o_h) mod m_w``. Each cycle of
    ``m_h m_w`` calls visits every offset once (for 2×2: (0,0), (1,1), (0,1), (1,0)); ``phase`` 0 is the fixed
    grid."""
    check_int("phase", phase, 0)
    j = phase % (m_h * m_w)
    o_h = j % m_h
    return o_h, (j // m_h + o_h) % m_w


def _check_offset(offset: tuple[int, int], m_h: int, m_w: int) -> tuple[int, int]:
    o_h, o_w = int(offset[0]), int(offset[1])
    if not (0 <= o_h < m_h and 0 <= o_w < m_w):
        raise ValueError(f"offset: must be in [0, {m_h}) x [0, {m_w}), got {tuple(offset)}")
    return o_h, o_w


def _span(size: int, m: int, o: int) -> tuple[int, int, int]:
    """``(top, bottom, n)``: replicate rows added above and below an axis of ``size`` and the pooled size ``n``.

    ``n = ceil(size / m)``; the grid starts ``top = (t + o) mod m`` rows above the image, ``t = floor(p / 2)``,
    ``p = (-size) mod m`` (the fixed grid's even padding, ``o = 0``); ``bottom = max(0, p - top)``. The
    ``max(0, top - p)`` rows below the last block belong to no block."""
    total = (-size) % m
    top = (total // 2 + o) % m
    return top, max(0, total - top), (size + total) // m


def pool(x: torch.Tensor, m_h: int, m_w: int, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``D``: (m_h × m_w) average pooling of a (B, C, H, W) tensor, output ``(ceil(H/m_h), ceil(W/m_w))``.

    Sizes a factor does not divide are replicate-padded evenly on both sides first (``t = floor(p/2)`` rows
    on top, ``p - t`` below, ``p = (-H) mod m_h``). ``offset`` ``(o_h, o_w)`` moves the grid up and left: the
    blocks start ``(t + o_h) mod m_h`` rows above the image (those rows replicate its first row; never a whole
    block of them) and rows below the last block belong to no block (see :func:`unpool`)."""
    if x.dim() != 4:
        raise ValueError(f"x: must be (B, C, H, W), got shape {tuple(x.shape)}")
    if m_h == 1 and m_w == 1:
        return x
    o_h, o_w = _check_offset(offset, m_h, m_w)
    top, bottom, n_h = _span(x.shape[-2], m_h, o_h)
    left, right, n_w = _span(x.shape[-1], m_w, o_w)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), mode="replicate")
    return F.avg_pool2d(x[..., :n_h * m_h, :n_w * m_w], (m_h, m_w), (m_h, m_w))


def pool_image(
    img: torch.Tensor,
    m_h: int,
    m_w: int,
    latent: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    scale: int = 8,
) -> torch.Tensor:
    """``D`` for an image that lies over a latent: (B, C, scale·H, scale·W) pixels over an (H, W) ``latent``
    (a ControlNet hint over the SD latent: ``scale`` = 8), average-pooled on the latent's grid.

    Each latent block of :func:`pool` (same ``offset``) covers ``scale·m_h × scale·m_w`` image pixels; the result
    has ``scale`` pixels per pooled latent pixel, each the mean of an ``m_h × m_w`` pixel patch, i.e. the image
    at the low-resolution size ``scale·ceil(H/m_h) × scale·ceil(W/m_w)``, aligned with ``pool(latent)``: the mean
    of each ``scale × scale`` cell of the result is the mean of the image over the pooled latent pixel's block.
    Replicated pixel rows and columns complete the blocks at the borders, as in :func:`pool`."""
    if img.dim() != 4:
        raise ValueError(f"img: must be (B, C, H, W), got shape {tuple(img.shape)}")
    H, W = int(latent[0]), int(latent[1])
    if tuple(img.shape[-2:]) != (scale * H, scale * W):
        raise ValueError(f"img: must be {scale}x the latent ({H}, {W}), got shape {tuple(img.shape)}")
    if m_h == 1 and m_w == 1:
        return img
    o_h, o_w = _check_offset(offset, m_h, m_w)
    top, bottom, n_h = _span(H, m_h, o_h)
    left, right, n_w = _span(W, m_w, o_w)
    if top or bottom or left or right:
        pads = (scale * left, scale * right, scale * top, scale * bottom)
        img = F.pad(img, pads, mode="replicate")
    return F.avg_pool2d(img[..., : scale * n_h * m_h, : scale * n_w * m_w], (m_h, m_w), (m_h, m_w))


def unpool(y: torch.Tensor, m_h: int, m_w: int, size: tuple[int, int], operator: str = "nearest",
           offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``U``: upsample (B, C, h, w) by (m_h, m_w) on the grid :func:`pool` used (same ``offset``) and crop to
    ``size``.

    ``nearest`` repeats each value over its block (``D∘U = I`` exactly); ``bilinear`` interpolates between
    block centres (smoother, ``D∘U ≈ I``). Image rows below the last block of a moved grid (fewer than ``m_h``)
    repeat the last upsampled row, as bilinear interpolation does at a border."""
    H, W = size
    if m_h == 1 and m_w == 1 and (y.shape[-2], y.shape[-1]) == (H, W):
        return y
    return unpool_image(y, m_h, m_w, (H, W), operator, offset, scale=1)


def unpool_image(
    y: torch.Tensor,
    m_h: int,
    m_w: int,
    latent: tuple[int, int],
    operator: str = "nearest",
    offset: tuple[int, int] = (0, 0),
    scale: int = 8,
) -> torch.Tensor:
    """``U`` for an image over a latent, the counterpart of :func:`pool_image`: ``y`` (B, C, scale·h, scale·w) at
    the pooled size, upsampled by (m_h, m_w) and placed on the latent's grid (same ``offset``), cropped to
    ``(scale·H, scale·W)`` for the (H, W) ``latent``. ``nearest`` gives ``pool_image(unpool_image(y)) = y`` on
    whole blocks; pixels below or right of the last block repeat the last upsampled row or column."""
    H, W = int(latent[0]), int(latent[1])
    o_h, o_w = _check_offset(offset, m_h, m_w)
    full = (y.shape[-2] * m_h, y.shape[-1] * m_w)
    if operator == "nearest":
        up = y.repeat_interleave(m_h, dim=-2).repeat_interleave(m_w, dim=-1)
    elif operator == "bilinear":
        up = F.interpolate(y, size=full, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"operator: unknown {operator!r}; allowed: {', '.join(OPERATORS)}")
    top, left = scale * _span(H, m_h, o_h)[0], scale * _span(W, m_w, o_w)[0]
    short_h, short_w = max(0, top + scale * H - full[0]), max(0, left + scale * W - full[1])
    if short_h or short_w:
        up = F.pad(up, (0, short_w, 0, short_h), mode="replicate")
    return up[..., top:top + scale * H, left:left + scale * W]


# --------------------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuidancePlan:
    """Everything guidance needs for one generation, independent of the host.

    ``levels``: per-level factors, finest first (see :func:`factor_levels`). ``scale``: w. The window is on the
    full-resolution sigma: weight ``w`` inside ``[sigma_lo, sigma_hi]`` for shape ``constant``; for shape
    ``fade`` the weight of a level with cumulative factor M is ``w · clamp((q_end - r_M(sigma)) / (q_end - 1/2),
    0, 1)`` inside the window (full until level M is half generated, zero once it is q_end generated); for shape
    ``hold`` it is ``w`` until level M is q_end generated and zero after (``q_end = 1``: never, since ``r_M < 1`` at
    every ``sigma > 0``: the weight holds through the last step).
    ``power``: the data's signal power per pooled pixel P, which makes the ratio ``M² P / (M² P + sigma²)``;
    SD latents are scaled to unit variance (P = 1); other data (e.g. the toy's pixels) state theirs.
    ``grid``: ``fixed`` pools every call on the same blocks; ``moving`` shifts them by :func:`grid_offset` of
    the call's phase (see the module docstring).
    """

    levels: tuple[Factor, ...]
    scale: float = DEFAULT_SCALE
    sigma_hi: float = math.inf
    sigma_lo: float = 0.0
    shape: str = DEFAULT_SHAPE
    q_end: float = DEFAULT_Q_END
    operator: str = DEFAULT_OPERATOR
    power: float = 1.0
    grid: str = DEFAULT_GRID
    cumulative: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        for k, (mh, mw) in enumerate(self.levels):
            check_int(f"levels[{k}].factor_h", mh, 1, 64)
            check_int(f"levels[{k}].factor_w", mw, 1, 64)
        check_number("scale", self.scale, -10.0, 10.0)
        check_number("sigma_lo", self.sigma_lo, 0.0)
        if math.isnan(self.sigma_hi) or self.sigma_hi < self.sigma_lo:
            raise ValueError(f"sigma_hi: must be >= sigma_lo ({self.sigma_lo}), got {self.sigma_hi}")
        check_choice("shape", self.shape, SHAPES)
        check_number("q_end", self.q_end, 0.5 + 1e-6, 1.0)
        check_choice("operator", self.operator, OPERATORS)
        check_number("power", self.power, 1e-6, 1e6)
        check_choice("grid", self.grid, GRIDS)
        cum, acc = [], 1.0
        for mh, mw in self.levels:
            acc *= math.sqrt(mh * mw)
            cum.append(acc)
        object.__setattr__(self, "cumulative", tuple(cum))

    @property
    def enabled(self) -> bool:
        return bool(self.levels) and self.scale != 0.0

    def weight(self, level: int, sigma: float) -> float:
        """Guidance weight of ``level`` (0 = finest) at full-resolution noise level ``sigma``.

        The full-resolution level gets ``w`` times the shape's factor; nested inner levels (k >= 1) get the
        factor alone (1 in a hold or constant window): they *replace* the coarse part of their prediction by
        the next level's, so the coarse content of the result is ``D den + w (d_low' - D den)`` with ``d_low'``
        telescoping through every level, and every coarse level is extrapolated by ``w`` once, not by
        ``w^(k+1)`` (see docs/theory.md)."""
        if not self.enabled or not (self.sigma_lo * (1 - 1e-6) <= sigma <= self.sigma_hi * (1 + 1e-6)):
            return 0.0
        gain = float(self.scale) if level == 0 else 1.0
        if self.shape == "constant":
            return gain
        r = float(signal_ratio(sigma / math.sqrt(self.power), self.cumulative[level]))
        if self.shape == "hold":
            return gain if r < self.q_end else 0.0
        return gain * min(1.0, max(0.0, (self.q_end - r) / (self.q_end - 0.5)))

    def offset(self, level: int, phase: int) -> tuple[int, int]:
        """Pooling-grid offset of ``level`` at model call ``phase``: (0, 0) for the fixed grid.

        One cycle over the total factor ``M = prod_k m_k`` per axis: the cumulative offset of the coarsest grid
        in full-resolution pixels is ``O = grid_offset(phase, M_h, M_w)`` and level k takes its digit,
        ``o_k = floor(O / prod_{i<k} m_i) mod m_k``, so ``O = sum_k o_k prod_{i<k} m_i``. The coarsest grid
        moves at every call and visits all ``M_h M_w`` offsets per cycle (4 = 2·2: all 16 of the 4×4 grid);
        the finest visits all of its own within ``2 m_h m_w`` calls."""
        if self.grid == "fixed":
            return (0, 0)
        big_h = math.prod(mh for mh, _ in self.levels)
        big_w = math.prod(mw for _, mw in self.levels)
        o_h, o_w = grid_offset(phase, big_h, big_w)
        below_h = math.prod(mh for mh, _ in self.levels[:level])
        below_w = math.prod(mw for _, mw in self.levels[:level])
        mh, mw = self.levels[level]
        return (o_h // below_h) % mh, (o_w // below_w) % mw

    def active(self, sigma: float) -> bool:
        """Whether any model call is made at this sigma (the finest level's weight is non-zero)."""
        return self.weight(0, sigma) != 0.0

    def active_steps(self, sigmas: Sequence[float] | torch.Tensor) -> list[int]:
        """0-based steps whose model sigma ``sigmas[i]`` is guided."""
        s = check_sigmas("sigmas", sigmas)
        return [i for i in range(s.numel() - 1) if self.active(float(s[i]))]

    def window_steps(self, sigmas: Sequence[float] | torch.Tensor) -> tuple[int, int] | None:
        """(first, last) guided step, inclusive, or None when no step is guided."""
        act = self.active_steps(sigmas)
        return (act[0], act[-1]) if act else None

    @classmethod
    def build(
        cls,
        factor: Factor,
        *,
        scale: float = DEFAULT_SCALE,
        window: str = "auto",
        window_range: tuple[float, float] | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        shape: str = DEFAULT_SHAPE,
        q_end: float = DEFAULT_Q_END,
        operator: str = DEFAULT_OPERATOR,
        nested: bool = True,
        power: float = 1.0,
        grid: str = DEFAULT_GRID,
    ) -> GuidancePlan:
        """Make a plan from user-facing settings.

        ``window``: ``auto`` (chromatogram rule, no range), ``sigma`` (``window_range = (sigma_hi, sigma_lo)``),
        or ``fraction`` (``window_range = (start, end)`` step fractions in [0, 1], half-open ``[start, end)``
        over the ``sigmas`` sequence, which is then required)."""
        check_choice("window", window, WINDOW_MODES)
        levels = factor_levels(int(factor[0]), int(factor[1]), nested)
        hi, lo = math.inf, 0.0
        if window == "sigma":
            if window_range is None:
                raise ValueError("window_range: required as (sigma_hi, sigma_lo) when window='sigma'")
            hi = check_number("window_range.sigma_hi", window_range[0], 0.0)
            lo = check_number("window_range.sigma_lo", window_range[1], 0.0, hi)
        elif window == "fraction":
            if window_range is None or sigmas is None:
                raise ValueError("window_range: (start, end) fractions and sigmas are required when window='fraction'")
            f0 = check_number("window_range.start", window_range[0], 0.0, 1.0)
            f1 = check_number("window_range.end", window_range[1], f0, 1.0)
            s = check_sigmas("sigmas", sigmas)
            n = s.numel() - 1
            steps = [i for i in range(n) if f0 <= i / n < f1 or (f1 == 1.0 and i == n - 1 and f0 <= i / n)]
            if not steps:
                return cls((), scale, shape=shape, q_end=q_end, operator=operator, power=power, grid=grid)
            hi, lo = float(s[steps[0]]), float(s[steps[-1]])
            # with fractions the user asked for these exact steps: a constant weight, no fade
            shape = "constant"
        return cls(levels, float(scale), hi, lo, shape, q_end, operator, power, grid)


# --------------------------------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------------------------------

def _row_weights(plan: GuidancePlan, level: int, sigma_full: torch.Tensor) -> torch.Tensor:
    vals = [plan.weight(level, float(s)) for s in sigma_full.detach().flatten().cpu()]
    return torch.tensor(vals, dtype=torch.float64)


def _guide(
    x: torch.Tensor,
    sigma: torch.Tensor,
    denoised: torch.Tensor,
    denoise_low: LowDenoiser,
    plan: GuidancePlan,
    level: int,
    sigma_full: torch.Tensor,
    phase: int,
    resamplers: Resamplers | None = None,
) -> torch.Tensor:
    if level >= len(plan.levels):
        return denoised
    w = _row_weights(plan, level, sigma_full)
    if not bool((w != 0).any()):
        return denoised
    mh, mw = plan.levels[level]
    off = plan.offset(level, phase)
    rs = resamplers.get((mh, mw)) if resamplers else None
    x_low = pool(x, mh, mw, off)
    if rs is not None:  # the signal re-pooled into the pooled image's code, the noise pooled exactly
        den_down = rs.down(denoised, off)
        x_low = x_low + den_down - pool(denoised, mh, mw, off)
    s_low = sigma / math.sqrt(mh * mw)
    d_low = denoise_low(x_low, s_low)
    if d_low.shape != x_low.shape:
        raise ValueError(f"denoise_low: returned shape {tuple(d_low.shape)}, expected {tuple(x_low.shape)}")
    d_low = _guide(x_low, s_low, d_low, denoise_low, plan, level + 1, sigma_full, phase, resamplers)
    size = (x.shape[-2], x.shape[-1])
    if rs is None:
        corr = unpool(d_low - pool(denoised, mh, mw, off), mh, mw, size, plan.operator, off)
    else:
        corr = rs.up(d_low - den_down, size, off, bias=False)
    wt = w.to(device=denoised.device, dtype=denoised.dtype).view(-1, *([1] * (denoised.dim() - 1)))
    out = denoised + wt * corr
    if rs is not None and rs.keep != 1.0:  # damp the residual the re-pooled code does not explain, where guided
        resid = denoised - rs.up(den_down, size, off)
        sf = sigma_full.detach().flatten().to(device=out.device, dtype=torch.float64)
        on = (wt != 0) & (sf >= rs.damp_sigma_min).view_as(wt)
        out = out - (1.0 - rs.keep) * on.to(out.dtype) * resid
    return out


def _check_inputs(x: torch.Tensor, sigma: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"x: must be (B, C, H, W), got shape {tuple(x.shape)}")
    if pred.shape != x.shape:
        raise ValueError(f"prediction: shape {tuple(pred.shape)} differs from x {tuple(x.shape)}")
    s = torch.as_tensor(sigma, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma: must be a scalar or have one value per row ({x.shape[0]}), got {tuple(s.shape)}")
    return s


def guide_x0(
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    denoised: torch.Tensor,
    denoise_low: LowDenoiser,
    plan: GuidancePlan,
    phase: int = 0,
    resamplers: Resamplers | None = None,
) -> torch.Tensor:
    """Upsample guidance in x0/VE form.

    ``x`` (B, C, H, W) noisy latents ``x0 + sigma eps``; ``sigma`` per row; ``denoised`` the model's x0
    prediction for x. ``denoise_low(x_low, sigma_low)`` returns the x0 prediction for pooled rows (all rows in
    one call: cond and uncond together). ``phase``: the index of this model call in its pass, which places the
    moving grid (ignored by the fixed grid). ``resamplers``: fitted latent resamplers by level factor
    (:mod:`lib_chroma.resampler`), used instead of ``pool`` / ``unpool`` (and ``plan.operator``) at the levels
    whose factor they cover; a resampler's ``keep`` < 1 also damps the residual its fit does not explain.
    Returns a new tensor; exactly one ``denoise_low`` call per level with non-zero weight, none outside the
    window."""
    s = _check_inputs(x, torch.as_tensor(sigma), denoised)
    if not plan.enabled:
        return denoised
    s_model = s if s.is_floating_point() else s.to(torch.float32)
    return _guide(x, s_model, denoised, denoise_low, plan, 0, s, phase, resamplers)


def guide_eps(
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    eps: torch.Tensor,
    eps_low: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    plan: GuidancePlan,
    schedule: DiscreteSchedule,
    *,
    integer_timesteps: bool = False,
    phase: int = 0,
    resamplers: Resamplers | None = None,
) -> torch.Tensor:
    """Upsample guidance in eps/VP form for timestep samplers.

    ``x_t`` VP latents at (possibly fractional) timesteps ``t``; ``eps`` the model's noise prediction;
    ``eps_low(x_t_low, t_low)`` the model on pooled VP latents. Converts with ``sigma = t_to_sigma(t)``,
    ``abar = 1/(1+sigma²)``, applies :func:`guide_x0`, and returns ``(x - x0') / sigma``.

    The low call gets the fractional timestep of ``sigma/m``. With ``integer_timesteps`` (for wrappers that
    index ``alphas_cumprod[t]``, e.g. A1111's v-to-eps conversion) it gets the nearest integer timestep and
    the input scaling and x0 conversion use that timestep's own sigma (at most half a table step from
    ``sigma/m``). ``phase`` and ``resamplers`` as in :func:`guide_x0`."""
    tt = _check_inputs(x_t, torch.as_tensor(t), eps)
    if not plan.enabled:
        return eps
    sigma64 = schedule.t_to_sigma(tt.detach().double().cpu().clamp(0, schedule.num_timesteps - 1))
    sig = sigma64.to(device=x_t.device, dtype=x_t.dtype).view(-1, 1, 1, 1)
    sqrt_a = (1.0 / (1.0 + sigma64 * sigma64)).sqrt().to(device=x_t.device, dtype=x_t.dtype).view(-1, 1, 1, 1)
    x = x_t / sqrt_a
    denoised = x - sig * eps

    def low(x_low: torch.Tensor, s_low: torch.Tensor) -> torch.Tensor:
        s64 = s_low.detach().double().cpu()
        # fractional timesteps: the UNet's sinusoidal embedding accepts them, as with UniPC
        t64 = schedule.sigma_to_t(s64.clamp_min(1e-12))
        if integer_timesteps:
            t64 = t64.round()
            s64 = schedule.t_to_sigma(t64)
        t_low = t64.to(device=x_t.device, dtype=torch.float32)
        sa = (1.0 / (1.0 + s64 * s64)).sqrt().to(device=x_low.device, dtype=x_low.dtype).view(-1, 1, 1, 1)
        e = eps_low(x_low * sa, t_low)
        return x_low - s64.to(device=x_low.device, dtype=x_low.dtype).view(-1, 1, 1, 1) * e

    guided = _guide(x, sigma64.to(x.device), denoised, low, plan, 0, sigma64, phase, resamplers)
    return (x - guided) / sig


class UpsampleGuidedDenoiser(torch.nn.Module):
    """Wraps a k-diffusion-style denoiser ``model(x, sigma, **kwargs) -> x0`` with upsample guidance.

    The low-resolution call passes the same keyword arguments (conditioning) unless ``low_kwargs`` maps them
    to something else (e.g. to pool spatial conditioning). It goes to ``low_model`` when given (default:
    ``model``): a host passes the same model without the patches other tools put on it for the full size
    (e.g. Deep Shrink's downscale, which would shrink the native-size call below the sizes the model knows).
    ``resamplers``: as in :func:`guide_x0`. ``calls`` counts model evaluations per resolution;
    ``phase`` counts the full-resolution calls since :meth:`reset` (one sampling run: reset before each), which
    places the moving grid."""

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        plan: GuidancePlan,
        low_kwargs: Callable[[dict, tuple[int, int]], dict] | None = None,
        low_model: Callable[..., torch.Tensor] | None = None,
        resamplers: Resamplers | None = None,
    ) -> None:
        super().__init__()
        self.inner = model
        self.resamplers = resamplers
        self.low_model = low_model if low_model is not None else model
        self.plan = plan
        self.low_kwargs = low_kwargs
        self.calls: dict[tuple[int, int], int] = {}
        self.phase = 0

    def reset(self) -> None:
        """Start a new sampling run: the next call has phase 0 (the counts are kept)."""
        self.phase = 0

    def _count(self, x: torch.Tensor) -> None:
        key = (int(x.shape[-2]), int(x.shape[-1]))
        self.calls[key] = self.calls.get(key, 0) + 1

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: D102
        self._count(x)
        denoised = self.inner(x, sigma, **kwargs)

        def low(x_low: torch.Tensor, s_low: torch.Tensor) -> torch.Tensor:
            self._count(x_low)
            kw = self.low_kwargs(kwargs, (x_low.shape[-2], x_low.shape[-1])) if self.low_kwargs else kwargs
            return self.low_model(x_low, s_low, **kw)

        phase, self.phase = self.phase, self.phase + 1
        return guide_x0(x, sigma, denoised, low, self.plan, phase, self.resamplers)
