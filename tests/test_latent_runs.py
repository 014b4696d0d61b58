"""Sampling runners of the latent model: seeds, counting, guidance inside CFG, hires fix; one slow quality test."""

from __future__ import annotations

import pytest
import torch

from lib_chroma.guidance import GuidancePlan
from lib_chroma.toy.latent import runs, scorer, text
from lib_chroma.toy.latent.autoencoder import AutoEncoder
from lib_chroma.toy.latent.text import TextEncoder
from lib_chroma.toy.latent.train import LatentModel, load_model
from lib_chroma.toy.latent.unet import LatentUNet


@pytest.fixture(scope="module")
def tiny() -> LatentModel:
    torch.manual_seed(0)
    unet = LatentUNet(channels=(16, 16, 16), ctx_dim=16, temb=32)
    for mod in unet.modules():  # zero-initialised outputs would hide the prompt and the time input
        if isinstance(mod, torch.nn.Conv2d) and not bool(mod.weight.any()):
            torch.nn.init.normal_(mod.weight, std=0.05)
    return LatentModel(AutoEncoder(), TextEncoder(width=16, layers=1), unet, {"scale_factor": 1.0}).eval()


PROMPTS = text.prompt_set(3, seed=5000)


def test_sample_i_is_seeded_from_seed_plus_i(tiny: LatentModel) -> None:
    unet = runs.CountingUNet(tiny.unet)
    both = runs.run_txt2img(tiny, unet, PROMPTS, 16, 16, 4, seed=5000, batch=2)
    alone = runs.run_txt2img(tiny, unet, PROMPTS[2:], 16, 16, 4, seed=5002, batch=2)
    assert both.shape == (3, 4, 16, 16)
    assert torch.allclose(both[2], alone[0], atol=1e-4)
    again = runs.run_txt2img(tiny, unet, PROMPTS, 16, 16, 4, seed=5000, batch=2)
    assert torch.equal(both, again)


def test_calls_and_pixel_evals_are_counted(tiny: LatentModel) -> None:
    unet = runs.CountingUNet(tiny.unet)
    runs.run_txt2img(tiny, unet, PROMPTS, 16, 16, 5, seed=1, batch=2, sampler="euler")
    assert unet.calls == {(16, 16): 10}  # 5 steps x 2 batches, cond and uncond in one call
    assert unet.pixel_evals == 5 * 2 * 3 * 256  # rows = 2 x images


def test_guided_run_calls_the_low_resolution_model_inside_the_window(tiny: LatentModel) -> None:
    unet = runs.CountingUNet(tiny.unet)
    plain = runs.run_txt2img(tiny, unet, PROMPTS[:2], 32, 32, 6, seed=1, batch=2, sampler="euler")
    base = unet.pixel_evals
    unet.reset()
    plan = runs.make_plan((2, 2), 6, "euler")
    guided = runs.run_txt2img(tiny, unet, PROMPTS[:2], 32, 32, 6, seed=1, plan=plan, batch=2, sampler="euler")
    active = len(plan.active_steps(runs.latent_sigmas("euler", 6)))
    assert 0 < active < 6
    assert unet.calls == {(32, 32): 6, (16, 16): active}
    assert unet.pixel_evals / base == pytest.approx(runs.expected_pixel_evals(plan, runs.latent_sigmas("euler", 6)))
    assert not torch.allclose(plain, guided)


def test_hires_second_pass_runs_steps_calls_from_the_upscaled_latents(tiny: LatentModel) -> None:
    unet = runs.CountingUNet(tiny.unet)
    low = torch.randn(3, 4, 16, 16)
    out = runs.run_hires(tiny, unet, low, PROMPTS, 32, 32, 6, seed=1, strength=0.3, batch=3, sampler="euler")
    assert out.shape == (3, 4, 32, 32) and unet.calls == {(32, 32): 6}
    # a weak strength keeps the upscaled coarse content
    up = runs.upscale_latents(low, 32, 32)
    keep = torch.nn.functional.avg_pool2d(out, 8) - torch.nn.functional.avg_pool2d(up, 8)
    assert float(keep.abs().mean()) < float(torch.nn.functional.avg_pool2d(up, 8).abs().mean())


