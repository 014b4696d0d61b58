"""What the A1111 and the Forge adapters share: per-generation state, settings, pass plans, prompts, debug record.

Life cycle (all state lives in one :class:`Generation`, replaced in every ``process()`` and cleared in
``postprocess()``; a generation that raised is discarded, its patches undone, by the next ``process()``; hooks
and callbacks only act for the processing object that owns the state):

- ``process`` (:func:`on_process`): parse and validate the settings (positional list or a dict), resolve the
  model family, write the infotext keys. Disabled: the state is cleared and nothing else happens.
- ``process_batch`` (:func:`on_process_batch`): time-dependent prompts rewrite ``p.prompts`` / ``p.hr_prompts``
  into ``[layout:detail:f]``.
- ``process_before_every_sampling`` (:func:`plan_pass`, first pass and hires pass): the pass's
  :class:`GuidancePlan` from the latent size, or none when the pass is not guided. Then each adapter hooks the
  model calls its own way: A1111 through the CFG-denoiser callbacks (:mod:`lib_chroma.webui.a1111`), Forge
  through a UNet function wrapper (:mod:`lib_chroma.webui.forge`). Both count every model call of the pass
  (:func:`count_call`: the phase of the moving pooling grid, the debug record's call entry).
- ``post_sample`` (:func:`on_post_sample`), the next pass's plan and (Forge) the next model call: a planned
  pass whose model calls did not reach the adapter's correction hook (the host never called it, or another
  extension replaced it) is reported as a failure; when nothing was guided, the infotext says why instead of
  claiming guided steps.
- ``postprocess`` (:func:`on_postprocess`): attach the debug record (when enabled), undo the adapter's patches
  and clear the state.

Failures (:func:`fail`): one warning, the rest of the generation runs unguided, and the reason goes into the
infotext (``RC error``). Nothing here raises into the sampler.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from modules import shared

from lib_chroma import settings as S
from lib_chroma.guidance import GuidancePlan, auto_factor
from lib_chroma.prompts import realized_switch, render_switch, switch_step, when_fraction
from lib_chroma.schedule import (
    BETA_PARAMS,
    MODEL_FAMILIES,
    DiscreteSchedule,
    img2img_sigmas,
    sampler_info,
    sampler_sigmas,
)
from lib_chroma.webui import vae_resamplers

log = logging.getLogger("resolution_chromatography")

#: Environment variable: a file to which every generation appends its debug record as one JSON line.
DEBUG_LOG_ENV = "RC_DEBUG_LOG"
#: Option names (settings section, see :mod:`lib_chroma.webui.options`).
OPT_DEBUG = "rc_debug"
OPT_SDXL_SIZE = "rc_sdxl_size_cond"
OPT_ENABLE_ON_PASTE = "rc_enable_on_paste"
OPT_DEFAULT_PRESET = "rc_default_preset"


def opt(name: str, default: Any) -> Any:
    """A WebUI option, or ``default`` when it does not exist (e.g. under ``--nowebui``)."""
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
    hooked: int = 0  # of these, the calls that reached the adapter's correction hook
    record: dict | None = None  # the debug entry of the model call in progress
    resamplers: dict | None = None  # fitted resamplers by level factor (field resampler = fitted), else pooling


@dataclass
class Generation:
    """Everything the hooks need for one ``process_images`` call; nothing survives it."""

    p: Any
    settings: S.RCSettings
    family: str
    host: str = "a1111"
    current: PassPlan | None = None
    pending: Any = None
    failed: str | None = None
    debug: dict | None = None
    model_calls: int = 0
    low_calls: int = 0
    low_seconds: float = 0.0
    last_cond_key: Any = None
    undo: list[Callable[[], None]] = field(default_factory=list)
    cascade: Any = None  # the cascade this generation runs (lib_chroma.webui.cascade_setup.CascadeSetup), A1111
    handover: dict | None = None  # the cascade's first pass, last call: its latent x_k and CFG-combined x0
    model_seconds: float = 0.0  # main model calls (cond and uncond), low-res calls excluded (A1111)
    pixel_evals: int = 0  # rows · height · width over every model call, low-res ones included (A1111)
    call_started: float | None = None


_STATE: Generation | None = None


def current() -> Generation | None:
    """The active generation (tests and the script use it)."""
    return _STATE


def reset() -> None:
    """Forget any generation, undoing its patches (called by every ``process()`` and ``postprocess()``, and on
    script unload)."""
    global _STATE
    st, _STATE = _STATE, None
    if st is not None:
        undo(st)


def undo(st: Generation) -> None:
    """Run and forget the generation's undo actions (newest first); one that fails is logged and skipped."""
    while st.undo:
        action = st.undo.pop()
        try:
            action()
        except Exception as e:  # noqa: BLE001 - cleanup must not stop the WebUI
            log.warning("Resolution Chromatography: cannot undo a patch: %s: %s", type(e).__name__, e)


