"""The peers' mechanisms on the toy UNet: each hook acts only inside its window and leaves the model as it was."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lib_chroma import guidance as G
from lib_chroma.toy import demofusion as D
from lib_chroma.toy import peers as P
from lib_chroma.toy import runs
from lib_chroma.toy.model import TinyUNet
from lib_chroma.toy.sampling import initial_noise


@pytest.fixture()
def unet() -> TinyUNet:
    torch.manual_seed(0)
    net = TinyUNet().eval()
    for p in net.parameters():  # the zero-initialised output convs would hide every difference
        torch.nn.init.normal_(p, std=0.05)
    return net


def _sizes(module: torch.nn.Module) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, a: seen.append(int(a[0].shape[-1])))
    return seen, handle


def _no_hooks(net: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def _convs(net: torch.nn.Module) -> list[tuple]:
    return [(m.stride, m.padding, m.dilation) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


@torch.no_grad()
def test_deep_shrink_halves_the_hidden_size_only_inside_its_window_and_restores(unet: TinyUNet) -> None:
    x = torch.randn(2, 3, 64, 64)
    ref = {t: unet(x, torch.tensor(t)) for t in (900.0, 650.0, 649.0, 100.0)}
    before = _convs(unet)
    seen, h = _sizes(unet.down[1][0])
    with P.DeepShrink(P.toy_map(unet)) as ds:
        assert ds.t_lo == pytest.approx(0.65 * 999) and math.isinf(ds.t_hi)
        outs = {t: unet(x, torch.tensor(t)) for t in ref}
        with P.bypass(unet):
            bypassed = unet(x, torch.tensor(900.0))
        assert ds.calls == 4  # the bypassed call is not counted
    h.remove()
    # level 1 runs at 64/2/2 = 16 inside the window (t >= 649.35), at 32 outside and when bypassed
    assert seen[:4] == [16, 16, 32, 32] and seen[4:] == [32]
    for t in ref:
        assert outs[t].shape == x.shape
    assert not torch.allclose(outs[900.0], ref[900.0], atol=1e-4)
    assert torch.equal(outs[649.0], ref[649.0]) and torch.equal(outs[100.0], ref[100.0])
    assert torch.equal(bypassed, ref[900.0])
    assert _no_hooks(unet) and _convs(unet) == before
    assert torch.equal(unet(x, torch.tensor(900.0)), ref[900.0])


@torch.no_grad()
def test_deep_shrink_window_follows_start_and_end_percent(unet: TinyUNet) -> None:
    ds = P.DeepShrink(P.toy_map(unet), start=0.2, end=0.5)
    assert (ds.t_lo, ds.t_hi) == (pytest.approx(0.5 * 999), pytest.approx(0.8 * 999))
    seen, h = _sizes(unet.down[1][0])
    with ds:
        for t in (900.0, 700.0, 400.0):
            unet(torch.randn(1, 3, 64, 64), torch.tensor(t))
    h.remove()
    assert seen == [32, 16, 32]


@torch.no_grad()
def test_raunet_strides_the_first_downsample_for_its_first_t1_calls(unet: TinyUNet) -> None:
    x = torch.randn(1, 3, 64, 64)
    before = _convs(unet)
    ref = unet(x, torch.tensor(500.0))
    seen, h = _sizes(unet.down[1][0])
    seen1, h1 = _sizes(unet.down[1][1])
    with P.make_peer("hidiffusion", P.toy_map(unet), 2, 10) as rau:  # T1 = int(10 * 0.4) = 4, T2 = 0
        assert (rau.T1, rau.T2) == (4, 0)
        outs = [unet(x, torch.tensor(500.0)) for _ in range(6)]
        assert _convs(unet) == before  # stride 4 / dilation 2 only during the call
    h.remove()
    h1.remove()
    assert seen == [16] * 4 + [32] * 2 and seen1 == seen
    assert all(o.shape == x.shape for o in outs)
    assert not torch.allclose(outs[0], ref, atol=1e-4) and torch.equal(outs[5], ref)
    assert _no_hooks(unet)


@torch.no_grad()
def test_raunet_at_4x_also_pools_level_one_for_its_first_t2_calls(unet: TinyUNet) -> None:
    x = torch.randn(1, 3, 128, 128)
    seen0, h0 = _sizes(unet.down[1][0])
    seen1, h1 = _sizes(unet.down[1][1])
    with P.make_peer("hidiffusion", P.toy_map(unet), 4, 10) as rau:  # T1 7, T2 3
        assert (rau.T1, rau.T2) == (7, 3)
        outs = [unet(x, torch.tensor(500.0)) for _ in range(8)]
    h0.remove()
    h1.remove()
    assert seen0 == [32] * 7 + [64]
    assert seen1 == [16] * 3 + [32] * 4 + [64]  # pooled after the first block of level 1 while step < T2
    assert all(o.shape == x.shape for o in outs) and _no_hooks(unet)


@torch.no_grad()
def test_scalecrafter_dilates_every_conv_below_the_top_level_and_undoes_it(unet: TinyUNet) -> None:
    m = P.toy_map(unet)
    dil = P.scalecrafter_dilations(m, 2)
    top = set(m.level_convs[0])
    assert top.isdisjoint(dil) and unet.inp not in dil and unet.out not in dil
    assert set(dil) == set(m.level_convs[1]) | set(m.level_convs[2]) | set(m.mid_convs)
    assert unet.downsample[1] in dil and unet.upsample[1] in dil and unet.downsample[0] not in dil
    seen: dict[torch.nn.Module, list[int]] = {c: [] for c in list(dil) + list(top)}
    before = _convs(unet)
    x = torch.randn(1, 3, 64, 64)
    ref = unet(x, torch.tensor(500.0))
    with P.make_peer("scalecrafter", m, 2, 10) as sc:  # 60 % of 10 steps
        assert sc.tau == 6
        spies = [c.register_forward_pre_hook(lambda mod, a: seen[mod].append(mod.dilation[0])) for c in seen]
        outs = [unet(x, torch.tensor(500.0)) for _ in range(8)]
        for s in spies:
            s.remove()
    for c, ds in seen.items():
        assert ds == ([2] * 6 + [1] * 2 if c in dil else [1] * 8)
    assert _convs(unet) == before and _no_hooks(unet)
    assert not torch.allclose(outs[0], ref, atol=1e-4) and torch.equal(outs[7], ref)


def test_scalecrafter_progressive_dilation_and_4x_levels(unet: TinyUNet) -> None:
    m = P.toy_map(unet)
    sc = P.make_peer("scalecrafter", m, 4, 20)
    assert isinstance(sc, P.ReDilate) and sc.tau == 14 and sc.progressive
    assert [sc.dilation(4, i) for i in (0, 3, 4, 7, 13, 14)] == [4, 4, 3, 2, 2, 1]
    assert {sc.dilations[c] for c in m.level_convs[1]} == {2}
    assert {sc.dilations[c] for c in list(m.level_convs[2]) + list(m.mid_convs)} == {4}
    with pytest.raises(ValueError):
        P.ReDilate(m, {unet.inp: 1.5}, 3)  # type: ignore[dict-item]


def test_demofusion_cosine_schedule() -> None:
    assert D.cosine_factor(1000) == pytest.approx(1.0) and D.cosine_factor(500) == pytest.approx(0.5)
    assert D.cosine_factor(0) == pytest.approx(0.0)
    for t in (999.0, 700.0, 300.0, 20.0):
        cf = D.cosine_factor(t)
        assert D.coefficients(t) == pytest.approx((cf**3, cf, 0.99 * cf + 0.01))
    table = D.schedule_table(runs.toy_sigmas("dpmpp_2m", 20), runs.toy_schedule())
    c1 = [r[1] for r in table]
    c2 = [r[2] for r in table]
    assert c1[0] == pytest.approx(1.0, abs=1e-4) and all(a >= b for a, b in zip(c1, c1[1:]))
    assert all(a <= b + 1e-12 for a, b in zip(c1, c2))  # the skip residual fades before the global path


def test_demofusion_views_cover_the_image_and_jitter_inwards() -> None:
    plain = D.views(64, 64, 32, 16)
    assert sorted({v[0] for v in plain}) == [0, 16, 32] and len(plain) == 9
    jr = (32 - 16) // 4
    for seed in range(20):
        cover = torch.zeros(64 + 2 * jr, 64 + 2 * jr)
        for h0, h1, w0, w1 in D.views(64, 64, 32, 16, random.Random(seed)):
            assert h1 - h0 == 32 and w1 - w0 == 32 and 0 <= h0 and h1 <= 64 + 2 * jr
            cover[h0:h1, w0:w1] += 1
        assert bool((cover[jr:jr + 64, jr:jr + 64] > 0).all())
    assert len(D.views(128, 128, 32, 16)) == 49


def test_demofusion_fused_x0_paths() -> None:
    z = torch.randn(2, 3, 64, 64)
    calls: list[int] = []

    def ident(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[-1]))
        return x

    out = D.fused_x0(ident, z, torch.ones(2), 2, 32, 600.0, random.Random(0))
    assert torch.allclose(out, z, atol=1e-5)  # both paths return z when the model returns its input
    assert calls == [32] * (9 + 4)  # 9 windows and 4 sub-lattices, all at the native size
    zero = D.fused_x0(lambda x, s: torch.zeros_like(x), z, torch.ones(2), 2, 32, 600.0, random.Random(0))
    c2 = D.coefficients(600.0)[1]
    g = D.gaussian_blur(z, 3, D.coefficients(600.0)[2])
    dims = (1, 2, 3)
    g = (g - g.mean(dims, keepdim=True)) / g.std(dims, keepdim=True) * z.std(dims, keepdim=True) + z.mean(
        dims, keepdim=True)
    assert torch.allclose(zero, c2 * (z - g), atol=1e-5)  # global path: eps of the blurred input on z


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_demofusion_sampler_is_k_diffusions_without_prestep(sampler: str) -> None:
    import k_diffusion.sampling as ks

    def den(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 0.7

    sig = runs.toy_sigmas(sampler, 8).to(torch.float32)
    x = initial_noise(2, 8, 8, 3) * sig[0]
    ref = getattr(ks, f"sample_{sampler}")(den, x, sig, disable=True)
    out = D.sample_prestep(lambda y, i: den(y, sig[i]), x, sig, sampler, lambda y, i: y)
    assert torch.allclose(out, ref, atol=1e-5)
    seen: list[int] = []
    D.sample_prestep(lambda y, i: den(y, sig[i]), x, sig, sampler, lambda y, i: seen.append(i) or y)
    assert seen == list(range(8))


def test_guidance_low_model_takes_the_low_resolution_call() -> None:
    full: list[int] = []
    low: list[int] = []
    den = G.UpsampleGuidedDenoiser(lambda x, s: full.append(x.shape[-1]) or x * 0,
                                   G.GuidancePlan(((2, 2),), scale=1.0),
                                   low_model=lambda x, s: low.append(x.shape[-1]) or x * 0)
    den(torch.randn(1, 3, 16, 16), torch.tensor([2.0]))
    assert full == [16] and low == [8]


@torch.no_grad()
@pytest.mark.parametrize("bypass_low", [True, False])
def test_guided_low_call_bypasses_deep_shrink(unet: TinyUNet, bypass_low: bool) -> None:
    model = runs.CountingModel(unet)
    m = P.toy_map(unet)
    seen, h = _sizes(unet.down[1][0])
    plan = runs.make_plan((2, 2), 6)
    runs.run_kdiff(model, 1, 64, 64, 6, seed=0, plan=plan, patch=lambda: P.DeepShrink(m), bypass_low=bypass_low)
    h.remove()
    # full-size calls: 16 in the window, 32 after; low-res (32x32) calls: 16 unless shrunk too (8)
    assert 16 in seen and 32 in seen
    assert (8 in seen) is (not bypass_low)
    assert _no_hooks(unet)


@torch.no_grad()
def test_demofusion_run_counts_its_native_size_calls(unet: TinyUNet) -> None:
    model = runs.CountingModel(unet)
    out = D.run_demofusion(model, 1, 2, 4, seed=0)
    assert out.shape == (1, 3, 64, 64) and bool(torch.isfinite(out).all())
    assert model.calls == {(32, 32): 4 + 4 * (9 + 4)}  # native pass, then 9 windows + 4 sub-lattices per step


def test_peer_specs_are_checked() -> None:
    from lib_chroma.toy import bench

    assert bench.parse_peer("deep_shrink:end=0.6,block=1") == ("deep_shrink", {"end": 0.6, "block": 1.0})
    assert bench.parse_peer("hidiffusion") == ("hidiffusion", {})
    assert bench.parse_peer("scalecrafter:guided=1") == ("scalecrafter", {"guided": 1.0})
    for bad in ("bogus", "hidiffusion:t1=0.5", "deep_shrink:stop=1", "demofusion:guided=1"):
        with pytest.raises(ValueError):
            bench.parse_peer(bad)


@pytest.mark.slow
def test_bench_peers_group_rows_and_costs(tmp_path) -> None:
    from lib_chroma.toy import bench

    torch.set_num_threads(1)
    res = bench.run_bench(n=1, steps=2, factors=("2x",), fixed=False, ddim=False, baselines=False, peers=True,
                          out=tmp_path)
    rows = {r["method"]: r for r in res["factors"]["2x"]["rows"]}
    assert len(rows) == 8 and next(iter(rows)) == "plain"
    demo = next(r for k, r in rows.items() if k.startswith("DemoFusion"))
    # 2 native steps, then 2 steps of 9 windows + 4 sub-lattices, all 32x32, against 2 plain calls at 64x64
    assert demo["calls_by_size"] == {"32x32": 28} and demo["rel_pixel_evals"] == pytest.approx(3.5)
    for k, r in rows.items():
        if k.startswith(("Deep Shrink (", "HiDiffusion", "ScaleCrafter")):
            assert r["calls_by_size"] == {"64x64": 2}
    assert (tmp_path / "partial-2x.json").exists()


@torch.no_grad()
def test_the_map_and_the_peers_fit_the_latent_unet() -> None:
    """The latent model's UNet (attention after each block) maps like the toy's: a level's up exit is its last
    transformer where it has one; Deep Shrink shrinks level 1 only in its window and restores before the output;
    ScaleCrafter dilates and undoes; the guided low-resolution call bypasses the patch unless told otherwise."""
    from lib_chroma.toy.latent import runs as lruns
    from lib_chroma.toy.latent import text
    from lib_chroma.toy.latent.autoencoder import AutoEncoder
    from lib_chroma.toy.latent.text import TextEncoder
    from lib_chroma.toy.latent.train import LatentModel
    from lib_chroma.toy.latent.unet import LatentUNet, SpatialTransformer

    torch.manual_seed(0)
    net = LatentUNet(channels=(8, 8, 8), ctx_dim=8, temb=16, attn=("none", "full", "cross")).eval()
    for mod in net.modules():  # zero-initialised outputs would hide every change
        if isinstance(mod, torch.nn.Conv2d) and not bool(mod.weight.any()):
            torch.nn.init.normal_(mod.weight, std=0.05)
    m = P.toy_map(net)
    assert m.up_exits[0] is net.up[-1][-1]  # level 0 has no attention here
    assert isinstance(m.up_exits[1], SpatialTransformer) and m.up_exits[1] is net.up_attn[-2][-1]
    assert m.mid_convs == (net.mid1.conv1, net.mid1.conv2, net.mid2.conv1, net.mid2.conv2)
    x, ctx = torch.randn(2, 4, 32, 32), torch.randn(2, 16, 8)
    ref = {t: net(x, torch.tensor(t), ctx) for t in (900.0, 100.0)}
    before = _convs(net)
    seen, h = _sizes(net.down[1][0])
    with P.DeepShrink(m):
        out = {t: net(x, torch.tensor(t), ctx) for t in ref}
    with P.make_peer("scalecrafter", m, 2, 4):
        dilated = net(x, torch.tensor(900.0), ctx)
    h.remove()
    assert seen == [8, 16, 16] and out[900.0].shape == x.shape
    assert not torch.allclose(out[900.0], ref[900.0], atol=1e-5) and torch.equal(out[100.0], ref[100.0])
    assert not torch.allclose(dilated, ref[900.0], atol=1e-5)
    assert _no_hooks(net) and _convs(net) == before
    model = LatentModel(AutoEncoder(), TextEncoder(width=8, layers=1), net, {"scale_factor": 1.0}).eval()
    prompts = text.prompt_set(1, 0)
    for bypass_low in (True, False):
        seen, h = _sizes(net.down[1][0])
        lruns.run_txt2img(model, lruns.CountingUNet(net), prompts, 32, 32, 6, seed=0, plan=lruns.make_plan((2, 2), 6),
                          batch=1, patch=lambda: P.DeepShrink(m), bypass_low=bypass_low)
        h.remove()
        # full size: 8 in the window, 16 after; the 16x16 low call: 8 unless shrunk too (4)
        assert 8 in seen and 16 in seen and (4 in seen) is (not bypass_low)
    assert _no_hooks(net)
