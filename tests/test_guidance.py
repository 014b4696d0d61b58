"""Upsample guidance: algebra, exactness on Gaussian data, bookkeeping of model calls, and edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from lib_chroma import guidance as G
from lib_chroma.schedule import model_schedule, sampler_sigmas

SD = model_schedule("sd1")
SIGMAS = sampler_sigmas("Euler", "Karras", 20, SD)


def plan(factor=(2, 2), **kw):
    kw.setdefault("shape", "constant")
    return G.GuidancePlan.build(factor, **kw)


class CountingModel:
    """A fixed nonlinear 'denoiser' x0 = tanh(a x) + b·sigma, counting its calls per input size."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.a = float(torch.rand((), generator=g)) + 0.5
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, x, sigma):
        self.calls.append((x.shape[0], x.shape[-2], x.shape[-1]))
        s = torch.as_tensor(sigma, dtype=x.dtype).view(-1, 1, 1, 1)
        return torch.tanh(self.a * x) * (1 / (1 + s)) + 0.01 * s


def test_factor_helpers():
    assert G.auto_factor(1024, 512) == 2 and G.auto_factor(1536, 512) == 3 and G.auto_factor(512, 512) == 1
    assert G.auto_factor(704, 512) == 1 and G.auto_factor(768, 512) == 2  # boundary at sqrt(2) = 1.414x
    assert G.factor_levels(2, 2) == ((2, 2),)
    assert G.factor_levels(4, 4) == ((2, 2), (2, 2))
    assert G.factor_levels(6, 6) == ((3, 3), (2, 2))
    assert G.factor_levels(4, 2) == ((2, 2), (2, 1))
    assert G.factor_levels(4, 4, nested=False) == ((4, 4),)
    assert G.factor_levels(1, 1) == ()


def test_pool_unpool_inverse_and_shapes():
    x = torch.randn(2, 4, 12, 18)
    y = G.pool(x, 2, 3)
    assert y.shape == (2, 4, 6, 6)
    assert torch.allclose(G.pool(G.unpool(y, 2, 3, (12, 18)), 2, 3), y)  # D∘U = I
    odd = torch.randn(1, 4, 13, 11)
    assert G.pool(odd, 2, 2).shape == (1, 4, 7, 6)
    assert G.unpool(G.pool(odd, 2, 2), 2, 2, (13, 11)).shape == odd.shape


def test_identity_at_zero_scale_and_no_calls():
    model = CountingModel()
    x = torch.randn(2, 4, 16, 16)
    d = model(x, torch.full((2,), 3.0))
    model.calls.clear()
    out = G.guide_x0(x, torch.full((2,), 3.0), d, model, plan(scale=0.0))
    assert torch.equal(out, d) and model.calls == []


def test_linear_in_scale():
    model = CountingModel()
    x = torch.randn(3, 4, 16, 16)
    s = torch.full((3,), 2.0)
    d = model(x, s)
    g1 = G.guide_x0(x, s, d, model, plan(scale=1.0))
    g25 = G.guide_x0(x, s, d, model, plan(scale=2.5))
    assert torch.allclose(g25 - d, 2.5 * (g1 - d), atol=1e-6)


