"""The accordion (gradio 3.41 in A1111 v1.10, gradio 4.40 in Forge): every control comes from
:data:`lib_chroma.settings.FIELDS`.

Layout: the first-time view holds the readout and the ``basic`` fields (scale, factors, with a line saying what
the automatic factor is now); the ``advanced`` fields (window, shape, q, operator, nesting, passes, grid and any
field added later, with the presets on top) sit in a closed "Advanced" fold, the ``prompts`` fields in a closed
"Time-dependent prompts" fold and the curve plot in a closed "Curves" fold (:attr:`lib_chroma.settings.FieldSpec.group`
decides, so a new field needs no change here).

``build(script, is_img2img)`` returns the input components in field order (the API's positional order).
Display components (header readout, factor line, curve preview, switch/hires info) are wired with events and never
returned. The WebUI's own sampler/scheduler/steps/size components are captured by ``capture`` (the script's
``after_component``) and wired once per tab; ``build`` may be called again (the API builds throwaway copies)
without registering anything global.

Preview updates: a change of any input runs only a browser-side function (``rcPreviewChanged`` in
``javascript/resolution_chromatography.js``), which coalesces a burst of changes (a paste sets some twenty
components) into one click of a hidden "refresh" button, and makes none while the accordion is closed (it refreshes
once when the accordion is opened). The refresh button's click is the one server event that computes the preview.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import itertools
from typing import Any

import gradio as gr

from lib_chroma import settings as S
from lib_chroma.guidance import auto_factor
from lib_chroma.schedule import MODEL_FAMILIES
from lib_chroma.webui.preview import factor_note, preview, suggested_strength

#: WebUI component elem_ids (per tab prefix) the preview listens to.
HOST_IDS = ("sampling", "scheduler", "steps", "width", "height", "denoising_strength", "hr_scale", "hr-checkbox",
            "hr_resize_x", "hr_resize_y")
#: Optional host components the preview reads when they exist (the hires-fix target, for the cascade).
_PREVIEW_EXTRA = ("hr_scale", "hr-checkbox", "hr_resize_x", "hr_resize_y")

#: Host components by tab, our first build per tab, and the tabs whose preview events are wired. Reset by the
#: script file at every (re)load, since "Reload UI" builds new components.
_captured: dict[str, dict[str, Any]] = {"txt2img": {}, "img2img": {}}
_built: dict[str, tuple[list[Any], list[Any], Any, Any]] = {}
_wired: set[str] = set()
_PREVIEW_HOST = ("sampling", "scheduler", "steps", "width", "height")
#: The event argument of a browser-side function: ``_js`` in gradio 3.41 (A1111), ``js`` in gradio 4 (Forge, which
#: translates ``_js`` only for some events, not for a component's ``change``).
_JS_KW = "_js" if int(str(getattr(gr, "__version__", "3")).split(".")[0]) < 4 else "js"
#: Preview updates computed by this process (each readout carries its number: ``data-serial``).
_serial = itertools.count(1)


def reset() -> None:
    """Forget captured components and wiring (called when the script file is (re)loaded)."""
    for d in _captured.values():
        d.clear()
    _built.clear()
    _wired.clear()


def capture(component: Any, elem_id: str | None) -> None:
    """``Script.after_component``: remember the host components the preview depends on."""
    if not elem_id:
        return
    for tab in ("txt2img", "img2img"):
        for name in HOST_IDS:
            if elem_id == f"{tab}_{name}":
                _captured[tab][name] = component
                _try_wire(tab)


def _listen(component: Any, tab: str, enable: bool = False) -> None:
    """On change, tell the browser side that the preview is out of date (no server round trip: it coalesces
    bursts and skips a closed accordion, see the module docstring; ``release`` would miss values typed into a
    slider's number box). ``enable``: the enable checkbox, which the browser shows at once in the header's "off ·"
    prefix, so closing (and unticking) the accordion does not make its preview stale."""
    js = f"() => {{ rcPreviewChanged('{tab}', {'true' if enable else 'false'}); return []; }}"
    component.change(None, None, None, show_progress=False, **{_JS_KW: js})


def readout_html(text: str, serial: int) -> str:
    """The readout as the accordion shows it: the text, numbered by the preview update that computed it."""
    return f'<span class="rc-readout-text" data-serial="{serial}">{html.escape(text)}</span>'


def _try_wire(tab: str) -> None:
    """Wire the preview once our accordion and the host components it reads all exist (some host components,
    e.g. width and height, are created after the accordion)."""
    host = _captured[tab]
    if tab in _wired or tab not in _built or any(host.get(k) is None for k in _PREVIEW_HOST):
        return
    _wired.add(tab)
    inputs, outputs, apply_strength, refresh = _built[tab]
    host_inputs = [host[k] for k in _PREVIEW_HOST]
    extra_names = [k for k in _PREVIEW_EXTRA if host.get(k) is not None]
    extra = [host[k] for k in extra_names]

    def update(*vals: Any) -> tuple[Any, ...]:
        n = len(S.FIELD_NAMES)
        values = dict(zip(S.FIELD_NAMES, vals[:n]))
        sampler, scheduler, steps, w, h = vals[n : n + 5]
        ex = dict(zip(extra_names, vals[n + 5 :]))
        hires = None
        if ex.get("hr-checkbox"):
            hires = (float(ex.get("hr_scale") or 1.0), int(ex.get("hr_resize_x") or 0),
                     int(ex.get("hr_resize_y") or 0))
        fam = _family()
        readout, svg, info = preview(values, sampler, scheduler, steps, w, h, family=fam, hires=hires,
                                     forge=_forge())
        note = factor_note(values, w, h, family=fam)
        try:
            if "hr_scale" in ex:
                m = float(ex["hr_scale"])
            else:
                native = int(MODEL_FAMILIES[fam]["native"])
                m = max(
                    int(values["factor_h"]) or auto_factor(int(h), native),
                    int(values["factor_w"]) or auto_factor(int(w), native),
                )
            strength = suggested_strength(sampler, scheduler, steps, m, family=fam)
        except (ValueError, KeyError, TypeError):
            strength = None
        return readout_html(readout, next(_serial)), svg, info, strength, note

    all_inputs = inputs + host_inputs + extra
    for c in all_inputs:
        _listen(c, tab, enable=c is inputs[0])
    refresh.click(update, all_inputs, outputs, show_progress=False)
    target = host.get("denoising_strength")
    if target is not None:
        apply_strength.click(lambda v: v, [outputs[3]], [target], show_progress=False)


def _family() -> str:
    """The loaded model's family, without triggering a model load (``sd1`` while none is loaded)."""
    try:
        from modules import sd_models

        from lib_chroma.webui.generation import model_family

        model = sd_models.model_data.sd_model
        return (model_family(model) or "sd1") if model is not None else "sd1"
    except Exception:  # noqa: BLE001
        return "sd1"


@functools.cache
def _forge() -> bool:
    """Whether the host is Forge (its ``modules_forge`` package exists), where the cascade steps aside; looked up
    once per process."""
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def _initial() -> dict[str, Any]:
    """Starting values of the controls: the code defaults, overridden by the settings-section default preset
    (option ``rc_default_preset``; ``Auto`` keeps the code defaults, since no model may be loaded yet)."""
    values = {f.name: f.default for f in S.FIELDS}
    try:
        from modules import shared

        preset = getattr(shared.opts, "rc_default_preset", "Auto")
    except Exception:  # noqa: BLE001
        preset = "Auto"
    if preset in S.PRESET_CHOICES and preset != "Auto":
        values.update(S.preset_values(preset), preset=preset)
    return values


def _component(spec: S.FieldSpec, elem_id: str, value: Any = None) -> Any:
    kw = {"label": spec.label, "elem_id": elem_id, "info": spec.help}
    value = spec.default if value is None else value
    if spec.kind in ("int", "float"):
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, value=value, **kw)
    if spec.kind == "bool":
        return gr.Checkbox(value=value, **kw)
    if spec.kind == "choice":
        return gr.Radio(choices=list(spec.choices), value=value, **kw)
    return gr.Textbox(value=value, lines=1, max_lines=4, **kw)