def test_pixel_upscaler_is_decode_upscale_encode(tiny: LatentModel) -> None:
    """The image upscaler's latent is the encoding of the bilinearly upscaled decoded image; the hires pass with it
    starts from that latent (same calls as with the latent upscaler); an unknown upscaler is refused."""
    z = torch.randn(2, 4, 8, 8)
    up = runs.upscale_pixels(tiny, z, 16, 16)
    img = torch.nn.functional.interpolate(tiny.ae.decode(z).clamp(-1, 1), size=(64, 64), mode="bilinear",
                                          align_corners=False)
    assert up.shape == (2, 4, 16, 16)
    torch.testing.assert_close(up, tiny.ae.encode(img.clamp(-1, 1)))
    assert not torch.allclose(up, runs.upscale_latents(z, 16, 16), atol=1e-3)
    unet = runs.CountingUNet(tiny.unet)
    a = runs.run_hires(tiny, unet, z, PROMPTS[:2], 16, 16, 3, seed=1, strength=0.3, batch=2, sampler="euler",
                       upscaler="pixel")
    assert unet.calls == {(16, 16): 3} and not torch.allclose(
        a, runs.run_hires(tiny, unet, z, PROMPTS[:2], 16, 16, 3, seed=1, strength=0.3, batch=2, sampler="euler"))
    with pytest.raises(ValueError, match="upscaler"):
        runs.run_hires(tiny, unet, z, PROMPTS[:2], 16, 16, 3, seed=1, upscaler="lanczos")


def test_demofusion_runs_each_phase_through_cfg_on_native_size_views(tiny: LatentModel) -> None:
    unet = runs.CountingUNet(tiny.unet)
    low = runs.run_txt2img(tiny, unet, PROMPTS[:2], 16, 16, 4, seed=5000, sampler="euler", batch=2)
    unet.reset()
    z = runs.run_demofusion(tiny, unet, low, PROMPTS[:2], 3, 4, seed=5000, sampler="euler", batch=2)
    assert z.shape == (2, 4, 48, 48) and bool(z.isfinite().all())
    # per step: scale 2 has 3 x 3 windows + 4 sub-lattices, scale 3 has 5 x 5 windows + 9; one batched CFG call each
    assert unet.calls == {(16, 16): 4 * (13 + 34)} and unet.pixel_evals == 4 * 47 * 4 * 256
    other = runs.run_demofusion(tiny, unet, low, PROMPTS[2:] + PROMPTS[:1], 3, 4, seed=5000, sampler="euler",
                                batch=2)
    assert not torch.allclose(z, other)  # the prompts reach the views
    with pytest.raises(ValueError, match="square"):
        runs.run_demofusion(tiny, unet, low[..., :8], PROMPTS[:2], 2, 4, seed=5000, sampler="euler")


def test_cfg_scale_changes_the_samples(tiny: LatentModel) -> None:
    unet = runs.CountingUNet(tiny.unet)
    a = runs.run_txt2img(tiny, unet, PROMPTS[:1], 16, 16, 3, seed=2, cfg=1.0)
    b = runs.run_txt2img(tiny, unet, PROMPTS[:1], 16, 16, 3, seed=2, cfg=7.0)
    assert not torch.allclose(a, b)


