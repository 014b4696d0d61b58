"""Adapter tests against a stand-in of the WebUI modules (tests/fake_webui); the real WebUI is tests/webui's
job."""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch

from lib_chroma.guidance import GuidancePlan, guide_eps, guide_x0
from lib_chroma.schedule import DiscreteSchedule, model_schedule, sampler_sigmas
from tests import fake_webui


class Inner:
    """Deterministic stand-in denoiser: x0 (or eps) depends on x, sigma and the text cond; records calls."""

    def __init__(self, eps: bool = False, fail_below: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.eps = eps
        self.fail_below = fail_below

    def __call__(self, x, sigma, cond):
        c = cond["crossattn"] if "crossattn" in cond else cond["c_crossattn"][0]
        self.calls.append((tuple(x.shape), sigma.detach().clone(), cond))
        if self.fail_below is not None and x.shape[-1] < self.fail_below:
            raise RuntimeError("hint has the wrong size")
        bias = c.double().mean(dim=(1, 2)).to(x.dtype).view(-1, 1, 1, 1)
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        if self.eps:
            return torch.tanh(x) * 0.5 + 0.1 * bias
        return x / (1 + s * s) + 0.1 * bias + 0.05 * torch.roll(x, 1, -1)

    def sizes(self):
        return [c[0] for c in self.calls]


def make_p(h, **kw):
    p = types.SimpleNamespace(
        sampler_name="Euler",
        scheduler="Automatic",
        steps=8,
        width=1024,
        height=1024,
        sd_model=h.shared.sd_model,
        extra_generation_params={},
        prompts=["a cat"],
        hr_prompts=["a cat"],
        all_prompts=["a cat"],
        is_hr_pass=False,
        enable_hr=False,
        sampler=None,
        iteration=0,
        denoising_strength=0.5,
    )
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def conds(n, b, tokens=(77, 77), dim=8, sdxl=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, tokens[0], dim, generator=g)
    u = torch.randn(b, tokens[1], dim, generator=g)
    if sdxl:
        return (
            {"crossattn": c, "vector": torch.randn(n, 2816, generator=g)},
            {"crossattn": u, "vector": torch.randn(b, 2816, generator=g)},
        )
    return c, u


def run(
    h,
    p,
    args,
    inner,
    *,
    batch=1,
    repeats=None,
    size=(16, 16),
    denoiser_cls=None,
    skip_uncond=False,
    tokens=(77, 77),
    sdxl=False,
    image_cond=None,
    timestep=False,
):
    """Drive one generation: process → process_batch → before sampling → Euler (or DDIM-like) loop →
    postprocess."""
    a = h.a1111
    repeats = repeats or [1] * batch
    c, u = conds(sum(repeats), batch, tokens, sdxl=sdxl)
    a.on_process(p, tuple(args))
    a.on_process_batch(p)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, *size, generator=g)
    a.on_before_sampling(p, x)
    ic = image_cond if image_cond is not None else torch.zeros(batch, 5, 1, 1)
    if timestep:
        sched = model_schedule("sd1")
        den = fake_webui.FakeCFGDenoiserTimesteps(
            inner, p, repeats, c, u, skip_uncond=skip_uncond, alphas=h.shared.sd_model.alphas_cumprod
        )
        for t in (901.0, 601.0, 301.0, 1.0):
            e = den.forward(x, torch.full((batch,), t), ic)
            ab = float(sched.alphas_cumprod[int(t)])
            x = (x - (1 - ab) ** 0.5 * e) / ab**0.5 * 0.9 + 0.1 * e
    else:
        sig = sampler_sigmas(p.sampler_name, p.scheduler, p.steps, model_schedule("sd1"))
        den = (denoiser_cls or fake_webui.FakeCFGDenoiser)(inner, p, repeats, c, u, skip_uncond=skip_uncond)
        x = x * sig[0]
        for i in range(len(sig) - 1):
            s = float(sig[i])
            d = den.forward(x, torch.full((batch,), s), ic)
            x = x + (x - d) / s * (float(sig[i + 1]) - s)
    a.on_postprocess(p)
    return x


ON = [True]


