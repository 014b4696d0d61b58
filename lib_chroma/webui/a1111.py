"""A1111 adapter: per-generation state and the CFG-denoiser callbacks.

Life cycle (all state lives in one :class:`Generation`, replaced in every ``process()`` and cleared in
``postprocess()``; a generation that raised is discarded by the next ``process()``, and callbacks only act for
the processing object that owns the state):

- ``process``: parse and validate the settings (positional list or a dict), resolve the model family,
  write the infotext keys. Disabled: the state is cleared and nothing else happens.
- ``process_batch``: time-dependent prompts rewrite ``p.prompts`` / ``p.hr_prompts`` into
  ``[layout:detail:f]``.
- ``process_before_every_sampling`` (first pass and hires pass): build the pass's :class:`GuidancePlan`
  from the latent size, or none when the pass is not guided.
- ``on_cfg_denoiser``: remember the callback's params object (its fields are what the WebUI reads back).
- ``on_cfg_denoised``: if the pass's plan is active at this sigma, pool ``x_in``, call the inner model
  once per level on the same rows and conds at ``sigma/m`` and correct ``x_out`` in place (x0 form for
  k-diffusion, eps form through ``guide_eps`` for DDIM/PLMS/UniPC). Any failure: one warning, the rest of
  the generation runs unguided, and the reason goes into the infotext (``RC error``).
- ``postprocess``: attach the debug record (when enabled) and clear the state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from modules import script_callbacks, shared

from lib_chroma import settings as S
from lib_chroma.guidance import GuidancePlan, auto_factor, guide_eps, guide_x0
from lib_chroma.prompts import realized_switch, render_switch, switch_step, when_fraction
from lib_chroma.schedule import (
    BETA_PARAMS,
    MODEL_FAMILIES,
    DiscreteSchedule,
    img2img_sigmas,
    sampler_info,
    sampler_sigmas,
)
from lib_chroma.webui.lowres import (
    LowResCall,
    cat_conds,
    cond_len,
    cond_tokens,
    first_cond_rows,
    uncond_skipped,
)

log = logging.getLogger("resolution_chromatography")

#: Environment variable: a file to which every generation appends its debug record as one JSON line.
DEBUG_LOG_ENV = "RC_DEBUG_LOG"
#: Option names (settings section, see :mod:`lib_chroma.webui.options`).
OPT_DEBUG = "rc_debug"
OPT_SDXL_SIZE = "rc_sdxl_size_cond"
OPT_ENABLE_ON_PASTE = "rc_enable_on_paste"
OPT_DEFAULT_PRESET = "rc_default_preset"


def _opt(name: str, default: Any) -> Any:
    try:
        return getattr(shared.opts, name)
    except (AttributeError, KeyError):
        return default


# ------------------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------------------


@dataclass
class PassPlan:
    """Guidance for one sampling pass (first or hires)."""

    hires: bool
    plan: GuidancePlan
    factor: tuple[int, int]
    latent: tuple[int, int]
    sigmas: list[float] | None
    schedule: DiscreteSchedule | None = None
    calls: int = 0  # model calls of this pass so far: the phase of the moving pooling grid


@dataclass
class Generation:
    """Everything the callbacks need for one ``process_images`` call; nothing survives it."""

    p: Any
    settings: S.RCSettings
    family: str
    current: PassPlan | None = None
    pending: Any = None
    failed: str | None = None
    debug: dict | None = None
    model_calls: int = 0
    low_calls: int = 0
    low_seconds: float = 0.0
    last_cond_key: Any = None


_STATE: Generation | None = None


def current() -> Generation | None:
    """The active generation (tests and the script use it)."""
    return _STATE


def reset() -> None:
    """Forget any generation (called by every ``process()`` and ``postprocess()``, and on script unload)."""
    global _STATE
    _STATE = None


# ------------------------------------------------------------------------------------------------------------
# Model facts
# ------------------------------------------------------------------------------------------------------------


def model_family(sd_model: Any) -> str:
    """``sd1``, ``sd2``, ``sd2-v`` or ``sdxl`` from A1111's model flags (SSD-1B and the refiner count as
    SDXL)."""
    if getattr(sd_model, "is_sdxl", False) or getattr(sd_model, "is_ssd", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2-v" if getattr(sd_model, "parameterization", "eps") == "v" else "sd2"
    return "sd1"


def model_schedule_of(sd_model: Any, family: str) -> DiscreteSchedule:
    """The loaded model's own ``alphas_cumprod`` (with any A1111 override applied), else the family's."""
    ac = getattr(sd_model, "alphas_cumprod", None)
    v = MODEL_FAMILIES[family]["v_prediction"] or getattr(sd_model, "parameterization", "eps") == "v"
    if ac is not None:
        try:
            return DiscreteSchedule(torch.as_tensor(ac).detach().double().cpu(), v)
        except ValueError:
            pass
    from lib_chroma.schedule import model_schedule

    return model_schedule(family)


def _is_timestep_denoiser(denoiser: Any) -> bool:
    try:
        from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
    except ImportError:  # pragma: no cover - every supported WebUI has it
        return False
    return isinstance(denoiser, CFGDenoiserTimesteps)


# ------------------------------------------------------------------------------------------------------------
# Script hooks
# ------------------------------------------------------------------------------------------------------------


def _overrides(p: Any) -> dict[str, Any]:
    """X/Y/Z axis values stored on ``p`` as ``rc_<field>`` attributes."""
    out = {}
    for name in S.FIELD_NAMES:
        v = getattr(p, f"rc_{name}", None)
        if v is not None:
            out[name] = v
    return out


def _drop_keys(p: Any) -> None:
    egp = getattr(p, "extra_generation_params", None)
    if egp:
        for k in S.INFOTEXT_KEYS + ("RC debug",):
            if k in egp:
                del egp[k]


def on_process(p: Any, args: tuple) -> None:
    """``Script.process``: start a generation when enabled, else make sure nothing is left from the last
    one."""
    reset()
    overrides = _overrides(p)
    if overrides and "enabled" not in overrides:
        overrides["enabled"] = True  # an X/Y/Z axis on a field implies "enabled"
    if not args and not overrides:
        return
    first = args[0] if args else None
    if not overrides and not isinstance(first, dict):
        try:
            on = S.validate_field("enabled", first)
        except ValueError:
            on = True  # not a boolean: the full parse below reports it
        if not on:
            _drop_keys(p)  # XYZ cells share extra_generation_params: no keys from an enabled neighbour
            return
    family = model_family(getattr(p, "sd_model", None) or shared.sd_model)
    try:
        s = S.from_args(args, family=family, default_preset=_default_preset())
        if overrides:
            s = s.with_(**overrides)
    except ValueError as e:
        _warn(p, f"invalid settings, generating unguided: {e}")
        return
    if not s.enabled:
        _drop_keys(p)
        return
    global _STATE
    debug = bool(_opt(OPT_DEBUG, False) or os.environ.get(DEBUG_LOG_ENV))
    _STATE = Generation(
        p=p, settings=s, family=family, debug={"passes": [], "calls": [], "prompts": []} if debug else None
    )
    _drop_keys(p)
    p.extra_generation_params.update(s.to_infotext())


def _default_preset() -> str:
    """The settings-section default preset (option ``rc_default_preset``), ``Auto`` when unset or invalid."""
    value = _opt(OPT_DEFAULT_PRESET, "Auto")
    return value if value in S.PRESET_CHOICES else "Auto"


def _warn(p: Any, message: str) -> None:
    text = f"Resolution Chromatography: {message}"
    log.warning(text)
    try:
        p.extra_generation_params["RC error"] = message
    except (AttributeError, TypeError):
        pass


def _fail(st: Generation, message: str) -> None:
    if st.failed is None:
        st.failed = message
        _warn(st.p, f"{message}; finishing the image unguided")
    st.current = None


def _pass_sigmas(p: Any, hires: bool, st: Generation) -> list[float]:
    """The sigma sequence (VE) this pass samples with; the WebUI's own for k-diffusion samplers."""
    sampler = getattr(p, "sampler", None)
    name = (getattr(p, "hr_sampler_name", None) if hires else None) or p.sampler_name
    scheduler = (
        (getattr(p, "hr_scheduler", None) if hires else None) or getattr(p, "scheduler", None) or "Automatic"
    )
    info, _ = sampler_info(name)
    img2img = hires or getattr(p, "init_latent", None) is not None and not hasattr(p, "enable_hr")
    steps = (getattr(p, "hr_second_pass_steps", 0) or p.steps) if hires else p.steps
    if info.kind == "k" and sampler is not None and hasattr(sampler, "get_sigmas"):
        if img2img:
            from modules import sd_samplers_common

            total, t_enc = sd_samplers_common.setup_img2img_steps(p, steps if hires else None)
            sig = sampler.get_sigmas(p, total)[total - t_enc - 1 :]
        else:
            sig = sampler.get_sigmas(p, steps)
        return [float(v) for v in sig]
    sched = model_schedule_of(p.sd_model, st.family)
    ays = MODEL_FAMILIES[st.family]["ays"]
    if img2img:
        fixed = True if hires else bool(_opt("img2img_fix_steps", False))
        sig = img2img_sigmas(
            name, scheduler, steps, p.denoising_strength, sched, fixed_steps=fixed, ays_table=ays
        )
    else:
        sig = sampler_sigmas(name, scheduler, steps, sched, ays_table=ays)
    return [float(v) for v in sig]


