"""The chromatographic cascade's plan: stop rule, equal-ratio handover, sigma continuity, costs, 4× variants,
and the handover's noise."""

from __future__ import annotations

import math

import pytest
import torch

from lib_chroma import cascade as C
from lib_chroma.chromatography import signal_ratio
from lib_chroma.guidance import GuidancePlan, pool, unpool
from lib_chroma.schedule import model_schedule, sampler_sigmas


@pytest.fixture(scope="module")
def karras20() -> list[float]:
    return [float(v) for v in sampler_sigmas("DPM++ 2M", "Karras", 20, model_schedule("sd1"))]


def test_stop_sigma_is_where_level_half_is_q_generated() -> None:
    for q in (0.1, 0.2, 0.5):
        for p in (1.0, 0.15):
            s = C.stop_sigma(q, p)
            # level 1/2 of power P behaves as level sqrt(P)/2 of unit power
            assert float(signal_ratio(s, 0.5 * math.sqrt(p))) == pytest.approx(q)
    assert C.stop_sigma(0.2) > C.stop_sigma(0.5)  # losing less means stopping earlier


@pytest.mark.parametrize("factor", [(2, 2), (3, 3), (3, 2), (4, 4)])
def test_handover_keeps_every_carried_level_at_its_signal_ratio(karras20: list[float], factor) -> None:
    plan = C.plan_cascade(karras20, factor)
    assert plan is not None and len(plan.stages) == 2
    nat, full = plan.stages
    rho = math.sqrt(factor[0] * factor[1])
    assert full.start == pytest.approx(rho * nat.stop)
    for m in (1, 2, 4, 8):  # native level m is full-size level rho*m
        assert float(signal_ratio(full.start, rho * m)) == pytest.approx(float(signal_ratio(nat.stop, m)))


@pytest.mark.parametrize("loss,power", [(0.2, 1.0), (0.5, 1.0), (0.2, 0.15), (0.05, 1.0)])
def test_native_pass_stops_at_the_last_sigma_the_rule_allows(karras20: list[float], loss, power) -> None:
    plan = C.plan_cascade(karras20, (2, 2), loss=loss, power=power)
    assert plan is not None
    k = plan.stop_step
    smin = C.stop_sigma(loss, power)
    assert karras20[k] >= smin > karras20[k + 1]
    assert plan.stages[0].stop == karras20[k]
    assert plan.stages[0].sigmas == tuple(karras20[: k + 1]) + (0.0,)
    # the loss bound: the coarsest octave the upscale cannot carry (full-size level rho/2 = 1) is <= q generated
    full = plan.stages[1]
    assert float(signal_ratio(full.start / math.sqrt(power), 1.0)) <= loss + 1e-9


def test_second_pass_is_the_users_tail_below_its_start(karras20: list[float]) -> None:
    for loss in (0.1, 0.2, 0.3, 0.5, 0.7):
        plan = C.plan_cascade(karras20, (2, 2), loss=loss, density=1.0)
        full = plan.stages[1]
        tail = [v for v in karras20 if v < full.start]
        seq = list(full.sigmas)
        assert seq[0] == full.start and seq[-1] == 0.0
        assert all(a > b for a, b in zip(seq, seq[1:]))  # continuous and decreasing
        assert seq[1:] in (tail, tail[1:])  # at most the first user sigma below the start is merged
        if seq[1:] == tail[1:]:
            j0 = karras20.index(tail[0])
            assert math.log(full.start / tail[0]) < C.DEFAULT_MERGE * math.log(karras20[j0 - 1] / tail[0])
        # the start's call stands for the user step before the first kept sigma
        j1 = karras20.index(seq[1])
        assert full.user_steps == (j1 - 1, 19)


def test_second_sigmas_merge_rule() -> None:
    user = [8.0, 4.0, 2.0, 1.0, 0.0]
    assert C.second_sigmas(user, 2.2) == ([2.2, 1.0, 0.0], 3)  # 2.0 lies < half a step below 2.2: merged
    assert C.second_sigmas(user, 3.5) == ([3.5, 2.0, 1.0, 0.0], 2)
    assert C.second_sigmas(user, 2.2, merge=0.0) == ([2.2, 2.0, 1.0, 0.0], 2)
    assert C.second_sigmas(user, 0.5) == ([0.5, 0.0], 4)  # the final 0 is never merged
    with pytest.raises(ValueError, match="sigma_s"):
        C.second_sigmas(user, 0.0)