def test_disabled_is_bit_identical_and_makes_no_extra_call(web):
    ref_inner, inner = Inner(), Inner()
    ref = run(web, make_p(web), [False], ref_inner)
    web.script_callbacks.clear()  # a server without the extension's callbacks...
    web.a1111.register_callbacks()  # ...and with them, disabled
    out = run(web, make_p(web), [False], inner)
    assert torch.equal(ref, out)
    assert inner.sizes() == ref_inner.sizes()
    assert web.a1111.current() is None


def test_no_args_and_disabled_dict_do_nothing(web):
    inner = Inner()
    p = make_p(web)
    run(web, p, [], inner, size=(128, 128))
    run(web, p, [{"enabled": False}], inner, size=(128, 128))
    assert all(s[-1] == 128 for s in inner.sizes())
    assert not any(k.startswith("RC") for k in p.extra_generation_params)


def test_one_batched_low_res_call_per_guided_step(web):
    inner = Inner()
    p = make_p(web)
    run(
        web,
        p,
        [{"window": "fraction", "window_start": 0.0, "window_end": 0.5, "operator": "nearest"}],
        inner,
        batch=2,
        size=(128, 128),
    )
    sizes = inner.sizes()
    full = [s for s in sizes if s[-1] == 128]
    low = [s for s in sizes if s[-1] == 64]
    assert len(full) == 8 and len(low) == 4  # 8 steps, guided during the first half only
    assert all(s[0] == 4 for s in low)  # cond and uncond rows of both images in one call
    assert sizes[:2] == [(4, 4, 128, 128), (4, 4, 64, 64)]
    assert p.extra_generation_params["RC guided steps"] == "1-4/8"  # 1-based, as the readout
    assert p.extra_generation_params["RC scale"] == "1.5"  # the default scale


def test_guided_output_matches_the_core(web):
    """One step by hand: x_out rows corrected exactly as lib_chroma.guidance.guide_x0 does."""
    a = web.a1111
    p = make_p(web)
    a.on_process(p, ({"factor_h": 2, "factor_w": 2, "shape": "constant", "scale": 0.7},))
    x = torch.randn(2, 4, 32, 32)
    a.on_before_sampling(p, x)
    c, u = conds(3, 2)
    inner = Inner()
    den = fake_webui.FakeCFGDenoiser(inner, p, [2, 1], c, u)
    captured = {}

    def spy(params):
        captured["x_out"] = params.x.clone()

    web.script_callbacks.callback_map["cfg_denoised"].insert(0, ("spy", spy))
    sigma = torch.tensor([3.0, 3.0])
    den.forward(x, sigma, torch.zeros(2, 5, 1, 1))
    x_in = torch.cat([x[0:1], x[0:1], x[1:2], x])
    s_in = torch.full((5,), 3.0)
    plan = GuidancePlan.build((2, 2), scale=0.7, shape="constant")
    cond_all = torch.cat([c, u])
    expected = guide_x0(
        x_in,
        s_in,
        captured["x_out"],
        lambda xl, sl: inner(xl, sl, {"c_crossattn": [cond_all], "c_concat": [None]}),
        plan,
        phase=1,  # the pass's second model call: the moving grid's second offset
    )
    # the extension ran after the spy: recompute what it wrote by running the same step again
    got = {}
    web.script_callbacks.callback_map["cfg_denoised"].append(
        ("after", lambda prm: got.setdefault("x", prm.x.clone()))
    )
    den.forward(x, sigma, torch.zeros(2, 5, 1, 1))
    torch.testing.assert_close(got["x"], expected)


def test_and_prompts_batch_and_skipped_uncond(web):
    inner = Inner()
    p = make_p(web)
    run(web, p, [{"shape": "constant"}], inner, batch=2, repeats=[2, 1], size=(128, 128), skip_uncond=True)
    low = [s for s in inner.sizes() if s[-1] == 64]
    assert low and all(s[0] == 3 for s in low)  # only the 3 evaluated cond rows


def test_fake_uncond_rows_follow_the_guided_cond(web):
    a = web.a1111
    p = make_p(web)
    a.on_process(p, ({"shape": "constant", "factor_h": 2, "factor_w": 2},))
    x = torch.randn(2, 4, 32, 32)
    a.on_before_sampling(p, x)
    c, u = conds(2, 2)
    got = {}
    den = fake_webui.FakeCFGDenoiser(Inner(), p, [1, 1], c, u, skip_uncond=True)
    web.script_callbacks.callback_map["cfg_denoised"].append(
        ("after", lambda prm: got.setdefault("x", prm.x.clone()))
    )
    den.forward(x, torch.tensor([2.0, 2.0]), torch.zeros(2, 5, 1, 1))
    assert torch.equal(got["x"][2], got["x"][0]) and torch.equal(got["x"][3], got["x"][1])