def build(script: Any, is_img2img: bool) -> list[Any]:
    """Create the accordion; return the input components in :data:`S.FIELDS` order."""
    from modules.ui_components import InputAccordion

    tab = "img2img" if is_img2img else "txt2img"
    comps: dict[str, Any] = {}
    init = _initial()

    def add(name: str) -> None:
        comps[name] = _component(S.FIELD_BY_NAME[name], script.elem_id(name), init[name])

    with InputAccordion(False, label=S.TITLE, elem_id=script.elem_id("enabled")) as enabled:
        comps["enabled"] = enabled
        # The readout lives in the body; javascript/resolution_chromatography.js mirrors it into the header
        # (an event output inside InputAccordion.extra() breaks gradio 3.41's front-end start-up).
        readout = gr.HTML(value="", elem_id=script.elem_id("readout"), elem_classes=["rc-readout"])
        with gr.Row():
            for name in S.fields_in("basic"):
                if name != "enabled":
                    add(name)
        factor_info = gr.Markdown("", elem_id=script.elem_id("factor_info"), elem_classes=["rc-factor-info"])
        with gr.Accordion("Advanced", open=False, elem_id=script.elem_id("advanced")):
            with gr.Row():
                spec = S.FIELD_BY_NAME["preset"]
                comps["preset"] = gr.Dropdown(
                    choices=list(spec.choices),
                    value=init["preset"],
                    label=spec.label,
                    info=spec.help,
                    elem_id=script.elem_id("preset"),
                )
                apply_preset = gr.Button("Apply preset", elem_id=script.elem_id("apply_preset"), size="sm")
                reset = gr.Button("Reset to defaults", elem_id=script.elem_id("reset"), size="sm")
            for name in S.fields_in("advanced"):
                if name != "preset":
                    add(name)
            with gr.Row():
                strength = gr.Number(
                    label="Suggested hires denoising strength",
                    interactive=False,
                    elem_id=script.elem_id("hires_strength"),
                )
                apply_strength = gr.Button(
                    "Apply to hires fix", elem_id=script.elem_id("apply_strength"), size="sm"
                )
        with gr.Accordion("Time-dependent prompts", open=False, elem_id=script.elem_id("prompts")):
            for name in S.fields_in("prompts"):
                add(name)
            switch_info = gr.Markdown("", elem_id=script.elem_id("switch_info"))
        with gr.Accordion("Curves", open=False, elem_id=script.elem_id("plot")):
            plot = gr.HTML(value="", elem_id=script.elem_id("curves"), elem_classes=["rc-curves-box"])
        # clicked by javascript/resolution_chromatography.js (hidden by style.css): the one preview event
        refresh = gr.Button("Refresh preview", elem_id=script.elem_id("refresh"), elem_classes=["rc-hidden"])

    fam = _family()
    r0, svg0, info0 = preview(init, "Euler", "Automatic", 20, 512, 512, family=fam, forge=_forge())
    readout.value, plot.value, switch_info.value = readout_html(r0, 0), svg0, info0
    factor_info.value = factor_note(init, 512, 512, family=fam)
    strength.value = suggested_strength("Euler", "Automatic", 20, 2, family=fam)
    inputs = [comps[n] for n in S.FIELD_NAMES]

    def fill(preset: str) -> list[Any]:
        vals = S.preset_values(preset, _family())
        return [gr.update(value=vals[n]) if n in vals else gr.update() for n in S.FIELD_NAMES[2:]]

    apply_preset.click(fill, [comps["preset"]], inputs[2:], show_progress=False)
    reset.click(  # back to the starting values (code defaults + the settings-section default preset)
        lambda: [gr.update(value=v) for k, v in _initial().items() if k != "enabled"],
        [],
        inputs[1:],
        show_progress=False,
    )
    if tab not in _built:  # the main UI's build; the API's throwaway rebuilds are not wired to the host
        _built[tab] = (inputs, [readout, plot, switch_info, strength, factor_info], apply_strength, refresh)
        _try_wire(tab)
    _visibility(comps)
    script.infotext_fields = [(enabled, _paste_enabled)] + [
        (comps[n], (lambda d, n=n: S.infotext_value(n, d))) for n in S.FIELD_NAMES[1:]
    ]
    script.paste_field_names = [k for k in S.INFOTEXT_KEYS if k not in S.INFOTEXT_INFO_KEYS]
    return inputs


def _visibility(comps: dict[str, Any]) -> None:
    """Show only the controls the current window mode, weight shape and prompt mode use."""
    for chooser, targets in S.SHOWN_BY.items():
        names = list(targets)
        default = S.FIELD_BY_NAME[chooser].default
        for n in names:
            comps[n].visible = default in targets[n]

        def show(value: str, names: list[str] = names, targets: dict = targets) -> Any:
            ups = [gr.update(visible=value in targets[n]) for n in names]
            # gradio 3.41 takes a returned list as the value of a single output: return one update then
            return ups[0] if len(ups) == 1 else ups

        comps[chooser].change(show, [comps[chooser]], [comps[n] for n in names], show_progress=False)


def _paste_enabled(params: dict[str, str]) -> bool | None:
    """Enable on paste (option ``rc_enable_on_paste``, default on): enabled iff the infotext has ``RC
    scale``."""
    try:
        from modules import shared

        on = getattr(shared.opts, "rc_enable_on_paste", True)
    except Exception:  # noqa: BLE001
        on = True
    if not on:
        return None
    return S.INFOTEXT_MARKER in params