def on_before_sampling(p: Any, x: torch.Tensor) -> None:
    """``Script.process_before_every_sampling``: the plan for the pass that starts now."""
    st = _STATE
    if st is None or st.p is not p:
        return
    st.current = None
    st.pending = None
    if st.failed:
        return
    hires = bool(getattr(p, "is_hr_pass", False))
    s = st.settings
    if not s.guides_pass(hires):
        return
    try:
        native = int(MODEL_FAMILIES[st.family]["native"])
        lh, lw = int(x.shape[-2]), int(x.shape[-1])
        factor = (s.factor_h or auto_factor(lh * 8, native), s.factor_w or auto_factor(lw * 8, native))
        sigmas = None
        if s.window == "fraction" or st.debug is not None or not hires:
            sigmas = _pass_sigmas(p, hires, st)
        plan = GuidancePlan.build(
            factor,
            scale=s.scale,
            window=s.window,
            window_range=s.window_range(),
            sigmas=sigmas,
            shape=s.shape,
            q_end=s.q_end,
            operator=s.operator,
            nested=s.nested,
            grid=s.grid,
        )
    except Exception as e:  # noqa: BLE001 - never raise into the sampler
        _fail(st, f"cannot plan guidance ({type(e).__name__}: {e})")
        return
    if not plan.enabled:
        return
    st.current = PassPlan(hires, plan, factor, (lh, lw), sigmas)
    win = plan.window_steps(sigmas) if sigmas else None
    if not hires and sigmas:
        n = len(sigmas) - 1
        p.extra_generation_params["RC guided steps"] = (
            # user-facing: 1-based, inclusive, as in the accordion's readout
            "none" if win is None else f"{win[0] + 1}-{win[1] + 1}/{n}"
        )
    if st.debug is not None:
        st.debug["passes"].append(
            {
                "pass": "hires" if hires else "first",
                "latent": [lh, lw],
                "factor": list(factor),
                "levels": [list(lv) for lv in plan.levels],
                "sigmas": sigmas,
                "window": None if win is None else list(win),
                "weights": None if not sigmas else [plan.weight(0, v) for v in sigmas[:-1]],
            }
        )