def test_token_length_mismatch_makes_separate_calls(web):
    inner = Inner()
    run(web, make_p(web), [{"shape": "constant"}], inner, batch=1, size=(128, 128), tokens=(154, 77))
    low = [s for s in inner.sizes() if s[-1] == 64]
    assert len(low) == 2 * 8 and {s[0] for s in low} == {1}


def test_nested_factor_four_calls_each_level(web):
    inner = Inner()
    run(
        web, make_p(web, steps=4), [{"shape": "constant", "factor_h": 4, "factor_w": 4}], inner, size=(64, 64)
    )
    widths = [s[-1] for s in inner.sizes()]
    assert widths == [64, 32, 16] * 4


def test_odd_sizes_and_unequal_factors(web):
    inner = Inner()
    run(
        web, make_p(web, steps=3), [{"shape": "constant", "factor_h": 3, "factor_w": 2}], inner, size=(25, 17)
    )
    assert (2, 4, 9, 9) in inner.sizes()


def test_sdxl_dict_conds_and_low_res_size_vector(web):
    class Emb:
        def __init__(self, key):
            self.input_key, self.outdim = key, 256

        def __call__(self, t):
            return t.repeat_interleave(256, dim=1) / 1000.0

    web.shared.sd_model.is_sdxl = True
    web.shared.sd_model.conditioner = types.SimpleNamespace(
        embedders=[
            types.SimpleNamespace(input_key="txt"),
            types.SimpleNamespace(input_key="txt"),
            Emb("original_size_as_tuple"),
            Emb("crop_coords_top_left"),
            Emb("target_size_as_tuple"),
        ]
    )
    inner = Inner()
    run(
        web,
        make_p(web, steps=2),
        [{"shape": "constant", "factor_h": 2, "factor_w": 2}],
        inner,
        size=(32, 24),
        sdxl=True,
    )
    low = [c for c in inner.calls if c[0][-1] == 12]
    assert low
    vec = low[0][2]["vector"]
    assert vec.shape == (2, 2816)
    assert torch.allclose(
        vec[:, 1280:1536], torch.full((2, 256), 16 * 8 / 1000.0)
    )  # height of the low-res call
    assert torch.allclose(vec[:, 2560:], torch.full((2, 256), 12 * 8 / 1000.0))  # target width
    full = [c for c in inner.calls if c[0][-1] == 24][0][2]["vector"]
    assert torch.equal(vec[:, :1280], full[:, :1280])


def test_sdxl_vector_unchanged_option(web):
    web.shared.opts.rc_sdxl_size_cond = "unchanged"
    web.shared.sd_model.is_sdxl = True
    inner = Inner()
    run(
        web,
        make_p(web, steps=2),
        [{"shape": "constant", "factor_h": 2, "factor_w": 2}],
        inner,
        size=(32, 32),
        sdxl=True,
    )
    low = [c for c in inner.calls if c[0][-1] == 16][0][2]["vector"]
    full = [c for c in inner.calls if c[0][-1] == 32][0][2]["vector"]
    assert torch.equal(low, full)


def test_inpainting_image_cond_is_pooled_dummy_is_not(web):
    inner = Inner()
    run(
        web,
        make_p(web, steps=2),
        [{"shape": "constant", "factor_h": 2, "factor_w": 2}],
        inner,
        size=(16, 16),
        image_cond=torch.randn(1, 5, 16, 16),
    )
    low = [c for c in inner.calls if c[0][-1] == 8]
    assert low[0][2]["c_concat"][0].shape == (2, 5, 8, 8)
    inner = Inner()
    run(
        web, make_p(web, steps=2), [{"shape": "constant", "factor_h": 2, "factor_w": 2}], inner, size=(16, 16)
    )
    low = [c for c in inner.calls if c[0][-1] == 8]
    assert low[0][2]["c_concat"][0].shape == (2, 5, 1, 1)


