"""WebUI entry point: the always-visible "Resolution Chromatography" script, for A1111 and Forge. Thin: the UI,
the hooks and the callbacks live in ``lib_chroma.webui``; this file only forwards to them, choosing the adapter
by the processing object's model (Forge's engines have ``forge_objects``), and registers the global callbacks
once per (re)load of the scripts (the WebUI clears every callback before it re-imports this file)."""

from __future__ import annotations

from types import ModuleType

from modules import script_callbacks, scripts

from lib_chroma import settings as S
from lib_chroma.webui import a1111, api, forge, generation, options, ui, xyz

a1111.register_callbacks()
ui.reset()
script_callbacks.on_before_ui(xyz.add_axes, name="resolution_chromatography_xyz")
script_callbacks.on_ui_settings(options.add_options, name="resolution_chromatography_options")
script_callbacks.on_app_started(lambda demo, app: api.install(app), name="resolution_chromatography_api")


def _adapter(p) -> ModuleType:
    """The adapter that hooks this generation's model calls: Forge's UNet wrapper or A1111's CFG callbacks."""
    return forge if forge.handles(p) else a1111


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

    def before_process(self, p, *args) -> None:
        a1111.on_before_process(p, args)

    def process(self, p, *args) -> None:
        adapter = _adapter(p)
        adapter.on_process(p, args)
        if adapter is not a1111:  # A1111's on_process takes the cascade's decision itself
            a1111.take_cascade(p)

    def process_batch(self, p, *args, **kwargs) -> None:
        generation.on_process_batch(p)

    def process_before_every_sampling(self, p, *args, **kwargs) -> None:
        x = kwargs.get("x")
        if x is None:
            return
        adapter = _adapter(p)
        if adapter is a1111:
            a1111.on_before_sampling(p, x, kwargs.get("noise"))
        else:
            adapter.on_before_sampling(p, x)

    def post_sample(self, p, ps, *args) -> None:
        generation.on_post_sample(p)

    def postprocess(self, p, processed, *args) -> None:
        generation.on_postprocess(p)