def live(st: Generation, pp: PassPlan) -> bool:
    """Whether ``pp`` is the running pass of the running generation and guidance has not failed."""
    return _STATE is st and st.current is pp and st.failed is None


# ------------------------------------------------------------------------------------------------------------
# Model facts (A1111's flags; Forge keeps them on its engines and adds ``forge_objects``)
# ------------------------------------------------------------------------------------------------------------


def is_forge(sd_model: Any) -> bool:
    """Whether the model is a Forge engine (Forge replaced A1111's sampling internals)."""
    return hasattr(sd_model, "forge_objects")


def _forge_predictor(sd_model: Any) -> Any:
    try:
        return sd_model.forge_objects.unet.model.predictor
    except AttributeError:
        return None


def _v_prediction(sd_model: Any) -> bool:
    if getattr(sd_model, "parameterization", "eps") == "v":
        return True
    return getattr(_forge_predictor(sd_model), "prediction_type", "") == "v_prediction"


def model_family(sd_model: Any) -> str | None:
    """``sd1``, ``sd2``, ``sd2-v`` or ``sdxl`` from the WebUI's model flags (SSD-1B and the refiner count as
    SDXL); None for a Forge model that is none of them (Flux, SD3, Chroma), which the extension does not know."""
    if getattr(sd_model, "is_sdxl", False) or getattr(sd_model, "is_ssd", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2-v" if _v_prediction(sd_model) else "sd2"
    if is_forge(sd_model) and not getattr(sd_model, "is_sd1", False):
        return None
    return "sd1"


def model_schedule_of(sd_model: Any, family: str) -> DiscreteSchedule:
    """The loaded model's own schedule: Forge's predictor sigmas, A1111's ``alphas_cumprod`` (with any override
    applied), else the family's."""
    v = MODEL_FAMILIES[family]["v_prediction"] or _v_prediction(sd_model)
    sigmas = getattr(_forge_predictor(sd_model), "sigmas", None)
    if sigmas is not None:
        ac = 1.0 / (1.0 + torch.as_tensor(sigmas).detach().double().cpu() ** 2)
    else:
        ac = getattr(sd_model, "alphas_cumprod", None)
    if ac is not None:
        try:
            return DiscreteSchedule(torch.as_tensor(ac).detach().double().cpu(), v)
        except ValueError:
            pass
    from lib_chroma.schedule import model_schedule

    return model_schedule(family)


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


def on_process(p: Any, args: tuple, host: str = "a1111") -> None:
    """``Script.process``: start a generation when enabled, else make sure nothing is left from the last
    one. ``host`` names the adapter that hooks the model calls (``a1111`` or ``forge``)."""
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
    model = getattr(p, "sd_model", None) or shared.sd_model
    family = model_family(model)
    try:
        s = S.from_args(args, family=family, default_preset=_default_preset())
        if overrides:
            s = s.with_(**overrides)
    except ValueError as e:
        warn(p, f"invalid settings, generating unguided: {e}")
        return
    if not s.enabled:
        _drop_keys(p)
        return
    _drop_keys(p)
    if family is None:
        kind = type(model).__name__
        warn(p, f"the loaded model ({kind}) is not SD1.x, SD2.x or SDXL, generating unguided")
        return
    global _STATE
    debug = bool(opt(OPT_DEBUG, False) or os.environ.get(DEBUG_LOG_ENV))
    _STATE = Generation(
        p=p,
        settings=s,
        family=family,
        host=host,
        debug={"passes": [], "calls": [], "prompts": []} if debug else None,
    )
    p.extra_generation_params.update(s.to_infotext())


def _default_preset() -> str:
    """The settings-section default preset (option ``rc_default_preset``), ``Auto`` when unset or invalid."""
    value = opt(OPT_DEFAULT_PRESET, "Auto")
    return value if value in S.PRESET_CHOICES else "Auto"


def warn(p: Any, message: str) -> None:
    """Log one warning and put ``message`` into the infotext as ``RC error``."""
    text = f"Resolution Chromatography: {message}"
    log.warning(text)
    try:
        p.extra_generation_params["RC error"] = message
    except (AttributeError, TypeError):
        pass


def note(p: Any, message: str) -> None:
    """Add ``message`` to the infotext's ``RC note`` (``; ``-joined) and log it, once per generation."""
    try:
        params = p.extra_generation_params
        old = str(params.get("RC note") or "")
        if message in old.split("; "):
            return
        params["RC note"] = f"{old}; {message}" if old else message
    except (AttributeError, TypeError):
        return
    log.warning("Resolution Chromatography: %s", message)


def fail(st: Generation, message: str) -> None:
    """Guidance failed: warn once; the rest of the generation runs unguided."""
    if st.failed is None:
        st.failed = message
        warn(st.p, f"{message}; finishing the image unguided")
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
        fixed = True if hires else bool(opt("img2img_fix_steps", False))
        sig = img2img_sigmas(
            name, scheduler, steps, p.denoising_strength, sched, fixed_steps=fixed, ays_table=ays
        )
    else:
        sig = sampler_sigmas(name, scheduler, steps, sched, ays_table=ays)
    return [float(v) for v in sig]


def _check_previous_pass(st: Generation, hires: bool) -> None:
    """Before a new plan: the previous pass either ran through the adapter's hook, or it did not.

    A plan of the same pass that saw no model call is a plan the host threw away before sampling (Forge calls
    ``process_before_every_sampling`` twice in the hires pass and resets the model between the calls): its debug
    entry is dropped. Any other pass whose model calls did not all reach the adapter's correction hook (none at
    all: the host sampled without it) was not guided as planned: that is a failure."""
    pp = st.current
    if pp is None:
        return
    if pp.calls == 0 and pp.hires == hires:
        if st.debug is not None and st.debug["passes"]:
            st.debug["passes"].pop()
        st.current = None
        return
    check_hooked(st, pp)


def check_hooked(st: Generation, pp: PassPlan) -> None:
    """Fail when a model call of the pass (or the pass as a whole) never reached the adapter's correction hook
    (e.g. another extension replaced Forge's UNet wrapper). When no call of the pass reached it, nothing was
    guided, so the infotext loses ``RC guided steps``."""
    if st.failed is not None or (pp.calls and pp.hooked >= pp.calls):
        return
    where = "hires" if pp.hires else "first"
    if pp.hooked == 0:
        egp = getattr(st.p, "extra_generation_params", None)
        if isinstance(egp, dict):
            egp.pop("RC guided steps", None)
        fail(st, f"no model call of the {where} pass reached the extension's {st.host} hook, nothing was guided")
    else:
        fail(st, f"model call {pp.hooked} of the {where} pass did not reach the extension's {st.host} hook")


def plan_pass(p: Any, x: torch.Tensor) -> PassPlan | None:
    """``Script.process_before_every_sampling``: the plan for the pass that starts now (also ``st.current``), or
    None when this pass is not guided."""
    st = _STATE
    if st is None or st.p is not p:
        return None
    hires = bool(getattr(p, "is_hr_pass", False))
    _check_previous_pass(st, hires)
    st.current = None
    st.pending = None
    if st.failed:
        return None
    s = st.settings
    if not s.guides_pass(hires):
        return None
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
        fail(st, f"cannot plan guidance ({type(e).__name__}: {e})")
        return None
    if not plan.enabled:
        return None
    rsm = fitted_resamplers(p, s, plan)
    st.current = PassPlan(hires, plan, factor, (lh, lw), sigmas, resamplers=rsm)
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
                **vae_resamplers.record(rsm),
            }
        )
    return st.current


