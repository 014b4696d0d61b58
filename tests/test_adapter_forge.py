"""Forge adapter tests against a stand-in of the few Forge objects it touches (the real Forge is tests/webui's job).

The stand-in follows Forge's ``backend/sampling/sampling_function.py`` as read at commit dfdcbab6: per model call,
the conditioning modifiers of ``forge_objects.unet.model_options`` run once, then the cond and uncond chunks are
stacked (uncond first, ``cond_or_uncond = [1, 0]``) and passed to the UNet function wrapper as
``wrapper(apply_model, {"input", "timestep", "c", "cond_or_uncond"})``; ``apply_model(x, sigma, **c)`` returns x0;
CFG combines the chunks afterwards. ``UnetPatcher.clone`` deep-copies ``model_options``.
"""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch

from lib_chroma.guidance import GuidancePlan, guide_x0, pool
from lib_chroma.schedule import model_schedule, sampler_sigmas
from tests import fake_webui


class Patcher:
    """``UnetPatcher`` stand-in: ``model`` (with ``apply_model``), ``model_options``, clone and the two setters."""

    def __init__(self, model, model_options=None) -> None:
        self.model = model
        self.model_options = model_options or {"transformer_options": {}}

    def clone(self) -> Patcher:
        return Patcher(self.model, copy.deepcopy(self.model_options))

    def add_conditioning_modifier(self, modifier) -> None:
        self.model_options.setdefault("conditioning_modifiers", []).append(modifier)

    def set_model_unet_function_wrapper(self, wrapper) -> None:
        self.model_options["model_function_wrapper"] = wrapper


class KModel:
    """``KModel`` stand-in: x0 from x, sigma, the text cond, ``c_concat`` and ``y``; records every call."""

    def __init__(self, fail_below: int | None = None) -> None:
        self.calls: list[dict] = []
        self.fail_below = fail_below
        sigmas = model_schedule("sd1").sigmas.float()
        self.predictor = types.SimpleNamespace(sigmas=sigmas, prediction_type="epsilon")

    def apply_model(self, x, t, c_crossattn=None, c_concat=None, control=None, transformer_options=None, **kw):
        self.calls.append({"shape": tuple(x.shape), "sigma": t.clone(), "c_concat": c_concat, "control": control,
                           "to": dict(transformer_options or {}), "kw": kw})
        if self.fail_below is not None and x.shape[-1] < self.fail_below:
            raise RuntimeError("hint has the wrong size")
        bias = c_crossattn.double().mean(dim=(1, 2)).to(x.dtype).view(-1, 1, 1, 1)
        if c_concat is not None:
            bias = bias + c_concat.mean(dim=1, keepdim=True)
        s = t.view(-1, 1, 1, 1).to(x.dtype)
        return x / (1 + s * s) + 0.1 * bias + 0.05 * torch.roll(x, 1, -1)

    def sizes(self) -> list[tuple[int, ...]]:
        return [c["shape"] for c in self.calls]


class FakeControl:
    """Forge's ``ControlBase`` as the adapter sees it: ``get_control`` resizes the original hint to 8x the latent
    when its cached ``cond_hint`` does not fit (as Forge does), checks the step range on the sigma, and chains to
    ``previous_controlnet``; records the hint and rows of every call."""

    def __init__(self, hint, strength=1.0, previous=None, timestep_range=None):
        self.cond_hint_original = hint
        self.cond_hint = None
        self.strength = strength
        self.previous_controlnet = previous
        self.timestep_range = timestep_range
        self.seen: list[tuple] = []

    def get_control(self, x, t, cond, batched_number):
        prev = self.previous_controlnet.get_control(x, t, cond, batched_number) if self.previous_controlnet else None
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return prev
        size = (8 * x.shape[-2], 8 * x.shape[-1])
        if self.cond_hint is None or self.cond_hint.shape[-2:] != size:
            self.cond_hint = torch.nn.functional.interpolate(self.cond_hint_original, size)
        self.seen.append((tuple(x.shape), self.cond_hint, float(t[0])))
        out = torch.nn.functional.avg_pool2d(self.cond_hint.mean(1, keepdim=True), 8).expand(x.shape[0], 1, -1, -1)
        return {"output": [out * self.strength + (prev["output"][0] if prev else 0)]}


