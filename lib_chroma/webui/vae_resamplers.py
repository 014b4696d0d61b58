"""Resamplers fitted to the loaded VAE (the ``resampler = fitted`` field), for both hosts.

:func:`lib_chroma.encoder_fit.fit_to_encoder` runs once per VAE and level factor on the first guided pass that
needs it, through the host's own encoder (``sd_samplers_common.images_tensor_to_samples`` with the full VAE, the
path img2img and hires fix take), and is kept for the session and on disk (:func:`host_cache_dir`, one small
safetensors file per VAE, factor and fit recipe), so a restarted WebUI loads it instead of fitting again (the fit
takes seconds on a GPU, minutes with a full-size VAE on a CPU). The VAE is recognised by its weights (a
checksum), not by the module's identity: A1111 loads another VAE into the same module.

The fit draws no random numbers from the generation: it runs inside ``torch.random.fork_rng`` with a fixed seed
(the VAE's posterior sampling would otherwise use, and move, the global generator), so the same VAE gives the same
resamplers and the seed's image stays the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lib_chroma import encoder_fit
from lib_chroma.guidance import Factor
from lib_chroma.resampler import LatentResampler, load_resamplers, save_resamplers

log = logging.getLogger(__name__)

#: (VAE checksum, level factor) -> resampler, for the session
_CACHE: dict[tuple[Any, Factor], LatentResampler] = {}
#: the seed of the fit's own random numbers (the VAE's posterior sampling)
FIT_RNG_SEED = 0
#: the share of the full-size prediction's residual guidance keeps with these resamplers, by level factor
#: (:mod:`lib_chroma.resampler`; 1 where not listed): 0.9 at 2x, chosen on the latent model's tuning seeds
#: 6000-6127 (DPM++ 2M and Euler a) and held out on 5000-5127 with three sampler settings (more proper faces and
#: prompt attributes than keep = 1, at some blockiness; both 2x2 levels of a nested 4x gained most, measured
#: after the choice); at 3x it lost faces, so 3x keeps 1 (docs/theory.md §10)
FITTED_KEEP: dict[Factor, float] = {(2, 2): 0.9}
#: part of every cache file's name: raise it when the fit's recipe changes in a way the name does not show
CACHE_VERSION = 1


def vae_checksum(vae: torch.nn.Module) -> tuple[float, ...]:
    """A cheap fingerprint of a VAE's weights: the sum and the sum of squares of the first and last few
    parameter tensors (float64). Different VAE files give different values; the same file the same."""
    params = list(vae.parameters())
    picked = params[:3] + params[-3:]
    sums = ((t.detach().double().sum(), (t.detach().double() ** 2).sum()) for t in picked)
    return tuple(round(float(v), 6) for pair in sums for v in pair)


def _first_param(vae: torch.nn.Module) -> torch.Tensor | None:
    return next(vae.parameters(), None)


def _devices(vae: torch.nn.Module) -> list[int]:
    p = _first_param(vae)
    return [p.device.index or 0] if p is not None and p.device.type == "cuda" else []


def cache_file(cache_dir: str | Path, key: tuple[float, ...], factor: Factor, vae: torch.nn.Module,
               f: int) -> Path:
    """The cache file of a fit: named by a hash of everything the fitted weights depend on (the VAE's checksum,
    dtype and device type, the factor, ``f`` and the fit's recipe: images, seed, latent size, rng seed)."""
    p = _first_param(vae)
    where = ("", "") if p is None else (str(p.dtype), p.device.type)
    recipe = (CACHE_VERSION, key, where, tuple(factor), f, encoder_fit.FIT_IMAGES, encoder_fit.FIT_LATENT,
              encoder_fit.DEAD_LEAVES_SEED, FIT_RNG_SEED)
    digest = hashlib.sha256(repr(recipe).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"vae-{digest}-{factor[0]}x{factor[1]}.safetensors"


def _load_file(path: Path, factor: Factor) -> LatentResampler | None:
    if not path.is_file():
        return None
    try:
        return load_resamplers(path)[factor]
    except Exception as e:  # noqa: BLE001 - a damaged file is fitted again and replaced
        log.warning("Resolution Chromatography: could not read %s (%s: %s); fitting again", path,
                    type(e).__name__, e)
        return None


def _save_file(path: Path, rs: LatentResampler) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            save_resamplers({rs.factor: rs}, tmp)
            os.replace(tmp, path)  # whole files only: a reader never sees half of one
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except Exception as e:  # noqa: BLE001 - the fit is still used; it is only not kept on disk
        log.warning("Resolution Chromatography: could not save the fitted resamplers to %s (%s: %s)", path,
                    type(e).__name__, e)


def resamplers_for(
    levels: list[Factor],
    vae: torch.nn.Module,
    encode: Callable[[torch.Tensor], torch.Tensor],
    f: int = 8,
    cache_dir: str | Path | None = None,
) -> dict[Factor, LatentResampler]:
    """The fitted resampler of every distinct level factor in ``levels`` for ``vae``, used with the ``keep`` of
    :data:`FITTED_KEEP`: from the session's memory, else from ``cache_dir`` (:func:`cache_file`), else fitted now
    and saved there; ``encode`` maps images in ``[-1, 1]`` (float32, CPU) to the sampler's latents. Raises
    whatever the fit raises (the caller falls back to pooling); a cache file that cannot be read or written only
    costs a fit."""
    key = vae_checksum(vae)
    out: dict[Factor, LatentResampler] = {}
    for lv in levels:
        lv = (int(lv[0]), int(lv[1]))
        if lv in out:
            continue
        if (key, lv) not in _CACHE:
            path = None if cache_dir is None else cache_file(cache_dir, key, lv, vae, f)
            rs = None if path is None else _load_file(path, lv)
            if rs is None:
                t0 = time.perf_counter()
                with torch.random.fork_rng(devices=_devices(vae)):
                    torch.manual_seed(FIT_RNG_SEED)
                    rs = encoder_fit.fit_to_encoder(encode, lv, f=f, n=encoder_fit.FIT_IMAGES)
                log.warning("Resolution Chromatography: fitted %dx%d resamplers to the VAE (dead leaves, %d images) "
                            "in %.1f s%s", lv[0], lv[1], rs.info.get("n", 0), time.perf_counter() - t0,
                            "" if path is None else f"; saved to {path}")
                if path is not None:
                    _save_file(path, rs)
            _CACHE[(key, lv)] = rs
        out[lv] = dataclasses.replace(_CACHE[(key, lv)], keep=FITTED_KEEP.get(lv, 1.0))
    return out


def record(resamplers: dict[Factor, LatentResampler] | None) -> dict[str, Any]:
    """The debug record's view of a pass's resamplers: the level factors they serve and their ``keep``."""
    if resamplers is None:
        return {"resamplers": None}
    return {"resamplers": [list(k) for k in resamplers],
            "resampler_keep": sorted({rs.keep for rs in resamplers.values()})}


def host_cache_dir() -> Path | None:
    """Where the fits are kept on disk: ``<the WebUI's cache dir>/resolution-chromatography`` (A1111's and
    Forge's ``modules.cache.cache_dir``: ``<data dir>/cache`` unless ``SD_WEBUI_CACHE_DIR`` says otherwise);
    None (memory only) where the host has none."""
    try:
        from modules import cache

        return Path(cache.cache_dir) / "resolution-chromatography"
    except Exception:  # noqa: BLE001 - an older or unusual host: keep the fits for the session only
        return None


def host_encoder(sd_model: Any) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """``(vae, encode)`` for the loaded model: A1111's and Forge's ``images_tensor_to_samples`` with the full
    VAE (``approximation = 0``), images in ``[-1, 1]`` mapped to its ``[0, 1]``."""
    from modules import sd_samplers_common

    vae = getattr(sd_model, "first_stage_model", None)
    if vae is None:
        forge = getattr(sd_model, "forge_objects", None)
        vae = getattr(getattr(forge, "vae", None), "first_stage_model", None)
    if not isinstance(vae, torch.nn.Module):
        raise ValueError("the loaded model has no VAE module to fit the resamplers to")

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sd_samplers_common.images_tensor_to_samples((x + 1.0) / 2.0, 0, sd_model)

    return vae, encode


def clear() -> None:
    """Forget every fitted resampler of the session (tests); cache files stay."""
    _CACHE.clear()