def test_timestep_sampler_uses_eps_form(web):
    a = web.a1111
    p = make_p(web, sampler_name="DDIM")
    a.on_process(p, ({"shape": "constant", "factor_h": 2, "factor_w": 2, "scale": 1.0},))
    x = torch.randn(1, 4, 16, 16)
    a.on_before_sampling(p, x)
    c, u = conds(1, 1)
    inner = Inner(eps=True)
    den = fake_webui.FakeCFGDenoiserTimesteps(inner, p, [1], c, u, alphas=web.shared.sd_model.alphas_cumprod)
    cap, got = {}, {}
    web.script_callbacks.callback_map["cfg_denoised"].insert(
        0, ("spy", lambda prm: cap.setdefault("x", prm.x.clone()))
    )
    web.script_callbacks.callback_map["cfg_denoised"].append(
        ("after", lambda prm: got.setdefault("x", prm.x.clone()))
    )
    t = torch.tensor([501.0])
    den.forward(x, t, torch.zeros(1, 5, 1, 1))
    sched = DiscreteSchedule(web.shared.sd_model.alphas_cumprod)
    plan = GuidancePlan.build((2, 2), shape="constant", scale=1.0)
    ca = torch.cat([c, u])
    n_calls = len(inner.calls)
    expected = guide_eps(
        torch.cat([x, x]),
        torch.cat([t, t]),
        cap["x"],
        lambda xl, tl: inner(xl, tl, {"c_crossattn": [ca], "c_concat": [None]}),
        plan,
        sched,
    )
    assert len(inner.calls) == n_calls + 1
    torch.testing.assert_close(got["x"], expected)