class Engine:
    """A Forge engine stand-in (SD1 unless told otherwise): flags, ``forge_objects``."""

    def __init__(self, model: KModel, **flags) -> None:
        self.forge_objects = types.SimpleNamespace(unet=Patcher(model))
        self.is_sd1, self.is_sd2, self.is_sdxl = True, False, False
        for k, v in flags.items():
            setattr(self, k, v)


def sample(engine: Engine, x: torch.Tensor, sigmas, cond, uncond, *, cfg=7.0, image=None, control=None):
    """Euler sampling through Forge's model-call protocol; returns the final latent."""
    for i in range(len(sigmas) - 1):
        s = float(sigmas[i])
        unet = engine.forge_objects.unet
        opts = unet.model_options
        sig = torch.full((x.shape[0],), s)
        for modifier in opts.get("conditioning_modifiers", []):
            _m, x, sig, *_ = modifier(unet.model, x, sig, uncond, cond, cfg, opts, 0)
        chunks = [0] if cfg == 1 else [1, 0]  # 0 = cond, 1 = uncond; uncond first, as Forge batches them
        texts = {0: cond, 1: uncond}
        c = {"c_crossattn": torch.cat([texts[k] for k in chunks]),
             "transformer_options": {**opts.get("transformer_options", {}), "sigmas": sig,
                                     "cond_or_uncond": chunks}}
        if image is not None:
            c["c_concat"] = torch.cat([image] * len(chunks))
        inp = torch.cat([x] * len(chunks))
        t = torch.cat([sig] * len(chunks))
        if isinstance(control, FakeControl):  # as Forge's calc_cond_uncond_batch
            c["control"] = control.get_control(inp, t, dict(c), len(chunks))
            c["control_model"] = control
        elif control is not None:
            c["control"] = control
        wrapper = opts.get("model_function_wrapper")
        args = {"input": inp, "timestep": t, "c": c, "cond_or_uncond": chunks}
        if wrapper is None:
            out = unet.model.apply_model(inp, t, **c)
        else:
            out = wrapper(unet.model.apply_model, args)
        parts = dict(zip(chunks, out.chunk(len(chunks))))
        d = parts[0] if cfg == 1 else parts[1] + (parts[0] - parts[1]) * cfg
        x = x + (x - d) / s * (float(sigmas[i + 1]) - s)
    return x


@pytest.fixture()
def web():
    h = fake_webui.install()
    from lib_chroma.webui import forge, generation

    h.forge, h.gen = forge, generation
    yield h
    generation.reset()
    fake_webui.uninstall()


def make_p(engine: Engine, **kw):
    p = types.SimpleNamespace(sampler_name="Euler", scheduler="Automatic", steps=6, sd_model=engine,
                              extra_generation_params={}, prompts=["a cat"], hr_prompts=["a cat"],
                              all_prompts=["a cat"], is_hr_pass=False, enable_hr=False, sampler=None, iteration=0,
                              denoising_strength=0.5)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def conds(b: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 77, 8, generator=g), torch.randn(b, 77, 8, generator=g)


EVERY_CALL = {"factor_h": 2, "factor_w": 2, "window": "fraction", "shape": "constant"}


def generate(h, engine, args, *, batch=1, size=(16, 16), cfg=7.0, image=None, control=None, steps=6,
             before_sampling=None):
    """One generation: process → before sampling → Euler through the stand-in → post_sample → postprocess."""
    p = make_p(engine, steps=steps)
    h.forge.on_process(p, tuple(args))
    x = torch.randn(batch, 4, *size, generator=torch.Generator().manual_seed(1))
    h.forge.on_before_sampling(p, x)
    if before_sampling is not None:
        before_sampling(engine)
    sig = sampler_sigmas("Euler", "Automatic", steps, model_schedule("sd1"))
    c, u = conds(batch)
    out = sample(engine, x * sig[0], sig, c, u, cfg=cfg, image=image, control=control)
    h.gen.on_post_sample(p)
    h.gen.on_postprocess(p)
    return p, out


