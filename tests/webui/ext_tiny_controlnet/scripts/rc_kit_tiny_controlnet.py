"""Test-only extension of the real-WebUI kit (A1111 with Mikubill/sd-webui-controlnet): ControlNet for the tiny SD1.

ControlNet's loader (``scripts/controlnet_model_guess.py`` of the ControlNet extension) builds every SD1.5 ControlNet
with one fixed layout (320 channels, the full SD1.5 UNet's); only the hint channels and the context width are read
from the file. The kit's tiny ControlNet (``make_checkpoints.py``) has the tiny SD1's layout, so that layout is
given to ControlNet here: at app start, after every extension has been imported, the ``controlnet_default_config``
dict of ControlNet's already imported loader module is updated with the layout the kit passes in the environment
(``RC_KIT_CONTROLNET_LAYOUT``, JSON). Nothing else about ControlNet changes; nothing is written to its files.

The kit copies this folder into a test server's ``extensions/`` at run time; it is never installed anywhere else.
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

from modules import script_callbacks

ENV = "RC_KIT_CONTROLNET_LAYOUT"


def _loader() -> Any:
    """ControlNet's model-guessing module, found among the imported modules by what it defines."""
    for module in list(sys.modules.values()):
        if not isinstance(module, types.ModuleType):
            continue
        config = module.__dict__.get("controlnet_default_config")
        if isinstance(config, dict) and callable(module.__dict__.get("build_model_by_guess")):
            return module
    return None


def _set_layout(*_: Any) -> None:
    layout = json.loads(os.environ.get(ENV, "{}") or "{}")
    loader = _loader()
    if not layout or loader is None:
        print(f"[rc-kit] tiny ControlNet layout not set (layout: {bool(layout)}, ControlNet loader: {loader})")
        return
    loader.controlnet_default_config.update(layout)
    print(f"[rc-kit] ControlNet's SD1 layout set to the tiny one: {layout}")


script_callbacks.on_app_started(_set_layout, name="rc_kit_tiny_controlnet")