def on_process_batch(p: Any) -> None:
    """``Script.process_batch``: rewrite the prompts the sampler sees (the infotext keeps the user's)."""
    st = _STATE
    if st is None or st.p is not p or st.settings.prompt_mode == "off":
        return
    s = st.settings
    try:
        sched = model_schedule_of(p.sd_model, st.family)
        info, _ = sampler_info(p.sampler_name)
        sig = sampler_sigmas(
            p.sampler_name,
            getattr(p, "scheduler", None) or "Automatic",
            p.steps,
            sched,
            ays_table=MODEL_FAMILIES[st.family]["ays"],
            beta_params=(_opt("beta_dist_alpha", BETA_PARAMS[0]), _opt("beta_dist_beta", BETA_PARAMS[1])),
        )
        n = len(sig) - 1
        step = realized_switch(switch_step(sig, s.switch_level, s.switch_q), n)
        mult = 2 if info.second_order else 1
        when = None if step == 0 else when_fraction(step, p.steps, mult)
        prompts = p.prompts
        for i, text in enumerate(prompts):
            layout, detail = _split(s, text)
            if layout != detail:  # nothing to switch: the user's prompt stays exactly as written
                prompts[i] = render_switch(layout, detail, when)
        hr = getattr(p, "hr_prompts", None)
        if hr:
            for i, text in enumerate(hr):
                if s.prompt_mode == "marker" and s.marker in text:
                    hr[i] = render_switch(*_split(s, text), None)
                elif s.prompt_mode == "fields" and s.detail_prompt and text in getattr(p, "all_prompts", []):
                    hr[i] = render_switch(text, s.detail_prompt, None)
        # user-facing, 1-based: the first step that uses the detail prompt
        p.extra_generation_params["RC switch step"] = f"{step + 1}/{n}"
        if st.debug is not None:
            st.debug["prompts"].append(
                {
                    "batch": getattr(p, "iteration", 0),
                    "switch_step": step,
                    "steps": n,
                    "when": when,
                    "prompts": list(prompts),
                    "hr_prompts": list(hr or []),
                }
            )
    except Exception as e:  # noqa: BLE001
        _warn(p, f"time-dependent prompts not applied ({type(e).__name__}: {e})")


