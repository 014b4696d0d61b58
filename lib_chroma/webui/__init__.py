"""The only code that touches the WebUI: the A1111 adapter (``a1111``), the gradio UI (``ui``), X/Y/Z axes
(``xyz``), API argument validation (``api``) and the settings section (``options``). ``lowres`` is torch
only."""
