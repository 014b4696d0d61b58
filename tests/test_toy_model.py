"""Toy data generator, UNet, training loop and shipped weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lib_chroma.toy import data
from lib_chroma.toy.model import TinyUNet, param_count, scaled_linear_alphas_cumprod
from lib_chroma.toy.train import DEFAULT_WEIGHTS, load_model, save_weights, train


def test_data_is_seeded_and_in_range() -> None:
    a, sa = data.make_batch(8, seed=3)
    b, _ = data.make_batch(8, seed=3)
    c, _ = data.make_batch(8, seed=4)
    assert a.shape == (8, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    for sc in sa:
        (f,) = sc.faces
        assert data.R_MIN <= f.r <= data.R_MAX
        assert f.r + 1 <= f.cx <= data.BASE - f.r - 1 and f.r + 1 <= f.cy <= data.BASE - f.r - 1


def test_radius_range_is_wide_and_log_uniform() -> None:
    r = np.array([sc.faces[0].r for sc in data.sample_scenes(2000, seed=0)])
    lr = np.log(r)
    assert r.min() < 5.3 and r.max() > 13.2
    # log-uniform: the median is near the geometric mean of the range
    assert abs(np.median(lr) - 0.5 * math.log(data.R_MIN * data.R_MAX)) < 0.05


@pytest.mark.parametrize("res", [32, 64])
def test_luminance_classes_are_disjoint(res: int) -> None:
    x, scenes = data.make_batch(16, seed=9, h=res)
    lum = x.mean(1)
    s = res / data.BASE
    yy, xx = np.mgrid[0:res, 0:res]
    u, v = (xx + 0.5) / s, (yy + 0.5) / s
    for i, sc in enumerate(scenes):
        f = sc.faces[0]
        d = np.hypot(u - f.cx, v - f.cy)
        far_eyes = np.min([np.hypot(u - ex, v - ey) - er for ex, ey, er in f.eyes], axis=0)
        assert lum[i][d > f.r + 1.5 / s].max() <= data.BG_LUM_MAX + 1e-5
        assert lum[i][(d < f.r - 1.5 / s) & (far_eyes > 1.5 / s)].min() >= data.FACE_LUM_MIN - 1e-5
        for ex, ey, _ in f.eyes:
            centre = np.unravel_index(np.argmin(np.hypot(u - ex, v - ey)), lum[i].shape)
            assert lum[i][centre] <= data.EYE_LUM_MAX + 0.05


def test_texture_band_energy_is_resolution_invariant() -> None:
    # Variance of the texture below 8 cycles per canvas is the same at 32 and 128; the full variance grows.
    def low_var(res: int) -> tuple[float, float]:
        ts = np.stack([data.texture(seed, res, res) for seed in range(64)])
        f = np.fft.fft2(ts)
        k = np.fft.fftfreq(res) * res
        keep = np.hypot(k[:, None], k[None, :]) < 8
        low = np.fft.ifft2(f * keep).real
        return float(low.var()), float(ts.var())

    low32, all32 = low_var(32)
    low128, all128 = low_var(128)
    assert abs(all32 - 1) < 0.1
    assert abs(low128 / low32 - 1) < 0.1
    assert all128 > 1.2 * all32


def test_schedule_is_sd_scaled_linear() -> None:
    abar = scaled_linear_alphas_cumprod()
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(abar, torch.cumprod(1 - betas, 0))
    assert abs(float(((1 - abar[-1]) / abar[-1]) ** 0.5) - 14.6146) < 1e-3  # SD's sigma_max


@pytest.mark.parametrize("shape", [(32, 32), (64, 64), (64, 96), (30, 45), (17, 33)])
def test_unet_any_size(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = TinyUNet(channels=(16, 32, 32), blocks=(1, 1, 1))
    out = m(torch.randn(2, 3, *shape), torch.tensor([10.0, 500.5]))
    assert out.shape == (2, 3, *shape) and torch.isfinite(out).all()


def test_unet_is_not_trivial_after_a_step() -> None:
    # zero-initialised output conv: the first output is 0; one optimiser step makes it depend on the input
    torch.manual_seed(0)
    m = TinyUNet(channels=(16, 32, 32), blocks=(1, 1, 1))
    x = torch.randn(2, 3, 16, 16)
    assert torch.count_nonzero(m(x, torch.tensor([1, 2]))) == 0
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    (m(x, torch.tensor([1, 2])) - x).pow(2).mean().backward()
    opt.step()
    y = m(x, torch.tensor([1, 2]))
    assert torch.count_nonzero(y) > 0


def test_training_is_reproducible_and_weights_round_trip(tmp_path) -> None:  # noqa: ANN001
    kw = {"steps": 3, "batch": 4, "channels": (16, 32, 32), "blocks": (1, 1, 1), "log_every": 0}
    a = train(out=tmp_path / "a.safetensors", seed=1, **kw)
    b = train(out=None, seed=1, **kw)
    c = train(out=None, seed=2, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    loaded = load_model(tmp_path / "a.safetensors")
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor([100])
    torch.testing.assert_close(loaded(x, t), a(x, t), atol=1e-2, rtol=1e-2)  # fp16 storage
    save_weights(loaded, tmp_path / "b.safetensors")
    assert load_model(tmp_path / "b.safetensors").config == a.config


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="shipped weights not present")
def test_shipped_weights_load_and_sample() -> None:
    from lib_chroma.toy.runs import CountingModel, run_kdiff

    assert DEFAULT_WEIGHTS.stat().st_size <= 10 * 2**20
    m = load_model()
    assert 1_000_000 <= param_count(m) <= 4_000_000
    x = run_kdiff(CountingModel(m), 4, 32, 32, 6, seed=0)
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()
    assert x.abs().max() < 3
