"""Attention UNet for the latent model: eps-prediction with self- and cross-attention to the prompt tokens.

Layout (SD's in small): levels at latent resolutions ``1, 1/2, 1/4`` with ``channels[i]`` channels and
``blocks[i]`` residual blocks (:class:`lib_chroma.toy.model.ResBlock`, time embedding by scale and shift) on
the way down and up (skips by concatenation; upsampling: nearest 2x, then a 3x3 convolution to the finer level's
channels), each followed by a :class:`SpatialTransformer` of kind ``attn[i]`` (:data:`ATTN_KINDS`; by default
cross-attention only at the finest level, self- and cross-attention at the two coarser ones); a middle block
``ResBlock, SpatialTransformer, ResBlock`` at the coarsest level. A spatial transformer is SD's:

    h = proj_in(GN(x)) as tokens;  h += SelfAttn(LN(h));  h += CrossAttn(LN(h), context);  h += FF(LN(h));
    out = x + proj_out(h)    (proj_out zero-initialised, FF = Linear-GELU-Linear of width 2C)

with ``softmax(q k^T / sqrt(d)) v`` per head. The image token count is the latent area at that level, so at
2x (4x) output it is 4x (16x) the trained count. Inputs whose sides are not multiples of ``2^(levels-1)`` are
replicate-padded up to the next multiple and the output is cropped back (as the pixel toy's UNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib_chroma.toy.model import ResBlock, UNetBase, zero_init

#: Attention per level: none; ``cross`` (cross-attention to the prompt and FF, no self-attention: its cost grows
#: with the square of the token count, which at the finest level is the whole latent); ``full`` (both).
ATTN_KINDS = ("none", "cross", "full")


class Attention(nn.Module):
    """Multi-head attention ``softmax(q k^T / sqrt(d)) v`` of ``x`` on ``context`` (self when ``None``)."""

    def __init__(self, dim: int, ctx_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(ctx_dim, dim, bias=False)
        self.v = nn.Linear(ctx_dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        c = x if context is None else context
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], h, d // h).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(c)), split(self.v(c)))
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class SpatialTransformer(nn.Module):
    """SD's spatial transformer with one basic block (see the module docstring); ``self_attn=False`` drops the
    self-attention (cross-attention and FF only)."""

    def __init__(self, ch: int, ctx_dim: int, heads: int, ff_mult: int = 2, self_attn: bool = True) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, ch)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(ch), nn.LayerNorm(ch), nn.LayerNorm(ch)
        self.attn1 = Attention(ch, ch, heads) if self_attn else None
        self.attn2 = Attention(ch, ctx_dim, heads)
        self.ff = nn.Sequential(nn.Linear(ch, ff_mult * ch), nn.GELU(), nn.Linear(ff_mult * ch, ch))
        self.proj_out = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        if self.attn1 is not None:
            h = h + self.attn1(self.ln1(h))
        h = h + self.attn2(self.ln2(h), context)
        h = h + self.ff(self.ln3(h))
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, hh, ww))


class LatentUNet(UNetBase):
    """``eps = unet(x_t, t, context)`` on latents ``(B, in_ch, H, W)`` of any size; see the module docstring."""

    def __init__(
        self,
        in_ch: int = 4,
        channels: tuple[int, ...] = (64, 128, 128),
        blocks: tuple[int, ...] = (1, 1, 1),
        attn: tuple[str, ...] = ("cross", "full", "full"),
        ctx_dim: int = 64,
        heads: int = 4,
        temb: int = 128,
    ) -> None:
        super().__init__()
        channels, blocks, attn = tuple(channels), tuple(blocks), tuple(attn)
        if not len(channels) == len(blocks) == len(attn):
            raise ValueError(f"channels {channels}, blocks {blocks} and attn {attn} must have the same length")
        for a in attn:
            if a not in ATTN_KINDS:
                raise ValueError(f"attn: unknown kind {a!r}; allowed: {', '.join(ATTN_KINDS)}")
        self.config = {"in_ch": in_ch, "channels": list(channels), "blocks": list(blocks), "attn": list(attn),
                       "ctx_dim": ctx_dim, "heads": heads, "temb": temb}
        self._init_stem(in_ch, channels[0], temb)

        def tf(ch: int, kind: str) -> nn.Module:
            if kind == "none":
                return nn.Identity()
            return SpatialTransformer(ch, ctx_dim, heads, self_attn=kind == "full")

        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skips, c = [], channels[0]
        for i, co in enumerate(channels):
            res, att = nn.ModuleList(), nn.ModuleList()
            for _ in range(blocks[i]):
                res.append(ResBlock(c, co, temb))
                att.append(tf(co, attn[i]))
                c = co
                skips.append(c)
            self.down.append(res)
            self.down_attn.append(att)
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, temb), tf(c, "full"), ResBlock(c, c, temb)
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, co in reversed(list(enumerate(channels))):
            res, att = nn.ModuleList(), nn.ModuleList()
            for _ in range(blocks[i]):
                res.append(ResBlock(c + skips.pop(), co, temb))
                att.append(tf(co, attn[i]))
                c = co
            self.up.append(res)
            self.up_attn.append(att)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, channels[i - 1], 3, padding=1))
                c = channels[i - 1]
        self._init_head(c, in_ch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Predict ``eps`` for ``x_t`` at DDPM timesteps ``t`` (may be real) with prompt tokens ``context``
        ``(B, T, ctx_dim)``."""
        x, h0, w0 = self._pad(x)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context: {context.shape[0]} rows for {x.shape[0]} latents")
        emb = self._embed_time(t, x.shape[0], x.device)
        h = self.inp(x)
        hs = []
        for i, (res, att) in enumerate(zip(self.down, self.down_attn)):
            for blk, tfm in zip(res, att):
                h = blk(h, emb)
                h = tfm(h, context) if isinstance(tfm, SpatialTransformer) else h
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb), context), emb)
        for i, (res, att) in enumerate(zip(self.up, self.up_attn)):
            for blk, tfm in zip(res, att):
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
                h = tfm(h, context) if isinstance(tfm, SpatialTransformer) else h
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self._head(h)[..., :h0, :w0]
