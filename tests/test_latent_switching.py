"""Time-dependent prompt rows on the latent model: switch calls, prompt pairs, scores, prompt editing in the CFG."""

from __future__ import annotations

import json

import pytest
import torch

from lib_chroma.prompts import DEFAULT_SWITCH_LEVEL, when_fraction
from lib_chroma.toy.latent import bench, data, runs, scorer, switching, text
from lib_chroma.toy.latent.runs import CFGDenoiser
from tests import a1111_prompt_grammar as gram


@pytest.mark.parametrize("steps", [6, 20, 30])
@pytest.mark.parametrize("fraction", switching.FRACTIONS + (0.01, 0.99))
def test_a1111_switch_call_is_where_the_documented_grammar_switches(steps: int, fraction: float) -> None:
    nodes = gram.parse(f"[a:b:{fraction}]")
    first_b = next((c for c in range(steps) if gram.resolve(nodes, c, steps) == "b"), steps)  # steps: never
    assert switching.a1111_switch_call(fraction, steps) == first_b


@pytest.mark.parametrize("steps", [6, 20, 30])
def test_extension_switch_call_is_the_step_its_rendered_fraction_gives_a1111(steps: int) -> None:
    sig = runs.latent_sigmas("dpmpp_2m", steps)
    for level in (1, 2, 4, 8):
        call = switching.extension_switch_call(sig, level)
        if 0 < call < steps:
            assert switching.a1111_switch_call(float(when_fraction(call, steps)), steps) == call
    # a finer level is generated later: its switch is never earlier
    calls = [switching.extension_switch_call(sig, lv) for lv in (8, 4, 2, 1)]
    assert calls == sorted(calls) and calls[0] < calls[-1]


def test_a1111_switch_call_rejects_fractions_outside_0_1() -> None:
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            switching.a1111_switch_call(bad, 20)


def test_prompt_pairs_split_coarse_and_fine_and_conflict_only_in_the_fine_attributes() -> None:
    targets, layout, detail = switching.prompt_pairs(40, seed=7)
    assert targets == text.prompt_set(40, 7)
    assert all(set(lay) == set(switching.COARSE) for lay in layout)
    assert all(set(det) == set(switching.FINE) for det in detail)
    t2, lay2, det2 = switching.prompt_pairs(40, seed=7, conflicting=True)
    assert t2 == targets and det2 == detail
    for lay, t in zip(lay2, targets):
        assert {k: lay[k] for k in switching.COARSE} == {k: t[k] for k in switching.COARSE}
        assert lay["eyes"] != t["eyes"] and lay["texture"] != t["texture"] and lay["texture"] in data.TEXTURES
    assert len({lay["texture"] for lay in lay2}) == 3  # the conflicting texture is drawn, not fixed
    assert text.prompt_text(lay2[0]).count(",") == 2  # both fine attributes named in the layout prompt


def test_methods_rows_and_switch_calls() -> None:
    ms = switching.methods(4, seed=5000, sampler="dpmpp_2m", steps=20)
    labels = [m.label for m in ms]
    assert labels[:3] == ["combined prompt", "layout prompt alone", "detail prompt alone"]
    assert len(ms) == 3 + 2 * (len(switching.FRACTIONS) + len(switching.SWITCH_LEVELS)) + 1
    a1111 = {m.fraction: m.switch_call for m in ms if m.kind == "a1111" and m.pairs == "complementary"}
    assert a1111 == {0.2: 5, 0.35: 8, 0.5: 11, 0.65: 14, 0.8: 17}
    default = [m for m in ms if m.kind == "extension" and m.level == DEFAULT_SWITCH_LEVEL]
    assert len(default) == 2 and all("(default)" in m.label for m in default)
    marker = ms[-1]
    assert marker.kind == "marker" and marker.second == ms[0].first and marker.first == ms[1].first
    two = switching.methods(4, seed=5000, sampler="dpmpp_2m", steps=20, factor=2)
    assert sorted({m.level for m in two if m.kind == "extension"}) == [1, 2, 4, 8, 16]


def _score(**attrs: str) -> scorer.ImageScore:
    nan = float("nan")
    return scorer.ImageScore(1, 0, 2, 15.0, 1.0, 1.0, True, True, attrs.pop("proper", "y") == "y", 1.0, 0.0, 0.0,
                             attrs, 1.0, {}, (0.0, 0.0, 0.0), (nan, nan, nan))


