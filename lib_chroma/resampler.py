"""Latent resamplers fitted to an autoencoder: the ``D`` and ``U`` of upsample guidance for latent models.

Average pooling of latents is not the latent of a pooled image: with ``E`` the encoder and ``X`` an image at
``m`` times the native size, ``D(E(X)) != E(D_p(X))`` (``D_p`` pixel pooling) because ``E`` is nonlinear. A
:class:`LatentResampler` holds the best *linear* maps between the two latent sizes, fitted by least squares on
pairs of latents of the same images rendered at both sizes (``big = E(X)``, ``small = E(x)``, ``x`` the image at
``1/m`` the size):

    down(z) = W_d * pad(z)  (stride m) + b_d       ~ small    (a (C, C, m + 2p, m + 2p) convolution)
    up(y)   = shuffle_m(W_u * pad(y) + b_u)        ~ big      (a (C m_h m_w, C, 2r + 1, 2r + 1) convolution
                                                               followed by a pixel shuffle)

Both place their blocks exactly as :func:`lib_chroma.guidance.pool` and :func:`~lib_chroma.guidance.unpool` do
(the same ``offset`` of the moving grid, the same replicate padding for sizes the factor does not divide): block
``i`` of ``down`` is centred on the pooling block ``i``, widened by ``p`` latent pixels on each side.

Guidance uses them as in :func:`lib_chroma.guidance.guide_x0` (``resamplers``): the low-resolution call sees
``D(x) + down(denoised) - D(denoised)`` (the noise pooled exactly, as the model expects at ``sigma / m``; the
signal re-pooled into the code of the pooled image), and the correction is ``w · up_lin(denoised_low -
down(denoised))`` (``up_lin``: ``up`` without its bias, which cancels in the difference). With ``keep`` < 1 the
part of the full-size prediction that its own re-pooled code does not explain through the fit, the residual
``R = denoised - up(down(denoised))``, is damped as well:

    denoised' = denoised + w · up_lin(denoised_low - down(denoised)) - (1 - keep) · R

on the guided rows whose full-size sigma is at least ``damp_sigma_min`` (below it, ``R`` is kept whole: the last
steps of a sampler like DPM++ 2M return this prediction as the image, and damping there only blurs it).
(the full-size model's own fine content is what paints native-size features into a large image at low noise;
docs/theory.md §10).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lib_chroma.guidance import Factor, _span
from lib_chroma.validation import check_int, check_number

__all__ = ["LatentResampler", "fit_resampler", "save_resamplers", "load_resamplers"]


@dataclass(frozen=True)
class LatentResampler:
    """Fitted ``down`` / ``up`` between latents at ``factor`` = (m_h, m_w) times the native size and native
    latents (module docstring). ``w_down`` (C, C, m_h + 2 p, m_w + 2 p), ``b_down`` (C,); ``w_up`` (C m_h m_w,
    C, 2 r + 1, 2 r + 1), ``b_up`` (C m_h m_w,); ``info``: how it was fitted (free-form, JSON-able). ``keep``:
    how guidance uses it, not part of the fit (not saved): the share of the residual ``R`` it keeps, in [0, 1]
    (1: none damped); ``damp_sigma_min``: the full-size sigma below which nothing is damped (0: damped to the end)."""

    factor: Factor
    w_down: torch.Tensor
    b_down: torch.Tensor
    w_up: torch.Tensor
    b_up: torch.Tensor
    info: Mapping[str, object]
    keep: float = 1.0
    damp_sigma_min: float = 0.0

    def __post_init__(self) -> None:
        check_number("keep", self.keep, 0.0, 1.0)
        check_number("damp_sigma_min", self.damp_sigma_min, 0.0)

    @property
    def pad_down(self) -> int:
        """``p``: latent pixels added on each side of a pooling block."""
        return (int(self.w_down.shape[-1]) - self.factor[1]) // 2

    @property
    def pad_up(self) -> int:
        """``r``: the up-convolution's radius in native latent pixels."""
        return (int(self.w_up.shape[-1]) - 1) // 2

    def _w(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=like.dtype)

    def down(self, z: torch.Tensor, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, ceil(H / m_h), ceil(W / m_w))`` on the blocks of ``pool(z, m_h, m_w,
        offset)``."""
        (mh, mw), p = self.factor, self.pad_down
        top, _, nh = _span(z.shape[-2], mh, offset[0])
        left, _, nw = _span(z.shape[-1], mw, offset[1])
        # the blocks start `top` rows above the image; `p` more rows on each side for the kernel's margin
        need_h, need_w = nh * mh + 2 * p, nw * mw + 2 * p
        pads = (left + p, max(0, need_w - (left + p) - z.shape[-1]), top + p, max(0, need_h - (top + p) - z.shape[-2]))
        zp = F.pad(z, pads, mode="replicate")[..., :need_h, :need_w]
        return F.conv2d(zp, self._w(self.w_down, z), self._w(self.b_down, z), stride=(mh, mw))

    def up(self, y: torch.Tensor, size: tuple[int, int], offset: tuple[int, int] = (0, 0),
           bias: bool = True) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C, *size)``: block ``i`` of ``y`` fills the block ``i`` of
        :meth:`down`'s grid (same ``offset``), cropped to ``size``; rows past the last block repeat it.
        ``bias=False``: the linear part only (for differences)."""
        (mh, mw), r = self.factor, self.pad_up
        b = self._w(self.b_up, y) if bias else None
        pad = F.pad(y, (r, r, r, r), mode="replicate")
        full = _shuffle(F.conv2d(pad, self._w(self.w_up, y), b), mh, mw)
        H, W = size
        top, left = _span(H, mh, offset[0])[0], _span(W, mw, offset[1])[0]
        short_h, short_w = max(0, top + H - full.shape[-2]), max(0, left + W - full.shape[-1])
        if short_h or short_w:
            full = F.pad(full, (0, short_w, 0, short_h), mode="replicate")
        return full[..., top:top + H, left:left + W]


