"""The extension in a real browser: Playwright drives the system's Chromium against a WebUI started with its UI.

Scenarios (issue 5): the "Resolution Chromatography" accordion renders in txt2img; its curve plot is a non-empty
image and changes when the steps or the width change; the header readout follows the host's size and the
extension's fields; Generate with the extension enabled shows its infotext keys in the generation info; "Send to
txt2img" from PNG Info restores every field of the extension. Each test loads a fresh page; screenshots (and one
of every failing test's page) go to the folder the kit prints at the end (``WEBUI_KIT_SHOTS``).

Skips with one line when ``WEBUI_DIR`` is unset (the whole kit), when ``playwright`` is not installed, or when no
Chromium is found; see tests/webui/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib_chroma import settings as S
from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)
try:
    import playwright.sync_api  # noqa: F401
except ImportError:
    pytest.skip(
        "playwright is not installed: the browser suite needs `pip install -r tests/webui/requirements.txt`",
        allow_module_level=True,
    )
CHROMIUM = kit.find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "no Chromium found: the browser suite needs `apt-get install chromium` (or WEBUI_KIT_CHROMIUM=<binary>)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Locator, expect  # noqa: E402

from tests.webui.browser import UPDATE_MS, VIEWPORT, UIPage, chromium, nonwhite_fraction  # noqa: E402

TITLE = kit.EXTENSION_TITLE
# Readout: "<low w>×<low h> → <w>×<h> (×<fw>, ×<fh>) · guided steps a–b of n" (or "no guided steps"), then
# " · ≈c× plain model time", prefixed "off · " while the extension is disabled.
READOUT = re.compile(
    r"^(off · )?(\d+)×(\d+) → (\d+)×(\d+) \(×(\d+), ×(\d+)\) · (.+?) · ≈\d+\.\d\d× plain model time$"
)


@pytest.fixture(scope="module")
def ui_server(start_webui: Any) -> Iterator[kit.WebUI]:
    """A WebUI of its own with the Gradio UI (no ``--nowebui``): extension linked, tiny SD1 loaded."""
    server = start_webui(ckpt="sd1", ui=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (the system's binary, never a Playwright download)."""
    assert CHROMIUM is not None
    with chromium(CHROMIUM) as b:
        yield b