def test_commutes_with_classifier_free_guidance():
    """Guiding cond and uncond rows then combining equals combining then guiding with combined low-res rows."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 16, 16)
    s = torch.tensor([2.0])
    cond_m, uncond_m = CountingModel(1), CountingModel(2)
    p = plan(scale=1.3)
    scale = 7.0

    def cfg(c, u):
        return u + scale * (c - u)

    c = G.guide_x0(x, s, cond_m(x, s), cond_m, p)
    u = G.guide_x0(x, s, uncond_m(x, s), uncond_m, p)
    per_row = cfg(c, u)

    def low_cfg(xl, sl):
        return cfg(cond_m(xl, sl), uncond_m(xl, sl))

    combined = G.guide_x0(x, s, cfg(cond_m(x, s), uncond_m(x, s)), low_cfg, p)
    assert torch.allclose(per_row, combined, atol=1e-5)


def _gaussian_denoisers(spectrum_low, detail_var, m):
    """Exact posterior means for x0 = U(z) + r: z ~ N(0, circulant spectrum) at low res, r detail noise with
    D(r) = 0 and variance detail_var. Returns (full-res x0 predictor, low-res x0 predictor for z)."""

    def low(y, s):
        s2 = torch.as_tensor(s, dtype=y.dtype).view(-1, 1, 1, 1) ** 2
        return torch.fft.ifft2(torch.fft.fft2(y) * spectrum_low / (spectrum_low + s2)).real

    def full(x, s):
        s_ = torch.as_tensor(s, dtype=x.dtype).view(-1, 1, 1, 1)
        xl = G.pool(x, m, m)
        coarse = G.unpool(low(xl, s_.flatten() / m), m, m, x.shape[-2:])
        detail = x - G.unpool(xl, m, m, x.shape[-2:])
        return coarse + detail_var / (detail_var + s_**2) * detail

    return full, low


@pytest.mark.parametrize("m", [2, 3])
def test_exact_gaussian_predictor_is_a_fixed_point(m):
    """For Gaussian data whose exact x0 predictor is known, guidance changes nothing: the exact full-res
    prediction's coarse part already equals the exact low-res prediction at sigma/m."""
    gen = torch.Generator().manual_seed(m)
    n = 8
    fy, fx = torch.fft.fftfreq(n).view(-1, 1), torch.fft.fftfreq(n).view(1, -1)
    spectrum = 1.0 / (0.05 + fx**2 + fy**2)  # stationary at the low resolution
    spectrum = spectrum.double()
    full, low = _gaussian_denoisers(spectrum, 0.3, m)
    z = torch.fft.ifft2(torch.fft.fft2(torch.randn(2, 1, n, n, generator=gen, dtype=torch.float64))
                        * spectrum.sqrt()).real
    g = torch.randn(2, 1, n * m, n * m, generator=gen, dtype=torch.float64) * math.sqrt(0.3)
    x0 = G.unpool(z, m, m, (n * m, n * m)) + g - G.unpool(G.pool(g, m, m), m, m, (n * m, n * m))
    for sigma in (0.3, 1.0, 5.0):
        s = torch.full((2,), sigma, dtype=torch.float64)
        x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        d = full(x, s)
        out = G.guide_x0(x, s, d, low, plan((m, m), scale=1.0))
        assert torch.allclose(out, d, atol=1e-10)
        # the same check fails if the low-res call used sigma instead of sigma/m: the law matters
        wrong = G.guide_x0(x, s, d, lambda xl, sl: low(xl, sl * m), plan((m, m), scale=1.0))
        assert not torch.allclose(wrong, d, atol=1e-4)


def test_white_noise_data_is_a_fixed_point():
    """Stationary white Gaussian data (x0 ~ N(0, v I)): E[x0|x] = v/(v+s²) x, and pooled data has variance v/m²."""
    v, m = 0.7, 2
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    s = torch.full((2,), 1.5, dtype=torch.float64)

    def den(xx, ss, var):
        ss = ss.view(-1, 1, 1, 1)
        return var / (var + ss**2) * xx

    out = G.guide_x0(x, s, den(x, s, v), lambda xl, sl: den(xl, sl, v / m**2), plan((m, m)))
    assert torch.allclose(out, den(x, s, v), atol=1e-12)


def test_one_call_per_level_nested_and_none_outside_window():
    model = CountingModel()
    x = torch.randn(3, 4, 32, 32)
    s = torch.full((3,), 4.0)
    d = model(x, s)
    model.calls.clear()
    G.guide_x0(x, s, d, model, plan((4, 4)))
    assert model.calls == [(3, 16, 16), (3, 8, 8)]  # one batched call per level, all rows together
    model.calls.clear()
    p = plan((2, 2), window="sigma", window_range=(3.0, 1.0))
    G.guide_x0(x, torch.full((3,), 0.5), d, model, p)
    G.guide_x0(x, torch.full((3,), 5.0), d, model, p)
    assert model.calls == []
    G.guide_x0(x, torch.full((3,), 2.0), d, model, p)
    assert model.calls == [(3, 16, 16)]


