"""Browser side of the real-WebUI kit: Playwright driving the system's Chromium against a WebUI started with its UI.

Needs the ``playwright`` Python package (``tests/webui/requirements.txt``) and a Chromium binary (Debian:
``apt-get install chromium``; see :func:`tests.webui.kit.find_chromium`). Playwright's own browser download is
never used: the browser is launched with ``executable_path``. Everything here talks to one page of A1111 v1.10's
Gradio 3.41 UI; the selectors below are the WebUI's and the extension's ``elem_id`` values.

Gradio quirks this module handles: sliders fire ``release`` (which the extension listens to) when their number
box loses focus, so :meth:`UIPage.set_slider` fills the box and blurs it; ``gr.HTML`` puts its ``elem_id`` on two
nested elements, so those are read through ``.first``; A1111's ``InputAccordion`` ticks its checkbox when it is
opened and unticks it when it is closed (until the checkbox itself is clicked).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from lib_chroma import settings as S

#: Time limits (ms): page load and the first Gradio round trips are slow on a loaded 2-core CPU.
LOAD_MS = 120_000
UPDATE_MS = 20_000
GENERATE_MS = 120_000
VIEWPORT = {"width": 1400, "height": 1000}


def rc_prefix(tab: str = "txt2img") -> str:
    """The extension's ``elem_id`` prefix in a tab (A1111's ``Script.elem_id``: ``script_<tab>_<title>_``)."""
    return f"script_{tab}_{S.TITLE.lower().replace(' ', '_')}_"


@contextmanager
def chromium(executable: Path) -> Iterator[Browser]:
    """A headless Chromium at ``executable`` driven by Playwright; always closed afterwards."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(executable), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def nonwhite_fraction(png: bytes) -> float:
    """Share of pixels of a PNG screenshot that are not (near) white: 0 for a blank plot."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        grey = img.convert("L")
        hist = grey.histogram()
    return 1.0 - sum(hist[245:]) / max(1, sum(hist))


class UIPage:
    """One browser page on the WebUI, with helpers for the txt2img tab and the extension's accordion."""

    def __init__(self, page: Page, url: str, shots: Path) -> None:
        self.page = page
        self.url = url
        self.shots = shots
        self.console_errors: list[str] = []
        page.on("pageerror", lambda err: self.console_errors.append(str(err)))

    # -- navigation ------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Load the UI and wait until A1111's ``onUiLoaded`` scripts have run (the accordion's checkbox exists)."""
        self.page.goto(self.url, timeout=LOAD_MS, wait_until="domcontentloaded")
        self.page.wait_for_selector("#txt2img_generate", timeout=LOAD_MS)
        self.page.wait_for_selector(f"#{self.rc('enabled')}-visible-checkbox", state="attached", timeout=LOAD_MS)

    def rc(self, name: str, tab: str = "txt2img") -> str:
        """The ``elem_id`` of one of the extension's components (``enabled``, ``readout``, ``curves``, a field)."""
        return rc_prefix(tab) + name

    def loc(self, elem_id: str) -> Locator:
        """The (outer) element with that ``elem_id``."""
        return self.page.locator(f"#{elem_id}").first

    def shot(self, name: str, locator: Locator | None = None) -> Path:
        """Save a screenshot (of ``locator``, else the whole page) as ``<shots>/<name>.png``; return its path."""
        path = self.shots / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        if locator is None:
            self.page.screenshot(path=str(path), full_page=True)
        else:
            locator.screenshot(path=str(path))
        return path

    # -- the accordion -------------------------------------------------------------------------------------------

    @property
    def accordion(self) -> Locator:
        """The extension's accordion in txt2img."""
        return self.loc(self.rc("enabled"))

    @property
    def enabled_box(self) -> Locator:
        """The accordion's visible checkbox (A1111 inserts it into the header)."""
        return self.page.locator(f"#{self.rc('enabled')}-visible-checkbox")

    def is_open(self) -> bool:
        """Whether the accordion is open."""
        return "open" in (self.accordion.locator(".label-wrap").first.get_attribute("class") or "")

    def open_accordion(self) -> None:
        """Open the accordion (which also ticks its checkbox) and wait for its fields and for the readout to say
        "on"."""
        if not self.is_open():
            self.header.click(position={"x": 4, "y": 4})
            expect(self.enabled_box).to_be_checked(timeout=UPDATE_MS)
            # the server answers the enable change asynchronously: wait for the readout to say "on"
            expect(self.readout_box).not_to_have_text(re.compile(r"^\s*off · "), timeout=UPDATE_MS)
        expect(self.loc(self.rc("scale"))).to_be_visible(timeout=UPDATE_MS)
        self.wait_idle()

    def wait_idle(self) -> None:
        """Wait until no Gradio event of the accordion is pending (its status overlays are translucent then).

        Fails with the pending components and the readout (which shows the preview's error message, if any)."""
        pending = self.accordion.locator(".wrap.translucent")
        try:
            expect(pending).to_have_count(0, timeout=UPDATE_MS)
        except AssertionError:
            ids = pending.evaluate_all("els => els.map(e => e.parentElement.id || e.parentElement.className)")
            raise AssertionError(
                f"accordion events still pending after {UPDATE_MS} ms (an event loop?): {ids}; "
                f"readout: {self.readout()!r}"
            ) from None

    #: The accordion's folds (closed at first), by the name of their ``elem_id``.
    FOLDS = ("advanced", "prompts", "plot")

    def fold_is_open(self, fold: str) -> bool:
        """Whether one of the accordion's folds (``advanced``, ``prompts``, ``plot``) is open."""
        label = self.loc(self.rc(fold)).locator(".label-wrap").first
        return "open" in (label.get_attribute("class") or "")

    def open_fold(self, fold: str) -> None:
        """Open one of the accordion's folds (no-op when open)."""
        if not self.fold_is_open(fold):
            self.loc(self.rc(fold)).locator(".label-wrap").first.click()
        expect(self.loc(self.rc(fold)).locator(".label-wrap").first).to_have_class(re.compile(r"\bopen\b"),
                                                                                  timeout=UPDATE_MS)

    def fold_of(self, name: str) -> str | None:
        """The fold that holds a component of the accordion (None: the first-time view)."""
        for fold in self.FOLDS:
            if self.page.locator(f"#{self.rc(fold)} #{self.rc(name)}").count():
                return fold
        return None

    def reveal(self, name: str) -> Locator:
        """A field's component, made visible: the fold holding it is opened, and if the accordion groups fields in
        tabs, the tab holding it is clicked (fields that only matter in some mode are shown by picking the mode
        first, see :meth:`visible_fields`)."""
        target = self.loc(self.rc(name))
        fold = self.fold_of(name)
        if fold is not None and not target.is_visible():
            self.open_fold(fold)
        if not target.is_visible():
            for button in self.accordion.locator(".tab-nav button").all():
                button.click()
                if target.is_visible():
                    break
        expect(target).to_be_visible(timeout=UPDATE_MS)
        return target

    def visible_fields(self) -> set[str]:
        """The extension's fields whose component is showing now (after pending events have settled)."""
        self.wait_idle()
        return {n for n in S.FIELD_NAMES[1:] if self.loc(self.rc(n)).is_visible()}

    @property
    def readout_box(self) -> Locator:
        """The header readout (the inner element of the two that carry its ``elem_id``: only the text)."""
        elem_id = self.rc("readout")
        # gradio 3.41 puts the elem_id on the .prose element itself, gradio 4 (Forge) on a block around it
        return self.page.locator(f"#{elem_id}.prose, #{elem_id} .prose").first

    def readout(self) -> str:
        """The readout's text, as the server wrote it."""
        return self.readout_box.inner_text().strip()

    def serial(self) -> int:
        """The number of the preview update that wrote the readout (0: the one built with the page)."""
        mark = self.page.locator(f"#{self.rc('readout')} .rc-readout-text").first
        return int(mark.get_attribute("data-serial") or -1)

    def header_readout(self) -> Locator:
        """The readout the extension's script mirrors into the accordion's header."""
        return self.header.locator(".rc-header-readout")

    @property
    def header(self) -> Locator:
        """The accordion's header (its ``.label-wrap``: checkbox, title, the readout shown there, arrow)."""
        return self.accordion.locator(".label-wrap").first

    def expect_readout_in_header(self, text: str) -> None:
        """Wait until the accordion's header shows ``text`` (the extension may mirror it there in the browser) and,
        once no event is pending, nothing but the title, the readout and the arrow (no Gradio progress text)."""
        expect(self.header).to_contain_text(text, timeout=UPDATE_MS)
        self.wait_idle()
        expected = rf"^\s*{re.escape(S.TITLE)}\s*{re.escape(text)}\s*▼?\s*$"
        expect(self.header).to_have_text(re.compile(expected), use_inner_text=True, timeout=UPDATE_MS)

    def svg(self) -> Locator:
        """The curve preview's ``<svg>``."""
        return self.page.locator(f"#{self.rc('curves')} svg").first

    def svg_markup(self) -> str:
        """The preview's markup ('' when there is no ``<svg>``)."""
        box = self.page.locator(f"#{self.rc('curves')} svg")
        return box.first.evaluate("e => e.outerHTML") if box.count() else ""

    def wait_readout_change(self, before: str) -> str:
        """Wait until the readout differs from ``before``; return the new text."""
        expect(self.readout_box).not_to_have_text(before, timeout=UPDATE_MS)
        return self.readout()

    def wait_svg_change(self, before: str) -> str:
        """Wait until the preview's markup differs from ``before``; return the new markup."""
        self.page.wait_for_function(
            "([sel, before]) => { const e = document.querySelector(sel);"
            " return !!e && e.outerHTML !== before; }",
            arg=[f"#{self.rc('curves')} svg", before],
            timeout=UPDATE_MS,
        )
        return self.svg_markup()

    # -- Gradio controls ---------------------------------------------------------------------------------------

    def set_slider(self, elem_id: str, value: float) -> None:
        """Type into a slider's number box and leave it: Gradio then fires ``change`` and ``release``."""
        box = self.loc(elem_id).locator("input[type=number]")
        box.fill(str(value))
        box.blur()

    def slider_value(self, elem_id: str) -> str:
        """A slider's number box."""
        return self.loc(elem_id).locator("input[type=number]").input_value()

    def set_choice(self, elem_id: str, value: str) -> None:
        """Pick a choice of a radio group or of a (single-choice) dropdown."""
        box = self.loc(elem_id)
        radio = box.locator(f"input[type=radio][value='{value}']")
        if radio.count():
            radio.check()
            return
        box.locator("input").first.click()
        # gradio 3.41 marks an option with data-value, gradio 4 (Forge) with aria-label
        box.locator(f"ul.options li[data-value='{value}'], ul.options li[aria-label='{value}']").first.click()
        expect(box.locator("input").first).to_have_value(value, timeout=UPDATE_MS)

    def choice_value(self, elem_id: str) -> str | None:
        """The picked choice of a radio group or of a (single-choice) dropdown."""
        box = self.loc(elem_id)
        if box.locator("input[type=radio]").count():
            picked = box.locator("input[type=radio]:checked")
            return picked.get_attribute("value") if picked.count() else None
        return box.locator("input").first.input_value()

    def field_value(self, name: str) -> Any:
        """One extension field as the UI shows it, typed by its :data:`lib_chroma.settings.FIELDS` kind."""
        spec = S.FIELD_BY_NAME[name]
        elem_id = self.rc(name)
        if name == "enabled":
            return self.enabled_box.is_checked()
        if spec.kind in ("int", "float"):
            text = self.slider_value(elem_id)
            return int(float(text)) if spec.kind == "int" else float(text)
        if spec.kind == "bool":
            return self.loc(elem_id).locator("input[type=checkbox]").is_checked()
        if spec.kind == "choice":
            return self.choice_value(elem_id)
        return self.loc(elem_id).locator("textarea, input[type=text]").first.input_value()

    def set_field(self, name: str, value: Any) -> None:
        """Set one extension field through the UI."""
        spec = S.FIELD_BY_NAME[name]
        elem_id = self.rc(name)
        self.reveal(name)
        if spec.kind in ("int", "float"):
            self.set_slider(elem_id, value)
        elif spec.kind == "bool":
            self.loc(elem_id).locator("input[type=checkbox]").set_checked(bool(value))
        elif spec.kind == "choice":
            self.set_choice(elem_id, str(value))
        else:
            self.loc(elem_id).locator("textarea, input[type=text]").first.fill(str(value))

    # -- generation ----------------------------------------------------------------------------------------------

    def generate(self, prompt: str) -> str:
        """Type the prompt, press Generate and wait for the new generation info; return its text."""
        self.page.locator("#txt2img_prompt textarea").fill(prompt)
        info = self.loc("html_info_txt2img")
        before = info.inner_text()
        self.page.locator("#txt2img_generate").click()
        expect(info).not_to_have_text(before, timeout=GENERATE_MS)
        expect(info).to_contain_text("Steps: ", timeout=GENERATE_MS)
        expect(self.page.locator("#txt2img_generate")).to_be_visible(timeout=GENERATE_MS)  # the job is over
        return info.inner_text()

    def send_png_to_txt2img(self, png: Path) -> str:
        """PNG Info tab: upload ``png``, wait for its parameters, press "Send to txt2img"; return the parameters."""
        self.page.locator("#tabs > .tab-nav button", has_text="PNG Info").click()
        self.page.locator("#pnginfo_image input[type=file]").set_input_files(str(png))
        params = self.page.locator("#pnginfo_generation_info textarea")
        expect(params).not_to_have_value("", timeout=UPDATE_MS)
        text = params.input_value()
        self.page.locator("#txt2img_tab").click()
        expect(self.page.locator("#txt2img_generate")).to_be_visible(timeout=UPDATE_MS)
        return text