@pytest.fixture()
def ui(ui_server: kit.WebUI, browser: Browser, shots_dir: Path, request: pytest.FixtureRequest) -> Iterator[UIPage]:
    """A fresh page on the UI server, loaded; a failing test leaves a full-page screenshot behind."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    page = UIPage(context.new_page(), ui_server.url, shots_dir)
    try:
        page.open()
        yield page
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            page.shot(f"FAILED-{request.node.name}")
    finally:
        context.close()


def readout_parts(text: str) -> tuple[bool, tuple[int, int], tuple[int, int], tuple[int, int], str]:
    """(enabled, low size, requested size, (factor w, factor h), guided-steps text) of the header readout."""
    m = READOUT.match(text)
    assert m, f"unexpected readout: {text!r}"
    g = m.groups()
    return g[0] is None, (int(g[1]), int(g[2])), (int(g[3]), int(g[4])), (int(g[5]), int(g[6])), g[7]


def test_accordion_renders_in_txt2img(ui: UIPage) -> None:
    """The accordion is in txt2img (and img2img), closed and off at first; opening it shows every field."""
    acc = ui.accordion
    expect(acc).to_be_visible()
    assert ui.page.locator("#tab_txt2img").locator(f"#{ui.rc('enabled')}").count() == 1
    assert ui.page.locator(f"#{ui.rc('enabled', tab='img2img')}").count() >= 1
    expect(acc.locator(".label-wrap").first).to_contain_text(TITLE)
    assert not ui.enabled_box.is_checked() and not ui.is_open()
    enabled, *_ = readout_parts(ui.readout())
    assert not enabled, "the readout says 'off' while the extension is off"
    ui.shot("accordion-closed", ui.page.locator("#txt2img_accordions"))

    ui.open_accordion()
    assert ui.enabled_box.is_checked(), "A1111's InputAccordion: opening it enables it"
    for name in S.FIELD_NAMES[1:]:
        assert ui.page.locator(f"#{ui.rc(name)}").count() >= 1, f"no component for field {name}"
    for name in ("preset", "scale", "factor_h", "factor_w", "window", "shape", "operator", "nested", "prompt_mode"):
        ui.reveal(name)
    ui.open_fold("plot")
    expect(ui.svg()).to_be_visible()
    ui.shot("accordion-open", acc)

    # Fields that matter only in some mode may be hidden in the others: every field shows in some mode.
    def pick(chooser: str, choice: str) -> None:
        # A1111 runs queued events concurrently: wait until this choice's visibility has landed, so that its update
        # finishing late cannot undo what the next choice shows
        ui.set_field(chooser, choice)
        for name, modes in S.SHOWN_BY[chooser].items():
            shown = expect(ui.loc(ui.rc(name)))
            shown.to_be_visible(timeout=UPDATE_MS) if choice in modes else shown.to_be_hidden(timeout=UPDATE_MS)

    seen = ui.visible_fields()
    for chooser in ("window", "shape", "prompt_mode"):
        for choice in S.FIELD_BY_NAME[chooser].choices:
            pick(chooser, choice)
            seen |= ui.visible_fields()
        pick(chooser, S.FIELD_BY_NAME[chooser].default)
    assert seen == set(S.FIELD_NAMES[1:]), f"never shown: {sorted(set(S.FIELD_NAMES[1:]) - seen)}"
    pick("prompt_mode", "fields")
    ui.reveal("layout_prompt")
    ui.shot("accordion-prompt-fields", acc)
    assert not [e for e in ui.console_errors if "rc" in e.lower() or "chromatography" in e.lower()], ui.console_errors


def test_plot_is_nonempty_and_follows_steps_and_width(ui: UIPage) -> None:
    """The curve preview is a drawn image, and it is redrawn for a new step count and a new width."""
    ui.open_accordion()
    ui.open_fold("plot")
    svg = ui.svg()
    expect(svg).to_be_visible()
    box = svg.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 100, box
    assert svg.locator("polyline").count() >= 2, "no curves drawn"
    png = ui.shot("plot-default", svg).read_bytes()
    assert nonwhite_fraction(png) > 0.01, "the plot image is blank"
    assert svg.get_attribute("data-steps") == ui.slider_value("txt2img_steps") == "20"
    first = ui.svg_markup()

    ui.set_slider("txt2img_steps", 30)
    after_steps = ui.wait_svg_change(first)
    expect(ui.svg()).to_have_attribute("data-steps", "30")
    ui.shot("plot-steps-30", ui.svg())

    ui.set_slider("txt2img_width", 1024)
    after_width = ui.wait_svg_change(after_steps)
    assert after_width != first
    _, _, size, factor, _ = readout_parts(ui.readout())
    assert size[0] == 1024 and factor[0] == 2, ui.readout()
    png = ui.shot("plot-steps-30-width-1024", ui.svg()).read_bytes()
    assert nonwhite_fraction(png) > 0.01


def test_header_readout_follows_size_fields_and_enable(ui: UIPage) -> None:
    """The readout shown in the accordion's header: host size, factors, guided steps, and the on/off state (also
    while the accordion is closed)."""
    ui.open_accordion()
    text = ui.readout()
    enabled, low, size, factor, guided = readout_parts(text)
    host_size = (int(ui.slider_value("txt2img_width")), int(ui.slider_value("txt2img_height")))  # Forge: 512×640
    assert enabled and size == host_size and factor == (1, 1) and low == host_size, text
    assert guided == "no guided steps", text
    ui.expect_readout_in_header(text)

    ui.set_slider("txt2img_width", 1024)
    text = ui.wait_readout_change(text)
    ui.set_slider("txt2img_height", 768)
    text = ui.wait_readout_change(text)
    enabled, low, size, factor, guided = readout_parts(text)
    assert size == (1024, 768) and factor == (2, 2) and low == (512, 384), text
    assert re.fullmatch(r"guided steps \d+–\d+ of 20", guided), text
    ui.expect_readout_in_header(text)

    ui.set_field("factor_w", 4)
    text = ui.wait_readout_change(text)
    _, low, _, factor, _ = readout_parts(text)
    assert factor == (4, 2) and low == (256, 384), text
    ui.expect_readout_in_header(text)
    ui.shot("readout-1024x768-x4", ui.header)

    ui.set_field("factor_w", 0)
    text = ui.wait_readout_change(text)
    ui.set_field("cascade", True)
    text = ui.wait_readout_change(text)
    if kit.is_forge():  # the cascade steps aside in Forge, and the readout says so
        assert text.endswith(" · no cascade: the cascade runs in A1111 (Forge samples its passes differently)"), text
        assert re.search(r"guided steps \d+–\d+ of 20", text), text
    else:
        assert re.fullmatch(r"native 512×384 steps 1–\d+, then 1024×768 steps \d+–20 in \d+ steps, guided \d+–\d+ · "
                            r"≈0\.\d\d× plain model time", text), text
    ui.expect_readout_in_header(text)
    ui.shot("readout-cascade", ui.header)
    if not kit.is_forge():
        # with Hires. fix ticked, the output size is its target: 512×384 upscaled by 2
        ui.set_slider("txt2img_width", 512)
        text = ui.wait_readout_change(text)
        ui.set_slider("txt2img_height", 384)
        text = ui.wait_readout_change(text)
        assert "no cascade: 512×384 is within the model's native size" in text, text
        ui.page.locator("#txt2img_hr-visible-checkbox").check()
        text = ui.wait_readout_change(text)
        assert text.startswith("native 512×384 steps 1–") and ", then 1024×768 steps " in text, text
        ui.page.locator("#txt2img_hr-visible-checkbox").uncheck()
        text = ui.wait_readout_change(text)
    ui.set_field("cascade", False)
    text = ui.wait_readout_change(text)

    ui.enabled_box.uncheck()
    text = ui.wait_readout_change(text)
    assert text.startswith("off · "), text
    ui.expect_readout_in_header(text)
    assert ui.is_open(), "unticking the checkbox itself leaves the accordion open"
    ui.header.click(position={"x": 4, "y": 4})
    expect(ui.loc(ui.rc("scale"))).to_be_hidden()
    ui.expect_readout_in_header(text)
    ui.shot("readout-closed-off", ui.header)


def test_generate_shows_the_infotext_keys(ui: UIPage) -> None:
    """Generate with the extension enabled (2×2, manual factors at 128×128): the generation info has its keys."""
    ui.open_accordion()
    for elem_id, value in (("txt2img_width", 128), ("txt2img_height", 128), ("txt2img_steps", 4)):
        ui.set_slider(elem_id, value)
    values = {"enabled": True, "factor_h": 2, "factor_w": 2, "scale": 1.5}
    for name in ("factor_h", "factor_w", "scale"):
        ui.set_field(name, values[name])
    info = ui.generate("a red ball")
    expected = S.RCSettings(**values).to_infotext()
    for key, value in expected.items():
        assert f"{key}: {value}" in info, (key, value, info)
    assert "RC scale: 1.5" in info and "RC factor: 2" in info, info
    assert re.search(r"RC guided steps: \d+-\d+/4", info), info
    assert "RC error" not in info, info
    expect(ui.page.locator("#txt2img_gallery img").first).to_be_visible()
    ui.shot("generated")


def test_png_info_send_to_txt2img_restores_the_fields(ui: UIPage, ui_server: kit.WebUI, shots_dir: Path) -> None:
    """An image made with non-default settings, sent from PNG Info to txt2img, brings back every field."""
    rc: dict[str, Any] = {
        "enabled": True,
        "preset": "SD1.5",
        "scale": 1.5,
        "factor_h": 2,
        "factor_w": 3,
        "window": "fraction",
        "window_start": 0.1,
        "window_end": 0.6,
        "shape": "constant",
        "operator": "bilinear",
        "nested": False,
        "passes": "both",
        "prompt_mode": "fields",
        "layout_prompt": "a blue cube",
        "detail_prompt": "a red ball, detailed",
        "switch_level": 2,
        "switch_q": 0.7,
    }
    body = ui_server.txt2img(width=192, height=128, steps=5, alwayson_scripts={TITLE: {"args": [rc]}})
    png = shots_dir / "pnginfo-source.png"
    png.write_bytes(kit.image_bytes(body["images"][0]))
    ui.open_accordion()  # one preview update first: the page's readout then carries the server's count
    ui.wait_idle()
    serial = ui.serial()
    assert serial > 0
    ui.header.click(position={"x": 4, "y": 4})  # closed (and off) again before the paste
    expect(ui.loc(ui.rc("scale"))).to_be_hidden()
    params = ui.send_png_to_txt2img(png)
    assert "RC scale: 1.5" in params, params

    expect(ui.enabled_box).to_be_checked(timeout=20_000)
    expect(ui.loc("txt2img_width").locator("input[type=number]")).to_have_value("192")
    assert ui.slider_value("txt2img_height") == "128" and ui.slider_value("txt2img_steps") == "5"
    assert ui.is_open(), "a pasted enabled accordion is shown open"
    ui.wait_idle()
    expected = S.RCSettings(**rc).to_dict()
    got = {name: ui.field_value(name) for name in S.FIELD_NAMES}
    wrong = {n: (got[n], expected[n]) for n in S.FIELD_NAMES if got[n] != expected[n]}
    assert not wrong, f"fields not restored (got, expected): {wrong}"
    _, low, size, factor, _ = readout_parts(ui.readout())
    assert size == (192, 128) and factor == (3, 2) and low == (64, 64), ui.readout()
    ui.page.wait_for_timeout(800)
    ui.wait_idle()
    assert ui.serial() == serial + 1, f"one preview update per paste, got {ui.serial() - serial}"
    ui.shot("pasted-into-txt2img", ui.accordion)


def test_first_time_view_and_advanced_fold(ui: UIPage) -> None:
    """Opened for the first time, the accordion shows the readout, the scale, the factors with what the
    automatic factor is now and the cascade box; everything else waits in closed folds: "Advanced" (presets on
    top, then window, shape, q, operator, nesting, passes, grid and any field added later), "Time-dependent
    prompts" and "Curves"."""
    ui.open_accordion()
    basic = {n for n in S.fields_in("basic") if n != "enabled"}
    assert basic == {"scale", "factor_h", "factor_w", "cascade"}
    assert ui.visible_fields() == basic, ui.visible_fields()
    for fold in ui.FOLDS:
        assert not ui.fold_is_open(fold), fold
    note = ui.loc(ui.rc("factor_info"))
    expect(note).to_be_visible()
    host = (ui.slider_value("txt2img_width"), ui.slider_value("txt2img_height"))
    expect(note).to_contain_text(f"Factor 0 = automatic: ×1 (height), ×1 (width) for {host[0]}×{host[1]}")
    ui.shot("first-time-view", ui.accordion)
    ui.set_slider("txt2img_width", 1024)
    ui.set_slider("txt2img_height", 1024)
    expect(note).to_contain_text("×2 (height), ×2 (width) for 1024×1024", timeout=20_000)
    expect(ui.readout_box).to_contain_text("guided steps 1–", timeout=20_000)
    ui.wait_idle()
    ui.shot("first-time-view-1024", ui.accordion)
    ui.set_field("factor_h", 3)
    expect(note).to_contain_text("×3 (height, manual), ×2 (width, automatic)", timeout=20_000)

    ui.open_fold("advanced")
    advanced = set(S.fields_in("advanced"))
    assert {"preset", "window", "shape", "q_end", "operator", "nested", "passes", "grid"} <= advanced
    shown = ui.visible_fields()
    hidden_by_mode = {"window_sigma_hi", "window_sigma_lo", "window_start", "window_end"}  # window "auto"
    assert shown == basic | (advanced - hidden_by_mode), shown
    for button in ("apply_preset", "reset", "apply_strength"):
        expect(ui.loc(ui.rc(button))).to_be_visible()
    assert not set(S.fields_in("prompts")) & shown
    ui.shot("advanced-fold", ui.accordion)
    ui.set_choice(ui.rc("preset"), "SDXL")
    ui.loc(ui.rc("apply_preset")).click()  # presets stay reachable and act (on fields in a closed fold too)
    level = ui.loc(ui.rc("switch_level")).locator("input[type=number]")
    expect(level).to_have_value(str(S.PRESETS["SDXL"]["switch_level"]), timeout=20_000)
    assert S.PRESETS["SDXL"]["switch_level"] != S.FIELD_BY_NAME["switch_level"].default


