"""The chromatographic cascade: high resolution at less cost than plain high-resolution sampling.

A model trained at size S, asked for size ρS (per-axis factors ``(m_h, m_w)``, ``ρ = sqrt(m_h m_w)``), runs a
native pass of size S over the first steps of the user's sigma sequence ``sigma_0 > … > sigma_N``, stops at
``sigma_k``, takes its x0 prediction there, upscales it by ``(m_h, m_w)``, re-noises it to ``sigma_s`` and finishes
at full size, guided by upsample guidance while the chromatogram says the finest guided level is still forming.

**Equal-ratio handover.** Level ``ρM`` of the full-size image is level ``M`` of the native one (``D_ρ U = I``).
Pooling by ρ divides the full-size noise by ρ, so the signal ratios at the handover are
``r_{ρM}(sigma_s) = ρ²M² / (ρ²M² + sigma_s²)`` in the second pass and ``r_M(sigma_k)`` in the first; they are
equal for every ``M`` exactly when

    sigma_s = ρ · sigma_k.

Then every level the upscale carries (levels ``>= ρ`` of the full image) enters the second pass exactly as far
generated as a full-size run would have it at ``sigma_s``: nothing the second pass keeps is lost by stopping
the native pass early, and the second pass generates the rest (``1 - r``) of those levels, guided.

**Stop rule.** What the upscale cannot carry are the octaves below ρ (full-size levels ``< ρ``); a full-size run
would hold ``r_{ρ/2}(sigma_s)`` of the coarsest of them, level ``ρ/2``. The cascade hands over while that level is
at most ``q`` generated (``q`` is the fraction the handover may lose, data power ``P`` as in
:class:`lib_chroma.guidance.GuidancePlan`):

    r_{ρ/2}(sigma_s) = P (ρ/2)² / (P (ρ/2)² + sigma_s²) <= q   ⇔   sigma_k = sigma_s / ρ >= sigma_stop,
    sigma_stop = (1/2) sqrt(P (1 - q) / q),

the same native stop for every factor: the native pass runs until level 1/2 of the native image (the octave just
below its pixels, which no upscale of it contains) would be more than q generated. ``k`` is the last step with
``sigma_k >= sigma_stop`` (and ``ρ sigma_k <= sigma_0``).

**Second pass.** ``[sigma_s] + [sigma_j < sigma_s]`` of the user's sequence, so that the step density matches the
user's schedule; the first user sigma below ``sigma_s`` is merged into ``sigma_s`` (dropped) when it lies less than
half a user step below it in ``log sigma``. With ``density`` ``d < 1`` the pass is the user's schedule thinned
(:func:`thin_sigmas`): ``n = max(2, round(d · c))`` steps for the ``c`` user steps below ``sigma_s``, placed evenly
in the user's step index from ``sigma_s`` to the last positive sigma, ``log sigma`` interpolated between user steps
(the schedule's shape is kept, its density scaled by ``d``). Its guidance is ``GuidancePlan.build(factor,
sigmas=<second pass>, **guidance)``: the library's defaults unless told otherwise.

**Chain.** A factor with several prime levels (``4 = 2·2``) may also be reached stage by stage: ``1× → 2× → 4×``,
each handover by the same rule (each stage stops at the same ``sigma_k``, the next starts at its ratio times
that), each stage guided towards the native size (nested levels).

**Cost.** A pass of ``n`` steps makes ``calls(n) = c·n - (c - 1)`` model calls when its last sigma is 0 (second-order
samplers, ``c = 2``, take a single Euler step to 0), ``c·n`` otherwise. Relative to plain sampling at full size on the
user's sigmas (``calls(N)`` calls of ``ρ²`` native pixels each), the pixel-evaluations of the cascade are

    E = [ Σ_t calls_t · a_t + Σ_t Σ_l low_calls_{t,l} · a_t / Π_{j<=l} (m_h m_w)_j ] / calls(N),

with ``a_t`` the pixel fraction of stage t (``1/ρ²`` native, 1 full size) and ``low_calls_{t,l}`` the model calls of
stage t whose sigma the plan guides at level l (one pooled call each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lib_chroma.guidance import Factor, GuidancePlan, factor_levels, pool, unpool
from lib_chroma.validation import check_choice, check_int, check_number, check_sigmas

__all__ = [
    "DEFAULT_LOSS",
    "DEFAULT_MERGE",
    "DEFAULT_DENSITY",
    "HANDOVERS",
    "DEFAULT_HANDOVER",
    "UPSCALERS",
    "Stage",
    "CascadePlan",
    "CascadeCost",
    "stop_sigma",
    "stop_step",
    "second_sigmas",
    "thin_sigmas",
    "pass_calls",
    "call_sigmas",
    "pass_cost",
    "plan_cascade",
    "upscale",
    "noise_gain",
    "handover",
    "renoise",
]

#: q: the fraction of the coarsest octave an upscale cannot carry that a full-size run would already hold at
#: ``sigma_s`` (and the cascade loses). With the thinned second pass (``DEFAULT_DENSITY``) an early handover costs
#: little; 0.1 with 0.5 was chosen on the tuning seeds of both reference models (docs/theory.md §8; 0.4 before).
DEFAULT_LOSS = 0.1
#: the second pass's step density relative to the user's schedule (1: the user's own sigmas below ``sigma_s``;
#: 0.5: half as many steps over the same range, :func:`thin_sigmas`)
DEFAULT_DENSITY = 0.5
#: the first user sigma below ``sigma_s`` is dropped when it lies less than this fraction of a user step below it
DEFAULT_MERGE = 0.5
#: how the second pass starts (see :func:`handover`): the upscaled x0 prediction with fresh noise (``fresh``); the
#: upscaled noisy latent with fresh noise making up the variance (``noisy``); the upscaled x0 prediction with the
#: first pass's own noise at the coarse levels and fresh noise only within the blocks (``renoise``)
HANDOVERS = ("fresh", "noisy", "renoise")
#: the handover of the WebUI and the latent model, measured best there held out (docs/theory.md §8, "Which
#: handover, per model"); the pixel toy's own is ``fresh`` (:data:`lib_chroma.toy.cascade_runs.TOY_HANDOVER`)
DEFAULT_HANDOVER = "renoise"
#: latent upscalers (``torch.nn.functional.interpolate`` modes; A1111's "Latent", "Latent (bicubic)",
#: "Latent (nearest-exact)")
UPSCALERS = ("bilinear", "bicubic", "nearest-exact")


def _rho(factor: Factor) -> float:
    return math.sqrt(factor[0] * factor[1])


def stop_sigma(loss: float = DEFAULT_LOSS, power: float = 1.0) -> float:
    """``sigma_stop = (1/2) sqrt(P (1 - q) / q)``: the native pass may stop at ``sigma_k >= sigma_stop``, where the
    octave just below its pixels (level 1/2, of power P) is at most ``q = loss`` generated."""
    q = check_number("loss", loss, 1e-6, 1.0 - 1e-6)
    p = check_number("power", power, 1e-6, 1e6)
    return 0.5 * math.sqrt(p * (1.0 - q) / q)


def stop_step(sigmas: Sequence[float] | torch.Tensor, ratio: float, sigma_min: float) -> int | None:
    """The last step ``k >= 1`` with ``sigma_k >= sigma_min``, ``sigma_k > 0`` and ``ratio · sigma_k <= sigma_0``
    (the next stage must start inside the schedule), or None when there is none."""
    s = check_sigmas("sigmas", sigmas)
    check_number("ratio", ratio, 1.0)
    top = float(s[0]) * (1 + 1e-9)
    best = None
    for k in range(1, s.numel()):
        v = float(s[k])
        if v > 0 and v >= sigma_min * (1 - 1e-9) and ratio * v <= top:
            best = k
    return best


def second_sigmas(sigmas: Sequence[float] | torch.Tensor, sigma_s: float, merge: float = DEFAULT_MERGE
                  ) -> tuple[list[float], int]:
    """``([sigma_s] + [sigma_j < sigma_s …], j1)``: the sequence a stage starting at ``sigma_s`` samples on, and the
    index ``j1`` of the first user sigma it keeps.

    The first user sigma below ``sigma_s``, ``sigma_j0``, is dropped when ``ln(sigma_s / sigma_j0) < merge ·
    ln(sigma_{j0-1} / sigma_j0)`` (closer than ``merge`` user steps) and is not the last entry. The start's model
    call then stands for user step ``j1 - 1``."""
    s = check_sigmas("sigmas", sigmas)
    ss = check_number("sigma_s", sigma_s, 0.0)
    check_number("merge", merge, 0.0, 1.0)
    if not ss > float(s[-1]):
        raise ValueError(f"sigma_s: must be above the last sigma {float(s[-1])}, got {ss}")
    j0 = next(j for j in range(s.numel()) if float(s[j]) < ss * (1 - 1e-9))
    j1 = j0
    if j0 >= 1 and j0 < s.numel() - 1 and float(s[j0]) > 0:
        step = math.log(float(s[j0 - 1]) / float(s[j0]))
        if math.log(ss / float(s[j0])) < merge * step:
            j1 = j0 + 1
    return [ss] + [float(v) for v in s[j1:]], j1


def thin_sigmas(sigmas: Sequence[float] | torch.Tensor, sigma_s: float, density: float
                ) -> tuple[list[float], list[int]]:
    """The user's schedule below ``sigma_s`` thinned to ``density`` of its steps: ``(sequence, user_steps)``.

    ``sigma(t)`` is the user's positive sigmas as a function of the step index, ``log sigma`` linear between steps;
    ``t_s`` solves ``sigma(t_s) = sigma_s`` and ``T`` is the last positive sigma's index. The sequence is
    ``sigma(t_i)``, ``t_i = t_s + i (T - t_s) / (n - 1)``, ``i = 0 … n-1``, then 0, with ``n = max(2, round(density ·
    c))`` and ``c`` the user's positive sigmas below ``sigma_s``; ``user_steps[i] = round(t_i)`` is the user step
    model step ``i`` stands for. Density 1 gives ``c`` steps over the same range, on the user's own sigmas only where
    ``t_i`` is a whole index (:func:`second_sigmas` gives the user's own tail)."""
    s = check_sigmas("sigmas", sigmas)
    ss = check_number("sigma_s", sigma_s, 0.0, float(s[0]))
    d = check_number("density", density, 0.05, 1.0)
    pos = [float(v) for v in s if float(v) > 0]
    if len(pos) < 2 or not ss > pos[-1]:
        raise ValueError(f"sigma_s: must be above the last positive sigma {pos[-1]}, got {ss}")
    ls = [math.log(v) for v in pos]
    j = next(i for i, v in enumerate(pos) if v < ss * (1 - 1e-9))  # first user sigma below sigma_s (j >= 1)
    t_s = j - 1 + (ls[j - 1] - math.log(ss)) / (ls[j - 1] - ls[j])
    last = len(pos) - 1
    n = max(2, round(d * (len(pos) - j)))
    seq, steps = [], []
    for i in range(n):
        t = t_s + i * (last - t_s) / (n - 1)
        a = min(int(math.floor(t)), last - 1)
        seq.append(math.exp(ls[a] + (t - a) * (ls[a + 1] - ls[a])))
        steps.append(int(round(t)))
    seq[0], seq[-1] = ss, pos[-1]
    return seq + [0.0], steps


def pass_calls(n_steps: int, ends_at_zero: bool, calls_per_step: int = 1) -> int:
    """Model calls of a pass of ``n_steps`` steps: ``c n - (c - 1)`` when its last sigma is 0 (a second-order
    sampler's last step to 0 is a single Euler step), ``c n`` otherwise."""
    check_int("n_steps", n_steps, 0)
    c = check_int("calls_per_step", calls_per_step, 1, 4)
    if n_steps == 0:
        return 0
    return c * n_steps - (c - 1 if ends_at_zero else 0)


def _per_step_calls(sig: list[float], c: int) -> list[int]:
    n = len(sig) - 1
    return [1 if (c > 1 and i == n - 1 and sig[-1] == 0.0) else c for i in range(n)]


#: where a second-order step's second model call is: at the step's end (Heun) or its geometric midpoint
#: (DPM2, DPM++ SDE, DPM++ 2S a)
SECOND_CALLS = ("next", "mid")


def call_sigmas(sigmas: Sequence[float], calls_per_step: int = 1, second_call: str = "next") -> list[float]:
    """The sigma of every model call of a pass: ``sigma_i`` per step, and for second-order samplers
    (``calls_per_step`` 2) a second call at ``sigma_{i+1}`` (``next``) or ``sqrt(sigma_i sigma_{i+1})``
    (``mid``), except on a last step to 0 (a single Euler step)."""
    check_choice("second_call", second_call, SECOND_CALLS)
    s = [float(v) for v in sigmas]
    per = _per_step_calls(s, check_int("calls_per_step", calls_per_step, 1, 4))
    out: list[float] = []
    for i, c in enumerate(per):
        out.append(s[i])
        if c > 1:
            out.extend([s[i + 1] if second_call == "next" else math.sqrt(s[i] * s[i + 1])] * (c - 1))
    return out


def pass_cost(sigmas: Sequence[float] | torch.Tensor, plan: GuidancePlan | None, pixels: float = 1.0,
              calls_per_step: int = 1, second_call: str = "next") -> dict[str, Any]:
    """Calls and pixel-evaluations of one pass on ``sigmas`` at ``pixels`` (a fraction of the full size).

    ``low_calls[l]``: model calls (:func:`call_sigmas`) whose sigma the plan guides at level l; each costs
    ``pixels / Π_{j<=l} (m_h m_w)_j``. Returns ``{"calls", "low_calls", "pixel_evals"}`` (pixel-evaluations in
    units of full-size calls)."""
    s = [float(v) for v in check_sigmas("sigmas", sigmas)]
    at = call_sigmas(s, calls_per_step, second_call)
    calls = len(at)
    low: list[int] = []
    evals = calls * pixels
    if plan is not None and plan.enabled:
        div = 1.0
        for lvl, (mh, mw) in enumerate(plan.levels):
            div *= mh * mw
            n = sum(1 for v in at if plan.weight(lvl, v) != 0.0)
            low.append(n)
            evals += n * pixels / div
    return {"calls": calls, "low_calls": low, "pixel_evals": evals}


@dataclass(frozen=True)
class Stage:
    """One pass of the cascade.

    ``factor``: its size over the native size per axis ((1, 1) for the native pass). ``sigmas``: the sequence it
    samples on, ending with 0 (a stopped stage ends ``…, stop, 0``: its last model call, at ``stop``, gives the x0
    prediction it hands over). ``start``: its first sigma; ``stop``: the sigma it hands over at (None for the
    last stage). ``first_user_step``: the user step (0-based) its first model call stands for; its step ``j`` stands
    for user step ``first_user_step + j``, or ``step_users[j]`` when the stage thins the user's schedule
    (:func:`thin_sigmas`). ``plan``: its guidance (None for the native stage)."""

    factor: Factor
    sigmas: tuple[float, ...]
    start: float
    stop: float | None
    first_user_step: int
    plan: GuidancePlan | None
    step_users: tuple[int, ...] | None = None

    @property
    def steps(self) -> int:
        """Model steps (``len(sigmas) - 1``)."""
        return len(self.sigmas) - 1

    @property
    def thinned(self) -> bool:
        """Whether the stage samples fewer steps than the user's steps it stands for (:func:`thin_sigmas`)."""
        return self.step_users is not None

    def user_step(self, j: int) -> int:
        """The user step (0-based) the stage's model step ``j`` stands for."""
        return self.first_user_step + j if self.step_users is None else self.step_users[j]

    @property
    def user_steps(self) -> tuple[int, int]:
        """(first, last) user steps, 0-based inclusive, that this stage's model calls stand for."""
        return self.user_step(0), self.user_step(self.steps - 1)

    def guided_user_steps(self) -> tuple[int, int] | None:
        """(first, last) user steps (0-based, inclusive) at which this stage's guidance calls the model."""
        if self.plan is None:
            return None
        win = self.plan.window_steps(self.sigmas)
        return None if win is None else (self.user_step(win[0]), self.user_step(win[1]))


@dataclass(frozen=True)
class CascadeCost:
    """Model calls by stage and level, and the totals relative to plain full-size sampling on the user's sigmas
    (``rel_calls``: all model calls, any size; ``rel_pixel_evals``: see the module docstring)."""

    stage_calls: tuple[int, ...]
    low_calls: tuple[tuple[int, ...], ...]
    plain_calls: int
    rel_calls: float
    rel_pixel_evals: float


@dataclass(frozen=True)
class CascadePlan:
    """A cascade: its stages (native first), the user's sigmas and final factor, and the rule's inputs."""

    user_sigmas: tuple[float, ...]
    factor: Factor
    stages: tuple[Stage, ...]
    loss: float
    power: float

    @property
    def stop_step(self) -> int:
        """The user step (0-based) whose model call gives the native pass's x0 prediction (its last call)."""
        return self.stages[0].user_steps[1]

    def cost(self, calls_per_step: int = 1, second_call: str = "next") -> CascadeCost:
        """Expected calls and pixel-evaluations (module docstring), for a sampler of ``calls_per_step`` (and
        ``second_call``, see :func:`call_sigmas`)."""
        fh, fw = self.factor
        stage_calls, lows, evals = [], [], 0.0
        for st in self.stages:
            a = (st.factor[0] * st.factor[1]) / (fh * fw)
            c = pass_cost(st.sigmas, st.plan, a, calls_per_step, second_call)
            stage_calls.append(c["calls"])
            lows.append(tuple(c["low_calls"]))
            evals += c["pixel_evals"]
        plain = sum(_per_step_calls(list(self.user_sigmas), calls_per_step))
        total = sum(stage_calls) + sum(sum(v) for v in lows)
        return CascadeCost(tuple(stage_calls), tuple(lows), plain, total / plain, evals / plain)


def plan_cascade(
    sigmas: Sequence[float] | torch.Tensor,
    factor: Factor,
    *,
    loss: float = DEFAULT_LOSS,
    power: float = 1.0,
    chain: bool = False,
    sigma_start: float | None = None,
    merge: float = DEFAULT_MERGE,
    density: float = DEFAULT_DENSITY,
    guidance: Mapping[str, Any] | None = None,
) -> CascadePlan | None:
    """Plan the cascade for the user's ``sigmas`` and per-axis ``factor`` (module docstring).

    The native pass stops at ``sigma_k``, the last user sigma ``>= stop_sigma(loss, power)``; the next stage
    starts at ``sigma_s = ρ sigma_k``. ``sigma_start`` instead fixes the full-size start sigma (e.g. from a hires
    denoising strength) and stops the native pass at the last ``sigma_k >= sigma_start / ρ`` (one handover only).
    ``chain``: one stage per prime level of the factor (``4 → 1×, 2×, 4×``). ``guidance``: keyword arguments of
    :meth:`GuidancePlan.build` for every guided stage (default: the library's defaults), which gets the stage's
    cumulative factor and its sigmas. ``density`` < 1: the stage after the native one samples the user's schedule
    thinned (:func:`thin_sigmas`; in a chain the last stage only). Returns None when the factor is 1 or the schedule
    has no step to stop at.
    """
    s = check_sigmas("sigmas", sigmas)
    dens = check_number("density", density, 0.05, 1.0)
    fh = check_int("factor_h", factor[0], 1, 64)
    fw = check_int("factor_w", factor[1], 1, 64)
    if (fh, fw) == (1, 1):
        return None
    kw = dict(guidance or {})
    for bad in ("sigmas", "factor"):
        if bad in kw:
            raise ValueError(f"guidance: {bad!r} is set by the cascade")
    levels = factor_levels(fh, fw, nested=True)
    # stage factors, native first: cumulative products of the levels taken coarsest first
    if chain and sigma_start is None:
        facs, ah, aw = [(1, 1)], 1, 1
        for mh, mw in reversed(levels):
            ah, aw = ah * mh, aw * mw
            facs.append((ah, aw))
    else:
        facs = [(1, 1), (fh, fw)]
    user = [float(v) for v in s]
    if sigma_start is None:
        sig_min = stop_sigma(loss, power)
    else:
        ss = check_number("sigma_start", sigma_start, 0.0, float(s[0]))
        sig_min = ss / _rho((fh, fw))
    stages: list[Stage] = []
    current = user
    users: list[int] | None = None  # the user step of each step of the last stage, when it is thinned
    first_user = 0
    start = user[0]
    for t in range(len(facs) - 1):
        ratio = _rho(facs[t + 1]) / _rho(facs[t])
        k = stop_step(current, ratio, sig_min)
        if k is None or (t > 0 and k < 1):
            return None
        stop = current[k]
        seq = current[: k + 1] + [0.0]
        plan = None if facs[t] == (1, 1) else GuidancePlan.build(facs[t], sigmas=seq, **kw)
        stages.append(Stage(facs[t], tuple(seq), start, stop, first_user, plan))
        start = ratio * stop if sigma_start is None else float(sigma_start)
        if dens < 1.0 and t == len(facs) - 2:  # thin the last stage only (a chain's stages stop on user steps)
            current, users = thin_sigmas(user, start, dens)
            first_user = users[0]
        else:
            current, j1 = second_sigmas(user, start, merge)
            first_user = j1 - 1
    plan = GuidancePlan.build(facs[-1], sigmas=current, **kw)
    stages.append(Stage(facs[-1], tuple(current), start, None, first_user, plan,
                        None if users is None else tuple(users)))
    return CascadePlan(tuple(user), (fh, fw), tuple(stages), float(loss), float(power))


# --------------------------------------------------------------------------------------------------------------
# The handover itself (tensors)
# --------------------------------------------------------------------------------------------------------------

def upscale(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, C, H, W) latent to ``size`` with ``mode`` (:data:`UPSCALERS`; ``align_corners=False`` for the
    interpolating modes, no antialias: A1111's latent upscalers)."""
    check_choice("upscaler", mode, UPSCALERS)
    if mode == "nearest-exact":
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def noise_gain(upscaler: str, factor: Factor, size: int = 32, samples: int = 8) -> float:
    """Mean per-pixel variance of ``Up(e)`` for unit white noise ``e`` (``size × size``, ``samples`` draws of a
    fixed generator, upscaled by ``factor``): 1 for ``nearest-exact``, below 1 for the interpolating modes."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(samples, 1, size, size, generator=g, dtype=torch.float64)
    up = upscale(e, (size * int(factor[0]), size * int(factor[1])), upscaler)
    return float(up.pow(2).mean())


def handover(
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma_s: float,
    factor: Factor,
    *,
    mode: str = "fresh",
    x_k: torch.Tensor | None = None,
    sigma_k: float | None = None,
    upscaler: str = "bilinear",
) -> torch.Tensor:
    """The next stage's starting latent at ``sigma_s`` from the previous stage's x0 prediction ``x0`` at ``sigma_k``.

    ``noise``: unit Gaussian at the new size ``(H, W)`` (``= factor ×`` the old size). ``fresh``:
    ``Up(x0) + sigma_s · noise``. ``noisy``: the upscaled noisy latent with its per-pixel noise variance made up
    to ``sigma_s²``, ``Up(x_k) + sqrt(sigma_s² - g sigma_k²) · noise``, ``g`` the mean per-pixel variance that
    ``Up`` gives unit white noise (:func:`noise_gain`; its upscaled noise stays correlated across pixels).
    ``renoise``: keeps the previous stage's own noise estimate ``x_k - x0`` at the
    coarse levels and draws only the within-block part fresh,

        Up(x0) + (sigma_s / (ρ sigma_k)) · U(x_k - x0) + sigma_s · (noise - U D noise),

    with ``U`` nearest upsampling and ``D`` average pooling by ``factor``: the two noise terms are orthogonal, the
    first has pooled standard deviation ``sigma_s / ρ`` (that of a full-size latent at ``sigma_s``) and per-pixel
    variance ``sigma_s² / ρ²``, the second zero block means and variance ``sigma_s² (1 - 1/ρ²)``, so the sum is
    white noise of standard deviation ``sigma_s`` when ``x_k - x0`` is ``sigma_k`` times white noise."""
    check_choice("handover", mode, HANDOVERS)
    mh, mw = int(factor[0]), int(factor[1])
    size = (int(noise.shape[-2]), int(noise.shape[-1]))
    if mode == "fresh":
        return upscale(x0, size, upscaler) + sigma_s * noise
    if x_k is None or sigma_k is None or sigma_k <= 0:
        raise ValueError(f"x_k: the previous stage's noisy latent and sigma_k > 0 are required for {mode!r}")
    if mode == "noisy":
        extra = sigma_s**2 - noise_gain(upscaler, (mh, mw)) * sigma_k**2
        return upscale(x_k, size, upscaler) + math.sqrt(max(extra, 0.0)) * noise
    return upscale(x0, size, upscaler) + sigma_s * renoise(x0, x_k, noise, sigma_s, sigma_k, (mh, mw))


def renoise(x0: torch.Tensor, x_k: torch.Tensor, noise: torch.Tensor, sigma_s: float, sigma_k: float,
            factor: Factor) -> torch.Tensor:
    """The unit-variance noise of the ``renoise`` handover (:func:`handover`), ``(coarse + sigma_s · fine) /
    sigma_s`` with ``coarse = (sigma_s / (ρ sigma_k)) U(x_k - x0)`` and ``fine = noise - U D noise``: a host that adds
    ``sigma_s`` times a noise tensor to the upscaled x0 prediction (A1111's hires fix) gets the renoise handover by
    using this noise."""
    mh, mw = int(factor[0]), int(factor[1])
    size = (int(noise.shape[-2]), int(noise.shape[-1]))
    coarse = unpool(x_k - x0, mh, mw, size, "nearest") * (1.0 / (_rho((mh, mw)) * sigma_k))
    return coarse + noise - unpool(pool(noise, mh, mw), mh, mw, size, "nearest")