def test_auto_window_fades_with_the_chromatogram():
    p = G.GuidancePlan.build((2, 2), scale=1.0, shape="fade", q_end=0.9)
    assert p.weight(0, 10.0) == 1.0 and p.weight(0, 2.0) == pytest.approx(1.0)  # until r_2 = 1/2 at sigma 2
    assert 0 < p.weight(0, 1.0) < 1.0
    assert p.weight(0, 0.6) == 0.0  # r_2(0.6) = 0.917 > 0.9
    first, last = p.window_steps(SIGMAS)
    assert first == 0 and float(SIGMAS[last]) > 2 * math.sqrt(0.1 / 0.9) >= float(SIGMAS[last + 1])
    # nested: the coarser level settles first, so its window closes earlier
    p4 = G.GuidancePlan.build((4, 4), scale=1.0, shape="fade", q_end=0.9)
    assert p4.weight(1, 1.5) < p4.weight(0, 1.5)


def test_fraction_window_selects_those_steps():
    p = G.GuidancePlan.build((2, 2), window="fraction", window_range=(0.0, 0.5), sigmas=SIGMAS)
    assert p.active_steps(SIGMAS) == list(range(10))
    p2 = G.GuidancePlan.build((2, 2), window="fraction", window_range=(0.25, 1.0), sigmas=SIGMAS)
    assert p2.active_steps(SIGMAS) == list(range(5, 20))


def test_non_divisible_sizes_have_no_unguided_border():
    """With a low-res model that adds 1 to the pooled prediction, every pixel, the padded border included,
    must receive the same correction (+w): no seam, no unguided strip."""
    x = torch.randn(2, 4, 13, 15)
    s = torch.full((2,), 2.0)
    d = torch.zeros_like(x)
    out = G.guide_x0(x, s, d, lambda xl, sl: torch.ones_like(xl), plan((2, 2), scale=0.8))
    assert out.shape == x.shape and torch.allclose(out, torch.full_like(x, 0.8))
    out3 = G.guide_x0(x, s, d, lambda xl, sl: torch.ones_like(xl), plan((3, 2), scale=1.0, operator="bilinear"))
    assert torch.allclose(out3, torch.ones_like(x), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_shape_device_and_batch_independence(dtype):
    model = CountingModel()
    x = torch.randn(4, 4, 16, 24).to(dtype)
    s = torch.tensor([3.0, 3.0, 1.0, 0.5])
    d = model(x, s)
    out = G.guide_x0(x, s, d, model, plan((2, 3)))
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    for i in range(4):
        single = G.guide_x0(x[i:i + 1], s[i:i + 1], d[i:i + 1], model, plan((2, 3)))
        assert torch.allclose(single, out[i:i + 1], atol=1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_eps_form_equals_x0_form():
    """guide_eps on a VP/eps model gives the same result as guide_x0 on its k-diffusion (VE/x0) view."""
    model = CountingModel()

    def x0_model(x, sigma):
        return model(x, sigma)

    def eps_model(x_t, t):  # the same model seen as a timestep eps predictor
        sig = SD.t_to_sigma(t.double()).to(x_t.dtype).view(-1, 1, 1, 1)
        x = x_t * (1 + sig**2).sqrt()
        return (x - x0_model(x, sig.flatten())) / sig

    t = torch.tensor([700.0, 700.0], dtype=torch.float64)
    sig = SD.t_to_sigma(t).view(-1, 1, 1, 1)
    x_t = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    p = plan((2, 2), scale=1.2)
    eps = eps_model(x_t, t)
    guided_eps = G.guide_eps(x_t, t, eps, eps_model, p, SD)
    x = x_t * (1 + sig**2).sqrt()
    guided_x0 = G.guide_x0(x, sig.flatten(), x0_model(x, sig.flatten()), x0_model, p)
    assert torch.allclose(x - sig * guided_eps, guided_x0, atol=1e-8)


def test_wrapper_counts_calls_per_resolution():
    inner = CountingModel()
    wrapped = G.UpsampleGuidedDenoiser(lambda x, s, **kw: inner(x, s), plan((2, 2)))
    wrapped(torch.randn(2, 4, 16, 16), torch.full((2,), 3.0))
    assert wrapped.calls == {(16, 16): 1, (8, 8): 1}


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: G.GuidancePlan.build((0, 2)), "factor_h"),
        (lambda: G.GuidancePlan.build((2, 2), window="sometimes"), "window"),
        (lambda: G.GuidancePlan.build((2, 2), window="sigma"), "window_range"),
        (lambda: G.GuidancePlan.build((2, 2), scale=float("nan")), "scale"),
        (lambda: G.GuidancePlan.build((2, 2), operator="lanczos"), "operator"),
        (lambda: G.GuidancePlan.build((2, 2), window="fraction", window_range=(0.5, 0.2), sigmas=SIGMAS),
         "window_range.end"),
        (lambda: G.guide_x0(torch.zeros(2, 4, 8, 8), torch.ones(3), torch.zeros(2, 4, 8, 8), None, plan()), "sigma"),
        (lambda: G.guide_x0(torch.zeros(2, 4, 8, 8), 1.0, torch.zeros(2, 4, 8, 9), None, plan()), "prediction"),
    ],
)
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()


