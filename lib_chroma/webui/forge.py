"""Forge adapter: upsample guidance inside a UNet function wrapper (Stable Diffusion WebUI Forge).

Forge replaced A1111's sampling internals: ``on_cfg_denoised`` never fires, so the A1111 adapter's correction
would never run there. Forge calls ``process_before_every_sampling`` right after it resets
``p.sd_model.forge_objects`` for the pass (txt2img first pass, hires pass — twice, the first patch being
thrown away —, img2img). There, :func:`on_before_sampling` plans the pass (shared with A1111,
:func:`lib_chroma.webui.generation.plan_pass`), clones ``forge_objects.unet`` and installs on the clone:

- a conditioning modifier, which Forge runs once per model call (``sampling_function``): it counts the call
  (the phase of the moving pooling grid; the debug record's call entry);
- a UNet function wrapper (``set_model_unet_function_wrapper``; a wrapper already there, e.g. Forge's
  MultiDiffusion, is chained and makes the full-size call). Forge calls it as
  ``wrapper(apply_model, {"input", "timestep", "c", "cond_or_uncond"})`` with cond and uncond chunks stacked
  in ``input``, ``timestep`` the sigma of every row, and ``apply_model(x, sigma, **c)`` returning x0. After
  the full-size call the wrapper makes one batched low-resolution call per level on the pooled rows at
  ``sigma/m`` with the same conditioning, straight to ``apply_model`` (``c_concat`` pooled on the same grid;
  ControlNet residuals recomputed for the pooled rows from ``c["control_model"]`` with the hint pooled on the same
  grid, :func:`lib_chroma.webui.controlnet.forge_low_control`; ``transformer_options["sigmas"]`` the
  pooled sigma; the input-block patches that resize hidden states for the full size, such as Forge's built-in
  "Kohya HRFix" (Deep Shrink), left out: the low-resolution call is a call at the model's own size; SDXL's
  ``y`` with the low-resolution size, option ``rc_sdxl_size_cond``), and corrects every
  row in x0 form with :func:`lib_chroma.guidance.guide_x0` before Forge combines cond and uncond.

Any failure: the full-size prediction is returned unchanged, one warning, the rest of the generation runs
unguided, and the reason goes into the infotext (``RC error``). A model call that the modifier counted but that
never reached the wrapper (another extension replaced it) is reported the same way, at the next call or after
sampling (:func:`lib_chroma.webui.generation.on_post_sample`). The patched clone is set back to the UNet it
replaced when the generation ends, and the wrapper does nothing once its pass or generation is over.

Nothing here imports Forge: the adapter only uses the objects Forge hands it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from lib_chroma.guidance import guide_x0
from lib_chroma.webui import controlnet
from lib_chroma.webui import generation as G
from lib_chroma.webui.lowres import LowResCall

HOST = "forge"
#: ``cond_or_uncond`` marks of Forge's ``calc_cond_uncond_batch``.
UNCOND = 1
#: Conditioning entries of the full-size call that do not fit a smaller latent: ControlNet's residuals, recomputed
#: for the low-resolution rows from ``c["control_model"]`` (see :func:`lib_chroma.webui.controlnet.forge_low_control`).
FULL_SIZE_ONLY = ("control",)
#: ``transformer_options["patches"]`` entries kept out of the low-resolution call: Deep Shrink (Forge's "Kohya
#: HRFix", ComfyUI's PatchModelAddDownscale) shrinks the hidden state there whatever the input size, and a
#: shrunk native-size call gives the guidance a prediction from sizes the model never saw (toy: proper faces
#: 0.92 -> 0.15). Its output-block patch only resizes back what was shrunk, so it is harmless and kept.
FULL_SIZE_PATCHES = ("input_block_patch", "input_block_patch_after_skip")


def handles(p: Any) -> bool:
    """Whether ``p`` runs in Forge (its model is a Forge engine with ``forge_objects``)."""
    return G.is_forge(getattr(p, "sd_model", None))


def on_process(p: Any, args: tuple) -> None:
    """``Script.process`` in Forge (see :func:`lib_chroma.webui.generation.on_process`)."""
    G.on_process(p, args, host=HOST)


def on_before_sampling(p: Any, x: torch.Tensor) -> None:
    """``Script.process_before_every_sampling``: plan the pass and, when it is guided, patch a clone of the
    pass's UNet."""
    pp = G.plan_pass(p, x)
    st = G.current()
    if pp is None or st is None:
        return
    try:
        _install(st, pp, p.sd_model)
    except Exception as e:  # noqa: BLE001 - never raise into the sampler
        G.fail(st, f"cannot patch Forge's UNet ({type(e).__name__}: {e})")