@pytest.mark.slow
def test_guidance_beats_plain_sampling_at_2x_on_the_shipped_model() -> None:
    torch.set_num_threads(2)
    model = load_model()
    prompts = text.prompt_set(12, seed=7000)
    unet = runs.CountingUNet(model.unet)
    plain = runs.run_txt2img(model, unet, prompts, 32, 32, 20, seed=7000, cfg=5.0)
    plan = runs.make_plan((2, 2), 20)  # the library's defaults
    guided = runs.run_txt2img(model, unet, prompts, 32, 32, 20, seed=7000, cfg=5.0, plan=plan)
    sp = scorer.summarize(scorer.score_images(runs.decode(model, plain), (8,)), prompts)
    sg = scorer.summarize(scorer.score_images(runs.decode(model, guided), (8,)), prompts)
    assert sg["one_object"] >= 0.9 and sg["one_object"] >= sp["one_object"] + 0.3
    assert sg["attr_position"] >= sp["attr_position"] + 0.2


class _IdentityAE(torch.nn.Module):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class _ScaledAE(torch.nn.Module):
    """Linear and inside the decoder's clamp: ``E(U_p(G(z))) = U_p(z)``."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x * 100.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / 100.0


@pytest.mark.parametrize("grid,size", [("fixed", 12), ("moving", 12), ("moving", 13)])
def test_pixel_space_guidance_with_an_identity_autoencoder_is_the_library_rule(grid: str, size: int) -> None:
    from lib_chroma.guidance import UpsampleGuidedDenoiser

    torch.manual_seed(0)
    calls: list[tuple[int, ...]] = []

    def den(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return torch.tanh(x) * 0.7 + context.mean() + 0.1 * sigma.view(-1, 1, 1, 1)

    plan = GuidancePlan(((2, 2),), scale=1.5, shape="constant", sigma_hi=5.0, sigma_lo=1.0, operator="bilinear",
                        grid=grid)
    x, ctx = torch.randn(2, 4, size, size), torch.randn(2, 3, 8)
    pix = runs.PixelSpaceGuidedDenoiser(den, plan, _IdentityAE())
    lib = UpsampleGuidedDenoiser(den, plan)
    low = (2, 4, (size + 1) // 2, (size + 1) // 2)
    outs = []
    for s, n_calls in ((2.0, 2), (2.0, 2), (9.0, 1), (2.0, 2)):  # inside the window one low call, outside none
        sigma = torch.full((2,), s)
        calls.clear()
        out = pix(x, sigma, context=ctx)
        assert calls[1:] == [low] * (n_calls - 1) and len(calls) == n_calls
        assert torch.allclose(out, lib(x, sigma, context=ctx), atol=1e-6)
        outs.append(out)
    # the moving grid moves between calls (phases 0 and 1 differ), the fixed grid does not
    assert torch.equal(outs[0], outs[1]) == (grid == "fixed")
    with pytest.raises(ValueError, match="one level"):
        runs.PixelSpaceGuidedDenoiser(den, GuidancePlan(((2, 2), (2, 2))), _IdentityAE())
    # a given low_model takes the low-resolution call (as UpsampleGuidedDenoiser's does)
    low_calls: list[tuple[int, ...]] = []

    def low_den(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        low_calls.append(tuple(x.shape))
        return den(x, sigma, context)

    calls.clear()
    runs.PixelSpaceGuidedDenoiser(den, plan, _IdentityAE(), low_model=low_den)(x, torch.full((2,), 2.0), context=ctx)
    assert low_calls == [low] and calls == [tuple(x.shape), low]


def test_cascade_with_resamplers_uses_them_in_the_guided_pass_and_the_handover(tiny: LatentModel) -> None:
    """Resamplers equal to average pooling and nearest upsampling leave a cascade guided with the nearest operator
    as it was; as the handover's upscaler (``fitted``) their nearest ``up`` replaces the bilinear one."""
    from lib_chroma.cascade import plan_cascade
    from tests.test_resampler import avg_nearest

    sig = runs.latent_sigmas("euler", 8)
    plan = plan_cascade(sig, (2, 2), guidance={"q_end": 1.0, "operator": "nearest"})
    unet = runs.CountingUNet(tiny.unet)
    kw = dict(seed=5000, sampler="euler", batch=2)
    rs = {(2, 2): avg_nearest(2)}
    ref = runs.run_cascade(tiny, unet, PROMPTS[:2], plan, **kw)
    same = runs.run_cascade(tiny, unet, PROMPTS[:2], plan, resamplers=rs, **kw)
    assert torch.allclose(same, ref, atol=1e-3)  # latents of magnitude ~25: float rounding
    fitted = runs.run_cascade(tiny, unet, PROMPTS[:2], plan, resamplers=rs, upscaler="fitted", **kw)
    assert float((fitted - ref).abs().max()) > 0.1
    with pytest.raises(ValueError, match="fitted needs resamplers"):
        runs.run_cascade(tiny, unet, PROMPTS[:2], plan, upscaler="fitted", **kw)