def test_failure_finishes_unguided_with_one_warning(web, caplog):
    inner = Inner(fail_below=128)
    p = make_p(web)
    run(web, p, [{"shape": "constant"}], inner, size=(128, 128))
    low = [s for s in inner.sizes() if s[-1] == 64]
    assert len(low) == 1  # tried once, then unguided
    assert "low-resolution call failed" in p.extra_generation_params["RC error"]
    warnings = [r for r in caplog.records if "Resolution Chromatography:" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert not web.script_callbacks.errors  # never raised into the sampler


def test_invalid_settings_warn_and_run_unguided(web):
    inner = Inner()
    p = make_p(web)
    run(web, p, [{"scale": 99}], inner, size=(128, 128))
    assert all(s[-1] == 128 for s in inner.sizes())
    assert "scale" in p.extra_generation_params["RC error"]


def test_state_does_not_leak_to_another_processing(web):
    a = web.a1111
    p1 = make_p(web)
    a.on_process(p1, ({"shape": "constant"},))
    a.on_before_sampling(p1, torch.zeros(1, 4, 128, 128))  # p1 then raises: no postprocess
    inner = Inner()
    p2 = make_p(web)
    c, u = conds(1, 1)
    den = fake_webui.FakeCFGDenoiser(inner, p2, [1], c, u)
    den.forward(torch.randn(1, 4, 128, 128), torch.tensor([5.0]), torch.zeros(1, 5, 1, 1))
    assert inner.sizes() == [(2, 4, 128, 128)]
    run(web, p2, [False], inner)
    assert a.current() is None


def test_passes_first_only_leaves_hires_alone(web):
    a = web.a1111
    p = make_p(web, enable_hr=True)
    a.on_process(p, ({"shape": "constant", "passes": "first"},))
    a.on_before_sampling(p, torch.zeros(1, 4, 128, 128))
    assert a.current().current is not None
    p.is_hr_pass = True
    a.on_before_sampling(p, torch.zeros(1, 4, 256, 256))
    assert a.current().current is None
    p.is_hr_pass = False
    a.on_process(p, ({"shape": "constant", "passes": "both", "factor_h": 2, "factor_w": 2},))
    p.is_hr_pass = True
    a.on_before_sampling(p, torch.zeros(1, 4, 256, 256))
    assert a.current().current.hires


def test_xyz_overrides_imply_enabled(web):
    inner = Inner()
    p = make_p(web, rc_scale=0.5, rc_factor_h=2, rc_factor_w=2)
    run(web, p, [False], inner, size=(32, 32))
    assert p.extra_generation_params["RC scale"] == "0.5"
    assert any(s[-1] == 16 for s in inner.sizes())


def test_prompt_switch_rewrites_sampler_prompts_only(web):
    p = make_p(
        web,
        prompts=["castle >> stonework"],
        hr_prompts=["castle >> stonework"],
        all_prompts=["castle >> stonework"],
    )
    web.a1111.on_process(p, ({"prompt_mode": "marker", "switch_level": 4, "switch_q": 0.5},))
    web.a1111.on_process_batch(p)
    assert p.prompts[0].startswith("[castle:castle stonework:0.")
    assert p.hr_prompts[0] == "castle stonework"
    assert p.all_prompts[0] == "castle >> stonework"
    assert "RC switch step" in p.extra_generation_params
    assert p.extra_generation_params["RC prompts"] == "marker"


def test_prompt_fields_mode(web):
    p = make_p(web)
    web.a1111.on_process(
        p, ({"prompt_mode": "fields", "layout_prompt": "a [big] house: tall", "detail_prompt": ""},)
    )
    web.a1111.on_process_batch(p)
    assert p.prompts[0].startswith("[a [big] house\\: tall:a cat:")


def test_debug_record(web, tmp_path, monkeypatch):
    log = tmp_path / "rc.jsonl"
    monkeypatch.setenv("RC_DEBUG_LOG", str(log))
    inner = Inner()
    p = make_p(web, prompts=["a >> b"], all_prompts=["a >> b"])
    run(web, p, [{"shape": "constant", "prompt_mode": "marker"}], inner, size=(128, 128))
    rec = json.loads(p.extra_generation_params["RC debug"])
    assert rec["low_calls"] == 8 and rec["model_calls"] == 8
    assert [c["low_calls"] for c in rec["calls"]] == [1] * 8
    assert rec["passes"][0]["factor"] == [2, 2]
    assert rec["prompts"][0]["switch_step"] >= 1
    assert json.loads(log.read_text().splitlines()[-1])["low_calls"] == 8


def test_prompt_without_marker_is_left_alone(web):
    p = make_p(web, prompts=["[a:b:0.5] castle"], hr_prompts=["[a:b:0.5] castle"])
    web.a1111.on_process(p, ({"prompt_mode": "marker"},))
    web.a1111.on_process_batch(p)
    assert p.prompts == ["[a:b:0.5] castle"] and p.hr_prompts == ["[a:b:0.5] castle"]


def test_positional_enabled_accepts_api_booleans(web):
    for first in (1, "true"):
        inner = Inner()
        p = make_p(web)
        run(web, p, [first, "Auto", 1.0, 2, 2], inner, size=(32, 32))
        assert any(s[-1] == 16 for s in inner.sizes())
    inner = Inner()
    p = make_p(web)
    run(web, p, ["maybe"], inner, size=(32, 32))
    assert "enabled" in p.extra_generation_params["RC error"]


def test_moving_grid_phase_counts_model_calls_per_pass_and_generation(web, tmp_path, monkeypatch):
    """Phase k of the moving grid is the pass's k-th model call; every generation and pass restarts at 0, so the
    same request gives the same image, and guided calls outside the window still advance it."""
    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    args = [{"grid": "moving", "window": "fraction", "window_start": 0.25, "window_end": 1.0, "factor_h": 2,
             "factor_w": 2}]
    p1, p2 = make_p(web), make_p(web)
    out1 = run(web, p1, args, Inner(), size=(32, 32))
    out2 = run(web, p2, args, Inner(), size=(32, 32))
    assert torch.equal(out1, out2)
    rec = json.loads(p2.extra_generation_params["RC debug"])
    assert [c["phase"] for c in rec["calls"]] == list(range(8))
    assert [c["low_calls"] for c in rec["calls"]] == [0, 0] + [1] * 6
    assert p2.extra_generation_params["RC grid"] == "moving"
    fixed = run(web, make_p(web), [{**args[0], "grid": "fixed"}], Inner(), size=(32, 32))
    assert not torch.equal(out1, fixed)
    # the hires pass has its own counter
    a = web.a1111
    p = make_p(web, enable_hr=True)
    a.on_process(p, ({"grid": "moving", "passes": "both", "shape": "constant"},))
    a.on_before_sampling(p, torch.zeros(1, 4, 128, 128))
    a.current().current.calls = a.current().current.hooked = 5  # five model calls, all corrected
    p.is_hr_pass = True
    a.on_before_sampling(p, torch.zeros(1, 4, 256, 256))
    assert a.current().current.hires and a.current().current.calls == 0


def test_inpainting_image_cond_is_pooled_on_the_moved_grid(web, tmp_path, monkeypatch):
    from lib_chroma.guidance import pool

    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    inner = Inner()
    ic = torch.randn(1, 5, 16, 16)
    run(web, make_p(web, steps=2), [{"shape": "constant", "factor_h": 2, "factor_w": 2, "grid": "moving"}], inner,
        size=(16, 16), image_cond=ic)
    low = [c for c in inner.calls if c[0][-1] == 8]
    assert len(low) == 2
    for phase, call in enumerate(low):
        expected = pool(ic, 2, 2, (phase, phase))  # offsets (0, 0) then (1, 1)
        torch.testing.assert_close(call[2]["c_concat"][0], torch.cat([expected, expected]))
    record = json.loads((tmp_path / "rc.jsonl").read_text().splitlines()[-1])
    assert [c["low_image_cond"] for c in record["calls"]] == [[[2, 5, 8, 8]]] * 2


def test_guidance_that_never_ran_is_reported_not_claimed(web):
    """A host that never fires on_cfg_denoised (as Forge does) guides nothing: after sampling, the infotext says so
    instead of claiming guided steps, and the image is the unguided one."""
    from lib_chroma.webui import generation

    web.script_callbacks.callback_map["cfg_denoised"].clear()
    inner = Inner()
    p = make_p(web)
    web.a1111.on_process(p, ({"shape": "constant", "factor_h": 2, "factor_w": 2},))
    web.a1111.on_before_sampling(p, torch.zeros(1, 4, 32, 32))
    assert p.extra_generation_params["RC guided steps"] == "1-8/8"
    c, u = conds(1, 1)
    den = fake_webui.FakeCFGDenoiser(inner, p, [1], c, u)
    den.forward(torch.randn(1, 4, 32, 32), torch.tensor([5.0]), torch.zeros(1, 5, 1, 1))
    generation.on_post_sample(p)
    assert "RC guided steps" not in p.extra_generation_params
    assert "no model call of the first pass reached the extension's a1111 hook" in p.extra_generation_params["RC error"]
    assert all(s[-1] == 32 for s in inner.sizes())
    web.a1111.on_postprocess(p)


class FakeControlParams:
    """Mikubill ControlNet's ``ControlParams`` as the adapter sees it: the ``hint_cond`` setter clears the
    attributes derived from the hint (as the real one does)."""

    def __init__(self, hint, hr_hint=None, kind="ControlNet"):
        self._hint_cond = hint
        self.hr_hint_cond = hr_hint
        self.used_hint_cond = "cached"
        self.used_hint_cond_latent = "cached latent"
        self.used_hint_inpaint_hijack = None
        self.control_model_type = types.SimpleNamespace(name=kind)

    @property
    def hint_cond(self):
        return self._hint_cond

    @hint_cond.setter
    def hint_cond(self, value):
        self._hint_cond = value
        self.used_hint_cond = self.used_hint_cond_latent = self.used_hint_inpaint_hijack = None


class HintedInner(Inner):
    """A UNet hooked by ControlNet: every call takes the hint whose pixel size is 8x its latent (as ControlNet's
    hook picks ``hint_cond`` or ``hr_hint_cond``), and fails when there is none (the size-mismatch error)."""

    def __init__(self, params):
        super().__init__()
        self.params = params
        self.hints: list[tuple] = []

    def __call__(self, x, sigma, cond):
        for prm in self.params:
            hint = next(
                (h for h in (prm.hint_cond, prm.hr_hint_cond)
                 if h is not None and h.shape[-2:] == (8 * x.shape[-2], 8 * x.shape[-1])),
                None,
            )
            if hint is None:
                raise RuntimeError("The size of tensor a must match the size of tensor b")
            self.hints.append((tuple(x.shape[-2:]), hint))
        return super().__call__(x, sigma, cond)


def controlnet_p(web, params, **kw):
    unet = object()
    web.shared.sd_model.model = types.SimpleNamespace(conditioning_key="crossattn", diffusion_model=unet)
    script = types.SimpleNamespace(latest_network=types.SimpleNamespace(model=unet, control_params=params))
    return make_p(web, scripts=types.SimpleNamespace(alwayson_scripts=[types.SimpleNamespace(), script]), **kw)


def test_controlnet_low_res_call_gets_the_pooled_hint_and_is_restored(web, tmp_path, monkeypatch):
    from lib_chroma.guidance import grid_offset, pool_image

    log = tmp_path / "rc.jsonl"
    monkeypatch.setenv("RC_DEBUG_LOG", str(log))
    hint = torch.rand(1, 3, 128, 128)
    hr = torch.rand(1, 3, 256, 256)
    params = [FakeControlParams(hint, hr), FakeControlParams(torch.rand(1, 3, 128, 128))]
    inner = HintedInner(params)
    p = controlnet_p(web, params, steps=3)
    run(web, p, [{"shape": "constant", "factor_h": 2, "factor_w": 2, "window": "fraction"}], inner, size=(16, 16))
    assert "RC error" not in p.extra_generation_params
    low = [(size, h) for size, h in inner.hints if size == (8, 8)]
    assert len(low) == 2 * 3  # both units, every guided call
    for call, (_, h) in enumerate(low[::2]):  # unit 1: its first-pass hint pooled on the call's moving grid
        assert torch.equal(h, pool_image(hint, 2, 2, (16, 16), grid_offset(call, 2, 2)))
    # everything restored after each low call: the full-size hint and ControlNet's own caches
    assert params[0].hint_cond is hint and params[0].hr_hint_cond is hr
    assert (params[0].used_hint_cond, params[0].used_hint_cond_latent) == ("cached", "cached latent")
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["low_calls"] == 3
    assert [c["controlnet"] for c in record["calls"]][0] == [
        {"unit": 0, "hint": [1, 3, 64, 64]},
        {"unit": 1, "hint": [1, 3, 64, 64]},
    ]


def test_controlnet_hires_pass_pools_the_hires_hint(web):
    hint, hr = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 256, 256)
    params = [FakeControlParams(hint, hr)]
    inner = HintedInner(params)
    p = controlnet_p(web, params, steps=2, is_hr_pass=True, enable_hr=True)
    run(web, p, [{"shape": "constant", "factor_h": 2, "factor_w": 2, "passes": "hires"}], inner, size=(32, 32))
    assert "RC error" not in p.extra_generation_params
    assert {tuple(h.shape[-2:]) for size, h in inner.hints if size == (16, 16)} == {(128, 128)}
    assert params[0].hint_cond is hint and params[0].hr_hint_cond is hr


