"""The cascade in the A1111 adapter, against the stand-in WebUI (tests/fake_webui): what before_process sets on
``p``, the sigmas each pass's sampler gets, guidance of the second pass only, and the cases where the cascade
steps aside. The real WebUI runs it in tests/webui."""

from __future__ import annotations

import types

import pytest
import torch

from lib_chroma import settings as S
from lib_chroma.cascade import plan_cascade
from lib_chroma.schedule import model_schedule, sampler_sigmas
from lib_chroma.webui import cascade_setup as CS
from tests import fake_webui
from tests.test_adapter import Inner, conds, make_p


class FakeSampler:
    """A k-diffusion sampler stand-in: ``get_sigmas`` (the user's schedule) and a ``func`` taking sigmas."""

    def __init__(self, p, takes_sigmas: bool = True) -> None:
        self.p = p
        if takes_sigmas:
            self.func = lambda model, x, sigmas=None, extra_args=None: x
        else:
            self.func = lambda model, x, sigma_min=None, sigma_max=None, n=None: x

    def get_sigmas(self, p, steps):
        return sampler_sigmas(p.sampler_name, p.scheduler, steps, model_schedule("sd1")).float()


def cascade_p(h, **kw):
    base = {"sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 20, "width": 1024, "height": 1024,
            "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_upscaler": None, "hr_second_pass_steps": 0,
            "hr_sampler_name": None, "denoising_strength": 0.7}
    return make_p(h, **{**base, **kw})


