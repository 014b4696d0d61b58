"""Noise schedules and the sampler sigma sequences of A1111 v1.10.

Everything here is in the VE ("k-diffusion") form ``x = x0 + sigma * eps``. A discrete VP schedule with
cumulative products ``abar_t`` maps to it by ``sigma_t = sqrt((1 - abar_t) / abar_t)``; its log-SNR is
``lambda = -2 ln sigma``.

``sigma_to_t`` / ``t_to_sigma`` interpolate linearly in log sigma between the 1000 discrete levels, exactly as
k-diffusion's ``DiscreteSchedule`` (the object A1111's k-diffusion samplers call) does, so a fractional
timestep is what the WebUI would pass to the UNet for that sigma.

Sampler sigma sequences are decreasing and end with 0: ``sigmas[i]`` is the noise level the model is evaluated
at in step ``i`` (for first-order samplers), ``sigmas[-1] = 0`` the clean end. Timestep samplers (DDIM, PLMS,
UniPC) are mapped to the same form through their timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lib_chroma.validation import check_choice, check_finite, check_int, check_number, check_positive

__all__ = [
    "DiscreteSchedule",
    "MODEL_FAMILIES",
    "SAMPLERS",
    "SCHEDULERS",
    "SamplerInfo",
    "scaled_linear_betas",
    "linear_betas",
    "cosine_betas",
    "model_schedule",
    "sampler_info",
    "scheduler_sigmas",
    "sampler_sigmas",
    "img2img_sigmas",
    "img2img_steps",
    "log_snr",
]


# --------------------------------------------------------------------------------------------------------------
# Discrete VP schedules
# --------------------------------------------------------------------------------------------------------------

def scaled_linear_betas(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """SD's schedule: ``beta_i = (sqrt(b0) + i (sqrt(b1) - sqrt(b0)) / (n - 1))**2`` (SD1.x, SD2.x, SDXL)."""
    check_int("n", n, 2)
    check_positive("beta_start", beta_start)
    check_positive("beta_end", beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2


def linear_betas(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule ``beta_i = b0 + i (b1 - b0) / (n - 1)``."""
    check_int("n", n, 2)
    check_positive("beta_start", beta_start)
    check_positive("beta_end", beta_end)
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def cosine_betas(n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal: ``abar(t) = cos²((t/n + s)/(1 + s) · π/2)``, ``beta_i = 1 - abar(i+1)/abar(i)``, clipped."""
    check_int("n", n, 2)
    check_positive("s", s)

    def abar(t: float) -> float:
        return math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar(i + 1) / abar(i), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete VP schedule seen in VE form.

    ``sigmas[t] = sqrt((1 - abar_t) / abar_t)`` ascending in ``t`` (t = 0 is the least noisy level), stored in
    float64. ``v_prediction`` records whether the model predicts ``v`` (SD2-v) rather than ``eps``.
    """

    alphas_cumprod: torch.Tensor
    v_prediction: bool = False
    sigmas: torch.Tensor = field(init=False, repr=False)
    log_sigmas: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        a = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten().cpu()
        if a.numel() < 2:
            raise ValueError(f"alphas_cumprod: need at least 2 values, got {a.numel()}")
        check_finite("alphas_cumprod", a)
        if not bool(((a > 0) & (a < 1)).all()):
            raise ValueError("alphas_cumprod: every value must lie in (0, 1)")
        if not bool((a[1:] < a[:-1]).all()):
            raise ValueError("alphas_cumprod: must be strictly decreasing in t")
        sig = ((1 - a) / a).sqrt()
        object.__setattr__(self, "alphas_cumprod", a)
        object.__setattr__(self, "sigmas", sig)
        object.__setattr__(self, "log_sigmas", sig.log())

    @classmethod
    def from_betas(cls, betas: torch.Tensor | Sequence[float], v_prediction: bool = False) -> DiscreteSchedule:
        """``abar_t = prod_{i<=t} (1 - beta_i)``."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        check_finite("betas", b)
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas: every value must lie in (0, 1)")
        return cls(torch.cumprod(1 - b, 0), v_prediction)

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.numel())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional timestep: linear interpolation of ``t`` in ``log sigma``, clamped to ``[0, T-1]``."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        check_finite("sigma", s)
        if bool((s <= 0).any()):
            raise ValueError("sigma: must be > 0 to map to a timestep")
        ls = s.log().reshape(-1)
        # index of the last table entry <= log sigma (k-diffusion's rule), kept inside [0, T-2]
        low = torch.searchsorted(self.log_sigmas, ls, right=True) - 1
        low = low.clamp(0, self.num_timesteps - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - ls) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).reshape(s.shape)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """``sigma(t) = exp((1-f) log sigma[floor t] + f log sigma[ceil t])``, ``f = frac(t)``."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        check_finite("t", tt)
        if bool(((tt < 0) | (tt > self.num_timesteps - 1)).any()):
            raise ValueError(f"t: must lie in [0, {self.num_timesteps - 1}]")
        lo, hi = tt.floor().long(), tt.ceil().long()
        f = tt - lo
        return ((1 - f) * self.log_sigmas[lo] + f * self.log_sigmas[hi]).exp()

    def alpha_bar_at_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """VP signal coefficient squared for a VE sigma: ``abar = 1 / (1 + sigma²)``."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        return 1.0 / (1.0 + s * s)