def test_controlnet_lllite_is_not_guided_and_says_why(web):
    params = [FakeControlParams(torch.rand(1, 3, 128, 128), kind="Controlllite")]
    inner = HintedInner(params)
    p = controlnet_p(web, params, steps=3)
    x = run(web, p, [{"shape": "constant", "factor_h": 2, "factor_w": 2}], inner, size=(16, 16))
    assert "ControlNet-LLLite" in p.extra_generation_params["RC error"]
    assert all(size == (16, 16) for size, _ in inner.hints)  # no low-res call at all
    plain = HintedInner(params)
    p2 = controlnet_p(web, params, steps=3)
    assert torch.equal(run(web, p2, [{"enabled": False}], plain, size=(16, 16)), x)



class _Wrapper(torch.nn.Module):
    """Deep Shrink's A1111 port in miniature: a UNet block list entry that keeps the original as ``block``."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block


class WrappedUNetInner(Inner):
    """Records, per call, whether the UNet's ``input_blocks[1]`` is the wrapper at that call's latent size."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.wrapped: list[tuple[tuple, bool]] = []

    def __call__(self, x, sigma, cond):
        self.wrapped.append((tuple(x.shape[-2:]), isinstance(self.unet.input_blocks[1], _Wrapper)))
        return super().__call__(x, sigma, cond)