def test_costs_add_up(karras20: list[float]) -> None:
    plan = C.plan_cascade(karras20, (2, 2))
    nat, full = plan.stages
    cost = plan.cost()
    assert cost.plain_calls == 20
    assert cost.stage_calls == (plan.stop_step + 1, len(full.sigmas) - 1)
    active = full.plan.active_steps(full.sigmas)
    assert cost.low_calls == ((), (len(active),))
    want = (cost.stage_calls[0] / 4 + cost.stage_calls[1] + len(active) / 4) / 20
    assert cost.rel_pixel_evals == pytest.approx(want)
    assert cost.rel_calls == pytest.approx((sum(cost.stage_calls) + len(active)) / 20)
    assert cost.rel_pixel_evals < 1.0  # cheaper than plain sampling at full size
    # second-order samplers: a pass ending at 0 makes 2n - 1 calls
    c2 = plan.cost(calls_per_step=2)
    assert c2.plain_calls == 39
    assert c2.stage_calls == (2 * (plan.stop_step + 1) - 1, 2 * (len(full.sigmas) - 1) - 1)
    assert C.pass_calls(10, True, 2) == 19 and C.pass_calls(10, False, 2) == 20 and C.pass_calls(0, True) == 0


def test_guidance_uses_the_library_defaults_on_the_stage_sigmas(karras20: list[float]) -> None:
    plan = C.plan_cascade(karras20, (2, 2))
    full = plan.stages[1]
    assert full.plan == GuidancePlan.build((2, 2), sigmas=full.sigmas)
    assert plan.stages[0].plan is None
    other = C.plan_cascade(karras20, (2, 2), guidance={"scale": 1.0, "operator": "nearest"})
    assert other.stages[1].plan == GuidancePlan.build((2, 2), sigmas=other.stages[1].sigmas, scale=1.0,
                                                      operator="nearest")
    first, last = full.guided_user_steps()
    win = full.plan.window_steps(full.sigmas)
    assert (first, last) == (full.step_users[win[0]], full.step_users[win[1]])
    dense = C.plan_cascade(karras20, (2, 2), density=1.0).stages[1]
    win = dense.plan.window_steps(dense.sigmas)
    assert dense.guided_user_steps() == (dense.first_user_step + win[0], dense.first_user_step + win[1])


def test_four_times_one_handover_and_chain(karras20: list[float]) -> None:
    one = C.plan_cascade(karras20, (4, 4))
    chain = C.plan_cascade(karras20, (4, 4), chain=True)
    assert [st.factor for st in one.stages] == [(1, 1), (4, 4)]
    assert one.stages[1].plan.levels == ((2, 2), (2, 2))  # nested guidance
    assert [st.factor for st in chain.stages] == [(1, 1), (2, 2), (4, 4)]
    nat, mid, full = chain.stages
    # the same stop rule at every handover: every stage stops at the same sigma, the next starts at twice it
    assert nat.stop == one.stages[0].stop == mid.stop
    assert mid.start == pytest.approx(2 * nat.stop) and full.start == pytest.approx(2 * mid.stop)
    assert mid.sigmas[-2:] == (mid.stop, 0.0) and mid.plan.levels == ((2, 2),)
    assert one.stages[1].start == pytest.approx(4 * nat.stop)
    # each stage's start keeps its carried levels at their ratios (4x: level 4M of the full image = native M)
    assert float(signal_ratio(one.stages[1].start, 4)) == pytest.approx(float(signal_ratio(nat.stop, 1)))
    c1, c2 = one.cost(), chain.cost()
    assert len(c2.stage_calls) == 3 and len(c2.low_calls[2]) == 2
    want = (c2.stage_calls[0] / 16 + c2.stage_calls[1] / 4 + c2.stage_calls[2]
            + c2.low_calls[1][0] / 16 + c2.low_calls[2][0] / 4 + c2.low_calls[2][1] / 16) / 20
    assert c2.rel_pixel_evals == pytest.approx(want)
    # the chain starts its full-size pass lower (2 sigma_k instead of 4 sigma_k): fewer full-size calls
    assert c2.stage_calls[2] < c1.stage_calls[1] and c2.rel_pixel_evals < c1.rel_pixel_evals


