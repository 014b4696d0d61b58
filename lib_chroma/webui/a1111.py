"""A1111 adapter: upsample guidance through the CFG-denoiser callbacks.

The per-generation state, settings, pass plans, prompt rewriting and debug record are shared with the Forge
adapter (:mod:`lib_chroma.webui.generation`, re-exported here). What is A1111's own:

- ``on_cfg_denoiser`` (shared) remembers the callback's params object (its fields are what the WebUI reads
  back);
- ``on_cfg_denoised``: if the pass's plan is active at this sigma, pool ``x_in``, call the inner model once
  per level on the same rows and conds at ``sigma/m`` and correct ``x_out`` in place (x0 form for
  k-diffusion, eps form through ``guide_eps`` for DDIM/PLMS/UniPC). Any failure: one warning, the rest of the
  generation runs unguided, and the reason goes into the infotext (``RC error``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from modules import script_callbacks, shared

from lib_chroma.guidance import guide_eps, guide_x0
from lib_chroma.schedule import DiscreteSchedule
from lib_chroma.webui import controlnet
from lib_chroma.webui import generation as G
from lib_chroma.webui.generation import (
    DEBUG_LOG_ENV,
    OPT_DEBUG,
    OPT_DEFAULT_PRESET,
    OPT_ENABLE_ON_PASTE,
    OPT_SDXL_SIZE,
    Generation,
    PassPlan,
    current,
    model_family,
    model_schedule_of,
    on_cfg_denoiser,
    on_postprocess,
    on_process_batch,
    reset,
)
from lib_chroma.webui.lowres import (
    LowResCall,
    cat_conds,
    cond_len,
    cond_tokens,
    first_cond_rows,
    uncond_skipped,
)

HOST = "a1111"


def on_process(p: Any, args: tuple) -> None:
    """``Script.process`` in A1111 (see :func:`lib_chroma.webui.generation.on_process`)."""
    G.on_process(p, args, host=HOST)


def on_before_sampling(p: Any, x: torch.Tensor) -> None:
    """``Script.process_before_every_sampling``: the plan for the pass that starts now; the CFG callbacks apply
    it."""
    G.plan_pass(p, x)


def _is_timestep_denoiser(denoiser: Any) -> bool:
    try:
        from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
    except ImportError:  # pragma: no cover - every supported WebUI has it
        return False
    return isinstance(denoiser, CFGDenoiserTimesteps)


# ------------------------------------------------------------------------------------------------------------
# CFG callbacks (registered once, by the script file, at import)
# ------------------------------------------------------------------------------------------------------------


def on_cfg_denoised(params: Any) -> None:
    """Correct ``params.x`` (the rows of ``x_out``) in place with upsample guidance."""
    st = current()
    if st is None or st.host != HOST or st.current is None or st.pending is None:
        return
    rec, st.pending = st.pending, None
    try:
        _guide(st, rec, params)
    except Exception as e:  # noqa: BLE001 - never raise into the sampler
        G.fail(st, f"low-resolution call failed ({type(e).__name__}: {e})")


def _make_cond_fn(text_example: Any) -> Any:
    model = shared.sd_model
    if getattr(getattr(model, "model", None), "conditioning_key", None) == "crossattn-adm":
        return lambda c, img: {"c_crossattn": [c], "c_adm": img}
    if isinstance(text_example, dict):
        return lambda c, img: {**c, "c_concat": [img]}
    return lambda c, img: {"c_crossattn": [c], "c_concat": [img]}


def _guide(st: Generation, rec: Any, params: Any) -> None:
    pp = st.current
    assert pp is not None
    den = rec.denoiser
    x_in, sigma_in, image_cond = rec.x, rec.sigma, rec.image_cond
    tensor, uncond = rec.text_cond, rec.text_uncond
    x_out = params.x
    timestep = _is_timestep_denoiser(den)
    if timestep and pp.schedule is None:
        ac = getattr(den, "alphas", None)
        if ac is None:
            ac = shared.sd_model.alphas_cumprod
        pp.schedule = DiscreteSchedule(
            torch.as_tensor(ac).detach().double().cpu(),
            getattr(shared.sd_model, "parameterization", "eps") == "v",
        )
    sig_rows = sigma_in.detach().double().cpu()
    full_sigma = (
        pp.schedule.t_to_sigma(sig_rows.clamp(0, pp.schedule.num_timesteps - 1)) if timestep else sig_rows
    )
    phase = G.count_call(st, pp, int(getattr(den, "step", -1)), float(full_sigma[0]))
    if timestep and pp.record is not None:
        pp.record["t"] = float(sig_rows[0])
    if not any(pp.plan.active(float(s)) for s in full_sigma):
        return
    n, b = cond_len(tensor), cond_len(uncond)
    if x_in.shape[0] != n + b or x_out.shape[0] != n + b:  # e.g. InstructPix2Pix with image CFG (3 blocks)
        raise ValueError(
            f"unexpected row layout: x_in {x_in.shape[0]}, x_out {x_out.shape[0]}, conds {n}+{b}"
        )
    repeats = None
    try:
        repeats = [len(c) for c in den.sampler.sampler_extra_args["cond"].batch]
    except (AttributeError, KeyError, TypeError):
        repeats = None
    first = first_cond_rows(x_in, n, b, repeats)
    skipped = uncond_skipped(x_out, first, n)
    rows = n if skipped else n + b
    if skipped:
        groups = [(0, n, tensor)]
    elif cond_tokens(tensor) == cond_tokens(uncond):
        groups = [(0, n + b, cat_conds([tensor, uncond]))]
    else:
        groups = [(0, n, tensor), (n, n + b, uncond)]
    chunk = None if G.opt("batch_cond_uncond", True) else max(b, 1)
    img = (
        image_cond[:rows]
        if isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == n + b
        else image_cond
    )
    inner = params.inner_model if getattr(params, "inner_model", None) is not None else den.inner_model
    vector_for = _vector_fn() if isinstance(tensor, dict) else None
    hints = _controlnet_hints(st, pp, phase, (int(x_in.shape[-2]), int(x_in.shape[-1])))
    if st.failed is not None:
        return
    call = LowResCall(
        inner,
        groups,
        img,
        _make_cond_fn(tensor),
        pp.plan,
        (x_in.shape[-2], x_in.shape[-1]),
        vector_for=vector_for,
        chunk=chunk,
        phase=phase,
        around=hints,
    )
    t0 = time.perf_counter()
    xs, outs = x_in[:rows], x_out[:rows]
    if timestep:
        # A1111's v-to-eps wrapper indexes alphas_cumprod[t]: give the low call integer timesteps there
        guided = guide_eps(
            xs, sigma_in[:rows], outs, call, pp.plan, pp.schedule, integer_timesteps=pp.schedule.v_prediction,
            phase=phase,
        )
    else:
        guided = guide_x0(xs, sigma_in[:rows], outs, call, pp.plan, phase)
    G.add_low_calls(st, pp, call.calls, call.shapes, time.perf_counter() - t0, call.image_shapes)
    if pp.record is not None:
        pp.record["skipped_uncond"] = skipped
        if hints is not None:
            pp.record["controlnet"] = [{"unit": i, "hint": shape} for i, shape in hints.swaps]
    x_out[:rows] = guided.to(x_out.dtype)
    if skipped:
        for i, j in enumerate(first):
            x_out[n + i] = x_out[j]


def _controlnet_hints(
    st: Generation, pp: PassPlan, phase: int, latent: tuple[int, int]
) -> controlnet.A1111Hints | None:
    """ControlNet's hints at the low-resolution sizes for this model call (None without ControlNet units); a unit
    that cannot be guided ends the guidance (:func:`lib_chroma.webui.generation.fail`)."""
    unet = getattr(getattr(shared.sd_model, "model", None), "diffusion_model", None)
    units = controlnet.a1111_units(st.p, unet) if unet is not None else []
    if not units:
        return None
    why = controlnet.a1111_unguidable(units)
    if why:
        G.fail(st, why)
        return None
    return controlnet.A1111Hints(units, pp.plan, phase, latent)


# ------------------------------------------------------------------------------------------------------------
# SDXL size conditioning of the low-res call
# ------------------------------------------------------------------------------------------------------------

_SIZE_KEYS = ("original_size_as_tuple", "target_size_as_tuple")
#: Scalars per SDXL micro-conditioning input (sgm's ConcatTimestepEmbedderND embeds each into ``outdim``).
_ARITY = {
    "original_size_as_tuple": 2,
    "crop_coords_top_left": 2,
    "target_size_as_tuple": 2,
    "aesthetic_score": 1,
}


def _vector_fn() -> Any:
    """How the low-res call's SDXL ``vector`` is built (option ``rc_sdxl_size_cond``).

    ``low-res size`` (default): the original-size and target-size embeddings say the low-res pixel size
    (h·8, w·8) — the low-res call stands for "this prompt at the model's native size" —; pooled text and crop
    embeddings are kept. ``unchanged``: the full-size vector (the size the user asked for). The layout is read
    from the conditioner's embedders (text first, then size/crop/aesthetic embedders, each
    ``outdim × inputs`` wide); when it does not add up, the vector is left unchanged."""
    if G.opt(OPT_SDXL_SIZE, "low-res size") != "low-res size":
        return None
    model = shared.sd_model
    embedders = getattr(getattr(model, "conditioner", None), "embedders", None)
    if not embedders:
        return None
    widths = []
    for e in embedders:
        key = getattr(e, "input_key", None)
        if key in ("txt", None):
            continue
        if key not in _ARITY or not hasattr(e, "outdim"):
            return None  # a layout we do not know: leave the vector alone
        widths.append((key, int(e.outdim) * _ARITY[key], e))

    def fn(vector: torch.Tensor, px: tuple[int, int]) -> torch.Tensor:
        total = sum(w for _, w, _ in widths)
        if total >= vector.shape[-1]:
            return vector
        end = vector.shape[-1]
        out = vector.clone()
        spans: dict[str, tuple[int, int]] = {}
        for key, w, _ in reversed(widths):
            spans[key] = (end - w, end)
            end -= w
        for key in _SIZE_KEYS:
            if key in spans:
                a, b_ = spans[key]
                e = next(em for k, _, em in widths if k == key)
                size = torch.tensor([[float(px[0]), float(px[1])]], device=vector.device)
                val = e(size).to(device=vector.device, dtype=vector.dtype).reshape(1, -1)
                if val.shape[-1] == b_ - a:
                    out[:, a:b_] = val.expand(out.shape[0], -1)
        return out

    return fn


def register_callbacks() -> None:
    """Register the CFG callbacks. Call once per load of the script file (A1111 clears all callbacks before it
    re-imports scripts, so this must not be guarded by module state)."""
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="resolution_chromatography_denoiser")
    script_callbacks.on_cfg_denoised(on_cfg_denoised, name="resolution_chromatography_denoised")
    if hasattr(script_callbacks, "on_script_unloaded"):
        script_callbacks.on_script_unloaded(reset, name="resolution_chromatography_unload")


__all__ = [
    "Generation",
    "PassPlan",
    "current",
    "reset",
    "model_family",
    "model_schedule_of",
    "on_process",
    "on_before_sampling",
    "on_process_batch",
    "on_postprocess",
    "on_cfg_denoiser",
    "on_cfg_denoised",
    "register_callbacks",
    "HOST",
    "DEBUG_LOG_ENV",
    "OPT_DEBUG",
    "OPT_SDXL_SIZE",
    "OPT_ENABLE_ON_PASTE",
    "OPT_DEFAULT_PRESET",
]
