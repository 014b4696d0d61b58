"""KL-regularised convolutional autoencoder (SD's "VAE" in small): RGB ``(3, H, W)`` <-> latents ``(4, H/4, W/4)``.

Encoder ``E`` gives a diagonal Gaussian posterior ``q(z | x) = N(mu(x), diag(exp(logvar(x))))``; the decoder
``G`` maps ``z`` back to RGB. Training loss per image (:func:`ae_loss`), with sums as in SD's
``LPIPSWithDiscriminator`` (without its perceptual and adversarial terms) divided by the pixel count ``3HW``:

    L = mean |x - G(z)| + (mean |d_h x - d_h G(z)| + mean |d_v x - d_v G(z)|) / 2 + kl_weight * KL / (3 H W),
    z = mu + exp(logvar / 2) * n,  n ~ N(0, I),    KL = 1/2 sum (mu² + exp(logvar) - 1 - logvar),

where ``d_h``, ``d_v`` are the horizontal and vertical neighbour differences (the edge term keeps small dark
features, the eyes, dark and sharp instead of blurred towards the mean).

Diffusion runs on *scaled* latents ``z' = scale * z`` with a fixed ``scale = 1 / std(z)`` measured on the data
(SD1's 0.18215); :meth:`AutoEncoder.encode` returns the posterior mean, scaled, and :meth:`decode` undoes the
scale. Fully convolutional, no attention: any size works whose sides are multiples of ``f = 4`` (encode) and
any latent size (decode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

F_DOWN = 4
LATENT_CHANNELS = 4


class ConvBlock(nn.Module):
    """Residual block without time input: ``out = skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))))))``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """``x (3, H, W) -> (mu, logvar)``, each ``(z_ch, H/4, W/4)``: two stride-2 convolutions."""

    def __init__(self, ch: tuple[int, int, int], z_ch: int) -> None:
        super().__init__()
        c0, c1, c2 = ch
        self.net = nn.Sequential(
            nn.Conv2d(3, c0, 3, padding=1),
            ConvBlock(c0, c0),
            nn.Conv2d(c0, c1, 3, stride=2, padding=1),
            ConvBlock(c1, c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            ConvBlock(c2, c2),
            ConvBlock(c2, c2),
            nn.GroupNorm(8, c2),
            nn.SiLU(),
            nn.Conv2d(c2, 2 * z_ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """``z (z_ch, h, w) -> x (3, 4h, 4w)``: nearest 2x upsampling followed by a convolution, twice."""

    def __init__(self, ch: tuple[int, int, int], z_ch: int) -> None:
        super().__init__()
        c0, c1, c2 = ch
        self.net = nn.Sequential(
            nn.Conv2d(z_ch, c2, 3, padding=1),
            ConvBlock(c2, c2),
            ConvBlock(c2, c2),
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(c2, c1, 3, padding=1),
            ConvBlock(c1, c1),
            ConvBlock(c1, c1),
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(c1, c0, 3, padding=1),
            ConvBlock(c0, c0),
            nn.GroupNorm(8, c0),
            nn.SiLU(),
            nn.Conv2d(c0, 3, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(z)


class AutoEncoder(nn.Module):
    """Encoder, decoder and the latent scale factor (a buffer, saved with the weights)."""

    def __init__(self, enc_ch: tuple[int, ...] = (16, 32, 64), dec_ch: tuple[int, ...] = (16, 48, 96),
                 z_ch: int = LATENT_CHANNELS) -> None:
        super().__init__()
        self.config = {"enc_ch": list(enc_ch), "dec_ch": list(dec_ch), "z_ch": z_ch}
        self.encoder = Encoder(tuple(enc_ch), z_ch)  # type: ignore[arg-type]
        self.decoder = Decoder(tuple(dec_ch), z_ch)  # type: ignore[arg-type]
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def scale_factor(self) -> float:
        """``scale = 1 / std(z)`` (1 until measured)."""
        return float(self.scale)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior ``(mu, logvar)`` of images ``x`` (sides multiples of 4)."""
        if x.shape[-2] % F_DOWN or x.shape[-1] % F_DOWN:
            raise ValueError(f"x: sides must be multiples of {F_DOWN}, got {tuple(x.shape[-2:])}")
        return self.encoder(x)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Scaled latents ``scale * z``: the posterior mean, or a posterior sample with ``sample``."""
        mu, logvar = self.posterior(x)
        if sample:
            mu = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator)
        return mu * self.scale

    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """RGB images from scaled latents: ``G(z' / scale)``."""
        return self.decoder(z_scaled / self.scale)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction from a posterior sample, mu, logvar)``, unscaled."""
        mu, logvar = self.posterior(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator)
        return self.decoder(z), mu, logvar


def ae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
            kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, KL per image)``, ``L = mean|x - recon| + (mean|d_h(x - recon)| + mean|d_v(x - recon)|) / 2
    + kl_weight * KL / (3HW)`` (module docstring)."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))
    d = x - recon
    rec = d.abs().mean() + 0.5 * ((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
                                  + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())
    return rec + kl_weight * kl.mean() / x[0].numel(), kl.mean()


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """``10 log10(peak² / MSE)`` with peak-to-peak 2 (images in ``[-1, 1]``)."""
    mse = float((x - y).pow(2).mean())
    return float(10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))))