def log_snr(sigma: torch.Tensor | float) -> torch.Tensor:
    """``lambda = log(1/sigma²) = -2 ln sigma``."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    check_finite("sigma", s)
    if bool((s <= 0).any()):
        raise ValueError("sigma: must be > 0 for a finite log-SNR")
    return -2.0 * s.log()


#: Model families: schedule, prediction type, native image size (pixels) and latent factor.
MODEL_FAMILIES: dict[str, dict] = {
    "sd1": {"label": "SD1.x", "v_prediction": False, "native": 512, "latent_factor": 8, "ays": "sd1"},
    "sd2": {"label": "SD2.x (512, eps)", "v_prediction": False, "native": 512, "latent_factor": 8, "ays": "sd1"},
    "sd2-v": {"label": "SD2.x (768-v)", "v_prediction": True, "native": 768, "latent_factor": 8, "ays": "sd1"},
    "sdxl": {"label": "SDXL", "v_prediction": False, "native": 1024, "latent_factor": 8, "ays": "sdxl"},
}


def model_schedule(family: str) -> DiscreteSchedule:
    """The discrete schedule of a model family: all of SD1.x/SD2.x/SDXL use scaled-linear 0.00085–0.012."""
    check_choice("model", family, MODEL_FAMILIES)
    return DiscreteSchedule.from_betas(scaled_linear_betas(), MODEL_FAMILIES[family]["v_prediction"])


# --------------------------------------------------------------------------------------------------------------
# Schedulers (A1111 v1.10 modules/sd_schedulers.py, reimplemented from their definitions)
# --------------------------------------------------------------------------------------------------------------

#: Align Your Steps 10-step tables (NVIDIA), interpolated log-linearly to other step counts.
AYS_TABLES: dict[str, list[float]] = {
    "sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def _karras(n: int, smin: float, smax: float, rho: float) -> torch.Tensor:
    """``sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    a, b = smax ** (1 / rho), smin ** (1 / rho)
    return _append_zero((a + ramp * (b - a)) ** rho)


def _exponential(n: int, smin: float, smax: float) -> torch.Tensor:
    """Uniform in log sigma from smax to smin."""
    return _append_zero(torch.linspace(math.log(smax), math.log(smin), n, dtype=torch.float64).exp())