def test_eps_form_with_integer_timesteps_passes_integers_and_stays_close():
    seen = []

    def eps_model(x_t, t):
        seen.append(t.clone())
        return 0.1 * x_t

    t = torch.tensor([700.0])
    x_t = torch.randn(1, 4, 16, 16, dtype=torch.float64)
    eps = eps_model(x_t, t)
    seen.clear()
    p = plan((2, 2))
    exact = G.guide_eps(x_t, t, eps, eps_model, p, SD)
    ints = G.guide_eps(x_t, t, eps, eps_model, p, SD, integer_timesteps=True)
    assert float(seen[0]) != round(float(seen[0])) and float(seen[1]) == round(float(seen[1]))
    assert torch.allclose(exact, ints, rtol=0.02, atol=0.02) and not torch.equal(exact, ints)


def test_signal_power_shifts_the_window_to_lower_sigma():
    unit = G.GuidancePlan.build((2, 2), scale=1.0, shape="fade", q_end=0.9)
    # r = 4·0.25 / (4·0.25 + s²): level 2 is half done at sigma 1
    weak = G.GuidancePlan.build((2, 2), scale=1.0, shape="fade", q_end=0.9, power=0.25)
    assert unit.weight(0, 1.5) < 1.0 and weak.weight(0, 1.0) == pytest.approx(1.0)
    assert weak.weight(0, 0.5) > 0.0 == unit.weight(0, 0.5)
    with pytest.raises(ValueError, match="^power:"):
        G.GuidancePlan.build((2, 2), power=0.0)


def test_hold_shape_keeps_full_weight_until_q_end():
    p = G.GuidancePlan.build((2, 2), shape="hold", q_end=0.94, scale=1.0)
    edge = 2 * math.sqrt(0.06 / 0.94)  # r_2 = 0.94
    assert p.weight(0, 1.0) == 1.0 and p.weight(0, edge * 1.01) == 1.0 and p.weight(0, edge * 0.99) == 0.0
    p4 = G.GuidancePlan.build((4, 4), shape="hold", q_end=0.94, scale=1.0)
    assert p4.weight(0, 0.8) == 1.0 and p4.weight(1, 0.8) == 0.0  # the coarser level is done sooner


def test_default_window_ends_at_r_098_the_094_end_for_content_of_power_032():
    """The default hold ends where r_M = 0.98 (sigma = M sqrt(0.02/0.98) ≈ M/7), the sigma at which the old end
    0.94 stops for a level of power P = (0.02/0.98) / (0.06/0.94) ≈ 0.32 (docs/theory.md, The window)."""
    d = G.GuidancePlan.build((2, 2))
    assert (d.q_end, d.shape, d.grid, d.scale) == (0.98, "hold", "moving", 1.5)
    edge = 2 * math.sqrt(0.02 / 0.98)
    assert d.weight(0, edge * 1.01) == 1.5 and d.weight(0, edge * 0.99) == 0.0
    p = (0.02 / 0.98) / (0.06 / 0.94)
    old_for_p = G.GuidancePlan.build((2, 2), q_end=0.94, power=p)
    for s in (edge * 1.01, edge * 0.99, 0.5, 0.2):
        assert old_for_p.weight(0, s) == d.weight(0, s)
    assert G.GuidancePlan.build((2, 2), q_end=0.94).weight(0, 0.4) == 0.0 < d.weight(0, 0.4)


