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


@pytest.mark.parametrize("sampler,label", [("euler", "Euler"), ("dpmpp_2m", "DPM++ 2M")])
def test_guided_sampling_makes_one_low_call_per_active_step(model: runs.CountingModel, sampler: str, label: str
                                                            ) -> None:
    steps = 8
    sig = sampler_sigmas(label, "Automatic", steps, runs.toy_schedule())
    plan = runs.make_plan((2, 2), steps, sampler)
    active = plan.active_steps(sig)
    assert 0 < len(active) < steps  # the default window ends before the last step
    model.reset()
    runs.run_kdiff(model, 2, 64, 64, steps, seed=1, plan=plan, sampler=sampler)
    assert model.calls == {(64, 64): steps, (32, 32): len(active)}
    assert model.pixel_evals == 2 * (steps * 64 * 64 + len(active) * 32 * 32)


def test_dpmpp_2m_runs_on_karras_sigmas_and_euler_on_the_discrete_ones(model: runs.CountingModel) -> None:
    """The toy samples on the sigmas A1111 gives each sampler ("Automatic"): Karras for DPM++ 2M."""
    seen: dict[str, list[float]] = {}

    class Spy(torch.nn.Module):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.setdefault(self.key, []).append(float(t.reshape(-1)[0]))
            return torch.zeros_like(x)

    for sampler in ("euler", "dpmpp_2m"):
        runs.run_kdiff(runs.CountingModel(Spy(sampler)), 1, 32, 32, 6, seed=0, sampler=sampler)
    sched = runs.toy_schedule()
    for sampler, label in (("euler", "Euler"), ("dpmpp_2m", "DPM++ 2M")):
        sig = sampler_sigmas(label, "Automatic", 6, sched)
        want = [float(sched.sigma_to_t(float(s))) for s in sig[:-1]]
        assert seen[sampler] == pytest.approx(want, abs=0.6)  # k-diffusion rounds t to the nearest step
    assert seen["euler"] != pytest.approx(seen["dpmpp_2m"], abs=1.0)


def test_nested_4x_and_non_square_call_counts(model: runs.CountingModel) -> None:
    steps = 5
    sig = sampler_sigmas("Euler", "Automatic", steps, runs.toy_schedule())
    plan = runs.make_plan((4, 4), steps, "euler", shape="constant")
    assert plan.levels == ((2, 2), (2, 2))
    model.reset()
    runs.run_kdiff(model, 1, 128, 128, steps, seed=2, plan=plan, sampler="euler")
    assert model.calls == {(128, 128): steps, (64, 64): steps, (32, 32): steps}
    plan = runs.make_plan((3, 2), steps, "euler")
    model.reset()
    runs.run_kdiff(model, 1, 96, 64, steps, seed=2, plan=plan, sampler="euler")
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