def test_fitted_up_chains_the_fitted_factors_when_the_ratio_has_none() -> None:
    """4× with only a 2× resampler is two 2× ups (as nested guidance chains its levels); nearest maps make it a
    4 × 4 nearest enlargement. A ratio no chain of fitted factors makes is refused, naming what is fitted."""
    from tests.test_resampler import avg_nearest

    x0 = torch.randn(1, 4, 5, 6)
    rs = {(2, 2): avg_nearest(2)}
    out = runs.fitted_up(rs, x0, 20, 24)
    assert torch.equal(out, x0.repeat_interleave(4, -2).repeat_interleave(4, -1))
    assert torch.equal(runs.fitted_up(rs, x0, 10, 12), rs[(2, 2)].up(x0, (10, 12)))
    with pytest.raises(ValueError, match=r"×\(3, 3\).*\(2, 2\)"):
        runs.fitted_up(rs, x0, 15, 18)


def test_cascade_stops_the_native_pass_and_guides_the_full_size_pass(tiny: LatentModel) -> None:
    from lib_chroma.cascade import plan_cascade

    sig = runs.latent_sigmas("euler", 8)
    plan = plan_cascade(sig, (2, 2), guidance={"q_end": 1.0})
    assert plan is not None and len(plan.stages) == 2
    native, full = plan.stages
    unet = runs.CountingUNet(tiny.unet)
    z = runs.run_cascade(tiny, unet, PROMPTS[:2], plan, seed=5000, sampler="euler", batch=2)
    assert z.shape == (2, 4, 32, 32) and bool(z.isfinite().all())
    guided = len(full.plan.active_steps(full.sigmas))
    # native-size calls: the first pass's steps and the full-size pass's guided low-resolution calls
    assert unet.calls == {(16, 16): native.steps + guided, (32, 32): full.steps}
    other = runs.run_cascade(tiny, unet, PROMPTS[2:] + PROMPTS[:1], plan, seed=5000, sampler="euler", batch=2)
    assert not torch.allclose(z, other)  # the prompts reach both passes
    # an image upscaler changes only how the x0 prediction is enlarged: through a linear autoencoder it is bilinear
    ident = LatentModel(_ScaledAE(), tiny.text, tiny.unet, tiny.meta).eval()
    lat = runs.run_cascade(ident, unet, PROMPTS[:2], plan, seed=5000, sampler="euler", batch=2)
    pix = runs.run_cascade(ident, unet, PROMPTS[:2], plan, seed=5000, sampler="euler", batch=2, upscaler="pixel")
    assert torch.allclose(lat, pix, atol=1e-3)  # latents of magnitude ~25: float rounding of x100 and /100
    assert not torch.allclose(z, runs.run_cascade(tiny, unet, PROMPTS[:2], plan, seed=5000, sampler="euler", batch=2,
                                                  upscaler="pixel"), atol=1e-3)
    with pytest.raises(ValueError, match="upscaler"):
        runs.run_cascade(tiny, unet, PROMPTS[:2], plan, seed=5000, upscaler="pixel", handover_mode="noisy")