def test_hold_to_q_1_guides_every_step_down_to_the_last_sigma():
    """q_end = 1 (the WebUI's latent default): r_M < 1 at every sigma > 0, so a hold never closes; every level of a
    nested plan keeps its weight; fade still fades; above 1 is refused naming the field."""
    sig = [14.6, 3.0, 0.5, 0.1, 0.0292]
    p = G.GuidancePlan.build((4, 4), q_end=1.0)
    assert all(p.weight(0, s) == 1.5 and p.weight(1, s) == 1.0 for s in sig)
    assert p.active_steps(torch.tensor(sig + [0.0])) == list(range(len(sig)))
    fade = G.GuidancePlan.build((2, 2), shape="fade", q_end=1.0)
    assert fade.weight(0, 14.6) == 1.5 and 0.0 < fade.weight(0, 0.0292) < 0.01
    with pytest.raises(ValueError, match="q_end"):
        G.GuidancePlan.build((2, 2), q_end=1.001)


# ------------------------------------------------------------------------------------------------------------
# Moving pooling grid
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mh, mw", [(2, 2), (3, 3), (3, 2), (2, 1), (4, 4), (2, 3)])
def test_grid_offset_visits_every_offset_once_per_cycle(mh, mw):
    n = mh * mw
    for start in (0, n, 5 * n):
        offs = [G.grid_offset(start + i, mh, mw) for i in range(n)]
        assert sorted(offs) == [(a, b) for a in range(mh) for b in range(mw)]
    assert G.grid_offset(0, mh, mw) == (0, 0)
    with pytest.raises(ValueError, match="^phase:"):
        G.grid_offset(-1, mh, mw)


@pytest.mark.parametrize("size", [(16, 16), (13, 15), (9, 12)])
@pytest.mark.parametrize("mh, mw", [(2, 2), (3, 2), (3, 3)])
def test_moved_pool_keeps_the_size_and_unpool_inverts_it(size, mh, mw):
    x = torch.randn(2, 3, *size)
    fixed = G.pool(x, mh, mw)
    for phase in range(mh * mw):
        off = G.grid_offset(phase, mh, mw)
        y = G.pool(x, mh, mw, off)
        assert y.shape == fixed.shape
        assert torch.allclose(G.pool(G.unpool(y, mh, mw, size, "nearest", off), mh, mw, off), y, atol=1e-6)
        assert G.unpool(y, mh, mw, size, "bilinear", off).shape == x.shape
    with pytest.raises(ValueError, match="^offset:"):
        G.pool(x, mh, mw, (mh, 0))


def test_moved_block_is_the_mean_of_the_shifted_pixels():
    x = torch.arange(36.0).view(1, 1, 6, 6)
    y = G.pool(x, 2, 2, (1, 1))
    # blocks start one row and one column above/left of the image: the first replicates row/column 0
    assert float(y[0, 0, 0, 0]) == 0.0
    assert float(y[0, 0, 1, 1]) == float(x[0, 0, 1:3, 1:3].mean())
    assert float(y[0, 0, 2, 2]) == float(x[0, 0, 3:5, 3:5].mean())  # row/column 5 is below the last block
    # 7 rows by 3: the fixed grid pads one row above and one below; offsets 1, 2 start the grid 2, 0 rows above
    x7 = torch.arange(7.0).view(1, 1, 7, 1)
    assert G.pool(x7, 3, 1).flatten().tolist() == pytest.approx([(0 + 0 + 1) / 3, 3.0, (5 + 6 + 6) / 3])
    assert G.pool(x7, 3, 1, (1, 0)).flatten().tolist() == [0.0, 2.0, 5.0]
    assert G.pool(x7, 3, 1, (2, 0)).flatten().tolist() == [1.0, 4.0, 6.0]
    low = torch.tensor([0.0, 2.0, 5.0]).view(1, 1, 3, 1)
    assert G.unpool(low, 3, 1, (7, 1), "nearest", (2, 0)).flatten().tolist() == [0, 0, 0, 2, 2, 2, 5]