def test_switch_scores_count_layout_and_detail_separately() -> None:
    t = {"position": "left", "size": "large", "colour": "red", "eyes": "slit", "texture": "dots"}
    right_all = _score(**t)
    wrong_eyes = _score(**{**t, "eyes": "round"})
    moved = _score(**{**t, "position": "right", "proper": "n"})
    s = switching.switch_scores([right_all, wrong_eyes, moved], [t, t, t])
    assert s["layout_kept"] == pytest.approx(2 / 3) and s["detail_obtained"] == pytest.approx(2 / 3)
    assert s["both"] == pytest.approx(1 / 3) and s["proper_face"] == pytest.approx(2 / 3)
    assert s["attr_eyes"] == pytest.approx(2 / 3) and s["attr_colour"] == 1.0
    with pytest.raises(ValueError, match="targets"):
        switching.switch_scores([right_all], [t, t])


class _Spy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.contexts.append(context.clone())
        return 0.5 * x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def test_cfg_switches_the_conditional_context_from_the_switch_call_on() -> None:
    spy = _Spy()
    cond, detail, uncond = torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    den = CFGDenoiser(spy, cond, uncond, cfg=5.0, detail=detail, switch_call=2)
    x, sigma = torch.randn(2, 4, 16, 16), torch.full((2,), 2.0)
    for _ in range(4):
        den(x, sigma)
    expect = [cond, cond, detail, detail]
    assert all(torch.equal(c, torch.cat([e, uncond])) for c, e in zip(spy.contexts, expect))
    with pytest.raises(ValueError, match="detail"):
        CFGDenoiser(spy, cond, uncond, cfg=5.0, detail=torch.randn(3, 4, 8))
    # switch_call 0: the second prompt throughout, as A1111's [a:b:N] with N < 1
    spy.contexts.clear()
    CFGDenoiser(spy, cond, uncond, cfg=5.0, detail=detail, switch_call=0)(x, sigma)
    assert torch.equal(spy.contexts[0], torch.cat([detail, uncond]))


def test_prompts_quick_bench_on_the_shipped_weights(tmp_path) -> None:
    rc = bench.bench_main(["--prompts", "--quick", "--images", "0", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "prompts_1x_dpmpp_2m_6.json").read_text())
    rows = res["rows"]
    assert len(rows) == len(switching.methods(8, 5000, "dpmpp_2m", 6)) and res["n"] == 8
    by = {(r["pairs"], r["method"]): r for r in rows}
    # the references bracket the switch: the layout prompt alone keeps the layout, the detail prompt alone does not
    assert by[("-", "layout prompt alone")]["layout_kept"] > by[("-", "detail prompt alone")]["layout_kept"]
    assert by[("-", "detail prompt alone")]["detail_obtained"] > by[("-", "layout prompt alone")]["detail_obtained"]
    assert set(res["settling"]["5"]["settle_step"]) == set(data.ATTRIBUTES)
    assert "| complementary | A1111 [layout:detail:0.5] |" in (tmp_path / "prompts_1x_dpmpp_2m_6.md").read_text()


def test_a_scheduler_moves_the_extension_switch_but_not_a1111s_fraction() -> None:
    """The switch follows the noise level: on the Beta schedule (many steps at high sigma) sigma <= 4 comes at a
    later step than on Karras, while [layout:detail:f] stays at the same step."""
    karras = {(m.kind, m.level, m.fraction): m.switch_call for m in switching.methods(2, 5000, "dpmpp_2m", 20)}
    beta = {(m.kind, m.level, m.fraction): m.switch_call
            for m in switching.methods(2, 5000, "dpmpp_2m", 20, scheduler="Beta")}
    sig = runs.latent_sigmas("dpmpp_2m", 20, "Beta")
    assert not torch.equal(sig, runs.latent_sigmas("dpmpp_2m", 20))
    assert beta[("extension", 4, None)] == switching.extension_switch_call(sig, 4) > karras[("extension", 4, None)]
    assert all(beta[k] == v for k, v in karras.items() if k[0] == "a1111")