def test_fixed_start_sigma(karras20: list[float]) -> None:
    plan = C.plan_cascade(karras20, (2, 2), sigma_start=3.0)
    nat, full = plan.stages
    assert full.start == 3.0 and nat.stop >= 1.5 > karras20[plan.stop_step + 1]


@pytest.mark.parametrize("density", [0.3, 0.5, 0.75])
def test_thinned_second_pass_follows_the_users_schedule(karras20: list[float], density: float) -> None:
    plan = C.plan_cascade(karras20, (2, 2), loss=0.2, density=density)
    nat, full = plan.stages
    assert full.start == pytest.approx(2 * nat.stop) and full.sigmas[0] == full.start
    below = [v for v in karras20 if 0 < v < full.start]
    assert full.steps == max(2, round(density * len(below)))
    assert full.sigmas[-2] == karras20[-2] and full.sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(full.sigmas, full.sigmas[1:]))
    # every sigma lies on the user's schedule: log sigma between the user steps its step index falls between
    for j, v in enumerate(full.sigmas[:-1]):
        u = full.step_users[j]
        assert karras20[min(u + 1, 19)] * (1 - 1e-9) <= v <= karras20[max(u - 1, 0)] * (1 + 1e-9)
    assert full.user_steps[1] == 19 and full.thinned and not nat.thinned
    assert list(full.step_users) == sorted(full.step_users)
    # fewer full-size calls than the unthinned plan, same native pass
    dense = C.plan_cascade(karras20, (2, 2), loss=0.2, density=1.0)
    assert dense.stages[0] == nat and full.steps < dense.stages[1].steps
    assert plan.cost().rel_pixel_evals < dense.cost().rel_pixel_evals


def test_thin_sigmas_at_full_density_covers_the_same_range(karras20: list[float]) -> None:
    seq, users = C.thin_sigmas(karras20, 3.0, 1.0)
    below = [v for v in karras20 if 0 < v < 3.0]
    assert len(seq) - 1 == len(below) and seq[0] == 3.0 and seq[-2] == karras20[-2]
    assert users[-1] == 19 and users == sorted(users)
    # from a user sigma: 8 user sigmas below sigma_11, density 5/8 gives 5 steps at t = 11, 13, …, 19, where the
    # interpolation returns the user's own sigmas
    seq, users = C.thin_sigmas(karras20, karras20[11], 0.625)
    assert users == [11, 13, 15, 17, 19] and seq[:-1] == pytest.approx(karras20[11:-1:2])
    with pytest.raises(ValueError, match="density"):
        C.thin_sigmas(karras20, 3.0, 0.0)
    with pytest.raises(ValueError, match="sigma_s"):
        C.thin_sigmas(karras20, karras20[-2] / 2, 0.5)
    with pytest.raises(ValueError, match="density"):
        C.plan_cascade(karras20, (2, 2), density=1.5)


def test_thinned_chain_thins_its_last_stage_only(karras20: list[float]) -> None:
    plan = C.plan_cascade(karras20, (4, 4), chain=True, density=0.5)
    assert [st.factor for st in plan.stages] == [(1, 1), (2, 2), (4, 4)]
    assert not plan.stages[1].thinned and plan.stages[2].thinned
    assert plan.stages[2].start == pytest.approx(2 * plan.stages[1].stop)


def test_no_cascade_when_nothing_to_do() -> None:
    assert C.plan_cascade([14.6, 3.0, 1.0, 0.0], (1, 1)) is None
    assert C.plan_cascade([14.6, 0.0], (2, 2)) is None  # no step to stop at
    assert C.plan_cascade([14.6, 10.0, 0.1, 0.0], (2, 2), loss=0.2) is None  # 2·10 > 14.6, 0.1 < stop