def test_other_extensions_block_wrappers_are_left_out_of_the_low_res_call_only(web):
    unet = types.SimpleNamespace(input_blocks=torch.nn.ModuleList([torch.nn.Identity() for _ in range(3)]),
                                 output_blocks=torch.nn.ModuleList([torch.nn.Identity() for _ in range(3)]))
    wrapper = _Wrapper(unet.input_blocks[1])
    unet.input_blocks[1] = wrapper
    web.shared.sd_model.model = types.SimpleNamespace(conditioning_key="crossattn", diffusion_model=unet)
    inner = WrappedUNetInner(unet)
    p = make_p(web, steps=3)
    run(web, p, [{"shape": "constant", "factor_h": 2, "factor_w": 2, "window": "fraction"}], inner, size=(16, 16))
    assert {w for size, w in inner.wrapped if size == (16, 16)} == {True}  # full size: the shrink stays
    assert [w for size, w in inner.wrapped if size == (8, 8)] == [False] * 3  # every low call: the plain block
    assert unet.input_blocks[1] is wrapper
    assert "input_blocks.1" in p.extra_generation_params["RC note"]
    assert "RC error" not in p.extra_generation_params


def test_fitted_resamplers_are_fitted_once_per_vae_and_change_the_guidance(web, tmp_path, monkeypatch):
    from lib_chroma.webui import vae_resamplers

    vae_resamplers.clear()
    monkeypatch.setattr("lib_chroma.encoder_fit.FIT_IMAGES", 16)  # a quick fit
    monkeypatch.setenv("RC_DEBUG_LOG", str(tmp_path / "rc.jsonl"))
    vae = web.shared.sd_model.first_stage_model
    args = [{"factor_h": 2, "factor_w": 2, "resampler": "fitted"}]
    p = make_p(web)
    fitted = run(web, p, args, Inner(), size=(32, 32))
    rec = json.loads(p.extra_generation_params["RC debug"])
    assert rec["passes"][0]["resamplers"] == [[2, 2]]
    assert rec["passes"][0]["resampler_keep"] == [vae_resamplers.FITTED_KEEP[(2, 2)]] != [1.0]
    assert p.extra_generation_params["RC resampler"] == "fitted"
    assert "RC note" not in p.extra_generation_params
    assert vae.encodes == 2 * 16  # the dead-leaves pairs, once
    pooled = run(web, make_p(web), [{"factor_h": 2, "factor_w": 2}], Inner(), size=(32, 32))
    assert not torch.equal(fitted, pooled)
    # cached: no second fit, and the fit drew nothing from the generation's generator (same image cold and warm)
    torch.manual_seed(5)
    again = run(web, make_p(web), args, Inner(), size=(32, 32))
    after_warm = torch.rand(3)
    assert vae.encodes == 2 * 16 and torch.equal(again, fitted)
    # a restarted WebUI (memory cleared) loads the fit from the cache dir: no encoding, the same image
    files = sorted(Path(web.cache.cache_dir, "resolution-chromatography").glob("*.safetensors"))
    assert len(files) == 1
    vae_resamplers.clear()
    loaded = run(web, make_p(web), args, Inner(), size=(32, 32))
    assert vae.encodes == 2 * 16 and torch.equal(loaded, fitted)
    # fitted cold again (memory and file gone): same image, the generation's generator untouched
    vae_resamplers.clear()
    files[0].unlink()
    torch.manual_seed(5)
    cold = run(web, make_p(web), args, Inner(), size=(32, 32))
    assert vae.encodes == 4 * 16
    assert torch.equal(cold, fitted) and torch.equal(torch.rand(3), after_warm)
    # another VAE (loaded into the model in place of this one) is fitted anew
    web.shared.sd_model.first_stage_model = fake_webui.FakeVAE(seed=1)
    other = run(web, make_p(web), args, Inner(), size=(32, 32))
    assert web.shared.sd_model.first_stage_model.encodes == 2 * 16
    assert not torch.equal(other, fitted)
    assert len(list(files[0].parent.glob("*.safetensors"))) == 2  # one file per VAE


def test_fitted_resamplers_that_cannot_be_fitted_fall_back_to_pooling_and_say_so(web):
    from lib_chroma.webui import vae_resamplers

    vae_resamplers.clear()
    web.shared.sd_model.first_stage_model = None
    p = make_p(web)
    out = run(web, p, [{"factor_h": 2, "factor_w": 2, "resampler": "fitted"}], Inner(), size=(32, 32))
    pooled = run(web, make_p(web), [{"factor_h": 2, "factor_w": 2}], Inner(), size=(32, 32))
    assert torch.equal(out, pooled)
    assert "fitted resamplers unavailable" in p.extra_generation_params["RC note"]
    assert "average pooling used" in p.extra_generation_params["RC note"]
