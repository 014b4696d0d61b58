"""Test-only extension of the real-WebUI kit (A1111 and Forge): "full-size hints" that break any smaller model call.

It stands for extensions such as ControlNet, which feed the UNet hints computed for the full latent size: a
model call on a smaller latent (the low-resolution call of upsample guidance) then fails inside the sampler.
The kit copies this folder into a test server's ``extensions/`` at run time; it is never installed anywhere else.

When enabled (its first script argument), ``process_before_every_sampling`` makes a zero "hint" of the pass's
latent size and wraps the loaded UNet's ``forward`` once (A1111: ``sd_model.model.diffusion_model``; Forge:
``sd_model.forge_objects.unet.model.diffusion_model``). Every UNet call then adds the hint to its input the
way a real hint is added, ``x + hint``, but computed apart and thrown away: a full-size call runs exactly as
without this extension (same numbers), a smaller one raises torch's own ``RuntimeError`` ("The size of tensor
a ... must match ..."). Smaller calls are let through while at most ``from_call`` full-size calls have run
(its second argument; 0 = the first low-resolution call already fails), so a failure can also come mid-run.

Forge only, third argument ``replace_wrapper``: instead of hints, stand for an extension that installs its own
UNet function wrapper without chaining the one already there. A conditioning modifier (which Forge runs before
every model call) replaces ``model_function_wrapper`` of the UNet that samples by a plain call of the model,
whoever installed it, so the upsample-guidance wrapper is never called.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import torch
from modules import scripts, shared

TITLE = "RC kit full-size hints"


class _State:
    """The hint of the running generation (None: inactive) and the number of full-size UNet calls so far."""

    hint: torch.Tensor | None = None
    from_call: int = 0
    full_calls: int = 0


def _wrap(unet: Any) -> None:
    """Replace ``unet.forward`` by a hint-checking wrapper, once per UNet object."""
    if getattr(unet, "_rc_kit_hints", False):
        return
    original = unet.forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        hint = _State.hint
        if hint is not None:
            if tuple(x.shape[-2:]) == tuple(hint.shape[-2:]):
                _State.full_calls += 1
            elif _State.full_calls > _State.from_call:
                _ = x[:, :1] + hint  # a full-size hint added to a smaller latent: torch raises here
        return original(x, *args, **kwargs)

    unet.forward = forward
    unet._rc_kit_hints = True


def _replace_wrapper(model: Any, x: Any, timestep: Any, uncond: Any, cond: Any, cond_scale: Any, model_options: dict,
                     seed: Any) -> tuple:
    """Forge conditioning modifier: put a plain model call in place of whatever UNet wrapper is installed."""
    model_options["model_function_wrapper"] = lambda apply_model, a: apply_model(a["input"], a["timestep"], **a["c"])
    return model, x, timestep, uncond, cond, cond_scale, model_options, seed


class FullSizeHints(scripts.Script):
    """Always-on script; off unless its first argument is true."""

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        enabled = gr.Checkbox(value=False, label="Full-size hints (test only)", elem_id=self.elem_id("enabled"))
        from_call = gr.Number(value=0, precision=0, label="From full-size call", elem_id=self.elem_id("from"))
        replace = gr.Checkbox(value=False, label="Replace the UNet wrapper (Forge)", elem_id=self.elem_id("replace"))
        return [enabled, from_call, replace]

    def process(self, p: Any, enabled: bool = False, from_call: float = 0, replace: bool = False, *args: Any) -> None:
        _State.hint = None
        _State.full_calls = 0
        _State.from_call = int(from_call or 0)
        if replace:
            p.extra_generation_params["RC kit hints"] = "replace wrapper"
        elif enabled:
            p.extra_generation_params["RC kit hints"] = f"from call {_State.from_call}"

    def process_before_every_sampling(
        self, p: Any, enabled: bool = False, from_call: float = 0, replace: bool = False, *args: Any, **kwargs: Any
    ) -> None:
        x = kwargs.get("x")
        forge_objects = getattr(shared.sd_model, "forge_objects", None)
        if replace and forge_objects is not None:
            unet = forge_objects.unet.clone()
            unet.add_conditioning_modifier(_replace_wrapper)
            forge_objects.unet = unet
            return
        if not enabled or x is None:
            return
        model = forge_objects.unet.model if forge_objects is not None else shared.sd_model.model
        _wrap(model.diffusion_model)
        _State.hint = torch.zeros((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        _State.hint = None