def test_interleaved_rotates_methods_and_keeps_each_methods_samples_and_counts() -> None:
    from lib_chroma.toy.bench import interleaved

    class Fake(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x

    model = runs.CountingModel(Fake())
    order: list[tuple[str, int]] = []

    def method(name: str, size: int):
        def run(start: int, k: int) -> torch.Tensor:
            order.append((name, start))
            model(torch.zeros(k, 1, size, size), torch.zeros(k))
            return torch.arange(start, start + k)
        return run

    done: list[int] = []
    acc = interleaved(model, 5, 2, {"a": method("a", 4), "b": method("b", 2)}, done.append)
    # every batch runs both methods before the next batch starts; the order rotates
    assert order == [("a", 0), ("b", 0), ("b", 2), ("a", 2), ("a", 4), ("b", 4)]
    assert sum(done) == 10
    for name, size in (("a", 4), ("b", 2)):
        assert acc[name].images().tolist() == [0, 1, 2, 3, 4]
        assert acc[name].calls == {(size, size): 3}
        assert acc[name].pixel_evals == 5 * size * size
        assert acc[name].wall > 0


def test_moving_grid_images_do_not_depend_on_the_batching(model: runs.CountingModel) -> None:
    """Each batch is its own sampling run (phase from 0): sample i is the same whatever batch it ran in."""
    plan = runs.make_plan((2, 2), 4, grid="moving", shape="constant")
    a = runs.run_kdiff(model, 3, 64, 64, 4, seed=5, plan=plan, batch=3)
    b = runs.run_kdiff(model, 3, 64, 64, 4, seed=5, plan=plan, batch=1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # batched float32 convs differ in the last bits
    fixed = runs.run_kdiff(model, 3, 64, 64, 4, seed=5, plan=runs.make_plan((2, 2), 4, grid="fixed",
                                                                            shape="constant"), batch=3)
    assert not torch.allclose(a, fixed, atol=1e-3)


@pytest.mark.parametrize("factor,chain", [((2, 2), False), ((4, 4), False), ((4, 4), True)])
def test_cascade_makes_the_planned_calls(model: runs.CountingModel, factor, chain) -> None:
    from lib_chroma.toy import cascade_runs

    plan = cascade_runs.toy_cascade(factor, 8, loss=0.2, power=1.0, chain=chain)
    cost = plan.cost()
    model.reset()
    x = cascade_runs.run_cascade(model, 2, plan, seed=3)
    assert x.shape == (2, 3, 32 * factor[0], 32 * factor[1]) and bool(torch.isfinite(x).all())
    want: dict[tuple[int, int], int] = {}
    for st, calls, lows in zip(plan.stages, cost.stage_calls, cost.low_calls):
        size = (32 * st.factor[0], 32 * st.factor[1])
        want[size] = want.get(size, 0) + calls
        for lvl, n_low in enumerate(lows):
            div = math.prod(m for m, _ in st.plan.levels[: lvl + 1])
            low = (size[0] // div, size[1] // div)
            want[low] = want.get(low, 0) + n_low
    assert model.calls == {k: v for k, v in want.items() if v}
    plain = 2 * 8 * 32 * factor[0] * 32 * factor[1]
    assert model.pixel_evals / plain == pytest.approx(cost.rel_pixel_evals)


def test_cascade_native_stage_is_the_native_runs_prefix(model: runs.CountingModel, monkeypatch) -> None:
    """The native stage follows the native samples' trajectory: what it hands over is the x0 prediction the native
    run makes at the stop step, from the same latent."""
    from lib_chroma.toy import cascade_runs

    plan = cascade_runs.toy_cascade((2, 2), 8, loss=0.2, power=1.0)
    k = plan.stop_step
    seen = {}
    import lib_chroma.cascade as C

    def spy(*a, **kw):
        seen["x0"] = a[0]
        return C.handover(*a, **kw)

    monkeypatch.setattr(cascade_runs, "handover", spy)
    cascade_runs.run_cascade(model, 2, plan, seed=5)
    rec: list[torch.Tensor] = []
    runs.run_kdiff(model, 2, 32, 32, 8, seed=5, record=rec)
    assert torch.allclose(seen["x0"], rec[k], atol=1e-5)


def test_cascade_row_keys_reach_the_plan() -> None:
    """``--cascade-row`` keys: ``q_end`` and ``scale`` set the guided stages' window end and weight, ``loss`` the
    stop; an unknown key is refused with the allowed ones."""
    from lib_chroma.toy import bench

    label, kw = bench._parse_cascade("loss=0.6,q_end=1,scale=2")
    assert label == "cascade loss=0.6,q_end=1,scale=2" and kw == {"loss": 0.6, "q_end": 1.0, "scale": 2.0}
    plan, _ = bench.cascade_method(None, (4, 4), 20, 0, **kw)  # type: ignore[arg-type]
    base, _ = bench.cascade_method(None, (4, 4), 20, 0)  # type: ignore[arg-type]
    assert plan is not None and base is not None
    full = plan.stages[-1].plan
    assert full is not None and full.q_end == 1.0 and full.scale == 2.0
    assert base.stages[-1].plan.q_end != 1.0 and plan.stages[0].stop < base.stages[0].stop
    with pytest.raises(ValueError, match="allowed: .*q_end, scale"):
        bench._parse_cascade("q_start=1")


def test_toy_cascade_rows_hand_over_fresh_and_chains_renoise(monkeypatch) -> None:
    """The toy's cascade rows run its own handover (``fresh``), a chain the library's (``renoise``), and a
    ``handover=`` row key overrides it; the handover reaches the runner."""
    from lib_chroma.cascade import DEFAULT_HANDOVER
    from lib_chroma.toy import bench, cascade_runs

    assert (cascade_runs.TOY_HANDOVER, DEFAULT_HANDOVER) == ("fresh", "renoise")
    rows = bench.cascade_rows((4, 4))
    single = {k: v for k, v in rows.items() if not v.get("chain")}
    chain = {k: v for k, v in rows.items() if v.get("chain")}
    assert len(single) == 2 and all(", fresh," in k and "handover" not in v for k, v in single.items())
    assert len(chain) == 2 and all(", renoise," in k and v["handover"] == "renoise" for k, v in chain.items())
    seen = []
    monkeypatch.setattr(cascade_runs, "run_cascade", lambda *a, **kw: seen.append(kw["handover_mode"]))
    for kw in ({}, {"chain": True, "handover": "renoise"}, bench._parse_cascade("handover=noisy")[1]):
        bench.cascade_method(None, (4, 4), 20, 0, **kw)[1](0, 1)  # type: ignore[arg-type]
    assert seen == ["fresh", "renoise", "noisy"]