def run_cascade(h, p, args, inner, batch=1):
    """before_process → process → first pass (sampler told its sigmas) → hires pass → postprocess; returns the
    sigmas each pass's sampler gave and the rows each model call saw."""
    a = h.a1111
    a.on_before_process(p, tuple(args))
    a.on_process(p, tuple(args))
    a.on_process_batch(p)
    c, u = conds(batch, batch)
    seen = {}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 4, p.height // 8, p.width // 8, generator=g)
    for hires in (False, True):
        p.is_hr_pass = hires
        p.sampler = FakeSampler(p)
        noise = None
        if hires:  # A1111: the first pass's output upscaled ("Latent": bilinear), fresh noise of the seeds
            seen["first_out"] = x
            x = torch.nn.functional.interpolate(x, size=(p.hr_resize_y // 8, p.hr_resize_x // 8), mode="bilinear")
            noise = torch.randn(x.shape, generator=g)
            seen["noise_before"] = noise.clone()
        a.on_before_sampling(p, x, noise)
        if hires:
            total, t_enc = int(p.hr_second_pass_steps / p.denoising_strength), p.hr_second_pass_steps - 1
            sig = p.sampler.get_sigmas(p, total)[total - t_enc - 1:]
            seen["noise"] = noise
            x = x + noise * float(sig[0])
        else:
            sig = p.sampler.get_sigmas(p, p.steps)
            x = x * float(sig[0])
        seen["hires" if hires else "first"] = [float(v) for v in sig]
        den = fake_webui.FakeCFGDenoiser(inner, p, [1] * batch, c, u)
        for i in range(len(sig) - 1):
            s = float(sig[i])
            if not hires:
                seen["x_k"] = x
            d = den.forward(x, torch.full((batch,), s), torch.zeros(batch, 5, 1, 1))
            x = x + (x - d) / s * (float(sig[i + 1]) - s)
    p.is_hr_pass = False
    a.on_postprocess(p)
    seen["out"] = x
    return seen


def test_cascade_turns_txt2img_into_the_planned_hires_fix(web):
    p = cascade_p(web)
    inner = Inner()
    seen = run_cascade(web, p, [{"cascade": True}], inner)
    user = sampler_sigmas("DPM++ 2M", "Karras", 20, model_schedule("sd1"))
    plan = plan_cascade(user.float().double(), (2, 2), power=CS.CASCADE_POWER, loss=S.LATENT_CASCADE_LOSS,
                        guidance=CS.guidance_kwargs(S.RCSettings()))
    nat, full = plan.stages
    assert (p.width, p.height, p.enable_hr, p.hr_resize_x, p.hr_resize_y) == (512, 512, True, 1024, 1024)
    assert p.hr_upscaler == "Latent" and p.hr_second_pass_steps == full.steps
    assert p.denoising_strength == round(full.steps / 20, 2)
    # the first pass stops at sigma_k and ends with 0 (its last call's x0 is the handover); the hires pass
    # samples the second-pass sigmas
    assert seen["first"] == pytest.approx(list(nat.sigmas), rel=1e-6)
    assert seen["hires"] == pytest.approx(list(full.sigmas), rel=1e-6)
    # only the hires pass is guided: one pooled call per guided step, at 64x64 latents
    sizes = [s[-1] for s in inner.sizes()]
    assert sizes[: nat.steps] == [64] * nat.steps  # the native pass: 512² (64² latents), unguided
    hires_calls = sizes[nat.steps:]
    assert hires_calls.count(128) == full.steps
    assert hires_calls.count(64) == len(full.plan.active_steps(full.sigmas)) > 0
    egp = p.extra_generation_params
    assert egp["RC cascade"] == "true" and "RC error" not in egp and "RC note" not in egp
    g0, g1 = full.guided_user_steps()
    assert egp["RC guided steps"] == f"{g0 + 1}-{g1 + 1}/20"
    assert web.a1111.current() is None  # nothing survives the generation


def test_ticked_hires_fix_gives_the_target_and_keeps_its_upscaler(web):
    p = cascade_p(web, width=512, height=512, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent (bicubic)",
                  hr_second_pass_steps=30)
    run_cascade(web, p, [{"cascade": True}], Inner())
    assert (p.width, p.height, p.hr_resize_x, p.hr_resize_y) == (512, 512, 1024, 1024)
    assert p.hr_upscaler == "Latent (bicubic)"
    assert p.hr_second_pass_steps != 30  # the cascade's steps win
    assert p.extra_generation_params["Hires steps"] == p.hr_second_pass_steps


def test_debug_record_shows_the_stop_and_the_calls(web, monkeypatch, tmp_path):
    import json

    log = tmp_path / "rc.jsonl"
    monkeypatch.setenv(web.a1111.DEBUG_LOG_ENV, str(log))
    p = cascade_p(web)
    run_cascade(web, p, [{"cascade": True}], Inner())
    rec = json.loads(log.read_text().splitlines()[0])
    cas = rec["cascade"]
    first, hires = rec["passes"]
    assert first["pass"] == "first" and hires["pass"] == "hires" and hires["handover"] == CS.HANDOVER == "renoise"
    assert first["sigmas"][-1] == 0 and first["sigmas"][-2] == cas["user_sigmas"][cas["stop_step"]]
    assert [c["pass"] for c in rec["calls"]].count("first") == cas["stage_calls"][0]
    assert [c["pass"] for c in rec["calls"]].count("hires") == cas["stage_calls"][1]
    assert rec["low_calls"] == sum(cas["low_calls"][1])
    assert cas["readout"].startswith("native 512² steps 1–")
    # every model call counted at its size: native calls at 1/4 of the pixels
    per = 2 * 64 * 64
    assert rec["pixel_evals"] == per * (cas["stage_calls"][0] + 4 * cas["stage_calls"][1] + rec["low_calls"])
    assert rec["model_seconds"] > 0


def test_fitted_resamplers_guide_the_hires_pass(web, monkeypatch, tmp_path):
    import json

    from lib_chroma.webui import vae_resamplers

    vae_resamplers.clear()
    monkeypatch.setattr("lib_chroma.encoder_fit.FIT_IMAGES", 16)
    log = tmp_path / "rc.jsonl"
    monkeypatch.setenv(web.a1111.DEBUG_LOG_ENV, str(log))
    seen = run_cascade(web, cascade_p(web), [{"cascade": True, "resampler": "fitted"}], Inner())
    first, hires = json.loads(log.read_text().splitlines()[0])["passes"]
    assert first["resamplers"] is None and hires["resamplers"] == [[2, 2]]
    pooled = run_cascade(web, cascade_p(web), [{"cascade": True}], Inner())
    assert torch.equal(seen["first_out"], pooled["first_out"])  # the native pass is not guided
    assert seen["hires"] == pooled["hires"] and not torch.equal(seen["out"], pooled["out"])


@pytest.mark.parametrize("case,kw,why", [
    ("ddim", {"sampler_name": "DDIM"}, "DDIM has no sigma schedule"),
    ("native", {"width": 512, "height": 512}, "within the model's native size"),
    ("img2img", {"init_images": ["img"]}, "txt2img"),
    ("hires sampler", {"enable_hr": True, "hr_sampler_name": "UniPC", "width": 512, "height": 512},
     "UniPC has no sigma schedule"),
])
def test_cascade_steps_aside_and_says_why(web, case, kw, why):
    p = cascade_p(web, **kw)
    before = dict(vars(p))
    web.a1111.on_before_process(p, ({"cascade": True},))
    web.a1111.on_process(p, ({"cascade": True},))
    for k in ("width", "height", "enable_hr", "hr_resize_x", "denoising_strength", "hr_second_pass_steps"):
        assert getattr(p, k) == before[k], k
    assert why in p.extra_generation_params["RC note"]
    assert web.a1111.current().cascade is None


def test_cascade_steps_aside_in_forge_with_a_note(web):
    """In Forge the script's ``process`` is the Forge adapter's, then :func:`take_cascade`: the cascade leaves
    the request as the user sent it and says why; the generation still runs (one guided pass)."""
    from lib_chroma.webui import forge

    engine = types.SimpleNamespace(forge_objects=types.SimpleNamespace(), is_sd1=True, is_sd2=False,
                                   is_sdxl=False)
    p = cascade_p(web, sd_model=engine)
    before = dict(vars(p))
    args = ({"cascade": True},)
    web.a1111.on_before_process(p, args)
    forge.on_process(p, args)
    web.a1111.take_cascade(p)
    for k in ("width", "height", "enable_hr", "hr_resize_x", "denoising_strength", "hr_second_pass_steps"):
        assert getattr(p, k) == before[k], k
    assert "Forge" in p.extra_generation_params["RC note"]
    st = web.a1111.current()
    assert st is not None and st.p is p and st.cascade is None


def test_cascade_off_or_disabled_leaves_p_alone(web):
    for args in ([{"cascade": False}], [False], [{"enabled": False, "cascade": True}], []):
        p = cascade_p(web)
        before = dict(vars(p))
        web.a1111.on_before_process(p, tuple(args))
        assert {k: v for k, v in vars(p).items()} == before


def test_a_sampler_without_sigmas_fails_cleanly_in_the_pass(web):
    """If the pass's sampler turns out to take no sigmas, the generation goes on unguided and uncascaded (A1111's
    own sigmas), and the infotext says why."""
    p = cascade_p(web)
    a = web.a1111
    a.on_before_process(p, ({"cascade": True},))
    a.on_process(p, ({"cascade": True},))
    p.sampler = FakeSampler(p, takes_sigmas=False)
    original = p.sampler.get_sigmas
    a.on_before_sampling(p, torch.zeros(1, 4, 64, 64))
    assert p.sampler.get_sigmas == original
    assert "takes no sigmas" in p.extra_generation_params["RC error"]
    assert a.current().current is None
    a.on_postprocess(p)


def test_xyz_cascade_axis(web):
    from lib_chroma.webui import xyz

    specs = {label: apply for label, _, apply, _ in xyz.axis_specs()}
    p = types.SimpleNamespace()
    specs["[RC] Cascade"](p, "True", [])
    assert p.rc_cascade is True
    q = cascade_p(web)
    q.rc_cascade = True  # an axis implies enabled
    web.a1111.on_before_process(q, ())
    assert q.enable_hr is True and q.width == 512


def test_fresh_handover_keeps_a1111s_hires_noise(web, monkeypatch, tmp_path):
    """With ``fresh`` the hires pass starts from A1111's upscaled first-pass output (the x0 prediction at sigma_k)
    plus sigma_s times A1111's own noise, untouched, and the debug record says so."""
    import json

    log = tmp_path / "rc.jsonl"
    monkeypatch.setenv(web.a1111.DEBUG_LOG_ENV, str(log))
    monkeypatch.setattr(web.a1111.CS, "HANDOVER", "fresh")
    p = cascade_p(web)
    seen = run_cascade(web, p, [{"cascade": True}], Inner(), batch=2)
    assert torch.equal(seen["noise"], seen["noise_before"])
    assert json.loads(log.read_text().splitlines()[0])["passes"][1]["handover"] == "fresh"


@pytest.mark.parametrize("batch", [1, 2])
def test_renoise_handover_rewrites_the_hires_noise(web, batch):
    """With ``renoise`` (the default), the hires pass starts from the upscaled x0 plus sigma_s times noise whose 2×2
    block means are the first pass's own noise (x_k - x0) / (2 sigma_k) and whose within-block part is A1111's fresh
    noise."""
    from lib_chroma.guidance import pool, unpool

    assert web.a1111.CS.HANDOVER == "renoise"  # the WebUI's default
    p = cascade_p(web)
    seen = run_cascade(web, p, [{"cascade": True}], Inner(), batch=batch)
    sigma_k = seen["first"][-2]
    x0, x_k, noise, before = seen["first_out"], seen["x_k"], seen["noise"], seen["noise_before"]
    assert torch.allclose(pool(noise, 2, 2) * 2 * sigma_k, x_k - x0, atol=1e-4)
    fine = noise - unpool(pool(noise, 2, 2), 2, 2, tuple(noise.shape[-2:]))
    assert torch.allclose(fine, before - unpool(pool(before, 2, 2), 2, 2, tuple(before.shape[-2:])), atol=1e-5)


def test_hires_pass_keeps_a1111_sigmas_when_asked_for_fewer_steps(web):
    from lib_chroma.cascade import plan_cascade as plan_of
    from lib_chroma.webui import cascade_hooks as CH

    user = sampler_sigmas("DPM++ 2M", "Karras", 20, model_schedule("sd1"))
    stage = plan_of(user, (2, 2)).stages[1]
    p = cascade_p(web)
    sampler = FakeSampler(p)
    why = []
    CH.hires_pass(p, sampler, stage, why.append)
    ok = sampler.get_sigmas(p, 2 * stage.steps)
    assert [float(v) for v in ok[-stage.steps - 1:]] == pytest.approx(list(stage.sigmas), rel=1e-6)
    assert why == []
    short = sampler.get_sigmas(p, stage.steps - 2)  # A1111 asks for fewer steps than planned: its own sigmas
    assert torch.equal(short, FakeSampler(p).get_sigmas(p, stage.steps - 2))
    assert why and "needs" in why[0]
