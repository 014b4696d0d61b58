"""Fitted latent resamplers: the least-squares fit, block placement against pool/unpool, guidance wiring, files."""

import pytest
import torch
import torch.nn.functional as F

from lib_chroma import guidance as G
from lib_chroma.resampler import LatentResampler, fit_resampler, load_resamplers, save_resamplers


def avg_nearest(m: int, c: int = 4, p: int = 1, r: int = 1) -> LatentResampler:
    """``down`` = average pooling, ``up`` = nearest (each sub-pixel copies its block), no bias."""
    k = m + 2 * p
    wd = torch.zeros(c, c, k, k)
    for i in range(c):
        wd[i, i, p:p + m, p:p + m] = 1.0 / (m * m)
    wu = torch.zeros(c * m * m, c, 2 * r + 1, 2 * r + 1)
    for i in range(c):
        wu[i * m * m:(i + 1) * m * m, i, r, r] = 1.0
    return LatentResampler((m, m), wd, torch.zeros(c), wu, torch.zeros(c * m * m), {})


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("size", [(12, 12), (13, 11), (7, 10)])
def test_average_and_nearest_weights_place_blocks_exactly_as_pool_and_unpool(m, size):
    rs = avg_nearest(m)
    z = torch.randn(2, 4, *size)
    for o_h in range(m):
        for o_w in range(m):
            off = (o_h, o_w)
            low = G.pool(z, m, m, off)
            assert torch.allclose(rs.down(z, off), low, atol=1e-6), off
            assert torch.allclose(rs.up(low, size, off), G.unpool(low, m, m, size, "nearest", off), atol=1e-6), off


@pytest.mark.parametrize("m", [2, 3])
def test_fit_recovers_linear_maps(m):
    g = torch.Generator().manual_seed(1)
    true = LatentResampler((m, m), torch.randn(4, 4, m + 4, m + 4, generator=g), torch.randn(4, generator=g),
                           torch.randn(4 * m * m, 4, 5, 5, generator=g), torch.randn(4 * m * m, generator=g), {})
    big = torch.randn(40, 4, 8 * m, 8 * m, generator=g)
    small = torch.randn(40, 4, 8, 8, generator=g)
    fd = fit_resampler(big, true.down(big), (m, m))
    assert torch.allclose(fd.w_down, true.w_down, atol=1e-4) and torch.allclose(fd.b_down, true.b_down, atol=1e-4)
    fu = fit_resampler(true.up(small, (8 * m, 8 * m)), small, (m, m))
    assert torch.allclose(fu.w_up, true.w_up, atol=1e-4) and torch.allclose(fu.b_up, true.b_up, atol=1e-4)


