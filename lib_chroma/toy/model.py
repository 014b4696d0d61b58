"""Tiny convolutional UNet (no attention) and the DDPM scaled-linear schedule it was trained with.

Schedule (as Stable Diffusion): ``beta_t = linspace(sqrt(0.00085), sqrt(0.012), 1000)[t]^2``,
``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)``; training noises
``x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps`` and the network predicts ``eps`` from ``(x_t, t)``.

The UNet has three resolution levels (two 2x downsamplings), residual blocks with GroupNorm, SiLU and a
scale-shift time embedding. It runs at any input size: inputs whose sides are not multiples of 4 are padded
(replicate) up to the next multiple and the output is cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scaled_linear_alphas_cumprod(n: int = NUM_TIMESTEPS) -> torch.Tensor:
    """``abar_t = prod_{s<=t}(1 - beta_s)``, ``beta = linspace(sqrt(0.00085), sqrt(0.012), n)^2``, float64."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]``, ``f_i = 10000^(-i/(dim/2))``; ``t`` may be real."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """``h = conv(SiLU(GN(x))); h = GN(h) * (1 + scale) + shift; out = skip(x) + conv(SiLU(h))``."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class TinyUNet(nn.Module):
    """UNet with ``channels[i]`` channels and ``blocks[i]`` residual blocks at resolution ``1/2^i``."""

    def __init__(
        self,
        in_ch: int = 3,
        channels: tuple[int, ...] = (32, 64, 128),
        blocks: tuple[int, ...] = (1, 2, 2),
        temb: int = 128,
    ) -> None:
        super().__init__()
        channels, blocks = tuple(channels), tuple(blocks)
        if len(channels) != len(blocks):
            raise ValueError(f"channels {channels} and blocks {blocks} must have the same length")
        self.config = {"in_ch": in_ch, "channels": list(channels), "blocks": list(blocks), "temb": temb}
        self.temb_dim = temb
        self.time_mlp = nn.Sequential(nn.Linear(temb, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        c = channels[0]
        for i, co in enumerate(channels):
            level = nn.ModuleList()
            for _ in range(blocks[i]):
                level.append(ResBlock(c, co, temb))
                c = co
                skips.append(c)
            self.down.append(level)
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(c, c, temb), ResBlock(c, c, temb)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, co in reversed(list(enumerate(channels))):
            level = nn.ModuleList()
            for _ in range(blocks[i]):
                level.append(ResBlock(c + skips.pop(), co, temb))
                c = co
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv2d(c, in_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of ``2^(levels-1)``."""
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict ``eps`` for ``x_t`` at DDPM timesteps ``t`` (shape ``(B,)`` or scalar; may be real)."""
        h0, w0 = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h0) % m, (-w0) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.temb_dim))
        h = self.inp(x)
        hs = []
        for i, level in enumerate(self.down):
            for blk in level:
                h = blk(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for blk in self.mid:
            h = blk(h, emb)
        for i, level in enumerate(self.up):
            for blk in level:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.out(F.silu(self.out_norm(h)))
        return out[..., :h0, :w0]


def param_count(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
