"""Schedules and sampler sigma sequences, checked against the PyPI k-diffusion (the samplers' own code)."""

import math

import pytest
import torch
from k_diffusion import external, sampling

from lib_chroma import schedule as S

SD = S.model_schedule("sd1")
KD = external.DiscreteSchedule(SD.sigmas.clone(), quantize=False)  # k-diffusion's own interpolation


def test_scaled_linear_endpoints_match_known_log_snr():
    # scaled-linear: log-SNR runs from 7.069 down to -5.364 (theory-sources §2.3)
    lam = S.log_snr(SD.sigmas)
    assert float(lam[0]) == pytest.approx(7.069, abs=2e-3)
    assert float(lam[-1]) == pytest.approx(-5.364, abs=2e-3)
    assert SD.sigma_min == pytest.approx(0.0292, abs=1e-4) and SD.sigma_max == pytest.approx(14.6146, abs=1e-3)


def test_linear_and_cosine_schedules():
    lin = S.DiscreteSchedule.from_betas(S.linear_betas())
    lam = S.log_snr(lin.sigmas)
    assert float(lam[0]) == pytest.approx(9.210, abs=2e-3) and float(lam[-1]) == pytest.approx(-10.118, abs=2e-3)
    cos = S.DiscreteSchedule.from_betas(S.cosine_betas())
    # abar(t) follows cos² closely away from the clipped end
    t = 500
    phi = ((t + 1) / 1000 + 0.008) / 1.008 * math.pi / 2
    expected = math.cos(phi) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert float(cos.alphas_cumprod[t]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("sigma", [20.0, 14.6, 7.3, 1.0, 0.3, 0.0292, 0.02, 0.001])
def test_sigma_to_t_matches_k_diffusion(sigma):
    ours = float(SD.sigma_to_t(sigma))
    theirs = float(KD.sigma_to_t(torch.tensor(sigma, dtype=torch.float64)))
    assert ours == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("t", [0.0, 0.5, 12.25, 500.0, 998.9, 999.0])
def test_t_to_sigma_matches_k_diffusion_and_inverts(t):
    ours = float(SD.t_to_sigma(t))
    assert ours == pytest.approx(float(KD.t_to_sigma(torch.tensor(t, dtype=torch.float64))), rel=1e-6)
    assert float(SD.sigma_to_t(ours)) == pytest.approx(t, abs=1e-6)


@pytest.mark.parametrize("n", [1, 4, 20, 33])
def test_uniform_matches_k_diffusion_get_sigmas(n):
    ours = S.scheduler_sigmas("Uniform", n, SD)
    assert torch.allclose(ours, KD.get_sigmas(n).double(), rtol=1e-5)


@pytest.mark.parametrize("n", [2, 10, 20, 50])
def test_karras_exponential_polyexponential_match_k_diffusion(n):
    lo, hi = SD.sigma_min, SD.sigma_max
    pairs = [
        (S.scheduler_sigmas("Karras", n, SD), sampling.get_sigmas_karras(n, lo, hi, 7.0)),
        (S.scheduler_sigmas("exponential", n, SD), sampling.get_sigmas_exponential(n, lo, hi)),
        (S.scheduler_sigmas("Polyexponential", n, SD), sampling.get_sigmas_polyexponential(n, lo, hi, 1.0)),
        (S.scheduler_sigmas("karras", n, SD, rho=3.0), sampling.get_sigmas_karras(n, lo, hi, 3.0)),
    ]
    for ours, theirs in pairs:
        assert torch.allclose(ours, theirs.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [5, 20])
def test_t_space_schedulers_built_from_k_diffusion_primitives(n):
    t_max = KD.sigma_to_t(torch.tensor(SD.sigma_max, dtype=torch.float64))
    t_min = KD.sigma_to_t(torch.tensor(SD.sigma_min, dtype=torch.float64))
    sgm = torch.cat([KD.t_to_sigma(torch.linspace(float(t_max), float(t_min), n + 1)[:-1].double()), torch.zeros(1)])
    normal = torch.cat([KD.t_to_sigma(torch.linspace(float(t_max), float(t_min), n).double()), torch.zeros(1)])
    assert torch.allclose(S.scheduler_sigmas("SGM Uniform", n, SD), sgm.double(), rtol=1e-5)
    assert torch.allclose(S.scheduler_sigmas("Normal", n, SD), normal.double(), rtol=1e-5)


def test_simple_ddim_kl_ays_shapes_and_ends():
    for name in ["Simple", "DDIM", "Align Your Steps", "KL Optimal"]:
        for n in (4, 10, 25):
            s = S.scheduler_sigmas(name, n, SD)
            assert s.numel() == n + 1, (name, n)
            assert bool((s[1:] < s[:-1]).all()), name
    assert float(S.scheduler_sigmas("Simple", 10, SD)[0]) == pytest.approx(SD.sigma_max)
    # A1111 uses the 11-entry table as is for 11 steps, and interpolates it log-linearly otherwise
    ays = S.scheduler_sigmas("Align Your Steps", 11, SD)
    assert [round(float(v), 3) for v in ays] == S.AYS_TABLES["sd1"] + [0.0]
    ays10 = S.scheduler_sigmas("Align Your Steps", 10, SD)
    assert float(ays10[0]) == pytest.approx(14.615) and 3.861 < float(ays10[1]) < 6.475
    ays_xl = S.scheduler_sigmas("Align Your Steps", 20, SD, ays_table="sdxl")
    assert float(ays_xl[0]) == pytest.approx(14.615) and float(ays_xl[-2]) == pytest.approx(0.029)
    kl = S.scheduler_sigmas("KL Optimal", 8, SD)
    assert float(kl[0]) == pytest.approx(SD.sigma_max) and float(kl[-1]) == pytest.approx(SD.sigma_min)


def test_sampler_defaults_and_quirks():
    karras = S.scheduler_sigmas("Karras", 20, SD)
    assert torch.equal(S.sampler_sigmas("DPM++ 2M", "Automatic", 20, SD), karras)
    assert torch.equal(S.sampler_sigmas("DPM++ 2M Karras", "Automatic", 20, SD), karras)  # legacy label
    assert torch.equal(S.sampler_sigmas("Euler", "Automatic", 20, SD), S.scheduler_sigmas("Uniform", 20, SD))
    # DPM2 discards the penultimate sigma of a steps+1 sequence: still `steps` steps
    dpm2 = S.sampler_sigmas("DPM2", "Karras", 20, SD)
    k21 = S.scheduler_sigmas("Karras", 21, SD)
    assert dpm2.numel() == 21 and torch.equal(dpm2, torch.cat([k21[:-2], k21[-1:]]))
    # DDIM in A1111 1.10.1 evaluates steps-1 timesteps 1 + k*(1000//steps), k = steps-1 .. 1
    ddim = S.sampler_sigmas("DDIM", "Automatic", 20, SD)
    assert ddim.numel() == 20
    assert float(ddim[0]) == pytest.approx(float(SD.sigmas[951]))
    assert float(ddim[-2]) == pytest.approx(float(SD.sigmas[51]))
    unipc = S.sampler_sigmas("UniPC", "Automatic", 10, SD)
    assert unipc.numel() == 11 and float(unipc[0]) == pytest.approx(SD.sigma_max)


def test_img2img_step_arithmetic():
    assert S.img2img_steps(20, 0.7, fixed_steps=True) == (28, 19)
    assert S.img2img_steps(20, 0.5, fixed_steps=False) == (20, 10)
    tail = S.img2img_sigmas("Euler", "Karras", 20, 0.5, SD)
    full = S.sampler_sigmas("Euler", "Karras", 40, SD)
    assert torch.equal(tail, full[20:]) and tail.numel() == 21


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: S.sampler_sigmas("Euler", "Bogus", 20, SD), "scheduler"),
        (lambda: S.sampler_sigmas("Nope", "Karras", 20, SD), "sampler"),
        (lambda: S.sampler_sigmas("Euler", "Karras", 0, SD), "steps"),
        (lambda: S.model_schedule("sd9"), "model"),
        (lambda: SD.sigma_to_t(float("nan")), "sigma"),
        (lambda: SD.sigma_to_t(-1.0), "sigma"),
        (lambda: S.DiscreteSchedule(torch.tensor([0.5, 0.9])), "alphas_cumprod"),
        (lambda: S.img2img_steps(20, 1.5, True), "denoising_strength"),
        (lambda: S.scaled_linear_betas(0), "n"),
    ],
)
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()