def _split(s: S.RCSettings, text: str) -> tuple[str, str]:
    """(layout, detail) for one prompt. Marker mode: ``before MARKER after`` → (before, before + after)."""
    if s.prompt_mode == "marker":
        if s.marker not in text:
            return text, text
        before, after = text.split(s.marker, 1)
        before = before.strip()
        after = after.replace(s.marker, " ").strip()
        return before, f"{before} {after}".strip() if before else after
    return s.layout_prompt or text, s.detail_prompt or text


def on_postprocess(p: Any) -> None:
    """``Script.postprocess``: publish the debug record and clear the state."""
    st = _STATE
    if st is not None and st.p is p and st.debug is not None:
        rec = {
            **st.debug,
            "settings": st.settings.to_dict(),
            "family": st.family,
            "failed": st.failed,
            "model_calls": st.model_calls,
            "low_calls": st.low_calls,
            "low_seconds": round(st.low_seconds, 6),
        }
        text = json.dumps(rec, default=float)
        p.extra_generation_params["RC debug"] = text
        path = os.environ.get(DEBUG_LOG_ENV)
        if path:
            try:
                with open(path, "a", encoding="utf8") as fh:
                    fh.write(text + "\n")
            except OSError as e:
                log.warning("Resolution Chromatography: cannot write %s: %s", path, e)
    reset()


# ------------------------------------------------------------------------------------------------------------
# CFG callbacks (registered once, by the script file, at import)
# ------------------------------------------------------------------------------------------------------------


def on_cfg_denoiser(params: Any) -> None:
    """Remember the params object: its x/sigma/conds/image_cond are what the model is called with."""
    st = _STATE
    if st is None or st.current is None:
        return
    den = getattr(params, "denoiser", None)
    if den is None:
        _fail(st, "this WebUI is older than 1.8 (no params.denoiser)")
        return
    if getattr(den, "p", None) is not st.p:
        return
    st.pending = params
    if st.debug is not None:
        c = params.text_cond
        t = c["crossattn"] if isinstance(c, dict) else c
        key = hashlib.sha1(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        st.debug.setdefault("cond_changes", [])
        if st.last_cond_key is not None and key != st.last_cond_key:
            st.debug["cond_changes"].append(
                {"pass": "hires" if st.current.hires else "first", "call": int(getattr(den, "step", -1))}
            )
        st.last_cond_key = key


def on_cfg_denoised(params: Any) -> None:
    """Correct ``params.x`` (the rows of ``x_out``) in place with upsample guidance."""
    st = _STATE
    if st is None or st.current is None or st.pending is None:
        return
    rec, st.pending = st.pending, None
    st.model_calls += 1
    try:
        _guide(st, rec, params)
    except Exception as e:  # noqa: BLE001 - never raise into the sampler
        _fail(st, f"low-resolution call failed ({type(e).__name__}: {e})")


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
    phase = pp.calls
    pp.calls += 1
    sig_rows = sigma_in.detach().double().cpu()
    full_sigma = (
        pp.schedule.t_to_sigma(sig_rows.clamp(0, pp.schedule.num_timesteps - 1)) if timestep else sig_rows
    )
    record = None
    if st.debug is not None:
        record = {
            "pass": "hires" if pp.hires else "first",
            "call": int(getattr(den, "step", -1)),
            "phase": phase,
            "sigma": float(full_sigma[0]),
            "weights": [pp.plan.weight(k, float(full_sigma.max())) for k in range(len(pp.plan.levels))],
            "low_calls": 0,
        }
        if timestep:
            record["t"] = float(sig_rows[0])
        st.debug["calls"].append(record)
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
    chunk = None if _opt("batch_cond_uncond", True) else max(b, 1)
    img = (
        image_cond[:rows]
        if isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == n + b
        else image_cond
    )
    inner = params.inner_model if getattr(params, "inner_model", None) is not None else den.inner_model
    vector_for = _vector_fn() if isinstance(tensor, dict) else None
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
    st.low_seconds += time.perf_counter() - t0
    st.low_calls += call.calls
    if record is not None:
        record["low_calls"] = call.calls
        record["low_shapes"] = [list(s) for s in call.shapes]
        record["skipped_uncond"] = skipped
    x_out[:rows] = guided.to(x_out.dtype)
    if skipped:
        for i, j in enumerate(first):
            x_out[n + i] = x_out[j]


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
    if _opt(OPT_SDXL_SIZE, "low-res size") != "low-res size":
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
    "DEBUG_LOG_ENV",
    "OPT_DEBUG",
    "OPT_SDXL_SIZE",
    "OPT_ENABLE_ON_PASTE",
    "OPT_DEFAULT_PRESET",
]