@pytest.mark.parametrize("size, factor", [((16, 16), (2, 2)), ((13, 15), (2, 2)), ((18, 12), (3, 2))])
def test_moving_grid_keeps_block_means_at_the_low_prediction(size, factor):
    """Nearest U, w = 1: on the call's own grid every block mean of the result is the low-res prediction."""
    model = CountingModel()
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    s = torch.full((2,), 2.0, dtype=torch.float64)
    d = model(x, s)
    p = plan(factor, scale=1.0, operator="nearest", grid="moving")
    for phase in range(factor[0] * factor[1]):
        off = p.offset(0, phase)
        out = G.guide_x0(x, s, d, model, p, phase)
        low = model(G.pool(x, *factor, off), s / math.sqrt(factor[0] * factor[1]))
        assert torch.allclose(G.pool(out, *factor, off), low, atol=1e-10)


@pytest.mark.parametrize("operator", ["nearest", "bilinear"])
def test_moving_grid_never_wraps_content_across_the_border(operator):
    """Changing the bottom rows may change the corrections near them, never those at the top of the image
    (a circular shift of the grid would carry them there)."""
    model = CountingModel()
    x = torch.randn(1, 4, 16, 16)
    s = torch.full((1,), 2.0)
    x2 = x.clone()
    x2[..., 12:, :] += 3.0
    x2[..., :, 12:] += 3.0
    p = plan((2, 2), scale=1.0, operator=operator, grid="moving")
    for phase in range(4):
        a = G.guide_x0(x, s, model(x, s), model, p, phase)
        b = G.guide_x0(x2, s, model(x2, s), model, p, phase)
        assert torch.equal(a[..., :8, :8], b[..., :8, :8])


@pytest.mark.parametrize("size", [(16, 16), (13, 15)])
def test_moving_grid_leaves_no_pixel_unguided(size):
    x = torch.randn(2, 4, *size)
    s = torch.full((2,), 2.0)
    d = torch.zeros_like(x)
    for factor in ((2, 2), (3, 2), (4, 4)):
        for operator in ("nearest", "bilinear"):
            p = plan(factor, scale=0.8, operator=operator, grid="moving")
            for phase in range(6):
                out = G.guide_x0(x, s, d, lambda xl, sl: torch.ones_like(xl), p, phase)
                assert torch.allclose(out, torch.full_like(x, 0.8))


