"""A stand-in for the few A1111 WebUI modules the adapter touches — written for these tests, not WebUI code.

``install()`` registers module objects named ``modules``, ``modules.shared``, ``modules.script_callbacks``,
``modules.sd_samplers_timesteps``, ``modules.sd_samplers_common`` and ``modules.cache`` (its ``cache_dir`` a fresh
temporary directory) in ``sys.modules`` (no directory named ``modules`` exists anywhere in this repository);
``uninstall()`` removes them and that directory.

:class:`FakeCFGDenoiser` follows the documented behaviour of A1111 v1.10's ``CFGDenoiser.forward`` (see
``shared/reference/a1111-extension-api.md`` §4): cond rows (one per ``AND`` part) then uncond rows, the
``on_cfg_denoiser`` callback with read-back fields, optional skipped uncond (fake uncond copies), separate
calls when token lengths differ, the ``on_cfg_denoised`` callback on ``x_out``, the CFG combination and the
``on_cfg_after_cfg`` callback on it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import types
from dataclasses import dataclass, field
from typing import Any

import torch

NAMES = (
    "modules",
    "modules.shared",
    "modules.script_callbacks",
    "modules.sd_samplers_timesteps",
    "modules.sd_samplers_common",
    "modules.cache",
)


class Opts:
    """``shared.opts``: attribute access; unknown names raise AttributeError like the real one."""

    def __init__(self, **data: Any) -> None:
        self.__dict__["data"] = {"batch_cond_uncond": True, "img2img_fix_steps": False, **data}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["data"][name] = value


class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.sampling_step, self.total_sampling_steps, self.inner_model = (
            x,
            sampling_step,
            total_sampling_steps,
            inner_model,
        )


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


class FakeCFGDenoiser:
    """k-diffusion CFG denoiser stand-in (``FakeCFGDenoiserTimesteps`` below for timestep samplers)."""

    def __init__(self, inner, p, repeats, cond, uncond, *, skip_uncond=False, conditioning_key="crossattn"):
        self.inner = inner
        self.p = p
        self.step = 0
        self.repeats = list(repeats)
        self.cond, self.uncond = cond, uncond
        self.skip_uncond = skip_uncond
        self.sampler = types.SimpleNamespace(
            sampler_extra_args={"cond": types.SimpleNamespace(batch=[[None] * r for r in self.repeats])}
        )

    @property
    def inner_model(self):
        return self.inner

    def forward(self, x, sigma, image_cond, cond_scale=7.0):
        sc = sys.modules["modules.script_callbacks"]
        shared = sys.modules["modules.shared"]
        rep = self.repeats
        x_in = torch.cat([torch.stack([x[i]] * n) for i, n in enumerate(rep)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i]] * n) for i, n in enumerate(rep)] + [sigma])
        ic_in = torch.cat([torch.stack([image_cond[i]] * n) for i, n in enumerate(rep)] + [image_cond])
        prm = CFGDenoiserParams(x_in, ic_in, sigma_in, 0, 0, self.cond, self.uncond, self)
        sc.cfg_denoiser_callback(prm)
        x_in, ic_in, sigma_in, tensor, uncond = (
            prm.x,
            prm.image_cond,
            prm.sigma,
            prm.text_cond,
            prm.text_uncond,
        )
        b = len(rep)
        if self.skip_uncond:
            x_in, sigma_in = x_in[:-b], sigma_in[:-b]

        def mk(c, img):
            if isinstance(c, dict):
                return {**c, "c_concat": [img]}
            return {"c_crossattn": [c], "c_concat": [img]}

        def cat(cs):
            if isinstance(cs[0], dict):
                return {k: torch.cat([c[k] for c in cs]) for k in cs[0]}
            return torch.cat(cs)

        def tok(c):
            return (c["crossattn"] if isinstance(c, dict) else c).shape[1]

        if tok(tensor) == tok(uncond) or self.skip_uncond:
            cond_in = tensor if self.skip_uncond else cat([tensor, uncond])
            x_out = self.inner(x_in, sigma_in, cond=mk(cond_in, ic_in[: x_in.shape[0]]))
        else:
            n = x_in.shape[0] - b
            x_out = torch.zeros_like(x_in)
            x_out[:n] = self.inner(x_in[:n], sigma_in[:n], cond=mk(tensor, ic_in[:n]))
            x_out[n:] = self.inner(x_in[n:], sigma_in[n:], cond=mk(uncond, ic_in[n:]))
        firsts = []
        acc = 0
        for r in rep:
            firsts.append(acc)
            acc += r
        if self.skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i : i + 1] for i in firsts])])
        sc.cfg_denoised_callback(CFGDenoisedParams(x_out, 0, 0, self.inner_model))
        u = x_out[-b:]
        den = u.clone()
        scale = 1.0 if self.skip_uncond else cond_scale
        idx = 0
        for i, r in enumerate(rep):
            for _ in range(r):
                den[i] += (x_out[idx] - u[i]) * scale / r
                idx += 1
        after = AfterCFGCallbackParams(den, 0, 0)
        sc.cfg_after_cfg_callback(after)
        den = after.x
        self.step += 1
        _ = shared
        return den


class FakeCFGDenoiserTimesteps(FakeCFGDenoiser):
    """Timestep-sampler stand-in: ``sigma`` holds timesteps and the inner model returns eps."""

    def __init__(self, *a, alphas=None, **kw):
        super().__init__(*a, **kw)
        self.alphas = alphas


def _register(name, cb, category):
    sys.modules["modules.script_callbacks"].callback_map[category].append((name, cb))


def _make_script_callbacks() -> types.ModuleType:
    m = types.ModuleType("modules.script_callbacks")
    m.callback_map = {"cfg_denoiser": [], "cfg_denoised": [], "cfg_after_cfg": [], "script_unloaded": []}
    m.CFGDenoiserParams = CFGDenoiserParams
    m.CFGDenoisedParams = CFGDenoisedParams
    m.on_cfg_denoiser = lambda cb, name=None: _register(name, cb, "cfg_denoiser")
    m.on_cfg_denoised = lambda cb, name=None: _register(name, cb, "cfg_denoised")
    m.on_cfg_after_cfg = lambda cb, name=None: _register(name, cb, "cfg_after_cfg")
    m.on_script_unloaded = lambda cb, name=None: _register(name, cb, "script_unloaded")

    def run(category, params):
        for _, cb in m.callback_map[category]:
            try:  # like A1111: a failing callback only prints
                cb(params)
            except Exception as e:  # noqa: BLE001
                m.errors.append(e)

    m.errors = []
    m.cfg_denoiser_callback = lambda prm: run("cfg_denoiser", prm)
    m.cfg_denoised_callback = lambda prm: run("cfg_denoised", prm)
    m.cfg_after_cfg_callback = lambda prm: run("cfg_after_cfg", prm)
    m.clear = lambda: [v.clear() for v in m.callback_map.values()]
    return m


def _setup_img2img_steps(p, steps=None):
    requested = steps or p.steps
    if sys.modules["modules.shared"].opts.img2img_fix_steps or steps is not None:
        total = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        total = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * total)
    return total, t_enc


class FakeVAE(torch.nn.Module):
    """A fixed linear "encoder" (``f = 8``, 4 channels, seeded weights; ``seed`` changes the VAE)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(4, 3, 8, 8, generator=g) / 16)
            self.conv.bias.copy_(torch.randn(4, generator=g) * 0.1)
        self.encodes = 0  # images encoded