def _install(st: G.Generation, pp: G.PassPlan, engine: Any) -> None:
    objects = engine.forge_objects
    before = objects.unet
    unet = before.clone()
    previous = unet.model_options.get("model_function_wrapper")
    unet.add_conditioning_modifier(_counter(st, pp))
    unet.set_model_unet_function_wrapper(_wrapper(st, pp, previous, _vector_fn(engine)))
    objects.unet = unet

    def restore() -> None:
        if objects.unet is unet:
            objects.unet = before

    st.undo.append(restore)


def _counter(st: G.Generation, pp: G.PassPlan) -> Callable[..., tuple]:
    """Forge conditioning modifier: runs once per model call, before it; changes nothing."""

    def count(model: Any, x: Any, timestep: Any, uncond: Any, cond: Any, cond_scale: Any, model_options: Any,
              seed: Any) -> tuple:
        if G.live(st, pp) and pp.calls:
            G.check_hooked(st, pp)  # the previous call must have reached the wrapper
        if G.live(st, pp):
            try:
                G.count_call(st, pp, pp.calls, float(torch.as_tensor(timestep).flatten()[0]), hooked=False)
            except Exception as e:  # noqa: BLE001 - never raise into the sampler
                G.fail(st, f"cannot count model calls ({type(e).__name__}: {e})")
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    return count


def _wrapper(
    st: G.Generation,
    pp: G.PassPlan,
    previous: Callable[..., torch.Tensor] | None,
    vector_for: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None,
) -> Callable[[Callable[..., torch.Tensor], dict], torch.Tensor]:
    """Forge UNet function wrapper: the full-size call (through ``previous`` when there is one), then the
    correction."""

    def wrapper(apply_model: Callable[..., torch.Tensor], args: dict) -> torch.Tensor:
        if previous is not None:
            out = previous(apply_model, args)
        else:
            out = apply_model(args["input"], args["timestep"], **args["c"])
        if not G.live(st, pp):
            return out
        try:
            return _guide(st, pp, apply_model, args, out, vector_for)
        except Exception as e:  # noqa: BLE001 - never raise into the sampler
            G.fail(st, f"low-resolution call failed ({type(e).__name__}: {e})")
            return out

    return wrapper