def _svg_text(locator: Locator) -> str:
    """An SVG element's text (SVG elements have no ``innerText``)."""
    return (locator.text_content() or "").strip()


def test_plot_labels_and_one_based_markers(ui: UIPage) -> None:
    """The plot reads without the paper: axis titles, tick values, what a level is; and the guided steps and the
    prompt switch are marked with the readout's and the switch line's 1-based step numbers."""
    from lib_chroma.webui.svgplot import LEVEL_NOTE, X_TITLE, Y2_TITLE, Y_TITLE

    ui.open_accordion()
    ui.open_fold("plot")
    for elem_id, value in (("txt2img_width", 1024), ("txt2img_height", 1024), ("txt2img_steps", 30)):
        before = ui.readout()
        ui.set_slider(elem_id, value)
        ui.wait_readout_change(before)
    before = ui.svg_markup()
    ui.set_field("prompt_mode", "marker")
    ui.wait_svg_change(before)
    ui.wait_idle()
    svg = ui.svg()  # SVG <text> has no innerText: read textContent
    texts = [t.strip() for t in svg.locator("text").all_text_contents()]
    for title in (X_TITLE, Y_TITLE, Y2_TITLE, LEVEL_NOTE):
        assert title in texts, (title, texts)
    xticks = [t.strip() for t in svg.locator("text.rc-xtick").all_text_contents()]
    assert xticks[0] == "1" and xticks[-1] == "30", xticks
    assert [t.strip() for t in svg.locator("text.rc-ytick").all_text_contents()][:3] == ["0", "0.5", "1"]
    assert any(re.fullmatch(r"level 2 \(16 px\)", t) for t in texts), texts

    guided = re.search(r"guided steps (\d+)–(\d+) of 30", ui.readout())
    assert guided, ui.readout()
    label = _svg_text(svg.locator("text.rc-guided-label"))
    assert label == f"grey: guided steps {guided[1]}–{guided[2]}", (label, ui.readout())
    assert svg.get_attribute("data-guided") == f"{guided[1]}-{guided[2]}"

    info = ui.loc(ui.rc("switch_info")).inner_text()
    switch = re.search(r"Detail prompt from step (\d+) of 30", info)
    assert switch, info
    assert _svg_text(svg.locator("text.rc-switch-label")) == f"detail prompt from step {switch[1]}"
    assert svg.get_attribute("data-switch") == switch[1]
    # the dashed line sits where that step starts: between the ticks of the steps before and at it
    line_x = float(svg.locator("line.rc-switch").get_attribute("x1") or "nan")
    box = svg.bounding_box()
    assert box is not None
    ui.shot("plot-labels", svg)
    ticks = {_svg_text(t): float(t.get_attribute("x") or "nan") for t in svg.locator("text.rc-xtick").all()}
    step = int(switch[1])
    spacing = (ticks["30"] - ticks["1"]) / 29
    assert abs(line_x - (ticks["1"] + (step - 1.5) * spacing)) < 0.6, (line_x, ticks, step)