@pytest.mark.parametrize("steps, calls", [(4, 3), (6, 6), (20, 19), (30, 30), (7, 7)])
def test_ddim_call_count_follows_a1111_timesteps(steps, calls):
    """A1111 1.10.1 evaluates DDIM at arange(0, 1000, 1000 // steps) + 1 minus the lowest entry:
    steps - 1 calls when 1000 is a multiple of steps, otherwise ceil(1000 / (1000 // steps)) - 1."""
    assert S.sampler_sigmas("DDIM", "Automatic", steps, SD).numel() - 1 == calls


def test_img2img_timestep_samplers_follow_a1111():
    # DDIM img2img, 8 steps, strength 0.6, plain img2img arithmetic: t_enc = 4 of timesteps 1, 126, 251, 376, …
    # A1111 evaluates 376, 251, 126 (the lowest kept timestep is skipped, as in txt2img)
    s = S.img2img_sigmas("DDIM", "Automatic", 8, 0.6, SD, fixed_steps=False)
    assert [round(float(v), 6) for v in s[:-1]] == [round(float(SD.sigmas[t]), 6) for t in (376, 251, 126)]
    assert float(s[-1]) == 0.0
    u = S.img2img_sigmas("UniPC", "Automatic", 8, 0.6, SD, fixed_steps=False)
    assert u.numel() == 5 and float(u[0]) == pytest.approx(float(SD.sigmas[376]), rel=1e-6)


@pytest.mark.parametrize("a, b", [(0.6, 0.6), (0.01, 0.01), (1.0, 0.05), (0.3, 0.9), (1.0, 1.0)])
def test_beta_quantile_matches_scipy(a, b):
    """The Beta scheduler's quantile function against SciPy's (the one A1111 calls)."""
    stats = pytest.importorskip("scipy.stats")
    for q in [i / 40 for i in range(41)]:
        assert S.beta_ppf(q, a, b) == pytest.approx(float(stats.beta.ppf(q, a, b)), abs=1e-10)
    with pytest.raises(ValueError, match="^alpha:"):
        S.beta_ppf(0.5, 0.0, b)


@pytest.mark.parametrize("steps", [1, 2, 20, 33])
def test_beta_scheduler_follows_its_definition(steps):
    """A1111 v1.10's Beta scheduler: sigma_min + ppf(1 - linspace(0, 1, n)) (sigma_max - sigma_min), then 0."""
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    for a, b in ((0.6, 0.6), (0.3, 0.8)):
        ours = S.scheduler_sigmas("Beta", steps, SD, beta_params=(a, b))
        u = 1 - np.linspace(0, 1, steps)
        ref = [SD.sigma_min + stats.beta.ppf(x, a, b) * (SD.sigma_max - SD.sigma_min) for x in u] + [0.0]
        assert ours.tolist() == pytest.approx(ref, abs=1e-9)
    assert S.sampler_sigmas("Euler", "beta", 20, SD).tolist() == S.scheduler_sigmas("Beta", 20, SD).tolist()
