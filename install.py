"""Run by A1111 at start-up. Installs nothing: torch, numpy and gradio (with matplotlib) ship with the WebUI,
and the extension needs nothing else."""
