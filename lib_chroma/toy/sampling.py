"""The toy model behind the PyPI ``k-diffusion`` wrapper, and the seeded initial noise every method shares.

The eps-model is wrapped as A1111 wraps SD: ``k_diffusion.external.DiscreteEpsDDPMDenoiser`` over the
model's ``alphas_cumprod``, i.e. VE form ``x = x0 + sigma eps`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)``
and ``denoised = x - sigma * eps_theta(x / sqrt(1 + sigma^2), t(sigma))``.
Sampling itself is :func:`lib_chroma.toy.runs.run_kdiff`. Initial noise of sample ``i`` is drawn from
``torch.Generator().manual_seed(seed + i)`` at the output size, so the same seeds give comparable rows across
methods.
"""

from __future__ import annotations

import torch

from .model import TinyUNet, scaled_linear_alphas_cumprod


def make_denoiser(model: TinyUNet, quantize: bool = True) -> torch.nn.Module:
    """k-diffusion VE denoiser ``(x, sigma) -> x0`` around the eps-model (as A1111's ``CompVisDenoiser``)."""
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    return DiscreteEpsDDPMDenoiser(model, scaled_linear_alphas_cumprod().float(), quantize=quantize)


def initial_noise(n: int, h: int, w: int, seed: int, channels: int = 3) -> torch.Tensor:
    """Unit Gaussian noise ``(n, channels, h, w)``; sample ``i`` from generator seed ``seed + i``."""
    return torch.stack(
        [torch.randn((channels, h, w), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]
    )
