"""Toy sampling methods through the core guidance code: shapes, model-call counts, the curves report, CLI."""

from __future__ import annotations

import math

import pytest
import torch

from lib_chroma.curves import curves_report
from lib_chroma.schedule import sampler_sigmas
from lib_chroma.toy import runs, scorer
from lib_chroma.toy.train import load_model


@pytest.fixture(scope="module")
def model() -> runs.CountingModel:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return runs.CountingModel(load_model())


@pytest.mark.parametrize("size,factor", [(32, None), (64, (2, 2))])
def test_shipped_weights_sample_a_batch(model: runs.CountingModel, size: int, factor: tuple[int, int] | None) -> None:
    plan = runs.make_plan(factor, 6) if factor else None
    x = runs.run_kdiff(model, 4, size, size, 6, seed=0, plan=plan)
    assert x.shape == (4, 3, size, size)
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) < 3.0


def test_guided_euler_makes_one_low_call_per_active_step(model: runs.CountingModel) -> None:
    steps = 8
    sig = sampler_sigmas("Euler", "Automatic", steps, runs.toy_schedule())
    plan = runs.make_plan((2, 2), steps)
    active = plan.active_steps(sig)
    assert 0 < len(active) < steps  # the default window fades out before the end
    model.reset()
    runs.run_kdiff(model, 2, 64, 64, steps, seed=1, plan=plan)
    assert model.calls == {(64, 64): steps, (32, 32): len(active)}
    assert model.pixel_evals == 2 * (steps * 64 * 64 + len(active) * 32 * 32)


def test_nested_4x_and_non_square_call_counts(model: runs.CountingModel) -> None:
    steps = 5
    sig = sampler_sigmas("Euler", "Automatic", steps, runs.toy_schedule())
    plan = runs.make_plan((4, 4), steps, shape="constant")
    assert plan.levels == ((2, 2), (2, 2))
    model.reset()
    runs.run_kdiff(model, 1, 128, 128, steps, seed=2, plan=plan)
    assert model.calls == {(128, 128): steps, (64, 64): steps, (32, 32): steps}
    plan = runs.make_plan((3, 2), steps)
    model.reset()
    runs.run_kdiff(model, 1, 96, 64, steps, seed=2, plan=plan)
    assert model.calls == {(96, 64): steps, (32, 32): len(plan.active_steps(sig))}


def test_ddim_goes_through_guide_eps(model: runs.CountingModel) -> None:
    steps = 6
    sig = sampler_sigmas("DDIM", "Automatic", steps, runs.toy_schedule())
    plan = runs.make_plan((2, 2), steps, shape="constant")
    model.reset()
    x = runs.run_ddim(model, 2, 64, 64, steps, seed=3, plan=plan)
    assert x.shape == (2, 3, 64, 64) and bool(torch.isfinite(x).all())
    # one model call per DDIM timestep of A1111's arithmetic; a constant window guides every one of them
    assert sig.numel() - 1 == steps
    assert model.calls == {(64, 64): steps, (32, 32): steps}


def test_hires_runs_its_second_pass_steps(model: runs.CountingModel) -> None:
    low = runs.run_kdiff(model, 2, 32, 32, 4, seed=4)
    model.reset()
    x = runs.run_hires(model, low, 64, 64, 4, runs.A1111_HIRES_STRENGTH, seed=4)
    assert x.shape == (2, 3, 64, 64)
    assert model.calls == {(64, 64): 4}
    s = runs.hires_chroma_strength(2, 20)
    assert 0.0 < s < runs.A1111_HIRES_STRENGTH


def test_toy_report_has_the_curves_report_keys_and_draws(tmp_path) -> None:
    rep = runs.toy_report(20, (2, 2), runs.make_plan((2, 2), 20))
    ref = curves_report("sd1", "Euler", "Automatic", 20, 1024, 1024)
    assert set(rep) == set(ref)
    assert rep["guidance_window"]["first_step"] == 0
    # level 2 peaks where sigma crosses 2; the window ends after that peak
    assert rep["guidance_window"]["last_step"] > rep["levels"]["2"]["peak_step"]
    from lib_chroma.plots import save_png

    save_png(rep, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_bench_quick_cli_writes_json_and_markdown(tmp_path) -> None:
    from lib_chroma.toy.bench import bench_main

    rc = bench_main(["--n", "2", "--steps", "3", "--factors", "2x", "--no-fixed", "--no-baselines",
                     "--out", str(tmp_path)])
    assert rc == 0
    import json

    res = json.loads((tmp_path / "bench.json").read_text())
    rows = res["factors"]["2x"]["rows"]
    assert rows[0]["method"] == "plain" and rows[0]["rel_pixel_evals"] == 1.0
    guided = rows[1]
    assert math.isclose(guided["rel_pixel_evals"], guided["expected_pixel_evals"], rel_tol=1e-3)
    assert [e["level"] for e in res["empirical"]] == [1, 2, 4, 8]
    assert "| level m |" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_guidance_beats_plain_by_30_points_at_2x(model: runs.CountingModel) -> None:
    n, steps = 32, 20
    plain = scorer.score_batch(runs.run_kdiff(model, n, 64, 64, steps, seed=500))
    guided = scorer.score_batch(runs.run_kdiff(model, n, 64, 64, steps, seed=500, plan=runs.make_plan((2, 2), steps)))
    assert guided["proper_face"] >= plain["proper_face"] + 0.30, (plain, guided)


def test_projected_fraction_and_band() -> None:
    from lib_chroma.toy.bench import band, projected_fraction

    g = torch.Generator().manual_seed(0)
    final = torch.randn(4, 3, 32, 32, generator=g)
    preds = torch.stack([0.25 * final, 0.5 * final, final])
    h = projected_fraction(preds, final, 2)
    assert torch.allclose(h, torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64), atol=1e-9)
    # noise uncorrelated with the final image averages out of the projection
    noisy = preds + 3.0 * torch.randn(preds.shape, generator=g)
    assert torch.allclose(projected_fraction(noisy, final, 1), h, atol=0.1)
    # band m holds nothing that is constant on 2m x 2m blocks
    coarse = torch.randn(2, 3, 8, 8, generator=g).repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert float(band(coarse, 2).abs().max()) < 1e-6
    assert float(band(final, 2).pow(2).mean()) > 0.1