def test_fit_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="big: must be 2x2"):
        fit_resampler(torch.zeros(2, 4, 10, 10), torch.zeros(2, 4, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="big, small"):
        fit_resampler(torch.zeros(2, 4, 8, 8), torch.zeros(3, 4, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="p"):
        fit_resampler(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 4, 4), (2, 2), p=-1)


def den(x, sigma):
    return torch.tanh(0.7 * x) + 0.1 * sigma.view(-1, 1, 1, 1)


@pytest.mark.parametrize("factor", [(2, 2), (4, 4), (3, 3)])
def test_guidance_with_pooling_resamplers_equals_nearest_guidance(factor):
    """With ``down`` = pool and ``up`` = nearest the re-pooled low input is ``D(x)`` and the correction the
    library's: the wiring (both levels of 4x, every phase of the moving grid) adds nothing of its own."""
    x = torch.randn(2, 4, 13, 12)
    s = torch.tensor([2.0, 0.5])
    pl = G.GuidancePlan.build(factor, shape="constant", operator="nearest")
    rs = {(2, 2): avg_nearest(2), (3, 3): avg_nearest(3)}
    for phase in range(5):
        ref = G.guide_x0(x, s, den(x, s), den, pl, phase)
        out = G.guide_x0(x, s, den(x, s), den, pl, phase, rs)
        assert torch.allclose(out, ref, atol=1e-5), phase


def test_resampled_guidance_sees_resampled_signal_and_exact_noise():
    """The low call gets ``D(x) + down(den) - D(den)``, and with w = 1 the corrected prediction's ``down`` moves
    by ``down(up_lin(d_low - down(den)))``."""
    g = torch.Generator().manual_seed(3)
    rs = LatentResampler((2, 2), torch.randn(4, 4, 4, 4, generator=g) * 0.1, torch.zeros(4),
                         torch.randn(16, 4, 3, 3, generator=g) * 0.1, torch.randn(16, generator=g), {})
    x = torch.randn(1, 4, 8, 8, generator=g)
    s = torch.tensor([1.0])
    seen = []

    def low(xl, sl):
        seen.append(xl)
        return den(xl, sl)

    pl = G.GuidancePlan.build((2, 2), shape="constant", scale=1.0)
    d = den(x, s)
    out = G.guide_x0(x, s, d, low, pl, 0, {(2, 2): rs})
    dd = rs.down(d)
    assert torch.allclose(seen[0], G.pool(x, 2, 2) + dd - G.pool(d, 2, 2), atol=1e-6)
    assert torch.allclose(out - d, rs.up(den(seen[0], s / 2) - dd, (8, 8), bias=False), atol=1e-6)
    # the bias cancels: the same correction with any bias
    rs2 = LatentResampler((2, 2), rs.w_down, rs.b_down, rs.w_up, rs.b_up * 0, {})
    assert torch.allclose(G.guide_x0(x, s, d, den, pl, 0, {(2, 2): rs2}), out, atol=1e-6)


def test_keep_damps_the_residual_the_fit_does_not_explain_only_where_guided():
    """``keep`` < 1: ``out = den + w up_lin(d_low - down(den)) - (1 - keep) (den - up(down(den)))`` on guided rows;
    a row outside the window is returned untouched; keep = 1 is the plain rule bit for bit."""
    import dataclasses

    g = torch.Generator().manual_seed(5)
    rs = LatentResampler((2, 2), torch.randn(4, 4, 4, 4, generator=g) * 0.1, torch.randn(4, generator=g),
                         torch.randn(16, 4, 3, 3, generator=g) * 0.1, torch.randn(16, generator=g), {})
    x = torch.randn(2, 4, 9, 8, generator=g)
    s = torch.tensor([2.0, 0.05])  # the second row lies below the window
    pl = G.GuidancePlan.build((2, 2), shape="constant", scale=1.5, window="sigma", window_range=(10.0, 0.1))
    d = den(x, s)
    plain = G.guide_x0(x, s, d, den, pl, 3, {(2, 2): rs})
    damped_rs = dataclasses.replace(rs, keep=0.9)
    damped = G.guide_x0(x, s, d, den, pl, 3, {(2, 2): damped_rs})
    assert torch.equal(G.guide_x0(x, s, d, den, pl, 3, {(2, 2): dataclasses.replace(rs, keep=1.0)}), plain)
    off = pl.offset(0, 3)
    resid = d - rs.up(rs.down(d, off), (9, 8), off)
    assert torch.allclose(damped[0], plain[0] - 0.1 * resid[0], atol=1e-6)
    assert torch.equal(damped[1], d[1]) and torch.equal(plain[1], d[1])
    assert not torch.allclose(damped[0], plain[0], atol=1e-3)
    with pytest.raises(ValueError, match="keep"):
        dataclasses.replace(rs, keep=1.5)


def test_damp_sigma_min_keeps_the_residual_whole_on_rows_below_it():
    """``damp_sigma_min``: a guided row whose full-size sigma lies below it gets the undamped rule bit for bit; a row
    at or above it is damped as with ``keep`` alone."""
    import dataclasses

    g = torch.Generator().manual_seed(6)
    rs = LatentResampler((2, 2), torch.randn(4, 4, 4, 4, generator=g) * 0.1, torch.randn(4, generator=g),
                         torch.randn(16, 4, 3, 3, generator=g) * 0.1, torch.randn(16, generator=g), {})
    x = torch.randn(3, 4, 8, 10, generator=g)
    s = torch.tensor([2.0, 0.5, 1.0])  # all three inside the window; the second below damp_sigma_min
    pl = G.GuidancePlan.build((2, 2), shape="constant", scale=1.5, window="sigma", window_range=(10.0, 0.1))
    d = den(x, s)
    plain = G.guide_x0(x, s, d, den, pl, 1, {(2, 2): rs})
    damped = G.guide_x0(x, s, d, den, pl, 1, {(2, 2): dataclasses.replace(rs, keep=0.7)})
    floored = G.guide_x0(x, s, d, den, pl, 1, {(2, 2): dataclasses.replace(rs, keep=0.7, damp_sigma_min=1.0)})
    assert torch.equal(floored[1], plain[1]) and not torch.allclose(damped[1], plain[1], atol=1e-3)
    assert torch.equal(floored[0], damped[0]) and torch.equal(floored[2], damped[2])
    with pytest.raises(ValueError, match="damp_sigma_min"):
        dataclasses.replace(rs, damp_sigma_min=-0.1)


def test_eps_form_with_resamplers_equals_x0_form():
    from lib_chroma.schedule import model_schedule

    sd = model_schedule("sd1")
    rs = {(2, 2): avg_nearest(2)}
    g = torch.Generator().manual_seed(4)
    rs[(2, 2)] = LatentResampler((2, 2), rs[(2, 2)].w_down + 0.01 * torch.randn(4, 4, 4, 4, generator=g),
                                 torch.zeros(4), rs[(2, 2)].w_up, torch.zeros(16), {}, keep=0.8)
    t = torch.tensor([500.0])
    sigma = sd.t_to_sigma(t.double())
    x = torch.randn(1, 4, 8, 8, generator=g) * float((1 + sigma**2).sqrt())
    pl = G.GuidancePlan.build((2, 2), shape="constant")

    def x0(xv, s):
        return torch.tanh(0.5 * xv)

    def eps_model(xt, tt):
        s = sd.t_to_sigma(tt.double()).float().view(-1, 1, 1, 1)
        xv = xt * (1 + s * s).sqrt()
        return (xv - x0(xv, s)) / s

    sa = float((1 / (1 + sigma**2)).sqrt())
    eps = eps_model(x * sa, t)
    out = G.guide_eps(x * sa, t, eps, eps_model, pl, sd, resamplers=rs)
    ref = G.guide_x0(x, sigma.float(), x0(x, None), lambda xl, sl: x0(xl, sl), pl, 0, rs)
    s = float(sigma)
    assert torch.allclose(x - s * out, ref, atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(5)
    rs = {(2, 2): LatentResampler((2, 2), torch.randn(4, 4, 6, 6, generator=g), torch.randn(4, generator=g),
                                  torch.randn(16, 4, 5, 5, generator=g), torch.randn(16, generator=g),
                                  {"fit_seed": 7})}
    save_resamplers(rs, tmp_path / "r.safetensors")
    back = load_resamplers(tmp_path / "r.safetensors")
    assert set(back) == {(2, 2)} and back[(2, 2)].info == {"fit_seed": 7}
    for name in ("w_down", "b_down", "w_up", "b_up"):
        assert torch.equal(getattr(back[(2, 2)], name), getattr(rs[(2, 2)], name))
    z = torch.randn(1, 4, 9, 9, generator=g)
    assert torch.equal(back[(2, 2)].down(z, (1, 0)), rs[(2, 2)].down(z, (1, 0)))


def test_down_keeps_dtype_and_device_of_input():
    rs = avg_nearest(2)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    assert rs.down(z).dtype == torch.float64 and rs.up(F.avg_pool2d(z, 2), (8, 8)).dtype == torch.float64