def _polyexponential(n: int, smin: float, smax: float, rho: float) -> torch.Tensor:
    """``log sigma_i = log smin + (1 - i/(n-1))^rho (log smax - log smin)``."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return _append_zero((ramp * (math.log(smax) - math.log(smin)) + math.log(smin)).exp())


def _uniform(n: int, sched: DiscreteSchedule) -> torch.Tensor:
    """k-diffusion ``DiscreteSchedule.get_sigmas``: ``t`` uniform from T-1 to 0 (n points)."""
    t = torch.linspace(sched.num_timesteps - 1, 0, n, dtype=torch.float64)
    return _append_zero(sched.t_to_sigma(t))


def _sgm_uniform(n: int, smin: float, smax: float, sched: DiscreteSchedule) -> torch.Tensor:
    """``t`` uniform from t(smax) to t(smin) on n+1 points, the last dropped."""
    t = torch.linspace(float(sched.sigma_to_t(smax)), float(sched.sigma_to_t(smin)), n + 1, dtype=torch.float64)
    return _append_zero(sched.t_to_sigma(t[:-1]))


def _normal(n: int, smin: float, smax: float, sched: DiscreteSchedule) -> torch.Tensor:
    """``t`` uniform from t(smax) to t(smin) on n points (both ends kept)."""
    t = torch.linspace(float(sched.sigma_to_t(smax)), float(sched.sigma_to_t(smin)), n, dtype=torch.float64)
    return _append_zero(sched.t_to_sigma(t))


def _kl_optimal(n: int, smin: float, smax: float) -> torch.Tensor:
    """``sigma_i = tan((1 - i/n) atan(smax) + (i/n) atan(smin))`` for i = 0..n (no zero appended: ends at smin)."""
    i = torch.arange(n + 1, dtype=torch.float64)
    return torch.tan(i / n * math.atan(smin) + (1 - i / n) * math.atan(smax))


def _simple(n: int, sched: DiscreteSchedule) -> torch.Tensor:
    """Every (T/n)-th table sigma counted from the top: ``sigmas[-(1 + int(i T/n))]``."""
    ss = sched.num_timesteps / n
    return _append_zero(torch.stack([sched.sigmas[-(1 + int(i * ss))] for i in range(n)]))


def _ddim_uniform(n: int, sched: DiscreteSchedule) -> torch.Tensor:
    """Table sigmas at t = 1, 1 + T//n, 1 + 2(T//n), … in descending order."""
    ss = max(sched.num_timesteps // n, 1)
    idx = list(range(1, sched.num_timesteps, ss))
    return _append_zero(sched.sigmas[idx].flip(0))


#: A1111's defaults of the options ``beta_dist_alpha`` and ``beta_dist_beta`` (the Beta scheduler's shape).
BETA_PARAMS = (0.6, 0.6)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b) = B(x; a, b) / B(a, b)``.

    Continued fraction ``I_x = x^a (1-x)^b / (a B(a, b)) · 1 / (1 + d_1 / (1 + d_2 / (1 + …)))`` with
    ``d_{2k+1} = -(a+k)(a+b+k) x / ((a+2k)(a+2k+1))`` and ``d_{2k} = k (b-k) x / ((a+2k-1)(a+2k))``, evaluated
    by the modified Lentz method; for ``x > (a+1)/(a+b+2)`` through ``I_x(a, b) = 1 - I_{1-x}(b, a)``, where the
    fraction converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - (
        math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(1, 400):
        k = i // 2
        if i % 2:  # d_{2k+1}
            num = -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1))
        else:  # d_{2k}
            num = k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    # f is the continued fraction 1 + d_1/(1 + d_2/(1 + ...)) (Lentz: f_0 = 1, f_j = f_{j-1} C_j D_j)
    return math.exp(log_front) / f


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of the Beta(a, b) distribution: the ``x`` in [0, 1] with ``I_x(a, b) = q`` (bisection on the
    monotone :func:`_betainc`, to 1e-14)."""
    check_number("q", q, 0.0, 1.0)
    check_positive("alpha", a)
    check_positive("beta", b)
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-14:
            break
    return 0.5 * (lo + hi)


def _beta(n: int, smin: float, smax: float, params: tuple[float, float]) -> torch.Tensor:
    """Beta scheduler (Lee et al., arXiv 2407.12173, as A1111 v1.10): ``sigma_i = smin + F^-1(1 - i/(n-1)) (smax -
    smin)`` for i = 0..n-1, ``F`` the Beta(alpha, beta) distribution function, then 0."""
    a, b = params
    u = [1.0 - i / (n - 1) for i in range(n)] if n > 1 else [1.0]
    return _append_zero(torch.tensor([smin + beta_ppf(v, a, b) * (smax - smin) for v in u], dtype=torch.float64))


def _ays(n: int, family_table: str) -> torch.Tensor:
    """Align Your Steps: the 11-point table, log-linearly interpolated to n points when n != 11."""
    tab = AYS_TABLES[family_table]
    if n == len(tab):
        return _append_zero(torch.tensor(tab, dtype=torch.float64))
    xs = np.linspace(0, 1, len(tab))
    ys = np.log(np.asarray(tab[::-1]))
    new = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return _append_zero(torch.from_numpy(new))


#: A1111 scheduler names (``name`` key) with their UI labels; default rho where the scheduler has one.
SCHEDULERS: dict[str, dict] = {
    "automatic": {"label": "Automatic"},
    "uniform": {"label": "Uniform"},
    "karras": {"label": "Karras", "rho": 7.0},
    "exponential": {"label": "Exponential"},
    "polyexponential": {"label": "Polyexponential", "rho": 1.0},
    "sgm_uniform": {"label": "SGM Uniform"},
    "kl_optimal": {"label": "KL Optimal"},
    "align_your_steps": {"label": "Align Your Steps"},
    "simple": {"label": "Simple"},
    "normal": {"label": "Normal"},
    "ddim": {"label": "DDIM"},
    "beta": {"label": "Beta"},
}

_SCHEDULER_ALIASES = {v["label"].lower(): k for k, v in SCHEDULERS.items()}
_SCHEDULER_ALIASES.update({k: k for k in SCHEDULERS})
_SCHEDULER_ALIASES["sgmuniform"] = "sgm_uniform"


def _scheduler_key(name: str) -> str:
    key = _SCHEDULER_ALIASES.get(str(name).strip().lower())
    if key is None:
        allowed = ", ".join(v["label"] for v in SCHEDULERS.values())
        raise ValueError(f"scheduler: unknown {name!r}; allowed: {allowed}")
    return key


def scheduler_sigmas(
    scheduler: str,
    steps: int,
    schedule: DiscreteSchedule,
    *,
    ays_table: str = "sd1",
    rho: float | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    beta_params: tuple[float, float] = BETA_PARAMS,
) -> torch.Tensor:
    """The sigma sequence of one A1111 scheduler for ``steps`` steps (length steps + 1, ending in 0 except KL
    Optimal, which A1111 leaves ending at sigma_min). ``automatic`` here means the model's uniform schedule;
    use :func:`sampler_sigmas` for a sampler's own default. ``beta_params``: (alpha, beta) of the Beta
    scheduler (A1111's options ``beta_dist_alpha``/``beta_dist_beta``)."""
    key = _scheduler_key(scheduler)
    check_int("steps", steps, 1)
    smin = schedule.sigma_min if sigma_min is None else check_positive("sigma_min", sigma_min)
    smax = schedule.sigma_max if sigma_max is None else check_positive("sigma_max", sigma_max)
    if smin >= smax:
        raise ValueError(f"sigma_min: must be below sigma_max ({smax}), got {smin}")
    rho_ = SCHEDULERS[key].get("rho", 1.0) if rho is None else check_positive("rho", rho)
    if key in ("automatic", "uniform"):
        return _uniform(steps, schedule)
    if key == "karras":
        return _karras(steps, smin, smax, rho_)
    if key == "exponential":
        return _exponential(steps, smin, smax)
    if key == "polyexponential":
        return _polyexponential(steps, smin, smax, rho_)
    if key == "sgm_uniform":
        return _sgm_uniform(steps, smin, smax, schedule)
    if key == "normal":
        return _normal(steps, smin, smax, schedule)
    if key == "kl_optimal":
        return _kl_optimal(steps, smin, smax)
    if key == "simple":
        return _simple(steps, schedule)
    if key == "ddim":
        return _ddim_uniform(steps, schedule)
    if key == "beta":
        return _beta(steps, smin, smax, beta_params)
    check_choice("ays_table", ays_table, AYS_TABLES)
    return _ays(steps, ays_table)


# --------------------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerInfo:
    """What the chromatogram needs to know about an A1111 sampler.

    ``kind`` is ``"k"`` (k-diffusion, works in sigma) or ``"timestep"`` (DDIM/PLMS/UniPC, VP timesteps).
    ``second_order`` samplers are counted by A1111 as two model calls per step in prompt-editing arithmetic.
    """

    name: str
    kind: str
    scheduler: str | None = None
    second_order: bool = False
    discard_penultimate: bool = False


SAMPLERS: dict[str, SamplerInfo] = {
    s.name: s
    for s in [
        SamplerInfo("DPM++ 2M", "k", "karras"),
        SamplerInfo("DPM++ SDE", "k", "karras", second_order=True),
        SamplerInfo("DPM++ 2M SDE", "k", "exponential"),
        SamplerInfo("DPM++ 2M SDE Heun", "k", "exponential"),
        SamplerInfo("DPM++ 2S a", "k", "karras", second_order=True),
        SamplerInfo("DPM++ 3M SDE", "k", "exponential", discard_penultimate=True),
        SamplerInfo("Euler a", "k"),
        SamplerInfo("Euler", "k"),
        SamplerInfo("LMS", "k"),
        SamplerInfo("Heun", "k", second_order=True),
        SamplerInfo("DPM2", "k", "karras", second_order=True, discard_penultimate=True),
        SamplerInfo("DPM2 a", "k", "karras", second_order=True, discard_penultimate=True),
        SamplerInfo("DPM fast", "k"),
        SamplerInfo("DPM adaptive", "k"),
        SamplerInfo("Restart", "k", "karras", second_order=True),
        SamplerInfo("DDIM", "timestep"),
        SamplerInfo("DDIM CFG++", "timestep"),
        SamplerInfo("PLMS", "timestep"),
        SamplerInfo("UniPC", "timestep"),
    ]
}

_SAMPLER_ALIASES = {k.lower(): k for k in SAMPLERS}
# Pre-1.9 names that infotexts and API clients still send ("DPM++ 2M Karras" = DPM++ 2M + Karras).
_LEGACY_SAMPLERS = {
    "dpm++ 2m karras": ("DPM++ 2M", "karras"),
    "dpm++ sde karras": ("DPM++ SDE", "karras"),
    "dpm++ 2m sde karras": ("DPM++ 2M SDE", "karras"),
    "dpm++ 2m sde exponential": ("DPM++ 2M SDE", "exponential"),
    "dpm++ 2s a karras": ("DPM++ 2S a", "karras"),
    "dpm2 karras": ("DPM2", "karras"),
    "dpm2 a karras": ("DPM2 a", "karras"),
    "lms karras": ("LMS", "karras"),
}


def sampler_info(name: str) -> tuple[SamplerInfo, str | None]:
    """Look up a sampler by its A1111 label (case-insensitive; legacy "X Karras" labels accepted).

    Returns the sampler and the scheduler that a legacy label implies (or None)."""
    key = str(name).strip().lower()
    if key in _SAMPLER_ALIASES:
        return SAMPLERS[_SAMPLER_ALIASES[key]], None
    if key in _LEGACY_SAMPLERS:
        base, sched = _LEGACY_SAMPLERS[key]
        return SAMPLERS[base], sched
    raise ValueError(f"sampler: unknown {name!r}; allowed: {', '.join(SAMPLERS)}")


def _timestep_sampler_sigmas(info: SamplerInfo, steps: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """DDIM/PLMS: A1111 evaluates at timesteps ``clip(arange(0, T, T//steps) + 1)`` in reverse, skipping the
    lowest one (steps - 1 model calls, v1.10.1); UniPC: ``t`` uniform in continuous time from T to 1 (its
    default "time_uniform" skip type), one evaluation per step. The clean end is written as 0."""
    n = schedule.num_timesteps
    if info.name == "UniPC":
        # continuous t in (0, 1]: model time (t - 1/N) * N, N = 1000
        tc = torch.linspace(1.0, 1.0 / n, steps + 1, dtype=torch.float64)[:-1]
        model_t = ((tc - 1.0 / n) * n).clamp(0, n - 1)
        return _append_zero(schedule.t_to_sigma(model_t))
    ts = torch.clamp(torch.arange(0, n, n // steps) + 1, 0, n - 1)
    return _append_zero(schedule.sigmas[ts[1:].flip(0)])


def sampler_sigmas(
    sampler: str,
    scheduler: str,
    steps: int,
    schedule: DiscreteSchedule,
    *,
    ays_table: str = "sd1",
    beta_params: tuple[float, float] = BETA_PARAMS,
) -> torch.Tensor:
    """The sigma sequence A1111 v1.10 samples with for (sampler, scheduler, steps).

    ``Automatic`` resolves to the sampler's own default scheduler (e.g. Karras for DPM++ 2M), or the model's
    uniform schedule when the sampler has none. Samplers that discard the penultimate sigma get steps + 1
    sigmas with the next-to-last removed. Timestep samplers ignore the scheduler, as in A1111."""
    info, legacy_sched = sampler_info(sampler)
    check_int("steps", steps, 1)
    key = _scheduler_key(scheduler)
    if info.kind == "timestep":
        return _timestep_sampler_sigmas(info, steps, schedule)
    if key == "automatic":
        key = legacy_sched or info.scheduler or "uniform"
    n = steps + 1 if info.discard_penultimate else steps
    sig = scheduler_sigmas(key, n, schedule, ays_table=ays_table, beta_params=beta_params)
    if info.discard_penultimate:
        sig = torch.cat([sig[:-2], sig[-1:]])
    return sig


def img2img_steps(steps: int, denoising_strength: float, fixed_steps: bool) -> tuple[int, int]:
    """A1111's img2img step arithmetic (``setup_img2img_steps``), returning (schedule steps, t_enc).

    Hires fix passes its second-pass step count, which selects the "fixed" branch: the schedule is stretched to
    ``int(steps / min(strength, 0.999))`` and ``t_enc = steps - 1``, so exactly ``steps`` steps run. Plain
    img2img (without the "img2img_fix_steps" option) keeps ``steps`` and runs ``t_enc = int(strength * steps)``
    of them. The pass then samples ``sigmas(schedule steps)[schedule steps - t_enc - 1:]``."""
    check_int("steps", steps, 1)
    ds = float(denoising_strength)
    if math.isnan(ds) or not 0.0 < ds <= 1.0:
        raise ValueError(f"denoising_strength: must lie in (0, 1], got {denoising_strength}")
    if fixed_steps:
        return int(steps / min(ds, 0.999)), steps - 1
    return steps, int(min(ds, 0.999) * steps)


def img2img_sigmas(
    sampler: str, scheduler: str, steps: int, denoising_strength: float, schedule: DiscreteSchedule,
    *, fixed_steps: bool = True, ays_table: str = "sd1", beta_params: tuple[float, float] = BETA_PARAMS,
) -> torch.Tensor:
    """The model sigmas an img2img or hires pass evaluates, ending with 0.

    k-diffusion samplers: the tail ``sigmas(total)[total - t_enc - 1:]`` of the stretched sequence.
    DDIM/PLMS: A1111 keeps the first ``t_enc`` timesteps of ``arange(0, T, T // total) + 1`` and, as in
    txt2img, evaluates all but the lowest, from the highest down. UniPC: continuous time from
    ``t_enc``'s timestep / T + 1/T down to 1/T in ``t_enc`` steps."""
    info, _ = sampler_info(sampler)
    total, t_enc = img2img_steps(steps, denoising_strength, fixed_steps)
    if info.kind == "timestep":
        n = schedule.num_timesteps
        ts = torch.clamp(torch.arange(0, n, max(n // total, 1)) + 1, 0, n - 1)[:t_enc]
        if info.name == "UniPC":
            if ts.numel() == 0:
                return torch.zeros(1, dtype=torch.float64)
            t_start = float(ts[-1]) / n + 1.0 / n
            tc = torch.linspace(t_start, 1.0 / n, t_enc + 1, dtype=torch.float64)[:-1]
            return _append_zero(schedule.t_to_sigma(((tc - 1.0 / n) * n).clamp(0, n - 1)))
        return _append_zero(schedule.sigmas[ts[1:].flip(0)])
    full = sampler_sigmas(sampler, scheduler, total, schedule, ays_table=ays_table, beta_params=beta_params)
    return full[total - t_enc - 1:]
