"""A1111 adapter: upsample guidance through the CFG-denoiser callbacks.

The per-generation state, settings, pass plans, prompt rewriting and debug record are shared with the Forge
adapter (:mod:`lib_chroma.webui.generation`, re-exported here). What is A1111's own:

- ``on_cfg_denoiser`` (shared) remembers the callback's params object (its fields are what the WebUI reads
  back);
- ``on_cfg_denoised``: if the pass's plan is active at this sigma, pool ``x_in``, call the inner model once
  per level on the same rows and conds at ``sigma/m`` and correct ``x_out`` in place (x0 form for
  k-diffusion, eps form through ``guide_eps`` for DDIM/PLMS/UniPC). Any failure: one warning, the rest of the
  generation runs unguided, and the reason goes into the infotext (``RC error``).

The cascade ("Cascade (faster)", :mod:`lib_chroma.webui.cascade_hooks`) is A1111's only:

- ``before_process`` (:func:`on_before_process`, txt2img, cascade on): turn the request into A1111's hires fix
  as the cascade plans it (first-pass size, hires target, strength, hires steps) before A1111 sets up the hires
  prompts; the decision travels on ``p`` to ``process`` (:func:`take_cascade`), which writes ``RC note`` when the
  cascade steps aside.
- ``process_before_every_sampling``: the first pass's sampler gets the user's sigmas up to the stop sigma and
  then 0 (its last call's x0 prediction is its output), the hires pass's sampler the second-pass sigmas, and the
  hires noise becomes the renoise handover's (the first pass's last latent and CFG-combined x0 are kept from its
  last model call, through ``on_cfg_denoised`` and ``on_cfg_after_cfg``; with ``cascade_setup.HANDOVER = "fresh"``
  nothing is kept and A1111's noise stays). A cascade that fails after
  ``before_process`` leaves A1111's hires fix as set up, unguided, with ``RC error``.
- every model call of an enabled generation is timed and its pixels counted (debug record ``model_seconds``,
  ``pixel_evals``), guided or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
from modules import script_callbacks, shared

from lib_chroma import settings as S
from lib_chroma.guidance import GuidancePlan, guide_eps, guide_x0
from lib_chroma.schedule import DiscreteSchedule
from lib_chroma.webui import cascade_hooks as CH
from lib_chroma.webui import cascade_setup as CS
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
from lib_chroma.webui.unet_patches import full_size_blocks

HOST = "a1111"
#: Attribute of ``p`` carrying the cascade decision from ``before_process`` to ``process`` (per request).
CASCADE_ATTR = "_rc_cascade_setup"


def on_process(p: Any, args: tuple) -> None:
    """``Script.process`` in A1111 (see :func:`lib_chroma.webui.generation.on_process`)."""
    G.on_process(p, args, host=HOST)
    take_cascade(p)


def _settings_for(p: Any, args: tuple) -> S.RCSettings | None:
    """The enabled settings of this request (args and X/Y/Z overrides), or None (disabled or invalid: ``process``
    reports invalid ones)."""
    overrides = G._overrides(p)
    if overrides and "enabled" not in overrides:
        overrides["enabled"] = True
    if not args and not overrides:
        return None
    try:
        family = G.model_family(getattr(p, "sd_model", None) or shared.sd_model)
        s = S.from_args(args, family=family, default_preset=G._default_preset())
        if overrides:
            s = s.with_(**overrides)
    except Exception:  # noqa: BLE001
        return None
    return s if s.enabled else None


def on_before_process(p: Any, args: tuple) -> None:
    """``Script.before_process`` (both hosts): with the cascade on, make the txt2img request A1111's hires fix as
    the cascade plans it, before A1111 prepares the hires prompts. Never raises; a cascade that cannot run leaves
    ``p`` alone and :func:`take_cascade` writes why."""
    try:
        if hasattr(p, CASCADE_ATTR):
            delattr(p, CASCADE_ATTR)
        s = _settings_for(p, args)
        if s is None or not s.cascade:
            return
        model = getattr(p, "sd_model", None) or shared.sd_model
        family = G.model_family(model)
        if G.is_forge(model):
            decision: Any = CS.FORGE_NOTE
        elif family is None:
            decision = "the loaded model is not SD1.x, SD2.x or SDXL"
        else:
            decision = CH.apply_cascade(p, s, family, bool(G.opt("use_old_hires_fix_width_height", False)))
        setattr(p, CASCADE_ATTR, decision)
    except Exception as e:  # noqa: BLE001 - never break the request
        setattr(p, CASCADE_ATTR, f"cannot plan the cascade ({type(e).__name__}: {e})")


def take_cascade(p: Any) -> None:
    """After ``process``: the generation runs the cascade ``before_process`` set up, or the infotext and the
    console say why it stepped aside (``RC note``)."""
    st = current()
    if st is None or st.p is not p or not st.settings.cascade:
        return
    decision = getattr(p, CASCADE_ATTR, None)
    if isinstance(decision, CS.CascadeSetup):
        st.cascade = decision
        return
    G.note(p, f"cascade not applied: {decision or 'the cascade needs txt2img'}")


def on_before_sampling(p: Any, x: torch.Tensor, noise: torch.Tensor | None = None) -> None:
    """``Script.process_before_every_sampling``: the plan for the pass that starts now; the CFG callbacks apply
    it. With the cascade, :func:`_cascade_pass` instead (``noise``: the hires pass's noise tensor, which the
    renoise handover rewrites in place)."""
    st = current()
    if st is None or st.p is not p or st.cascade is None:
        G.plan_pass(p, x)
        return
    hires = bool(getattr(p, "is_hr_pass", False))
    G._check_previous_pass(st, hires)
    st.current = None
    st.pending = None
    try:
        _cascade_pass(st, p, x, hires, noise)
    except Exception as e:  # noqa: BLE001 - never raise into the sampler
        G.fail(st, f"cascade pass not set up ({type(e).__name__}: {e})")


def _cascade_pass(st: Generation, p: Any, x: torch.Tensor, hires: bool, noise: torch.Tensor | None) -> None:
    """The cascade's pass: give its sampler the planned sigmas, plan the second pass's guidance, and record both
    passes in the debug record."""
    setup = st.cascade
    sampler = CH.sigma_sampler(p)
    lh, lw = int(x.shape[-2]), int(x.shape[-1])
    if st.failed:  # a failure earlier in this generation: the sampler keeps A1111's own sigmas
        return
    handed = None
    if not hires:
        st.cascade = setup = CH.first_pass(p, sampler, setup, st.settings, st.family)
        stage = setup.plan.stages[0]
        st.handover = None
        plan = GuidancePlan(())  # the native pass is not guided; its calls are recorded
    else:
        stage = setup.plan.stages[1]
        CH.hires_pass(p, sampler, stage, lambda why: G.fail(st, why))
        plan = stage.plan if stage.plan is not None else GuidancePlan(())
        handed = CH.handover_noise(st.handover, noise, stage.start, setup.plan.stages[0].stop, setup.factor)
        st.handover = None
    factor = setup.factor if hires else (1, 1)
    rsm = G.fitted_resamplers(p, st.settings, plan)
    st.current = PassPlan(hires, plan, factor, (lh, lw), [float(v) for v in stage.sigmas], resamplers=rsm)
    if hires:
        g = stage.guided_user_steps()
        p.extra_generation_params["RC guided steps"] = (
            "none" if g is None else f"{g[0] + 1}-{g[1] + 1}/{setup.steps}"
        )
    if st.debug is not None:
        if not hires:
            st.debug["cascade"] = CH.debug_plan(setup)
        st.debug["passes"].append(CH.debug_pass(stage, plan, factor, (lh, lw), handed, rsm))


def _is_timestep_denoiser(denoiser: Any) -> bool:
    try:
        from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
    except ImportError:  # pragma: no cover - every supported WebUI has it
        return False
    return isinstance(denoiser, CFGDenoiserTimesteps)


# ------------------------------------------------------------------------------------------------------------
# CFG callbacks (registered once, by the script file, at import)
# ------------------------------------------------------------------------------------------------------------


def on_cfg_denoiser_a1111(params: Any) -> None:
    """The shared ``on_cfg_denoiser``, then (A1111) start the model call's clock: every model call of an enabled
    generation is timed, guided or not."""
    on_cfg_denoiser(params)
    st = current()
    den = getattr(params, "denoiser", None)
    if st is not None and st.host == HOST and den is not None and getattr(den, "p", None) is st.p:
        st.call_started = time.perf_counter()


def on_cfg_denoised(params: Any) -> None:
    """Correct ``params.x`` (the rows of ``x_out``) in place with upsample guidance."""
    st = current()
    if st is None or st.host != HOST:
        return
    if st.call_started is not None:
        st.model_seconds += time.perf_counter() - st.call_started
        st.call_started = None
        xs = params.x
        st.pixel_evals += int(xs.shape[0]) * int(xs.shape[-2]) * int(xs.shape[-1])
    if st.current is None or st.pending is None:
        return
    rec, st.pending = st.pending, None
    if st.cascade is not None and not st.current.hires and CS.HANDOVER == "renoise":
        # every native-pass call, the last one (at sigma_k) kept for the renoise handover: its latent (one uncond
        # row per image) and, after CFG, its x0
        b = cond_len(rec.text_uncond)
        st.handover = {"x_k": rec.x[-b:].detach().clone(), "x0": None, "sigma": float(rec.sigma[-1])}
    try:
        _guide(st, rec, params)
    except Exception as e:  # noqa: BLE001 - never raise into the sampler
        G.fail(st, f"low-resolution call failed ({type(e).__name__}: {e})")


def on_cfg_after_cfg(params: Any) -> None:
    """Keep the CFG-combined x0 prediction of the cascade's native-pass call (it follows that call's
    ``on_cfg_denoised`` directly): the renoise handover needs it beside the latent."""
    st = current()
    if st is None or st.handover is None or st.handover["x0"] is not None:
        return
    x = getattr(params, "x", None)
    if isinstance(x, torch.Tensor) and x.shape == st.handover["x_k"].shape:
        st.handover["x0"] = x.detach().clone()


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
    unet = getattr(getattr(shared.sd_model, "model", None), "diffusion_model", None)
    hints = _controlnet_hints(st, pp, phase, (int(x_in.shape[-2]), int(x_in.shape[-1])), unet)
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
        around=_around(st.p, hints, unet),
    )
    t0 = time.perf_counter()
    xs, outs = x_in[:rows], x_out[:rows]
    if timestep:
        # A1111's v-to-eps wrapper indexes alphas_cumprod[t]: give the low call integer timesteps there
        guided = guide_eps(
            xs, sigma_in[:rows], outs, call, pp.plan, pp.schedule, integer_timesteps=pp.schedule.v_prediction,
            phase=phase, resamplers=pp.resamplers,
        )
    else:
        guided = guide_x0(xs, sigma_in[:rows], outs, call, pp.plan, phase, pp.resamplers)
    G.add_low_calls(st, pp, call.calls, call.shapes, time.perf_counter() - t0, call.image_shapes)
    st.pixel_evals += sum(int(sh[0]) * int(sh[-2]) * int(sh[-1]) for sh in call.shapes)
    if pp.record is not None:
        pp.record["skipped_uncond"] = skipped
        if hints is not None:
            pp.record["controlnet"] = [{"unit": i, "hint": shape} for i, shape in hints.swaps]
    x_out[:rows] = guided.to(x_out.dtype)
    if skipped:
        for i, j in enumerate(first):
            x_out[n + i] = x_out[j]


def _around(
    p: Any, hints: controlnet.A1111Hints | None, unet: Any
) -> Callable[[tuple[int, int]], AbstractContextManager]:
    """``around`` of the low-resolution call: ControlNet's pooled hints, and the UNet without other extensions'
    block wrappers (Deep Shrink's A1111 port, :mod:`lib_chroma.webui.unet_patches`), which the infotext notes."""

    @contextmanager
    def around(size: tuple[int, int]) -> Iterator[None]:
        with ExitStack() as stack:
            if hints is not None:
                stack.enter_context(hints(size))
            if unet is not None:
                names = stack.enter_context(full_size_blocks(unet))
                if names:
                    G.note(p, f"UNet block wrappers ({', '.join(names)}: e.g. Kohya Hires.fix) left out of the "
                              "low-resolution call")
            yield

    return around


def _controlnet_hints(
    st: Generation, pp: PassPlan, phase: int, latent: tuple[int, int], unet: Any
) -> controlnet.A1111Hints | None:
    """ControlNet's hints at the low-resolution sizes for this model call (None without ControlNet units); a unit
    that cannot be guided ends the guidance (:func:`lib_chroma.webui.generation.fail`)."""
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
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser_a1111, name="resolution_chromatography_denoiser")
    script_callbacks.on_cfg_denoised(on_cfg_denoised, name="resolution_chromatography_denoised")
    if hasattr(script_callbacks, "on_cfg_after_cfg"):
        script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg, name="resolution_chromatography_after_cfg")
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
    "on_before_process",
    "take_cascade",
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
