"""The accordion (gradio 3.41, A1111 v1.10): every control comes from :data:`lib_chroma.settings.FIELDS`.

``build(script, is_img2img)`` returns the input components in field order (the API's positional order).
Display components (header readout, curve preview, switch/hires info) are wired with events and never
returned. The WebUI's own sampler/scheduler/steps/size components are captured by ``capture`` (the script's
``after_component``) and wired once per tab; ``build`` may be called again (the API builds throwaway copies)
without registering anything global.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from lib_chroma import settings as S
from lib_chroma.guidance import auto_factor
from lib_chroma.schedule import MODEL_FAMILIES
from lib_chroma.webui.preview import preview, suggested_strength

#: WebUI component elem_ids (per tab prefix) the preview listens to.
HOST_IDS = ("sampling", "scheduler", "steps", "width", "height", "denoising_strength")

_captured: dict[str, dict[str, Any]] = {"txt2img": {}, "img2img": {}}
_wired: set[int] = set()


def capture(component: Any, elem_id: str | None) -> None:
    """``Script.after_component``: remember the host components the preview depends on."""
    if not elem_id:
        return
    for tab in ("txt2img", "img2img"):
        for name in HOST_IDS:
            if elem_id == f"{tab}_{name}":
                _captured[tab][name] = component


def _family() -> str:
    """The loaded model's family, without triggering a model load (``sd1`` while none is loaded)."""
    try:
        from modules import sd_models

        from lib_chroma.webui.a1111 import model_family

        model = sd_models.model_data.sd_model
        return model_family(model) if model is not None else "sd1"
    except Exception:  # noqa: BLE001
        return "sd1"


def _component(spec: S.FieldSpec, elem_id: str) -> Any:
    kw = {"label": spec.label, "elem_id": elem_id, "info": spec.help}
    if spec.kind in ("int", "float"):
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, value=spec.default, **kw)
    if spec.kind == "bool":
        return gr.Checkbox(value=spec.default, **kw)
    if spec.kind == "choice":
        return gr.Radio(choices=list(spec.choices), value=spec.default, **kw)
    return gr.Textbox(value=spec.default, lines=1, max_lines=4, **kw)


def build(script: Any, is_img2img: bool) -> list[Any]:
    """Create the accordion; return the input components in :data:`S.FIELDS` order."""
    from modules.ui_components import InputAccordion

    tab = "img2img" if is_img2img else "txt2img"
    comps: dict[str, Any] = {}
    with InputAccordion(False, label=S.TITLE, elem_id=script.elem_id("enabled")) as enabled:
        comps["enabled"] = enabled
        with enabled.extra():
            readout = gr.HTML(value="", elem_id=script.elem_id("readout"), elem_classes=["rc-readout"])
        with gr.Row():
            comps["preset"] = _component(S.FIELD_BY_NAME["preset"], script.elem_id("preset"))
            apply_preset = gr.Button("Apply preset", elem_id=script.elem_id("apply_preset"), size="sm")
            reset = gr.Button("Reset to defaults", elem_id=script.elem_id("reset"), size="sm")
        with gr.Tab("Upsample guidance"):
            for name in (
                "scale",
                "factor_h",
                "factor_w",
                "window",
                "window_sigma_hi",
                "window_sigma_lo",
                "window_start",
                "window_end",
                "shape",
                "q_end",
                "operator",
                "nested",
                "passes",
            ):
                comps[name] = _component(S.FIELD_BY_NAME[name], script.elem_id(name))
        with gr.Tab("Time-dependent prompts"):
            for name in (
                "prompt_mode",
                "layout_prompt",
                "detail_prompt",
                "marker",
                "switch_level",
                "switch_q",
            ):
                comps[name] = _component(S.FIELD_BY_NAME[name], script.elem_id(name))
            switch_info = gr.Markdown("", elem_id=script.elem_id("switch_info"))
            with gr.Row():
                strength = gr.Number(
                    label="Suggested hires denoising strength",
                    interactive=False,
                    elem_id=script.elem_id("hires_strength"),
                )
                apply_strength = gr.Button(
                    "Apply to hires fix", elem_id=script.elem_id("apply_strength"), size="sm"
                )
        plot = gr.HTML(value="", elem_id=script.elem_id("curves"), elem_classes=["rc-curves-box"])

    r0, svg0, info0 = preview(S.RCSettings().to_dict(), "Euler", "Automatic", 20, 512, 512, family=_family())
    readout.value, plot.value, switch_info.value = r0, svg0, info0
    inputs = [comps[n] for n in S.FIELD_NAMES]
    host = _captured[tab]
    host_inputs = [host.get(k) for k in ("sampling", "scheduler", "steps", "width", "height")]
    have_host = all(c is not None for c in host_inputs)

    def update(*vals: Any) -> tuple[Any, ...]:
        values = dict(zip(S.FIELD_NAMES, vals[: len(S.FIELD_NAMES)]))
        rest = list(vals[len(S.FIELD_NAMES) :]) if have_host else ["Euler", "Automatic", 20, 512, 512]
        return preview(values, *rest, family=_family())

    ev_inputs = inputs + (host_inputs if have_host else [])
    outputs = [readout, plot, switch_info]
    for c in inputs:
        (c.release if isinstance(c, gr.Slider) else c.change)(update, ev_inputs, outputs, show_progress=False)
    if have_host and id(host_inputs[0]) not in _wired:
        _wired.add(id(host_inputs[0]))  # host components are wired once, not on the API's throwaway rebuilds
        for c in host_inputs:
            (c.release if isinstance(c, gr.Slider) else c.change)(
                update, ev_inputs, outputs, show_progress=False
            )

    def fill(preset: str) -> list[Any]:
        vals = S.preset_values(preset, _family())
        return [gr.update(value=vals[n]) if n in vals else gr.update() for n in S.FIELD_NAMES[2:]]

    apply_preset.click(fill, [comps["preset"]], inputs[2:], show_progress=False)
    reset.click(
        lambda: [gr.update(value=f.default) for f in S.FIELDS[1:]], [], inputs[1:], show_progress=False
    )
    if have_host:

        def strength_fn(
            sampler: str, scheduler: str, steps: float, w: float, h: float, fh: float, fw: float
        ) -> float:
            native = int(MODEL_FAMILIES[_family()]["native"])
            m = max(int(fh) or auto_factor(int(h), native), int(fw) or auto_factor(int(w), native))
            return suggested_strength(sampler, scheduler, steps, m, family=_family())

        for c in (comps["factor_h"], comps["factor_w"]):
            c.release(
                strength_fn,
                host_inputs + [comps["factor_h"], comps["factor_w"]],
                [strength],
                show_progress=False,
            )
        target = host.get("denoising_strength")
        if target is not None:
            apply_strength.click(lambda v: v, [strength], [target], show_progress=False)

    script.infotext_fields = [(enabled, _paste_enabled)] + [
        (comps[n], (lambda d, n=n: S.infotext_value(n, d))) for n in S.FIELD_NAMES[1:]
    ]
    script.paste_field_names = list(dict.fromkeys(k for k in S.INFOTEXT_KEYS[:-3]))
    return inputs


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