def test_handles_only_forge_engines(web):
    assert web.forge.handles(make_p(Engine(KModel())))
    assert not web.forge.handles(make_p(fake_webui.FakeModel()))


def test_disabled_patches_nothing_and_is_bit_identical(web):
    ref_model, model = KModel(), KModel()
    ref_engine, engine = Engine(ref_model), Engine(model)
    original = engine.forge_objects.unet
    _, ref = generate(web, ref_engine, [])
    p, out = generate(web, engine, [False])
    assert torch.equal(ref, out) and model.sizes() == ref_model.sizes()
    assert engine.forge_objects.unet is original and original.model_options == {"transformer_options": {}}
    assert not p.extra_generation_params


def test_one_batched_low_res_call_per_model_call_matching_the_core(web, monkeypatch, tmp_path):
    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    model = KModel()
    engine = Engine(model)
    original = engine.forge_objects.unet
    p, out = generate(web, engine, [EVERY_CALL], batch=2)
    full = [c for c in model.calls if c["shape"][-1] == 16]
    low = [c for c in model.calls if c["shape"][-1] == 8]
    assert len(full) == len(low) == 6
    assert all(c["shape"] == (4, 4, 8, 8) for c in low)  # uncond and cond rows of both images, one call
    for f, lo in zip(full, low):
        torch.testing.assert_close(lo["sigma"], f["sigma"] / 2)
        torch.testing.assert_close(lo["to"]["sigmas"], f["to"]["sigmas"] / 2)
    rec = json.loads(p.extra_generation_params["RC debug"])
    assert rec["host"] == "forge" and rec["model_calls"] == rec["low_calls"] == 6 and rec["failed"] is None
    assert [c["phase"] for c in rec["calls"]] == list(range(6))
    assert p.extra_generation_params["RC guided steps"] == "1-6/6"
    assert engine.forge_objects.unet is original, "the patched clone is set back when the generation ends"
    assert "model_function_wrapper" not in original.model_options
    _, unguided = generate(web, Engine(KModel()), [False], batch=2)
    assert not torch.equal(out, unguided)


def test_wrapper_output_is_guide_x0_of_the_stacked_rows(web):
    model = KModel()
    engine = Engine(model)
    p = make_p(engine)
    web.forge.on_process(p, ({**EVERY_CALL, "scale": 0.7},))
    x = torch.randn(1, 4, 16, 16)
    web.forge.on_before_sampling(p, x)
    unet = engine.forge_objects.unet
    for modifier in unet.model_options["conditioning_modifiers"]:
        modifier(unet.model, x, torch.tensor([3.0]), None, None, 7.0, unet.model_options, 0)
    c, u = conds()
    inp, t = torch.cat([x, x]), torch.tensor([3.0, 3.0])
    cond = {"c_crossattn": torch.cat([u, c]), "transformer_options": {"sigmas": torch.tensor([3.0])}}
    got = unet.model_options["model_function_wrapper"](
        model.apply_model, {"input": inp, "timestep": t, "c": cond, "cond_or_uncond": [1, 0]}
    )
    plan = GuidancePlan.build((2, 2), scale=0.7, shape="constant")
    ref = KModel()
    expected = guide_x0(inp, t, ref.apply_model(inp, t, **cond),
                        lambda xl, sl: ref.apply_model(xl, sl, c_crossattn=cond["c_crossattn"]), plan)
    torch.testing.assert_close(got, expected)


def test_cfg1_guides_the_cond_rows_only(web):
    model = KModel()
    generate(web, Engine(model), [EVERY_CALL], cfg=1.0)
    low = [s for s in model.sizes() if s[-1] == 8]
    assert low == [(1, 4, 8, 8)] * 6


def test_image_cond_pooled_on_the_moving_grid_full_size_control_dropped(web):
    model = KModel()
    image = torch.randn(1, 5, 16, 16)
    control = {"output": [torch.zeros(2, 320, 16, 16)]}  # residuals without a control object: not for the low call
    generate(web, Engine(model), [{**EVERY_CALL, "grid": "moving"}], image=image, control=control, steps=2)
    full = [c for c in model.calls if c["shape"][-1] == 16]
    low = [c for c in model.calls if c["shape"][-1] == 8]
    assert all(c["control"] is control for c in full) and all(c["control"] is None for c in low)
    for phase, call in enumerate(low):
        expected = pool(image, 2, 2, (phase, phase))  # offsets (0, 0) then (1, 1)
        torch.testing.assert_close(call["c_concat"], torch.cat([expected, expected]))


