"""The accordion's preview (readout, SVG curves, hires suggestion): content and the 50 ms budget."""

from __future__ import annotations

import re
import time

import pytest

from lib_chroma import settings as S
from lib_chroma.webui.preview import factor_note, preview, suggested_strength
from lib_chroma.webui.svgplot import LEVEL_NOTE, X_TITLE, Y2_TITLE, Y_TITLE, _tick_steps, curves_svg


def test_readout_and_svg():
    vals = S.RCSettings(enabled=True).to_dict()
    readout, svg, info = preview(vals, "Euler", "Karras", 20, 1024, 1536, family="sd1")
    assert readout.startswith("512×512 → 1024×1536 (×2, ×3) · guided steps 1–")
    assert re.search(r"of 20 · ≈1\.\d\d× plain model time$", readout), readout
    assert svg.startswith("<svg") and svg.endswith("</svg>") and 'data-steps="20"' in svg
    assert "Time-dependent prompts are off." in info
    off, _, _ = preview(S.RCSettings().to_dict(), "Euler", "Automatic", 20, 512, 512, family="sdxl")
    assert off.startswith("off · ") and "no guided steps" in off


def test_readout_states_the_cost_of_every_mode():
    from lib_chroma.webui.cascade_setup import setup_cascade

    on = S.RCSettings(enabled=True)
    guided, _, _ = preview(on.to_dict(), "DPM++ 2M", "Karras", 20, 1024, 1024)
    cost = float(re.search(r"≈(\d\.\d\d)×", guided).group(1))
    assert 1.0 < cost < 1.5  # guidance adds low-resolution calls
    cas = on.with_(cascade=True)
    readout, _, _ = preview(cas.to_dict(), "DPM++ 2M", "Karras", 20, 1024, 1024)
    setup = setup_cascade(cas, "sd1", "DPM++ 2M", "Karras", 20, 1024, 1024)
    nat, full = setup.plan.stages
    g = full.guided_user_steps()
    thin = f" in {full.steps} steps," if full.thinned else ""
    assert readout == (f"native 512² steps 1–{nat.user_steps[1] + 1}, then 1024² steps {full.user_steps[0] + 1}–20"
                       f"{thin} guided {g[0] + 1}–{g[1] + 1} · ≈{setup.rel_cost:.2f}× plain model time")
    # the readout names the thinned pass only when it is thinned
    dense = setup_cascade(cas, "sd1", "DPM++ 2M", "Karras", 20, 1024, 1024, density=1.0)
    assert " steps," not in dense.readout() and (full.thinned) == (" steps," in readout)
    assert setup.rel_cost < 1.0
    # the hires-fix target is the output size when Hires. fix is ticked
    hr, _, _ = preview(cas.to_dict(), "DPM++ 2M", "Karras", 20, 512, 512, hires=(2.0, 0, 0))
    assert hr == readout
    # Forge: the cascade steps aside there, so the readout is the guided one and says why
    forge, _, _ = preview(cas.to_dict(), "DPM++ 2M", "Karras", 20, 1024, 1024, forge=True)
    assert forge == f"{guided} · no cascade: the cascade runs in A1111 (Forge samples its passes differently)"
    assert preview(on.to_dict(), "DPM++ 2M", "Karras", 20, 1024, 1024, forge=True)[0] == guided
    ddim, _, _ = preview(cas.to_dict(), "DDIM", "Automatic", 20, 1024, 1024)
    assert ddim.startswith("512×512 → 1024×1024") and ddim.endswith("no cascade: DDIM has no sigma schedule to "
                                                                    "stop and resume")


def test_cascade_loss_bound_follows_the_factor():
    from lib_chroma.webui.cascade_setup import setup_cascade

    cas = S.RCSettings(enabled=True, cascade=True)
    # q 0.05 up to ρ = sqrt(m_h m_w) = 3, q 0.1 above (settings.latent_cascade_loss)
    got = {wh: setup_cascade(cas, "sd1", "DPM++ 2M", "Karras", 20, *wh) for wh in
           ((1024, 1024), (1536, 1536), (2048, 1024), (2048, 1536), (2048, 2048))}
    assert {wh: st.plan.loss for wh, st in got.items()} == {
        (1024, 1024): 0.05, (1536, 1536): 0.05, (2048, 1024): 0.05, (2048, 1536): 0.1, (2048, 2048): 0.1}
    # at 4× q 0.05 would start the full-size pass higher and cost more (0.62× against 0.55×)
    q05 = setup_cascade(cas, "sd1", "DPM++ 2M", "Karras", 20, 2048, 2048, loss=0.05)
    assert q05.plan.loss == 0.05 and q05.plan.stages[1].start > got[(2048, 2048)].plan.stages[1].start
    assert q05.rel_cost > got[(2048, 2048)].rel_cost
    assert got[(2048, 2048)].rel_cost < 0.56


def test_svg_changes_with_steps_and_width():
    vals = S.RCSettings(enabled=True).to_dict()
    a = preview(vals, "Euler", "Automatic", 20, 1024, 1024)[1]
    b = preview(vals, "Euler", "Automatic", 30, 1024, 1024)[1]
    c = preview(vals, "Euler", "Automatic", 20, 512, 512)[1]  # native size: nothing guided
    assert a != b and a != c


def test_bad_values_give_a_message():
    r, svg, _ = preview({"scale": 9}, "Euler", "Automatic", 20, 1024, 1024)
    assert r.startswith("⚠ scale:") and svg == ""
    r, _, _ = preview({}, "No such sampler", "Automatic", 20, 1024, 1024)
    assert r.startswith("⚠ sampler:")