def test_moving_grid_is_deterministic_and_phase_dependent():
    model = CountingModel()
    x = torch.randn(2, 4, 16, 16)
    s = torch.full((2,), 2.0)
    d = model(x, s)
    moving, fixed = plan((2, 2), grid="moving"), plan((2, 2), grid="fixed")
    outs = [G.guide_x0(x, s, d, model, moving, k) for k in range(4)]
    assert torch.equal(outs[1], G.guide_x0(x, s, d, model, moving, 1))
    assert torch.equal(outs[0], G.guide_x0(x, s, d, model, fixed, 0))  # phase 0 is the fixed grid
    assert all(not torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(outs[0], G.guide_x0(x, s, d, model, moving, 4))  # the cycle repeats
    assert all(torch.equal(outs[0], G.guide_x0(x, s, d, model, fixed, k)) for k in range(4))


def test_moving_grid_nested_levels_one_call_each():
    model = CountingModel()
    x = torch.randn(3, 4, 32, 32)
    s = torch.full((3,), 4.0)
    d = model(x, s)
    model.calls.clear()
    p = plan((4, 4), grid="moving")
    assert p.offset(0, 1) == (1, 1) and p.offset(1, 1) == (0, 0) and p.offset(1, 2) == (1, 1)
    # the cumulative offset of the 4x4 grid (o_0 + 2 o_1 per axis) visits all 16 values per cycle and moves
    # at every call; the finest level visits its 4 offsets within 8 calls
    cum = [tuple(a + 2 * b for a, b in zip(p.offset(0, k), p.offset(1, k))) for k in range(16)]
    assert sorted(cum) == [(a, b) for a in range(4) for b in range(4)]
    assert all(cum[k] != cum[k + 1] for k in range(15))
    assert cum == [G.grid_offset(k, 4, 4) for k in range(16)]
    assert {p.offset(0, k) for k in range(8)} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    p42 = plan((4, 2), grid="moving")  # levels (2, 2), (2, 1)
    cum42 = {(a0 + 2 * a1, b0 + 2 * b1) for k in range(8) for (a0, b0), (a1, b1) in [(p42.offset(0, k),
                                                                                         p42.offset(1, k))]}
    assert cum42 == {(a, b) for a in range(4) for b in range(2)}
    G.guide_x0(x, s, d, model, p, phase=1)
    assert model.calls == [(3, 16, 16), (3, 8, 8)]


def test_eps_form_equals_x0_form_on_a_moved_grid():
    model = CountingModel()

    def eps_model(x_t, t):
        sig = SD.t_to_sigma(t.double()).to(x_t.dtype).view(-1, 1, 1, 1)
        x = x_t * (1 + sig**2).sqrt()
        return (x - model(x, sig.flatten())) / sig

    t = torch.tensor([600.0, 600.0], dtype=torch.float64)
    sig = SD.t_to_sigma(t).view(-1, 1, 1, 1)
    x_t = torch.randn(2, 4, 14, 18, dtype=torch.float64)
    p = plan((2, 3), scale=1.2, grid="moving")
    for phase in (1, 4):
        guided_eps = G.guide_eps(x_t, t, eps_model(x_t, t), eps_model, p, SD, phase=phase)
        x = x_t * (1 + sig**2).sqrt()
        guided_x0 = G.guide_x0(x, sig.flatten(), model(x, sig.flatten()), model, p, phase)
        assert torch.allclose(x - sig * guided_eps, guided_x0, atol=1e-8)


def test_wrapper_advances_the_phase_per_call_and_resets():
    seen = []
    inner = CountingModel()
    p = plan((2, 2), grid="moving")

    def low_spy(x, s, **kw):
        seen.append(float(x.flatten()[0]))
        return inner(x, s)

    wrapped = G.UpsampleGuidedDenoiser(low_spy, p)
    x = torch.arange(2 * 4 * 16 * 16, dtype=torch.float32).view(2, 4, 16, 16) / 1000
    s = torch.full((2,), 3.0)
    for _ in range(3):
        wrapped(x, s)
    assert wrapped.phase == 3
    wrapped.reset()
    assert wrapped.phase == 0
    wrapped(x, s)
    # calls alternate full / low: the low inputs' first pixel shows the grid each call used
    lows = seen[1::2]
    assert lows[0] == lows[3] and lows[0] != lows[1]
    with pytest.raises(ValueError, match="^grid:"):
        G.GuidancePlan.build((2, 2), grid="wobbly")


def test_nested_levels_extrapolate_every_coarse_level_by_w_once():
    """4 = 2·2, nearest U, constant window: the quarter-resolution content of the result is
    D4 den + w (low2 - D4 den) (inner levels replace, the outer extrapolates), not w² for the coarsest level."""
    model = CountingModel()
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    s = torch.full((2,), 3.0, dtype=torch.float64)
    d = model(x, s)
    w = 1.5
    out = G.guide_x0(x, s, d, model, plan((4, 4), scale=w, operator="nearest"))
    low1 = model(G.pool(x, 2, 2), s / 2)
    low2 = model(G.pool(x, 4, 4), s / 4)
    d4 = G.pool(d, 4, 4)
    torch.testing.assert_close(G.pool(out, 4, 4), d4 + w * (low2 - d4))
    low1_guided = low1 + G.unpool(low2 - G.pool(low1, 2, 2), 2, 2, (8, 8))  # the inner level replaces
    d2 = G.pool(d, 2, 2)
    torch.testing.assert_close(G.pool(out, 2, 2), d2 + w * (low1_guided - d2))
    p = plan((4, 4), scale=w)
    assert p.weight(0, 3.0) == w and p.weight(1, 3.0) == 1.0


@pytest.mark.parametrize("size", [(16, 16), (13, 15), (9, 12)])
@pytest.mark.parametrize("mh, mw", [(2, 2), (3, 2)])
def test_unpool_image_places_pixels_on_the_latent_grid(size, mh, mw):
    """unpool_image is pool_image's counterpart on every offset of the moving grid: nearest upsampling pools back
    to the input on blocks wholly inside the image; at scale 1 it is unpool (both operators); the output covers the
    latent's pixels."""
    for phase in range(mh * mw):
        off = G.grid_offset(phase, mh, mw)
        n = G.pool(torch.zeros(1, 1, *size), mh, mw, off).shape[-2:]
        y = torch.randn(2, 3, 4 * n[0], 4 * n[1])
        up = G.unpool_image(y, mh, mw, size, "nearest", off, scale=4)
        assert up.shape[-2:] == (4 * size[0], 4 * size[1])
        back = G.pool_image(up, mh, mw, size, off, scale=4)
        top, left = G._span(size[0], mh, off[0])[0], G._span(size[1], mw, off[1])[0]
        rows = [r for j in range(n[0]) if j * mh - top >= 0 and (j + 1) * mh - top <= size[0]
                for r in range(4 * j, 4 * j + 4)]
        cols = [c for j in range(n[1]) if j * mw - left >= 0 and (j + 1) * mw - left <= size[1]
                for c in range(4 * j, 4 * j + 4)]
        assert rows and cols
        torch.testing.assert_close(back[..., rows, :][..., cols], y[..., rows, :][..., cols])
        z = torch.randn(2, 3, *n)
        for op in ("nearest", "bilinear"):
            assert torch.equal(G.unpool_image(z, mh, mw, size, op, off, scale=1), G.unpool(z, mh, mw, size, op, off))
    with pytest.raises(ValueError, match="operator"):
        G.unpool_image(torch.zeros(1, 1, 8, 8), 2, 2, (4, 4), "cubic", scale=4)


@pytest.mark.parametrize("size", [(16, 16), (13, 15), (9, 12)])
@pytest.mark.parametrize("mh, mw", [(2, 2), (3, 2), (1, 1)])
def test_pool_image_is_the_latent_grid_at_pixel_scale(size, mh, mw):
    """An image over the latent (8 pixels per latent pixel) pools on the latent's grid: each 8x8 cell of the result
    averages the image over the pooled latent pixel's block, for every offset of the moving grid; at scale 1 it is
    pool."""
    x = torch.randn(2, 3, *size)
    img = x.repeat_interleave(8, -2).repeat_interleave(8, -1) + 0.1 * torch.randn(2, 3, 8 * size[0], 8 * size[1])
    cells = F.avg_pool2d(img, 8)  # the image's mean over each latent pixel
    for phase in range(mh * mw):
        off = G.grid_offset(phase, mh, mw)
        got = G.pool_image(img, mh, mw, size, off)
        want = G.pool(cells, mh, mw, off)
        assert got.shape[-2:] == (8 * want.shape[-2], 8 * want.shape[-1])
        # blocks wholly inside the image agree exactly (border blocks replicate pixel rows, not latent rows)
        top, left = G._span(size[0], mh, off[0])[0], G._span(size[1], mw, off[1])[0]
        rows = [j for j in range(want.shape[-2]) if j * mh - top >= 0 and (j + 1) * mh - top <= size[0]]
        cols = [j for j in range(want.shape[-1]) if j * mw - left >= 0 and (j + 1) * mw - left <= size[1]]
        assert rows and cols
        inner = F.avg_pool2d(got, 8)[..., rows, :][..., cols]
        assert torch.allclose(inner, want[..., rows, :][..., cols], atol=1e-5)
        assert torch.equal(G.pool_image(x, mh, mw, size, off, scale=1), G.pool(x, mh, mw, off))
    # a pixel pattern finer than the latent is averaged over m x m pixels, not subsampled
    lines = torch.zeros(1, 1, 8 * size[0], 8 * size[1])
    lines[..., ::2, :] = 1.0
    if mh == 2 and size[0] % 2 == 0:
        pooled = G.pool_image(lines, mh, mw, size)
        assert torch.allclose(pooled, torch.full_like(pooled, 0.5))
    with pytest.raises(ValueError, match="^img:"):
        G.pool_image(torch.zeros(1, 1, 8 * size[0] + 1, 8 * size[1]), mh, mw, size)
