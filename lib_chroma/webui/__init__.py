"""The only code that touches the WebUI: what both adapters share (``generation``: state, settings, pass plans,
prompts, debug record), the A1111 adapter (``a1111``: CFG-denoiser callbacks), the Forge adapter (``forge``: a
UNet function wrapper), the gradio UI (``ui``), X/Y/Z axes (``xyz``), API argument validation (``api``) and the
settings section (``options``). ``lowres`` is torch only."""