def test_preview_under_50_ms():
    vals = S.RCSettings(enabled=True, prompt_mode="marker").to_dict()
    preview(vals, "DPM++ 2M", "Karras", 30, 1024, 1024)
    best = min(_timed(lambda: preview(vals, "DPM++ 2M", "Karras", 30, 1024, 1024)) for _ in range(5))
    assert best < 0.05, best


def test_suggested_strength_in_range():
    s = suggested_strength("Euler", "Automatic", 20, 2)
    assert 0.0 < s < 1.0


def test_svg_without_window():
    rep = {
        "sigmas": [1.0, 0.0],
        "levels": {"1": {"ratio": [0.5, 1.0], "per_step": [0.5], "peak_step": 0}},
        "guidance_window": None,
        "switch": {"step": 0},
    }
    svg = curves_svg(rep)
    assert 'data-guided=""' in svg and 'data-switch=""' in svg and "rc-switch" not in svg


def test_svg_labels_and_one_based_markers():
    """Axis titles, tick values, what a level is; the grey band and the dashed line carry the readout's and the
    switch info's 1-based step numbers, and the line sits where that step starts."""
    vals = S.RCSettings(enabled=True, prompt_mode="marker").to_dict()
    readout, svg, info = preview(vals, "Euler", "Automatic", 30, 1024, 1024)
    for text in (X_TITLE, Y_TITLE, Y2_TITLE, LEVEL_NOTE):
        assert f">{text}<" in svg, text
    assert "level 2 (16 px)" in svg
    a, b = re.search(r"guided steps (\d+)–(\d+) of 30", readout).groups()
    assert f'data-guided="{a}-{b}"' in svg and f">grey: guided steps {a}–{b}<" in svg
    step = re.search(r"Detail prompt from step (\d+) of 30", info)[1]
    assert f'data-switch="{step}"' in svg and f">detail prompt from step {step}<" in svg
    ticks = {t: float(x) for x, t in re.findall(r'<text x="([\d.]+)"[^>]*class="rc-xtick">(\d+)<', svg)}
    assert min(map(int, ticks)) == 1 and max(map(int, ticks)) == 30
    line_x = float(re.search(r'class="rc-switch" x1="([\d.]+)"', svg)[1])
    spacing = (ticks["30"] - ticks["1"]) / 29
    assert abs(line_x - (ticks["1"] + (int(step) - 1.5) * spacing)) < 0.2
    assert "switch @" not in svg


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [1]), (5, [1, 2, 3, 4, 5]), (20, [1, 4, 6, 8, 10, 12, 14, 16, 18, 20]), (30, [1, 5, 10, 15, 20, 25, 30]),
     (150, [1, 20, 40, 60, 80, 100, 120, 140, 150])],
)
def test_tick_steps(n: int, expected: list[int]) -> None:
    assert _tick_steps(n) == expected


def test_factor_note():
    auto = factor_note({"factor_h": 0, "factor_w": 0}, 1024, 1536)
    assert auto == "Factor 0 = automatic: ×3 (height), ×2 (width) for 1024×1536 (SD1.x: native 512)"
    half = factor_note({"factor_h": 4, "factor_w": 0}, 1024, 1024, family="sdxl")
    assert half == "Factor ×4 (height, manual), ×1 (width, automatic) for 1024×1024 (SDXL: native 1024)"
    manual = factor_note({"factor_h": 2, "factor_w": 2}, 512, 512)
    assert manual.startswith("Manual factor ×2 (height), ×2 (width); automatic would be ×1, ×1")
    assert factor_note({}, "wide", 512) == ""


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_switch_after_the_last_step_reads_as_layout_throughout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A switch at step N (the level is not generated in time) is no "step N+1 of N"."""
    import lib_chroma.webui.preview as P

    real = P.curves_report

    def late(*args, **kwargs):
        rep = real(*args, **kwargs)
        rep["switch"] = {**rep["switch"], "step": len(rep["sigmas"]) - 1, "fraction": None}
        return rep

    monkeypatch.setattr(P, "curves_report", late)
    # P.preview, not this file's import: other tests may reload the module (a fresh one is in sys.modules then)
    _, svg, info = P.preview(S.RCSettings(enabled=True, prompt_mode="marker").to_dict(), "Euler", "Automatic", 10,
                           1024, 1024)
    assert info == "Layout prompt throughout: the switch level is not generated within the 10 steps."
    assert 'data-switch=""' in svg


def test_switch_info_says_what_the_switch_hands_over() -> None:
    """The level in image pixels (8 per latent pixel), how far it is formed, and which side gets what."""
    vals = S.RCSettings(enabled=True, prompt_mode="fields", switch_level=4, switch_q=0.5).to_dict()
    info = preview(vals, "DPM++ 2M", "Karras", 20, 1024, 1024)[2]
    assert "Hands over at 32 px: shapes of 32 px are half formed" in info
    assert "details of about 32 px and finer (eyes" in info
    coarse = preview({**vals, "switch_level": 16, "switch_q": 0.8}, "DPM++ 2M", "Karras", 20, 1024, 1024)[2]
    assert "shapes of 128 px are 80% formed" in coarse and "(eyes" not in coarse
    early = int(re.search(r"from step (\d+)", coarse)[1])
    assert early < int(re.search(r"from step (\d+)", info)[1])  # a coarser level hands over earlier
