"""The accordion's preview (readout, SVG curves, hires suggestion): content and the 50 ms budget."""

from __future__ import annotations

import re
import time

from lib_chroma import settings as S
from lib_chroma.webui.preview import preview, suggested_strength
from lib_chroma.webui.svgplot import curves_svg


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
    assert readout == (f"native 512² steps 1–{nat.user_steps[1] + 1}, then 1024² steps {full.user_steps[0] + 1}–20 "
                       f"guided {g[0] + 1}–{g[1] + 1} · ≈{setup.rel_cost:.2f}× plain model time")
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
    assert 'data-window=""' in curves_svg(rep)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
