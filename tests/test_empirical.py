"""Empirical chromatography on Gaussian data with an exact denoiser, sampled by k-diffusion's own samplers."""

import pytest
import torch
from k_diffusion import sampling

from lib_chroma import empirical as E
from lib_chroma.guidance import pool, unpool
from lib_chroma.schedule import model_schedule, sampler_sigmas


def _exact_denoiser(power_coarse: float, power_detail: float, m: int):
    """x0 = U(z) + r, z ~ N(0, Pc) per low-res pixel, r detail with zero block means and variance Pd."""

    def den(x, sigma):
        s2 = sigma.view(-1, 1, 1, 1).double() ** 2
        xl = pool(x, m, m)
        coarse = unpool(power_coarse / (power_coarse + s2 / m**2) * xl, m, m, x.shape[-2:])
        detail = x - unpool(xl, m, m, x.shape[-2:])
        return coarse + power_detail / (power_detail + s2) * detail

    return den


@pytest.mark.parametrize("sampler_fn", [sampling.sample_euler, sampling.sample_euler_ancestral])
def test_generated_fraction_follows_power_corrected_theory(sampler_fn):
    torch.manual_seed(0)
    m, pc, pd = 2, 1.0, 0.05
    den = _exact_denoiser(pc, pd, m)
    sig = sampler_sigmas("Euler", "Karras", 30, model_schedule("sd1"))
    preds = []
    x = torch.randn(64, 1, 32, 32, dtype=torch.float64) * sig[0]
    final = sampler_fn(den, x, sig, callback=lambda d: preds.append(d["denoised"]), disable=True)
    g2 = E.generated_fraction(preds, final, 2)
    g1 = E.generated_fraction(preds, final, 1)
    data = unpool(torch.randn(256, 1, 16, 16, dtype=torch.float64) * pc**0.5, 2, 2, (32, 32))
    p2 = E.level_power(data, 2)
    assert p2 == pytest.approx(pc, rel=0.05)
    t2 = E.theory_fraction(sig, 2, p2)
    # 30-step samplers end with less than the data's variance (Euler 0.90, Euler a 0.82 of P here), which
    # inflates mid-trajectory ratios by up to ~0.06; a wrong law (e.g. sigma instead of sigma/m) is off by 0.3+
    assert float((g2 - t2).abs().max()) < 0.08, (g2 - t2).abs().max()
    assert float((g2 - E.theory_fraction(sig, 1, p2)).abs().max()) > 0.2
    # level 1 holds the coarse part and the weak detail: it cannot settle before level 2
    assert E.settle_step(g1) >= E.settle_step(g2)
    assert abs(E.settle_step(g2) - E.theory_settle_step(sig, 2, p2)) <= 1


def test_bad_input():
    with pytest.raises(ValueError, match="^preds:"):
        E.generated_fraction(torch.zeros(3, 2, 1, 4, 4), torch.zeros(1, 1, 4, 4), 2)


def test_projected_fraction_and_band() -> None:
    g = torch.Generator().manual_seed(0)
    final = torch.randn(4, 3, 32, 32, generator=g)
    preds = torch.stack([0.25 * final, 0.5 * final, final])
    h = E.projected_fraction(preds, final, 2)
    assert torch.allclose(h, torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64), atol=1e-9)
    # noise uncorrelated with the final image averages out of the projection
    noisy = preds + 3.0 * torch.randn(preds.shape, generator=g)
    assert torch.allclose(E.projected_fraction(noisy, final, 1), h, atol=0.1)
    # band m holds nothing that is constant on 2m x 2m blocks
    coarse = torch.randn(2, 3, 8, 8, generator=g).repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert float(E.band(coarse, 2).abs().max()) < 1e-6
    assert float(E.band(final, 2).pow(2).mean()) > 0.1