def fitted_resamplers(p: Any, s: S.RCSettings, plan: GuidancePlan) -> dict | None:
    """The loaded VAE's fitted resamplers for ``plan``'s levels when ``s.resampler`` is ``fitted`` and the plan
    guides; None otherwise (average pooling), and None with an ``RC note`` when they cannot be fitted."""
    if s.resampler != "fitted" or not plan.enabled:
        return None
    try:
        vae, encode = vae_resamplers.host_encoder(getattr(p, "sd_model", None) or shared.sd_model)
        return vae_resamplers.resamplers_for(plan.levels, vae, encode, cache_dir=vae_resamplers.host_cache_dir())
    except Exception as e:  # noqa: BLE001 - guidance still runs, with pooling
        note(p, f"fitted resamplers unavailable ({type(e).__name__}: {e}); average pooling used")
        return None


def count_call(st: Generation, pp: PassPlan, call: int, sigma: float, hooked: bool = True) -> int:
    """One model call of the pass starts: count it, open its debug entry (``pp.record``) and return its phase
    (the index of the call in its pass, which places the moving pooling grid). ``hooked``: the call is counted
    where it is corrected (A1111); else the adapter marks it with :func:`mark_hooked` when it gets there."""
    phase = pp.calls
    pp.calls += 1
    if hooked:
        pp.hooked += 1
    st.model_calls += 1
    pp.record = None
    if st.debug is not None:
        pp.record = {
            "pass": "hires" if pp.hires else "first",
            "call": call,
            "phase": phase,
            "sigma": sigma,
            "weights": [pp.plan.weight(k, sigma) for k in range(len(pp.plan.levels))],
            "low_calls": 0,
        }
        st.debug["calls"].append(pp.record)
    return phase


