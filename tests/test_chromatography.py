"""Chromatography: closed forms, step bookkeeping, hires strength, and the pooled-noise law by Monte Carlo."""

import math

import pytest
import torch

from lib_chroma import chromatography as C
from lib_chroma.guidance import pool
from lib_chroma.schedule import img2img_steps, model_schedule, sampler_sigmas

SD = model_schedule("sd1")
KARRAS20 = sampler_sigmas("Euler", "Karras", 20, SD)


def test_signal_ratio_closed_form_and_sigmoid_identity():
    for m in (1, 2, 3, 8):
        for s in (0.0, 0.5, 2.0, 14.6):
            r = float(C.signal_ratio(s, m))
            assert r == pytest.approx(m * m / (m * m + s * s))
            if s > 0:
                lam = -2 * math.log(s)
                assert r == pytest.approx(1 / (1 + math.exp(-(lam + 2 * math.log(m)))))


def test_density_peaks_at_sigma_equal_m():
    log_s = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    for m in (1, 2, 4, 8):
        d = C.ratio_density(log_s.exp(), m)
        assert float(log_s[int(d.argmax())].exp()) == pytest.approx(m, rel=1e-3)
        assert float(d.max()) == pytest.approx(0.5, abs=1e-6)


def test_chromatogram_telescopes_to_the_generated_total():
    for m in (1, 2, 4, 16):
        c = C.chromatogram(KARRAS20, m)
        assert c.numel() == 20 and bool((c >= 0).all())
        assert float(c.sum()) == pytest.approx(1 - float(C.signal_ratio(KARRAS20[0], m)))


def test_coarse_levels_peak_first_and_band_is_difference():
    peaks = [C.peak_step(KARRAS20, m) for m in (1, 2, 4, 8)]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4
    band = C.band_chromatogram(KARRAS20, 2)
    assert torch.allclose(band, C.chromatogram(KARRAS20, 2) - C.chromatogram(KARRAS20, 4))
    dom = C.dominant_level(KARRAS20, (1, 2, 4, 8))
    assert dom[0] == 8 and dom[-1] == 1 and dom == sorted(dom, reverse=True)


def test_step_generated_consistent_with_sigma_at_fraction():
    for m in (1, 2, 4):
        for q in (0.25, 0.5, 0.9):
            i = C.step_generated(KARRAS20, m, q)
            sig = C.sigma_at_fraction(m, q)
            assert float(C.signal_ratio(sig, m)) == pytest.approx(q)
            assert float(KARRAS20[i + 1]) <= sig + 1e-9
            assert i == 0 or float(KARRAS20[i]) > sig
    # an SD level that is never fully noised is "already generated" at q below its starting ratio
    assert C.step_generated(KARRAS20, 16, 0.5) == 0


def test_hires_strength_is_the_largest_that_keeps_level_m():
    for keep in (0.3, 0.5, 0.8):
        ds = C.hires_strength(2, keep, "DPM++ 2M", "Automatic", 20, SD)
        target = C.sigma_at_fraction(2, keep)

        def start(d):
            total, t_enc = img2img_steps(20, d, True)
            return float(sampler_sigmas("DPM++ 2M", "Automatic", total, SD)[total - t_enc - 1])

        assert start(ds) <= target
        assert start(min(1.0, ds + 0.01)) > target or ds == 1.0
    assert C.hires_strength(2, 0.3, "Euler", "Karras", 20, SD) > C.hires_strength(2, 0.8, "Euler", "Karras", 20, SD)


def _one_over_f_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian images with amplitude spectrum 1/|f| (power 1/f²), unit variance."""
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.fftfreq(size).view(1, -1)
    f = (fx**2 + fy**2).sqrt()
    amp = torch.where(f > 0, 1 / f.clamp_min(1e-9), torch.zeros_like(f))
    white = torch.randn(n, 1, size, size, generator=gen, dtype=torch.float64)
    img = torch.fft.ifft2(torch.fft.fft2(white) * amp).real
    return img / img.std()


@pytest.mark.parametrize("m", [2, 3, 4])
def test_pooled_noise_law_monte_carlo(m):
    gen = torch.Generator().manual_seed(m)
    x0 = _one_over_f_images(64, 48, gen)
    for sigma in (0.5, 2.0, 8.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        noise = pool(x, m, m) - pool(x0, m, m)
        # std of m×m-pooled noise is sigma/m (64·(48/m)² samples: well under 2% error)
        assert float(noise.std()) == pytest.approx(sigma / m, rel=0.02)
    # a 1/f image keeps most of its variance under pooling, so level m's SNR is close to m²/sigma²
    kept = float(pool(x0, m, m).var() / x0.var())
    assert 0.5 < kept < 1.0


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: C.chromatogram([1.0, 2.0, 0.0], 2), "sigmas"),
        (lambda: C.chromatogram([3.0, float("nan"), 0.0], 2), "sigmas"),
        (lambda: C.chromatogram(KARRAS20, 0), "m"),
        (lambda: C.step_generated(KARRAS20, 2, 1.5), "q"),
        (lambda: C.hires_strength(2, 1.0, "Euler", "Karras", 20, SD), "keep"),
        (lambda: C.dominant_level(KARRAS20, []), "levels"),
    ],
)
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()