def test_nested_factor_four_calls_each_level(web):
    model = KModel()
    generate(web, Engine(model), [{**EVERY_CALL, "factor_h": 4, "factor_w": 4}], size=(32, 32), steps=3)
    assert [s[-1] for s in model.sizes()] == [32, 16, 8] * 3


def test_a_wrapper_already_there_is_chained(web):
    model = KModel()
    engine = Engine(model)
    seen = []

    def tiled(apply_model, args):  # e.g. Forge's MultiDiffusion
        seen.append(tuple(args["input"].shape))
        return apply_model(args["input"], args["timestep"], **args["c"])

    engine.forge_objects.unet.set_model_unet_function_wrapper(tiled)
    p, _ = generate(web, engine, [EVERY_CALL], steps=3)
    assert seen == [(2, 4, 16, 16)] * 3, "the full-size call goes through the wrapper that was there"
    assert [s[-1] for s in model.sizes()] == [16, 8] * 3
    assert "RC error" not in p.extra_generation_params


def test_failing_low_res_call_finishes_unguided(web, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    model = KModel(fail_below=16)
    p, out = generate(web, Engine(model), [EVERY_CALL])
    assert [s[-1] for s in model.sizes()].count(8) == 1  # tried once, then unguided
    assert "low-resolution call failed (RuntimeError" in p.extra_generation_params["RC error"]
    rec = json.loads(p.extra_generation_params["RC debug"])
    assert rec["low_calls"] == 0 and rec["model_calls"] == 1, "a failed call books nothing; no call is counted after"
    assert len([r for r in caplog.records if "Resolution Chromatography:" in r.getMessage()]) == 1
    _, unguided = generate(web, Engine(KModel()), [False])
    assert torch.equal(out, unguided)


def test_a_replaced_wrapper_is_reported_not_claimed(web):
    """Another extension replaces the UNet wrapper after the adapter installed it: nothing is guided, and the
    infotext says so instead of claiming guided steps."""
    model = KModel()

    def steal(engine):
        engine.forge_objects.unet.set_model_unet_function_wrapper(
            lambda apply_model, args: apply_model(args["input"], args["timestep"], **args["c"])
        )

    p, out = generate(web, Engine(model), [EVERY_CALL], before_sampling=steal)
    assert all(s[-1] == 16 for s in model.sizes())
    assert "RC guided steps" not in p.extra_generation_params
    assert "nothing was guided" in p.extra_generation_params["RC error"]
    _, unguided = generate(web, Engine(KModel()), [False])
    assert torch.equal(out, unguided)


def test_no_model_call_through_the_patch_is_reported(web):
    """The host samples with another UNet than the patched one: post_sample reports it."""
    engine = Engine(KModel())
    p = make_p(engine)
    web.forge.on_process(p, (EVERY_CALL,))
    web.forge.on_before_sampling(p, torch.zeros(1, 4, 16, 16))
    web.gen.on_post_sample(p)
    assert "no model call of the first pass" in p.extra_generation_params["RC error"]
    assert "RC guided steps" not in p.extra_generation_params
    web.gen.on_postprocess(p)


def test_hires_pass_planned_twice_counts_once(web, monkeypatch, tmp_path):
    """Forge calls process_before_every_sampling twice in the hires pass and resets the UNet in between: the first
    plan is dropped silently, the second one guides."""
    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    model = KModel()
    engine = Engine(model)
    original = engine.forge_objects.unet
    p = make_p(engine, enable_hr=True)
    everywhere = {**EVERY_CALL, "window": "sigma", "window_sigma_hi": 100.0, "window_sigma_lo": 0.0}
    web.forge.on_process(p, ({**everywhere, "passes": "hires"},))
    web.forge.on_before_sampling(p, torch.zeros(1, 4, 8, 8))  # first pass: not guided
    p.is_hr_pass = True
    web.forge.on_before_sampling(p, torch.zeros(1, 4, 16, 16))
    engine.forge_objects.unet = original  # Forge's reset between the two calls
    web.forge.on_before_sampling(p, torch.zeros(1, 4, 16, 16))
    sig = sampler_sigmas("Euler", "Automatic", 3, model_schedule("sd1"))
    c, u = conds()
    sample(engine, torch.randn(1, 4, 16, 16) * sig[0], sig, c, u)
    web.gen.on_post_sample(p)
    web.gen.on_postprocess(p)
    rec = json.loads(p.extra_generation_params["RC debug"])
    assert [q["pass"] for q in rec["passes"]] == ["hires"]
    assert rec["failed"] is None and rec["low_calls"] == rec["model_calls"] == 3
    assert engine.forge_objects.unet is original


def test_stale_patch_does_nothing_after_the_generation(web):
    model = KModel()
    engine = Engine(model)
    p = make_p(engine)
    web.forge.on_process(p, (EVERY_CALL,))
    web.forge.on_before_sampling(p, torch.zeros(1, 4, 16, 16))
    kept = engine.forge_objects.unet  # e.g. a host that keeps using the patched UNet afterwards
    web.gen.on_postprocess(p)
    engine.forge_objects.unet = kept
    sig = sampler_sigmas("Euler", "Automatic", 2, model_schedule("sd1"))
    c, u = conds()
    sample(engine, torch.randn(1, 4, 16, 16) * sig[0], sig, c, u)
    assert all(s[-1] == 16 for s in model.sizes())


def test_unsupported_model_is_generated_unguided_and_says_why(web):
    model = KModel()
    engine = Engine(model, is_sd1=False)  # e.g. Flux
    original = engine.forge_objects.unet
    p, _ = generate(web, engine, [EVERY_CALL])
    assert "is not SD1.x, SD2.x or SDXL" in p.extra_generation_params["RC error"]
    assert "RC scale" not in p.extra_generation_params
    assert engine.forge_objects.unet is original and all(s[-1] == 16 for s in model.sizes())


def test_family_and_schedule_from_forge_flags(web):
    gen = web.gen
    model = KModel()
    assert gen.model_family(Engine(model)) == "sd1"
    assert gen.model_family(Engine(model, is_sd1=False, is_sdxl=True)) == "sdxl"
    assert gen.model_family(Engine(model, is_sd1=False, is_sd2=True)) == "sd2"
    model.predictor.prediction_type = "v_prediction"
    assert gen.model_family(Engine(model, is_sd1=False, is_sd2=True)) == "sd2-v"
    sched = gen.model_schedule_of(Engine(KModel()), "sd1")
    torch.testing.assert_close(sched.sigmas, model_schedule("sd1").sigmas, rtol=1e-5, atol=1e-6)


def test_sdxl_y_gets_the_low_res_size(web):
    class StableDiffusionXL(Engine):
        pass

    def embedder(t):
        return t.repeat_interleave(256).view(1, 256) / 1000.0

    model = KModel()
    engine = StableDiffusionXL(model, is_sd1=False, is_sdxl=True)
    engine.embedder = embedder
    fn = web.forge._vector_fn(engine)
    y = torch.randn(2, 1280 + 6 * 256)
    low = fn(y, (64, 48))
    assert torch.equal(low[:, :1280], y[:, :1280]) and torch.equal(low[:, 1792:2304], y[:, 1792:2304])
    for slot, px in ((0, 64), (1, 48), (4, 64), (5, 48)):
        a = 1280 + slot * 256
        torch.testing.assert_close(low[:, a : a + 256], torch.full((2, 256), px / 1000.0))
    web.shared.opts.rc_sdxl_size_cond = "unchanged"
    assert web.forge._vector_fn(engine) is None


def test_controlnet_residuals_recomputed_for_the_low_rows_on_the_moving_grid(web, monkeypatch, tmp_path):
    """Forge's ControlNet chain: the low call gets residuals computed on the pooled rows from the pooled hint
    (two controls chained, both at their strength), and every control's cached hint is restored."""
    from lib_chroma.guidance import grid_offset, pool_image

    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    first = FakeControl(torch.rand(1, 3, 128, 128), strength=0.5)
    head = FakeControl(torch.rand(1, 3, 128, 128), strength=1.0, previous=first)
    model = KModel()
    generate(web, Engine(model), [{**EVERY_CALL, "grid": "moving"}], control=head, steps=3)
    low = [c for c in model.calls if c["shape"][-1] == 8]
    assert len(low) == 3 and all(c["control"]["output"][0].shape == (2, 1, 8, 8) for c in low)
    for ctl in (first, head):
        full_hint = [h for shape, h, _ in ctl.seen if shape[-1] == 16][0]
        low_hints = [h for shape, h, _ in ctl.seen if shape[-1] == 8]
        assert len(low_hints) == 3
        for phase, h in enumerate(low_hints):
            torch.testing.assert_close(h, pool_image(full_hint, 2, 2, (16, 16), grid_offset(phase, 2, 2)))
        assert ctl.cond_hint.shape[-1] == 128  # the full-size hint is back for the next full-size call
    record = json.loads((tmp_path / "rc.jsonl").read_text().splitlines()[-1])
    assert [c["controlnet"] for c in record["calls"]] == [[[2, 4, 8, 8]]] * 3


def test_controlnet_step_range_follows_the_full_size_sigma(web):
    """A control active at the full-size sigma is active in the low call too (its sigma/m may lie outside the
    range), and one that is not, is not: as A1111's ControlNet decides by the step."""
    sig = sampler_sigmas("Euler", "Automatic", 3, model_schedule("sd1"))
    mid = (float(sig[0]) + float(sig[1])) / 2  # steps 0 inside, 1 and 2 outside
    ctl = FakeControl(torch.rand(1, 3, 128, 128), timestep_range=(float("inf"), mid))
    model = KModel()
    generate(web, Engine(model), [EVERY_CALL], control=ctl, steps=3)
    low = [c for c in model.calls if c["shape"][-1] == 8]
    assert low[0]["control"] is not None and low[1]["control"] is None and low[2]["control"] is None
    assert ctl.timestep_range == (float("inf"), mid)


def test_deep_shrink_input_block_patches_stay_out_of_the_low_res_call(web):
    """Forge's built-in Kohya HRFix puts its shrink in ``input_block_patch_after_skip``; the native-size low-res
    call must not be shrunk. Other patches (FreeU's output-block patch, attention patches) still reach it."""
    model = KModel()
    engine = Engine(model)
    patches = {"input_block_patch": ["ib"], "input_block_patch_after_skip": ["shrink"], "output_block_patch": ["up"],
               "attn1_patch": ["a1"]}
    engine.forge_objects.unet.model_options["transformer_options"]["patches"] = patches
    generate(web, engine, [EVERY_CALL], steps=2)
    full = [c["to"]["patches"] for c in model.calls if c["shape"][-1] == 16]
    low = [c["to"]["patches"] for c in model.calls if c["shape"][-1] == 8]
    assert len(full) == 2 and all(f == patches for f in full)
    assert len(low) == 2 and all(p == {"output_block_patch": ["up"], "attn1_patch": ["a1"]} for p in low)
    assert engine.forge_objects.unet.model_options["transformer_options"]["patches"] == patches


def test_fitted_resamplers_through_forges_vae(web, monkeypatch, tmp_path):
    """``resampler = fitted`` in Forge: fitted to ``forge_objects.vae``'s module, used in the pass, the image
    differs from pooling's."""
    from lib_chroma.webui import vae_resamplers

    vae_resamplers.clear()
    monkeypatch.setattr("lib_chroma.encoder_fit.FIT_IMAGES", 16)
    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    engine = Engine(KModel())
    engine.forge_objects.vae = types.SimpleNamespace(first_stage_model=fake_webui.FakeVAE())
    p, fitted = generate(web, engine, [dict(EVERY_CALL, resampler="fitted")], size=(32, 32))
    assert json.loads(p.extra_generation_params["RC debug"])["passes"][0]["resamplers"] == [[2, 2]]
    assert "RC note" not in p.extra_generation_params
    assert engine.forge_objects.vae.first_stage_model.encodes == 2 * 16
    _, pooled = generate(web, Engine(KModel()), [EVERY_CALL], size=(32, 32))
    assert not torch.equal(fitted, pooled)
