"""Resamplers fitted to the loaded VAE (the ``resampler = fitted`` field), for both hosts.

:func:`lib_chroma.encoder_fit.fit_to_encoder` runs once per VAE and level factor on the first guided pass that
needs it, through the host's own encoder (``sd_samplers_common.images_tensor_to_samples`` with the full VAE, the
path img2img and hires fix take), and is kept for the session. The VAE is recognised by its weights (a
checksum), not by the module's identity: A1111 loads another VAE into the same module.

The fit draws no random numbers from the generation: it runs inside ``torch.random.fork_rng`` with a fixed seed
(the VAE's posterior sampling would otherwise use, and move, the global generator), so the same VAE gives the same
resamplers and the seed's image stays the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from lib_chroma import encoder_fit
from lib_chroma.guidance import Factor
from lib_chroma.resampler import LatentResampler

log = logging.getLogger(__name__)

#: (VAE checksum, level factor) -> resampler, for the session
_CACHE: dict[tuple[Any, Factor], LatentResampler] = {}
#: the seed of the fit's own random numbers (the VAE's posterior sampling)
FIT_RNG_SEED = 0


def vae_checksum(vae: torch.nn.Module) -> tuple[float, ...]:
    """A cheap fingerprint of a VAE's weights: the sum and the sum of squares of the first and last few
    parameter tensors (float64). Different VAE files give different values; the same file the same."""
    params = list(vae.parameters())
    picked = params[:3] + params[-3:]
    sums = ((t.detach().double().sum(), (t.detach().double() ** 2).sum()) for t in picked)
    return tuple(round(float(v), 6) for pair in sums for v in pair)


def _devices(t: torch.nn.Module) -> list[int]:
    try:
        dev = next(t.parameters()).device
    except StopIteration:
        return []
    return [dev.index or 0] if dev.type == "cuda" else []


def resamplers_for(
    levels: list[Factor],
    vae: torch.nn.Module,
    encode: Callable[[torch.Tensor], torch.Tensor],
    f: int = 8,
) -> dict[Factor, LatentResampler]:
    """The fitted resampler of every distinct level factor in ``levels`` for ``vae`` (fitted now if not cached);
    ``encode`` maps images in ``[-1, 1]`` (float32, CPU) to the sampler's latents. Raises whatever the fit
    raises (the caller falls back to pooling)."""
    key = vae_checksum(vae)
    out: dict[Factor, LatentResampler] = {}
    for lv in levels:
        lv = (int(lv[0]), int(lv[1]))
        if lv in out:
            continue
        if (key, lv) not in _CACHE:
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=_devices(vae)):
                torch.manual_seed(FIT_RNG_SEED)
                rs = encoder_fit.fit_to_encoder(encode, lv, f=f, n=encoder_fit.FIT_IMAGES)
            log.warning("Resolution Chromatography: fitted %dx%d resamplers to the VAE (dead leaves, %d images) "
                        "in %.1f s", lv[0], lv[1], rs.info.get("n", 0), time.perf_counter() - t0)
            _CACHE[(key, lv)] = rs
        out[lv] = _CACHE[(key, lv)]
    return out


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
    """Forget every fitted resampler (tests)."""
    _CACHE.clear()
