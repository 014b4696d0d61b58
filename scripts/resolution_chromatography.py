"""A1111 entry point: the always-visible "Resolution Chromatography" script. Thin: the UI, the hooks and the
callbacks live in ``lib_chroma.webui``; this file only forwards to them and registers the global callbacks
once per (re)load of the scripts (A1111 clears every callback before it re-imports this file)."""

from __future__ import annotations

from modules import script_callbacks, scripts

from lib_chroma import settings as S
from lib_chroma.webui import a1111, api, options, ui, xyz

a1111.register_callbacks()
ui.reset()
script_callbacks.on_before_ui(xyz.add_axes, name="resolution_chromatography_xyz")
script_callbacks.on_ui_settings(options.add_options, name="resolution_chromatography_options")
script_callbacks.on_app_started(lambda demo, app: api.install(app), name="resolution_chromatography_api")


class ResolutionChromatography(scripts.Script):
    """Upsample guidance, chromatography-timed prompts and curve previews for one-pass high-resolution
    images."""

    section = "accordions"
    create_group = False

    def title(self) -> str:
        return S.TITLE

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        return ui.build(self, is_img2img)

    def after_component(self, component, **kwargs) -> None:
        ui.capture(component, kwargs.get("elem_id"))

    def process(self, p, *args) -> None:
        a1111.on_process(p, args)

    def process_batch(self, p, *args, **kwargs) -> None:
        a1111.on_process_batch(p)

    def process_before_every_sampling(self, p, *args, **kwargs) -> None:
        x = kwargs.get("x")
        if x is not None:
            a1111.on_before_sampling(p, x)

    def postprocess(self, p, processed, *args) -> None:
        a1111.on_postprocess(p)
