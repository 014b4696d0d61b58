"""ControlNet in the low-resolution call (A1111 with Mikubill/sd-webui-controlnet; Forge's built-in ControlNet).

A ControlNet adds residuals to the UNet that it computes from a hint image (edges, depth, pose, …) of the size the
UNet is called at. The extra model call of upsample guidance runs on the pooled latent, so the residuals must be
computed for that size too: the low-resolution call gets the control model run on the pooled latent, at the low
call's noise level, with the hint pooled to the low-resolution size on the same (moving) grid as the latent (8
hint pixels per latent pixel, :func:`lib_chroma.guidance.pool_image`), at the strength, control mode and step range
the user set. Nothing else about the unit changes, so the low-resolution call sees what the model would have seen
at the native size with the same unit.

- A1111 (Mikubill/sd-webui-controlnet): the extension hooks the UNet's ``forward`` and computes the residuals there
  from each unit's ``ControlParams.hint_cond`` (``hr_hint_cond`` in the hires pass, chosen by comparing the hint
  sizes with the latent's). :class:`A1111Hints` swaps in the pooled hints around the low-resolution call and
  restores every attribute it touched afterwards (also the hint-derived caches, so nothing is recomputed for the
  next full-size call). The units are found duck-typed on the ControlNet script (``latest_network``), no ControlNet
  module is imported.
- Forge: the sampler computes ``c["control"]`` with ``control.get_control`` before the UNet wrapper runs and passes
  the control object along as ``c["control_model"]``. :func:`forge_low_control` calls ``get_control`` again for the
  pooled rows, with each control's cached ``cond_hint`` set to the pooled hint (Forge would otherwise resize the
  original image itself, off the moving grid) and its step range decided by the full-size sigma (as A1111 decides
  it by the step), then restores both.

What cannot be guided (:func:`a1111_unguidable`): ControlNet-LLLite units keep their hint features at the size of
the first UNet call inside the UNet's modules; the low-resolution call would not fit them. The generation then runs
unguided and says why.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from lib_chroma.guidance import GuidancePlan, pool_image

__all__ = [
    "LATENT_SCALE",
    "a1111_units",
    "a1111_unguidable",
    "A1111Hints",
    "pooled_hints",
    "forge_low_control",
]

#: Hint pixels per latent pixel (SD's VAE).
LATENT_SCALE = 8
#: ``ControlParams`` attributes the A1111 hook derives from the hint; saved and restored around the low call.
_DERIVED = ("used_hint_cond", "used_hint_cond_latent", "used_hint_inpaint_hijack")
#: ``ControlParams`` hint attributes, in the order they are restored (the ``hint_cond`` setter clears the derived).
_HINTS = ("hint_cond", "hr_hint_cond")
#: Control model types of Mikubill's ControlNet (``ControlModelType`` member names) that cannot be guided.
UNGUIDABLE = {
    "Controlllite": "ControlNet-LLLite keeps its hint features at the full size inside the UNet",
}


def pooled_hints(
    hint: torch.Tensor, plan: GuidancePlan, phase: int, latent: tuple[int, int], scale: int = LATENT_SCALE
) -> dict[tuple[int, int], torch.Tensor]:
    """The hint at every level of ``plan`` (pooled latent size -> hint), pooled on the grid of model call
    ``phase``; empty when the hint is not a ``(B, C, scale·H, scale·W)`` image over the ``latent``."""
    if not (isinstance(hint, torch.Tensor) and hint.dim() == 4):
        return {}
    size = (int(latent[0]), int(latent[1]))
    if tuple(hint.shape[-2:]) != (scale * size[0], scale * size[1]):
        return {}
    out: dict[tuple[int, int], torch.Tensor] = {}
    img = hint
    for k, (mh, mw) in enumerate(plan.levels):
        img = pool_image(img, mh, mw, size, plan.offset(k, phase), scale)
        size = (-(-size[0] // mh), -(-size[1] // mw))
        out[size] = img.to(hint.dtype)
    return out


# ------------------------------------------------------------------------------------------------------------
# A1111: Mikubill/sd-webui-controlnet
# ------------------------------------------------------------------------------------------------------------


def a1111_units(p: Any, unet: Any) -> list[Any]:
    """The ``ControlParams`` of the ControlNet units hooked into ``unet`` for this generation (empty without
    ControlNet or without an enabled unit)."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        net = getattr(script, "latest_network", None)
        params = getattr(net, "control_params", None)
        if net is not None and params and getattr(net, "model", None) is unet:
            return list(params)
    return []


def _kind(param: Any) -> str:
    return str(getattr(getattr(param, "control_model_type", None), "name", ""))