def test_bad_input_names_the_field(karras20: list[float]) -> None:
    with pytest.raises(ValueError, match="loss"):
        C.plan_cascade(karras20, (2, 2), loss=1.5)
    with pytest.raises(ValueError, match="factor_h"):
        C.plan_cascade(karras20, (0, 2))
    with pytest.raises(ValueError, match="sigma_start"):
        C.plan_cascade(karras20, (2, 2), sigma_start=99.0)
    with pytest.raises(ValueError, match="guidance"):
        C.plan_cascade(karras20, (2, 2), guidance={"sigmas": [1.0, 0.0]})
    with pytest.raises(ValueError, match="sigmas"):
        C.plan_cascade([1.0, 2.0, 0.0], (2, 2))
    with pytest.raises(ValueError, match="upscaler"):
        C.upscale(torch.zeros(1, 1, 2, 2), (4, 4), "lanczos")
    with pytest.raises(ValueError, match="handover"):
        C.handover(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4), 1.0, (2, 2), mode="other")
    with pytest.raises(ValueError, match="x_k"):
        C.handover(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4), 1.0, (2, 2), mode="renoise")


def test_fresh_handover_is_upscale_plus_noise() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=g)
    noise = torch.randn(2, 3, 16, 16, generator=g)
    for up in C.UPSCALERS:
        x = C.handover(x0, noise, 1.5, (2, 2), upscaler=up)
        assert torch.allclose(x, C.upscale(x0, (16, 16), up) + 1.5 * noise)
    # the upscalers preserve block means to first order and nearest-exact exactly
    assert torch.allclose(pool(C.upscale(x0, (16, 16), "nearest-exact"), 2, 2), x0)


def test_renoise_keeps_the_coarse_noise_and_is_white_at_sigma_s() -> None:
    g = torch.Generator().manual_seed(1)
    sigma_k, rho = 0.7, 2
    sigma_s = rho * sigma_k
    x0 = torch.randn(64, 4, 16, 16, generator=g)
    x_k = x0 + sigma_k * torch.randn(x0.shape, generator=g)
    noise = torch.randn(64, 4, 32, 32, generator=g)
    x = C.handover(x0, noise, sigma_s, (2, 2), mode="renoise", x_k=x_k, sigma_k=sigma_k, upscaler="nearest-exact")
    n = x - unpool(x0, 2, 2, (32, 32))
    # level 2 of the new latent carries exactly the first pass's noise
    assert torch.allclose(pool(n, 2, 2), x_k - x0, atol=1e-5)
    # and the whole noise is white with standard deviation sigma_s (within and across blocks)
    assert float(n.std()) == pytest.approx(sigma_s, rel=0.02)
    within = float((n[..., 0::2, :] * n[..., 1::2, :]).mean()) / sigma_s**2
    across = float((n[..., 1:-1:2, :] * n[..., 2::2, :]).mean()) / sigma_s**2
    assert abs(within) < 0.02 and abs(across) < 0.02


def test_noisy_handover_makes_up_the_per_pixel_variance() -> None:
    g = torch.Generator().manual_seed(3)
    sigma_k, sigma_s = 0.5, 1.0
    x0 = torch.zeros(64, 4, 16, 16)
    x_k = sigma_k * torch.randn(x0.shape, generator=g)
    noise = torch.randn(64, 4, 32, 32, generator=g)
    assert C.noise_gain("nearest-exact", (2, 2)) == pytest.approx(1.0, rel=0.01)  # a Monte-Carlo mean
    assert 0.2 < C.noise_gain("bilinear", (2, 2)) < 1.0
    for up in C.UPSCALERS:
        x = C.handover(x0, noise, sigma_s, (2, 2), mode="noisy", x_k=x_k, sigma_k=sigma_k, upscaler=up)
        assert float(x.std()) == pytest.approx(sigma_s, rel=0.03)


def test_call_sigmas_of_second_order_samplers() -> None:
    s = [4.0, 1.0, 0.25, 0.0]
    assert C.call_sigmas(s) == [4.0, 1.0, 0.25]
    assert C.call_sigmas(s, 2, "next") == [4.0, 1.0, 1.0, 0.25, 0.25]  # Heun: no second call on the step to 0
    assert C.call_sigmas(s, 2, "mid") == [4.0, 2.0, 1.0, 0.5, 0.25]
    plan = GuidancePlan.build((2, 2), window="sigma", window_range=(10.0, 0.9))
    cost = C.pass_cost(s, plan, 1.0, 2, "next")
    assert cost["calls"] == 5 and cost["low_calls"] == [3]  # 4, 1, 1 inside the window; 0.25 twice outside
    assert C.pass_cost(s, plan, 1.0, 2, "mid")["low_calls"] == [3]  # 4, 2, 1
    with pytest.raises(ValueError, match="second_call"):
        C.call_sigmas(s, 2, "end")