def _images_tensor_to_samples(image, approximation=None, model=None):
    """``image`` in [0, 1] -> latents through ``model.first_stage_model``, plus posterior noise from the global
    generator (as A1111's ``get_first_stage_encoding`` samples the posterior)."""
    vae = getattr(model, "first_stage_model", None) or model.forge_objects.vae.first_stage_model  # A1111 / Forge
    vae.encodes += len(image)
    with torch.no_grad():
        z = vae.conv(image * 2 - 1)
    return z + 0.01 * torch.randn_like(z)


@dataclass
class FakeModel:
    """``shared.sd_model`` stand-in: flags, schedule and (optionally) an SDXL-like conditioner."""

    is_sdxl: bool = False
    is_sd2: bool = False
    parameterization: str = "eps"
    alphas_cumprod: torch.Tensor = field(
        default_factory=lambda: torch.cumprod(
            1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0
        )
    )
    cond_stage_key: str = "txt"
    conditioner: Any = None
    model: Any = field(default_factory=lambda: types.SimpleNamespace(conditioning_key="crossattn"))
    first_stage_model: Any = field(default_factory=FakeVAE)


def install(**opts: Any) -> types.SimpleNamespace:
    """Register the stand-in modules; returns handles (shared, script_callbacks, ...)."""
    uninstall()
    pkg = types.ModuleType("modules")
    pkg.__path__ = []
    shared = types.ModuleType("modules.shared")
    shared.opts = Opts(**opts)
    shared.sd_model = FakeModel()
    shared.state = types.SimpleNamespace(sampling_step=0, sampling_steps=0)
    sc = _make_script_callbacks()
    ts = types.ModuleType("modules.sd_samplers_timesteps")
    ts.CFGDenoiserTimesteps = FakeCFGDenoiserTimesteps
    common = types.ModuleType("modules.sd_samplers_common")
    common.setup_img2img_steps = _setup_img2img_steps
    common.images_tensor_to_samples = _images_tensor_to_samples
    cache = types.ModuleType("modules.cache")
    cache.cache_dir = tempfile.mkdtemp(prefix="fake-webui-cache-")
    for name, mod in zip(NAMES, (pkg, shared, sc, ts, common, cache)):
        sys.modules[name] = mod
    pkg.shared, pkg.script_callbacks, pkg.sd_samplers_timesteps, pkg.sd_samplers_common, pkg.cache = (
        shared,
        sc,
        ts,
        common,
        cache,
    )
    return types.SimpleNamespace(shared=shared, script_callbacks=sc, timesteps=ts, common=common, cache=cache)


def uninstall() -> None:
    """Remove the stand-in modules, their cache directory and every module of the adapter that imported them."""
    cache = sys.modules.get("modules.cache")
    if cache is not None and getattr(cache, "cache_dir", "").startswith(tempfile.gettempdir()):
        shutil.rmtree(cache.cache_dir, ignore_errors=True)
    for name in list(sys.modules):
        if name in NAMES or name.startswith("lib_chroma.webui"):
            del sys.modules[name]