def a1111_unguidable(params: Sequence[Any]) -> str | None:
    """Why these units cannot be guided, or None."""
    for i, param in enumerate(params):
        why = UNGUIDABLE.get(_kind(param))
        if why:
            return f"ControlNet unit {i + 1} ({_kind(param)}) cannot be guided: {why}"
    return None


class A1111Hints:
    """``around`` for :class:`lib_chroma.webui.lowres.LowResCall`: ControlNet's hints at the low-resolution size.

    For model call ``phase`` of a pass with latent size ``latent``, each unit's hint of that pass (``hint_cond`` or
    ``hr_hint_cond``: whichever is an image over this latent) is pooled level by level. ``swaps`` lists, per call,
    ``(unit index, hint shape)`` of what was swapped in (for the debug record)."""

    def __init__(self, params: Sequence[Any], plan: GuidancePlan, phase: int, latent: tuple[int, int]) -> None:
        self.params = list(params)
        self.by_size: dict[tuple[int, int], list[tuple[int, Any, dict[str, torch.Tensor]]]] = {}
        for i, param in enumerate(self.params):
            per_attr = {a: pooled_hints(getattr(param, a, None), plan, phase, latent) for a in _HINTS}
            for size in {s for hints in per_attr.values() for s in hints}:
                new = {a: hints[size] for a, hints in per_attr.items() if size in hints}
                self.by_size.setdefault(size, []).append((i, param, new))
        self.swaps: list[tuple[int, list[int]]] = []

    @property
    def units(self) -> int:
        """How many units get a pooled hint."""
        return len({i for entries in self.by_size.values() for i, _, _ in entries})

    @contextmanager
    def __call__(self, size: tuple[int, int]) -> Iterator[None]:
        saved: list[tuple[Any, dict[str, Any]]] = []
        try:
            for i, param, new in self.by_size.get(tuple(size), []):
                names = [a for a in (*_HINTS, *_DERIVED) if hasattr(param, a)]
                saved.append((param, {a: getattr(param, a) for a in names}))
                for a, hint in new.items():
                    setattr(param, a, hint)
                for a in _DERIVED:  # recomputed by ControlNet from the pooled hint in this call
                    if hasattr(param, a):
                        setattr(param, a, None)
                self.swaps.append((i, list(next(iter(new.values())).shape)))
            yield
        finally:
            for param, old in reversed(saved):
                for a, value in old.items():  # hints first: the hint_cond setter clears the derived attributes
                    setattr(param, a, value)


# ------------------------------------------------------------------------------------------------------------
# Forge: backend ControlNet (ControlBase chain)
# ------------------------------------------------------------------------------------------------------------


def _chain(control: Any) -> list[Any]:
    out, seen = [], set()
    while control is not None and id(control) not in seen:
        seen.add(id(control))
        out.append(control)
        control = getattr(control, "previous_controlnet", None)
    return out


def forge_low_control(
    control: Any,
    x_low: torch.Tensor,
    sigma_low: torch.Tensor,
    sigma_full: torch.Tensor,
    cond: dict,
    batched_number: int,
    plan: GuidancePlan,
    phase: int,
    latent: tuple[int, int],
) -> Any:
    """Forge: the control residuals for the low-resolution rows ``x_low`` at ``sigma_low``.

    ``control`` is the pass's control chain (``c["control_model"]``), ``cond`` the low call's conditioning (a
    copy is handed to ``get_control``, which may change it). Each control's cached ``cond_hint`` (the full-size
    hint, already resized by Forge for this latent) is replaced by its pooled version for the call, and its
    ``timestep_range`` by "always" or "never" as the full-size ``sigma_full`` falls inside it or not; both are
    restored afterwards. A control whose hint does not lie over the latent keeps Forge's own resizing."""
    size = (int(x_low.shape[-2]), int(x_low.shape[-1]))
    saved: list[tuple[Any, dict[str, Any]]] = []
    s_full = float(torch.as_tensor(sigma_full).flatten()[0])
    try:
        for c in _chain(control):
            old = {a: getattr(c, a) for a in ("cond_hint", "timestep_range") if hasattr(c, a)}
            saved.append((c, old))
            rng = old.get("timestep_range")
            if rng is not None:
                inside = not (s_full > rng[0] or s_full < rng[1])
                c.timestep_range = (float("inf"), float("-inf")) if inside else (float("-inf"), float("inf"))
            hint = old.get("cond_hint")
            if isinstance(hint, torch.Tensor) and hint.dim() == 4:
                pooled = pooled_hints(hint, plan, phase, latent).get(size)
                if pooled is not None:
                    c.cond_hint = pooled
        return control.get_control(x_low, sigma_low, dict(cond), batched_number)
    finally:
        for c, old in reversed(saved):
            for a, value in old.items():
                setattr(c, a, value)
