"""Plain (unguided) sampling of the toy model through the PyPI ``k-diffusion`` samplers.

The eps-model is wrapped as A1111 wraps SD: ``k_diffusion.external.DiscreteEpsDDPMDenoiser`` over the
model's ``alphas_cumprod``, i.e. VE form ``x = x0 + sigma eps`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)``
and ``denoised = x - sigma * eps_theta(x / sqrt(1 + sigma^2), t(sigma))``.
Initial noise of sample ``i`` is drawn from ``torch.Generator().manual_seed(seed + i)`` at the output size,
so the same seeds give comparable rows across methods.
"""

from __future__ import annotations

import torch

from .model import TinyUNet, scaled_linear_alphas_cumprod

SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m")


def make_denoiser(model: TinyUNet, quantize: bool = True) -> torch.nn.Module:
    """k-diffusion VE denoiser ``(x, sigma) -> x0`` around the eps-model (as A1111's ``CompVisDenoiser``)."""
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    return DiscreteEpsDDPMDenoiser(model, scaled_linear_alphas_cumprod().float(), quantize=quantize)


def initial_noise(n: int, h: int, w: int, seed: int, channels: int = 3) -> torch.Tensor:
    """Unit Gaussian noise ``(n, channels, h, w)``; sample ``i`` from generator seed ``seed + i``."""
    return torch.stack(
        [torch.randn((channels, h, w), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]
    )


@torch.no_grad()
def sample(
    model: TinyUNet,
    n: int,
    h: int,
    w: int | None = None,
    steps: int = 40,
    sampler: str = "euler",
    seed: int = 0,
    batch: int = 64,
) -> torch.Tensor:
    """``n`` samples at ``h x w`` with ``steps`` steps of a k-diffusion sampler on the model's own discrete
    sigma schedule (``get_sigmas(steps)``, A1111's default); returns ``(n, 3, h, w)``, not clamped."""
    import k_diffusion.sampling as ks

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    w = h if w is None else w
    den = make_denoiser(model)
    sigmas = den.get_sigmas(steps)
    fn = getattr(ks, f"sample_{sampler}")
    torch.manual_seed(seed)  # ancestral samplers draw their step noise from the global generator
    outs = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        x = initial_noise(m, h, w, seed + start) * sigmas[0]
        outs.append(fn(den, x, sigmas, disable=True))
    return torch.cat(outs)
