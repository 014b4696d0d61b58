"""The latent benchmark's plan specs and rows, on a tiny untrained model (seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from lib_chroma.guidance import DEFAULT_Q_END, DEFAULT_SCALE, GuidancePlan
from lib_chroma.toy.latent import bench, runs, text
from lib_chroma.toy.latent.autoencoder import AutoEncoder
from lib_chroma.toy.latent.text import TextEncoder
from lib_chroma.toy.latent.train import LatentModel
from lib_chroma.toy.latent.unet import LatentUNet


@pytest.fixture(scope="module")
def tiny() -> LatentModel:
    torch.manual_seed(0)
    unet = LatentUNet(channels=(8, 8, 8), ctx_dim=8, temb=16)
    meta = {"scale_factor": 1.0, "level_power": {"1": 0.9, "2": 0.5, "4": 0.4, "8": 0.2}}
    return LatentModel(AutoEncoder(), TextEncoder(width=8, layers=1), unet, meta).eval()


def test_parse_plan_types_and_errors() -> None:
    assert bench.parse_plan("scale=1.2,eta=0.6") == {"scale": 1.2, "eta": 0.6}
    assert bench.parse_plan("grid=fixed, coarse=1, q_end=0.9") == {"grid": "fixed", "coarse": 1, "q_end": 0.9}
    assert bench.parse_plan("q_end=1,space=resampled") == {"q_end": 1.0, "space": "resampled"}
    for bad in ("speed=2", "scale=", "scale", "space=pixels"):
        with pytest.raises(ValueError, match="plan:"):
            bench.parse_plan(bad)


def test_standard_plans_are_the_library_default_and_the_paper_windows() -> None:
    sig = runs.latent_sigmas("dpmpp_2m", 20)
    default = bench.make_plan(2, 20, "dpmpp_2m", bench.STANDARD_PLANS["guidance, library defaults"])
    assert default == runs.make_plan((2, 2), 20)
    assert default.scale == DEFAULT_SCALE and default.q_end == DEFAULT_Q_END and default.shape == "hold"
    paper = bench.make_plan(2, 20, "dpmpp_2m", {"scale": 1.2, "eta": 0.6})
    assert paper.active_steps(sig) == list(range(12)) and paper.weight(0, float(sig[0])) == 1.2
    assert bench.make_plan(2, 20, "dpmpp_2m", {"eta": 0.3}).active_steps(sig) == list(range(6))
    assert bench.make_plan(2, 20, "dpmpp_2m", {"scale": 1.0, "eta": 1.0}).active_steps(sig) == list(range(20))


def test_coarse_spec_adds_a_level_below_native_with_the_same_settings() -> None:
    plain = bench.make_plan(2, 20, "dpmpp_2m", {"scale": 1.2, "q_end": 0.9})
    coarse = bench.make_plan(2, 20, "dpmpp_2m", {"scale": 1.2, "q_end": 0.9, "coarse": 1})
    assert isinstance(coarse, GuidancePlan) and coarse.levels == ((2, 2), (2, 2)) and plain.levels == ((2, 2),)
    assert coarse.cumulative == (2.0, 4.0)
    assert (coarse.scale, coarse.q_end, coarse.shape, coarse.grid) == (1.2, 0.9, plain.shape, plain.grid)
    # the coarser level (r_4 reaches q_end at a larger sigma) closes first; the finest level keeps w
    s_mid = 2.0 * math.sqrt((1 - 0.9) / 0.9) * 1.5
    assert coarse.weight(0, s_mid) == 1.2 and coarse.weight(1, s_mid) == 0.0


def test_factor_rows_share_prompts_and_report_costs(tiny: LatentModel) -> None:
    plans = {"guided": {"scale": 1.0, "eta": 0.5}}
    rows = bench.run_factor(tiny, 2, n=2, seed=5000, cfg=5.0, sampler="euler", steps=4, plans=plans, batch=2)
    labels = [r["method"] for r in rows]
    assert labels[:3] == ["native 64 px (reference)", "plain", "upscale only (bilinear pixels, no diffusion)"]
    assert labels[3] == bench.TRUTH_LABEL.format(px=128)
    assert labels[4].startswith("hires fix 0.70") and labels[5].startswith("hires fix") and labels[-1] == "guided"
    plain, guided = rows[1], rows[-1]
    assert plain["calls"] == 4 and plain["calls_x"] == 1.0 and plain["colour_shift"] >= 0.0
    assert guided["calls_by_size"] == {"32x32": 4, "16x16": 2}  # half the steps guided: one low call each
    assert guided["pixel_evals_x"] == pytest.approx(1 + 2 / 4 / 4)
    assert all("blockiness" in r for r in rows[1:]) and "blockiness" not in rows[0]
    assert "| plain |" in bench.markdown(rows)


def test_peer_rows_patch_the_latent_unet_and_cost_like_plain(tiny: LatentModel) -> None:
    rows = bench.run_factor(tiny, 2, n=2, seed=5000, cfg=5.0, sampler="euler", steps=4, plans={}, baselines=False,
                            batch=2, peers=True)
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows[2:]] == [*bench.PEER_ROWS, bench.demofusion_label(2)]
    for label, (_name, guided, _bypass) in bench.PEER_ROWS.items():
        assert by[label]["calls_by_size"]["32x32"] == 4
        assert ("16x16" in by[label]["calls_by_size"]) is guided
        # a patch changes no call count: unguided peers cost what plain costs (the shrink's savings are inside)
        assert (by[label]["pixel_evals_x"] == 1.0) is not guided
    # DemoFusion at 2x: the native pass's 4 calls, then per step 3 x 3 windows + 2 x 2 sub-lattices, all native-size
    demo = rows[-1]
    assert demo["calls_by_size"] == {"16x16": 4 * (9 + 4)} and demo["calls"] == 4 + 4 * 13
    assert demo["pixel_evals_x"] == pytest.approx((4 + 4 * 13) / (4 * 4))
    skipped = bench.run_factor(tiny, 2, n=2, seed=5000, cfg=5.0, sampler="euler", steps=4, plans={}, baselines=False,
                               batch=2, peers=True, skip=("DemoFusion", "Shrink"))
    assert [r["method"] for r in skipped[2:]] == [k for k in bench.PEER_ROWS if "Shrink" not in k]


def test_cascade_row_stops_early_and_costs_less_than_plain(tiny: LatentModel) -> None:
    rows = bench.run_factor(tiny, 2, n=2, seed=5000, cfg=5.0, sampler="euler", steps=8, plans={}, baselines=False,
                            batch=2, cascade=True)
    (label, plan), = bench.cascade_plans(tiny, 2, 8, "euler").items()
    assert label.startswith("cascade, the WebUI's rule") and " → 128² steps " in label
    native, full = plan.stages
    assert [r["method"] for r in rows[2:]] == [f"{label}, {u}" for u in bench.CASCADE_UPSCALERS]
    for row in rows[2:]:
        assert row["calls_by_size"]["32x32"] == full.steps < 8 and row["calls_by_size"]["16x16"] > native.steps
        assert row["pixel_evals_x"] < 1.0
    assert rows[2]["proper_face"] is not None and rows[2]["detail"] != rows[3]["detail"]  # the upscalers differ


def test_cascade_chain_rows_pass_through_every_level(tiny: LatentModel) -> None:
    """``--cascade-chain``: at 4× a third stage at 2× between the native and the full-size one; none at 2×."""
    assert list(bench.cascade_plans(tiny, 2, 8, "euler", chain=True)) == list(bench.cascade_plans(tiny, 2, 8, "euler"))
    plans = bench.cascade_plans(tiny, 4, 12, "euler", chain=True)
    label, chain = list(plans.items())[-1]
    assert label.startswith("cascade, chain, the WebUI's rule, unit power: 64² steps 1–")
    assert [st.factor for st in chain.stages] == [(1, 1), (2, 2), (4, 4)] and label.count(" → ") == 2
    assert " → 128² steps " in label and " → 256² steps " in label
    unet = runs.CountingUNet(tiny.unet)
    runs.run_cascade(tiny, unet, text.prompt_set(1, 5000), chain, 5000, sampler="euler", batch=1)
    a, b, c = chain.stages
    assert unet.calls[(64, 64)] == c.steps and c.steps < 12  # Euler: one call per step, the last stage thinned
    assert unet.calls[(32, 32)] >= b.steps > 0 and unet.calls[(16, 16)] >= a.steps > 0  # the 2× stage ran


def test_cascade_losses_stop_the_native_pass_later() -> None:
    from lib_chroma.toy.latent.train import load_model

    model = load_model()
    plans = bench.cascade_plans(model, 2, 20, "dpmpp_2m", (0.1, 0.6, 0.8))
    stops = {label.split(":")[0]: plan.stages[0].stop for label, plan in plans.items()}
    assert list(stops) == ["cascade, the WebUI's rule, unit power", "cascade, unit power, q 0.1",
                           "cascade, unit power, q 0.6", "cascade, unit power, q 0.8"]  # at q 0.05 the measured
    a, b, c, d = stops.values()  # power (0.92) moves no step, so it has no row
    assert a > b > c > d  # a looser bound lets the native pass run further
    # at 4× the WebUI's rule is q 0.1 (settings.latent_cascade_loss), where the measured power moves a step
    power = f"cascade, latent power {float(model.meta['level_power']['1']):.2f}"
    at4 = {label.split(":")[0]: plan.stages[0].stop for label, plan in bench.cascade_plans(model, 4, 20,
                                                                                          "dpmpp_2m").items()}
    assert list(at4) == ["cascade, the WebUI's rule, unit power", power]
    assert at4[power] < at4["cascade, the WebUI's rule, unit power"] == b  # less power: later stop
    rules = bench.cascade_plans(model, 2, 20, "dpmpp_2m", rules=((0.4, 1.0),))
    assert list(rules)[-1].startswith("cascade, unit power, q 0.4, density 1:")
    assert " in " in list(rules)[0] and " in " not in list(rules)[-1]  # the default thins, density 1 does not
    assert all(p.stages[1].plan is not None and p.stages[1].plan.q_end == 1.0 for p in plans.values())


def test_tile_places_images_row_major() -> None:
    imgs = -torch.ones(3, 3, 2, 2)
    imgs[1] = 1.0
    t = bench.tile(imgs, cols=2)
    assert t.shape == (4, 4, 3) and t.dtype.name == "uint8"
    assert (t[:2, :2] == 0).all() and (t[:2, 2:] == 255).all() and (t[2:, :2] == 0).all() and (t[2:, 2:] == 0).all()


def test_bench_cli_on_the_shipped_weights_writes_json_markdown_and_samples(tmp_path) -> None:
    import json

    rc = bench.bench_main(["--n", "2", "--steps", "3", "--no-baselines", "--only-plans", "--plan", "eta=0.5",
                           "--images", "2", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "2x_dpmpp_2m_3.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["native 64 px (reference)", "plain", "plan eta=0.5"]
    assert res["rows"][2]["plan"]["window_steps"] == [0, 1] and res["n"] == 2
    assert "| plan eta=0.5 |" in (tmp_path / "2x_dpmpp_2m_3.md").read_text()
    assert len(list((tmp_path / "samples").glob("*.png"))) == 3


def test_cascade_handovers_add_labelled_rows(tiny: LatentModel, monkeypatch) -> None:
    """``--cascade-handover``: every cascade row again with that handover, named in its label; the library's default
    (``renoise``) keeps the plain label and is not run twice."""
    seen = []
    real = runs.run_cascade

    def spy(*a, **kw):
        seen.append(kw["handover_mode"])
        return real(*a, **kw)

    monkeypatch.setattr(runs, "run_cascade", spy)
    rows = bench.run_factor(tiny, 2, n=2, seed=5000, cfg=5.0, sampler="euler", steps=8, plans={}, baselines=False,
                            batch=2, cascade=True, cascade_handovers=("fresh", "renoise"), skip=("image",))
    labels = [r["method"] for r in rows[2:]]
    assert len(labels) == 2 and labels[1] == labels[0] + ", fresh handover" and seen == ["renoise", "fresh"]


def test_cascade_resampled_rows_name_their_upscalers(tiny: LatentModel, monkeypatch) -> None:
    """``--cascade-resampled``: the cascade again with the fitted resamplers in its guided pass, handed over by A1111's
    Latent upscaler, through the images (an image upscaler) and by the fitted ``up``; pooling rows carry none."""
    seen = []
    real = runs.run_cascade

    def spy(*a, **kw):
        seen.append((kw["upscaler"], kw["resamplers"] is not None))
        return real(*a, **kw)

    monkeypatch.setattr(runs, "run_cascade", spy)
    rows = bench.run_factor(tiny, 2, n=2, seed=5000, cfg=5.0, sampler="euler", steps=8, plans={}, baselines=False,
                            batch=2, cascade=True, cascade_resampled=True)
    ends = [r["method"].rsplit(": ", 1)[-1].split(", ", 1)[-1] for r in rows[2:]]
    assert ends == ["Latent upscaler", "image upscaler", "fitted resamplers, Latent upscaler",
                    "fitted resamplers, image upscaler", "fitted resamplers, fitted up"]
    assert seen == [("bilinear", False), ("pixel", False), ("bilinear", True), ("pixel", True), ("fitted", True)]
