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
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

NUM_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
M = TypeVar("M", bound=nn.Module)


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


def zero_init(layer: M) -> M:
    """``layer`` with its weight and bias set to zero (after its own initialisation has drawn from the RNG)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    """``h = conv(SiLU(GN(x))); h = GN(h) * (1 + scale) + shift; out = skip(x) + conv(SiLU(h))``."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class UNetBase(nn.Module):
    """What the toy UNets share: the time-embedding MLP and input convolution (:meth:`_init_stem`), the output
    head (:meth:`_init_head`), padding of the input to a multiple of ``2^(levels-1)`` and the time embedding.
    A subclass fills ``self.down`` with one entry per level."""

    down: nn.ModuleList

    def _init_stem(self, in_ch: int, ch: int, temb: int) -> None:
        """Create ``time_mlp`` (Linear-SiLU-Linear of width ``temb``) and ``inp`` (3x3 conv ``in_ch -> ch``)."""
        self.temb_dim = temb
        self.time_mlp = nn.Sequential(nn.Linear(temb, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)

    def _init_head(self, ch: int, out_ch: int) -> None:
        """Create ``out_norm`` (GroupNorm) and ``out`` (zero-initialised 3x3 conv ``ch -> out_ch``)."""
        self.out_norm = nn.GroupNorm(8, ch)
        self.out = zero_init(nn.Conv2d(ch, out_ch, 3, padding=1))

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of ``2^(levels-1)``."""
        return 2 ** (len(self.down) - 1)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``x`` replicate-padded at the bottom and right to sides that are multiples of :attr:`multiple`, and
        its original sides ``(h0, w0)``."""
        h0, w0 = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h0) % m, (-w0) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, h0, w0

    def _embed_time(self, t: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """``time_mlp`` of the sinusoidal embedding of ``t`` (scalar or ``(B,)``, may be real), one row per item."""
        t = torch.as_tensor(t, device=device).reshape(-1).expand(batch)
        return self.time_mlp(timestep_embedding(t, self.temb_dim))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """``out(SiLU(out_norm(h)))``."""
        return self.out(F.silu(self.out_norm(h)))


class TinyUNet(UNetBase):
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
        self._init_stem(in_ch, channels[0], temb)
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
        self._init_head(c, in_ch)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict ``eps`` for ``x_t`` at DDPM timesteps ``t`` (shape ``(B,)`` or scalar; may be real)."""
        x, h0, w0 = self._pad(x)
        emb = self._embed_time(t, x.shape[0], x.device)
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
        return self._head(h)[..., :h0, :w0]


def param_count(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