def test_one_preview_update_per_burst_and_none_while_closed(ui: UIPage) -> None:
    """Each burst of changes makes one preview update; while the accordion is closed none is made (the header's
    readout is marked stale) and opening it makes exactly one."""
    ui.open_accordion()
    ui.wait_idle()
    start = ui.serial()  # the update made by opening it (the server counts updates; this page is its only client)
    assert start > 0
    before = ui.readout()
    ui.set_slider("txt2img_width", 1024)
    ui.wait_readout_change(before)
    ui.wait_idle()
    ui.page.wait_for_timeout(600)
    assert ui.serial() == start + 1, (start, ui.serial())
    ui.open_fold("advanced")
    serial = ui.serial()
    ui.set_choice(ui.rc("preset"), "SD2.x")
    ui.loc(ui.rc("apply_preset")).click()  # sets a dozen fields at once
    ui.wait_idle()
    ui.page.wait_for_timeout(800)
    ui.wait_idle()
    assert ui.serial() == serial + 1, (serial, ui.serial())

    ui.header.click(position={"x": 4, "y": 4})  # close it (A1111's InputAccordion also unticks it)
    expect(ui.loc(ui.rc("scale"))).to_be_hidden()
    expect(ui.header_readout()).to_contain_text("off · ")  # the prefix follows the checkbox without an update
    expect(ui.header_readout()).not_to_have_class(re.compile(r"\brc-stale\b"))  # closing alone changes nothing else
    ui.page.wait_for_timeout(600)
    closed = ui.serial()
    ui.set_slider("txt2img_height", 1024)
    ui.set_slider("txt2img_steps", 30)
    ui.page.wait_for_timeout(1500)
    assert ui.serial() == closed, "no preview update while the accordion is closed"
    expect(ui.header_readout()).to_have_class(re.compile(r"\brc-stale\b"))
    ui.header.click(position={"x": 4, "y": 4})
    expect(ui.loc(ui.rc("scale"))).to_be_visible(timeout=20_000)
    expect(ui.readout_box).to_contain_text("1024×1024", timeout=20_000)
    ui.wait_idle()
    ui.page.wait_for_timeout(800)
    assert ui.serial() == closed + 1, (closed, ui.serial())
    assert "of 30" in ui.readout()
    expect(ui.header_readout()).not_to_have_class(re.compile(r"\brc-stale\b"))