def mark_hooked(pp: PassPlan) -> None:
    """The model call in progress reached the adapter's correction hook (once per call, however often the host
    calls the hook for it)."""
    pp.hooked = pp.calls


def add_low_calls(
    st: Generation,
    pp: PassPlan,
    calls: int,
    shapes: list[tuple[int, ...]],
    seconds: float,
    image_shapes: list[tuple[int, ...] | None] | None = None,
) -> None:
    """Book the low-resolution calls of one model call (counts, time, debug entry: the latent shapes and, for a
    spatial image conditioning such as an inpainting model's, its pooled shapes)."""
    st.low_calls += calls
    st.low_seconds += seconds
    if pp.record is not None:
        pp.record["low_calls"] = pp.record.get("low_calls", 0) + calls
        pp.record.setdefault("low_shapes", []).extend(list(s) for s in shapes)
        if image_shapes and any(s is not None for s in image_shapes):
            pp.record.setdefault("low_image_cond", []).extend(None if s is None else list(s) for s in image_shapes)


def on_post_sample(p: Any) -> None:
    """``Script.post_sample`` (after the last pass of a batch, before its infotext is written): a planned pass
    whose model calls did not reach the adapter's hook is a failure, not a guided image."""
    st = _STATE
    if st is None or st.p is not p or st.current is None:
        return
    check_hooked(st, st.current)


def on_cfg_denoiser(params: Any) -> None:
    """``on_cfg_denoiser`` (both hosts fire it once per model call, before it): remember the params object for
    the A1111 adapter and, for the debug record, note where the text conditioning changes (the prompt switch)."""
    st = _STATE
    if st is None or st.current is None:
        return
    den = getattr(params, "denoiser", None)
    if den is None:
        fail(st, "this WebUI is older than 1.8 (no params.denoiser)")
        return
    if getattr(den, "p", None) is not st.p:
        return
    if st.host == "a1111":  # read back by the A1111 adapter's on_cfg_denoised; Forge never fires that one
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
            beta_params=(opt("beta_dist_alpha", BETA_PARAMS[0]), opt("beta_dist_beta", BETA_PARAMS[1])),
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
        warn(p, f"time-dependent prompts not applied ({type(e).__name__}: {e})")


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
    """``Script.postprocess``: publish the debug record, undo the patches and clear the state."""
    st = _STATE
    if st is not None and st.p is p and st.debug is not None:
        rec = {
            **st.debug,
            "settings": st.settings.to_dict(),
            "family": st.family,
            "host": st.host,
            "failed": st.failed,
            "model_calls": st.model_calls,
            "low_calls": st.low_calls,
            "low_seconds": round(st.low_seconds, 6),
            "model_seconds": round(st.model_seconds, 6),
            "pixel_evals": st.pixel_evals,
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