def _guide(
    st: G.Generation,
    pp: G.PassPlan,
    apply_model: Callable[..., torch.Tensor],
    args: dict,
    out: torch.Tensor,
    vector_for: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None,
) -> torch.Tensor:
    x, sigma, c = args["input"], args["timestep"], args["c"]
    if pp.calls == 0:
        raise RuntimeError("the model call was not counted (Forge did not run the conditioning modifier)")
    phase = pp.calls - 1
    G.mark_hooked(pp)
    if pp.record is not None:
        skipped = UNCOND not in list(args.get("cond_or_uncond") or [])
        pp.record["skipped_uncond"] = bool(pp.record.get("skipped_uncond", True) and skipped)
    full_sigma = torch.as_tensor(sigma).detach().double().cpu().flatten()
    if not any(pp.plan.active(float(s)) for s in full_sigma):
        return out
    rows = int(x.shape[0])
    text = {
        k: v
        for k, v in c.items()
        if k != "c_concat" and isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows
    }
    extra = {k: v for k, v in c.items() if k not in text and k != "c_concat" and k not in FULL_SIZE_ONLY}

    def make_cond(txt: dict, img: Any) -> dict:
        cond = {**extra, **txt}
        if img is not None:
            cond["c_concat"] = img
        return cond

    control = c.get("control_model")
    chunks = max(len(list(args.get("cond_or_uncond") or [])), 1)
    latent = (int(x.shape[-2]), int(x.shape[-1]))

    def inner(x_low: torch.Tensor, sigma_low: torch.Tensor, cond: dict) -> torch.Tensor:
        to = cond.get("transformer_options")
        if isinstance(to, dict):
            to = dict(to)  # the UNet writes block indices into it
            if isinstance(to.get("sigmas"), torch.Tensor):
                to["sigmas"] = sigma_low[: to["sigmas"].shape[0]]
            if isinstance(to.get("patches"), dict):
                to["patches"] = {k: v for k, v in to["patches"].items() if k not in FULL_SIZE_PATCHES}
            cond = {**cond, "transformer_options": to}
        if control is not None:
            residuals = controlnet.forge_low_control(
                control, x_low, sigma_low, sigma, cond, chunks, pp.plan, phase, latent
            )
            cond = {**cond, "control": residuals}
            if pp.record is not None:
                pp.record.setdefault("controlnet", []).append(list(x_low.shape))
        return apply_model(x_low, sigma_low, **cond)

    call = LowResCall(
        inner,
        [(0, rows, text)],
        c.get("c_concat"),
        make_cond,
        pp.plan,
        (int(x.shape[-2]), int(x.shape[-1])),
        vector_for=vector_for,
        phase=phase,
        vector_key="y",
    )
    t0 = time.perf_counter()
    # a failure books no low-res call, as in A1111
    guided = guide_x0(x, sigma, out, call, pp.plan, phase, pp.resamplers)
    G.add_low_calls(st, pp, call.calls, call.shapes, time.perf_counter() - t0, call.image_shapes)
    return guided.to(out.dtype)


#: Forge's SDXL engines build ``y`` as the pooled text embedding followed by ``engine.embedder`` (sinusoidal, 256
#: wide) embeddings; per engine class: how many, and which of them hold a height or width (pixels) to rewrite.
_Y_LAYOUTS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {
    # height, width, crop top, crop left, target height, target width
    "StableDiffusionXL": (6, ((0, 0), (1, 1), (4, 0), (5, 1))),
    # height, width, crop top, crop left, aesthetic score
    "StableDiffusionXLRefiner": (5, ((0, 0), (1, 1))),
}


def _vector_fn(engine: Any) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None:
    """How the low-res call's SDXL ``y`` is built (option ``rc_sdxl_size_cond``), as in A1111.

    ``low-res size`` (default): the size (and target-size) embeddings say the low-res pixel size; the pooled text,
    crop and aesthetic embeddings are kept. ``unchanged``: the full-size vector. An engine whose layout is not in
    :data:`_Y_LAYOUTS`, or a vector that does not add up, is left unchanged."""
    if G.opt(G.OPT_SDXL_SIZE, "low-res size") != "low-res size":
        return None
    layout = _Y_LAYOUTS.get(type(engine).__name__)
    embedder = getattr(engine, "embedder", None)
    if layout is None or embedder is None:
        return None
    count, sizes = layout

    def embed(value: float, like: torch.Tensor) -> torch.Tensor:
        return embedder(torch.Tensor([float(value)])).flatten().to(device=like.device, dtype=like.dtype)

    def fn(vector: torch.Tensor, px: tuple[int, int]) -> torch.Tensor:
        width = int(embed(0.0, vector).numel())
        pooled = vector.shape[-1] - count * width
        if width == 0 or pooled <= 0:
            return vector
        out = vector.clone()
        for slot, axis in sizes:
            out[:, pooled + slot * width : pooled + (slot + 1) * width] = embed(px[axis], vector)
        return out

    return fn


__all__ = ["HOST", "handles", "on_process", "on_before_sampling"]
