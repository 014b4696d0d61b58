"""Settings section "Resolution Chromatography" (Settings tab)."""

from __future__ import annotations

from lib_chroma import settings as S

SECTION = ("resolution_chromatography", S.TITLE)


def add_options() -> None:
    """``on_ui_settings``: register the options (names are read by the adapter and the UI)."""
    import gradio as gr
    from modules import shared

    opts = [
        (
            "rc_default_preset",
            shared.OptionInfo(
                "Auto",
                "Default preset: the accordion's starting values, and what an API dict without them gets",
                gr.Radio,
                {"choices": list(S.PRESET_CHOICES)},
            ).info("Auto: SD1.5, SD2.x or SDXL values by the loaded checkpoint (API); code defaults (UI)"),
        ),
        (
            "rc_enable_on_paste",
            shared.OptionInfo(
                True,
                "Enable the extension when pasted infotext has RC keys (and disable it when it has none)",
            ),
        ),
        (
            "rc_sdxl_size_cond",
            shared.OptionInfo(
                "low-res size",
                "SDXL: size conditioning of the low-resolution call",
                gr.Radio,
                {"choices": ["low-res size", "unchanged"]},
            ).info(
                "low-res size: original/target size = the low-res pixel size; unchanged: the requested size"
            ),
        ),
        (
            "rc_debug",
            shared.OptionInfo(
                False,
                "Debug record: per-call guidance and prompt-switch data in the API response "
                "(info.extra_generation_params['RC debug']); also via env RC_DEBUG_LOG=<file.jsonl>",
            ),
        ),
    ]
    for key, info in opts:
        info.section = SECTION
        shared.opts.add_option(key, info)