def _shuffle(t: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """(B, C mh mw, h, w) -> (B, C, h mh, w mw); channel ``c mh mw + i mw + j`` goes to sub-pixel (i, j)."""
    b, cm, h, w = t.shape
    c = cm // (mh * mw)
    return t.view(b, c, mh, mw, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * mh, w * mw)


def _unshuffle(t: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    b, c, H, W = t.shape
    return t.view(b, c, H // mh, mh, W // mw, mw).permute(0, 1, 3, 5, 2, 4).reshape(b, c * mh * mw, H // mh, W // mw)


def _lstsq(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
    return torch.linalg.lstsq(a, t).solution


def fit_resampler(big: torch.Tensor, small: torch.Tensor, factor: Factor, p: int = 2, r: int = 2,
                  info: Mapping[str, object] | None = None) -> LatentResampler:
    """Least-squares :class:`LatentResampler` from latent pairs: ``big`` (N, C, m_h h, m_w w) and ``small``
    (N, C, h, w), the same images at both sizes. ``down`` minimises ``||down(big) - small||²``, ``up``
    ``||up(small) - big||²`` (each with a bias), over every block of every pair, in float64."""
    mh, mw = (check_int("factor", int(v), 1) for v in factor)
    check_int("p", p, 0)
    check_int("r", r, 0)
    if big.dim() != 4 or small.dim() != 4 or big.shape[:2] != small.shape[:2]:
        raise ValueError(f"big, small: must be (N, C, H, W) with the same N, C; got {tuple(big.shape)}, "
                         f"{tuple(small.shape)}")
    n, c, h, w = small.shape
    if tuple(big.shape[-2:]) != (h * mh, w * mw):
        raise ValueError(f"big: must be {mh}x{mw} the size of small ({h}, {w}), got {tuple(big.shape[-2:])}")
    big, small = big.double(), small.double()
    kh, kw = mh + 2 * p, mw + 2 * p
    a = F.unfold(F.pad(big, (p, p, p, p), mode="replicate"), (kh, kw), stride=(mh, mw))
    sol = _lstsq(a.permute(0, 2, 1).reshape(-1, c * kh * kw), small.permute(0, 2, 3, 1).reshape(-1, c))
    w_down, b_down = sol[:-1].T.reshape(c, c, kh, kw), sol[-1]
    k = 2 * r + 1
    a = F.unfold(F.pad(small, (r, r, r, r), mode="replicate"), k)
    t = _unshuffle(big, mh, mw).permute(0, 2, 3, 1).reshape(-1, c * mh * mw)
    sol = _lstsq(a.permute(0, 2, 1).reshape(-1, c * k * k), t)
    w_up, b_up = sol[:-1].T.reshape(c * mh * mw, c, k, k), sol[-1]
    return LatentResampler((mh, mw), w_down.float(), b_down.float(), w_up.float(), b_up.float(), dict(info or {}))


def save_resamplers(resamplers: Mapping[Factor, LatentResampler], path: str | Path) -> None:
    """One safetensors file: tensors ``<mh>x<mw>.{w_down,b_down,w_up,b_up}`` (float32), metadata ``info`` (JSON:
    each factor's ``info``)."""
    from safetensors.torch import save_file

    state, info = {}, {}
    for (mh, mw), rs in resamplers.items():
        key = f"{mh}x{mw}"
        for name in ("w_down", "b_down", "w_up", "b_up"):
            state[f"{key}.{name}"] = getattr(rs, name).detach().float().contiguous()
        info[key] = dict(rs.info)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"info": json.dumps(info)})


def load_resamplers(path: str | Path) -> dict[Factor, LatentResampler]:
    """The resamplers :func:`save_resamplers` wrote, by factor."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    state = load_file(str(path))
    out: dict[Factor, LatentResampler] = {}
    for key, inf in info.items():
        mh, mw = (int(v) for v in key.split("x"))
        t = {name: state[f"{key}.{name}"] for name in ("w_down", "b_down", "w_up", "b_up")}
        out[(mh, mw)] = LatentResampler((mh, mw), t["w_down"], t["b_down"], t["w_up"], t["b_up"], inf)
    return out
