"""The low-resolution model call of one CFG-denoiser evaluation, host-agnostic (torch only).

A1111's ``CFGDenoiser.forward`` evaluates ``x_in`` = N cond rows (images repeated once per ``AND`` part)
followed by B uncond rows, with text conds ``cond`` (N rows) and ``uncond`` (B rows), image conds
``image_cond`` (N+B rows) and per-row sigmas (k-diffusion) or timesteps (DDIM/PLMS/UniPC). :class:`LowResCall`
builds the ``denoise_low`` callable that :func:`lib_chroma.guidance.guide_x0` /
:func:`~lib_chroma.guidance.guide_eps` need: the same rows, pooled, through the same inner model with the same
conds, in one batched call per level, or — when the cond and uncond token lengths differ and cannot be
concatenated — one call for the cond rows and one for the uncond rows.

Image conds: a spatial image cond of the latent's size (inpainting models: mask + masked-image latent; edit
and depth models) is average-pooled level by level exactly like ``x``; anything else (txt2img's
``(B, 5, 1, 1)`` dummy, unCLIP's ``c_adm`` vector) is passed unchanged. SDXL dict conds are sliced and
concatenated key by key; their ``vector`` (Forge: ``y``, see ``vector_key``) may be rewritten per level by
``vector_for`` (size conditioning, see the adapters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from lib_chroma.guidance import GuidancePlan, pool

__all__ = [
    "cond_rows",
    "cat_conds",
    "cond_tokens",
    "cond_len",
    "first_cond_rows",
    "uncond_skipped",
    "LowResCall",
]

Cond = Any  # a tensor (B, T, C) or a dict of tensors (SDXL: crossattn, vector)


def cond_rows(cond: Cond, a: int, b: int) -> Cond:
    """Rows ``a:b`` of a tensor or dict cond."""
    if isinstance(cond, dict):
        return {k: v[a:b] for k, v in cond.items()}
    return cond[a:b]


def cat_conds(conds: Sequence[Cond]) -> Cond:
    """Row-concatenate tensor or dict conds (same keys)."""
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(list(conds))


def cond_tokens(cond: Cond) -> int:
    """Token length (dim 1 of the cross-attention tensor)."""
    t = cond["crossattn"] if isinstance(cond, dict) else cond
    return int(t.shape[1])


def cond_len(cond: Cond) -> int:
    """Number of rows."""
    t = cond["crossattn"] if isinstance(cond, dict) else cond
    return int(t.shape[0])


def first_cond_rows(
    x_in: torch.Tensor, n_cond: int, n_uncond: int, repeats: Sequence[int] | None = None
) -> list[int]:
    """Index of each image's first cond row (A1111's ``conds_list[i][0][0]``).

    From ``repeats`` (``AND`` parts per image) when given and consistent, else by matching rows: cond rows are
    image i's latent repeated, in image order, and uncond row i is image i's latent."""
    if (
        repeats is not None
        and len(repeats) == n_uncond
        and sum(repeats) == n_cond
        and all(r >= 1 for r in repeats)
    ):
        out, acc = [], 0
        for r in repeats:
            out.append(acc)
            acc += r
        return out
    if n_cond == n_uncond:
        return list(range(n_uncond))
    out, j = [], 0
    for i in range(n_uncond):
        while j < n_cond and not torch.equal(x_in[j], x_in[n_cond + i]):
            j += 1
        if j >= n_cond:
            raise ValueError("cannot match cond rows to images (x_in was changed by another extension?)")
        out.append(j)
        j += 1
    return out


def uncond_skipped(x_out: torch.Tensor, first: Sequence[int], n_cond: int) -> bool:
    """Whether the uncond rows of ``x_out`` are A1111's "fake uncond" copies of each image's first cond output
    (negative prompt skipped early, or NGMS). When true the uncond rows were never evaluated."""
    return all(torch.equal(x_out[n_cond + i], x_out[j]) for i, j in enumerate(first))


class LowResCall:
    """``denoise_low(x_low, sigma_low)`` for a fixed set of rows of one CFG-denoiser evaluation.

    ``inner(x, sigma, cond=dict)`` is the sampler's inner model (x0 for k-diffusion, eps for timestep
    samplers). ``groups`` are ``(start, stop, text_cond)`` row ranges evaluated with one call each (one group
    when cond and uncond concatenate). ``make_cond(text, image)`` builds the conditioning dict as the host
    does.
    ``chunk``: at most this many rows per call (the host's "batch cond/uncond" off), None = no limit.
    ``plan`` gives the levels and ``phase`` this model call's index in its pass, so the spatial image cond is
    pooled level by level on the same (moving) grid as ``x``. ``vector_for(vector, (h_px, w_px))`` rewrites the
    dict cond's ``vector_key`` entry for each low-resolution size. ``around((h, w))``, when given, is a context
    manager entered around the model calls for latent size ``(h, w)`` (the A1111 adapter gives ControlNet its
    hints at that size there, see :mod:`lib_chroma.webui.controlnet`).
    """

    def __init__(
        self,
        inner: Callable[..., torch.Tensor],
        groups: Sequence[tuple[int, int, Cond]],
        image_cond: torch.Tensor | None,
        make_cond: Callable[[Cond, Any], dict],
        plan: GuidancePlan,
        full_size: tuple[int, int],
        *,
        vector_for: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None,
        chunk: int | None = None,
        latent_factor: int = 8,
        phase: int = 0,
        vector_key: str = "vector",
        around: Callable[[tuple[int, int]], AbstractContextManager] | None = None,
    ) -> None:
        self.inner = inner
        self.around = around
        self.groups = list(groups)
        self.make_cond = make_cond
        self.vector_for = vector_for
        self.vector_key = vector_key
        self.chunk = chunk
        self.latent_factor = latent_factor
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []
        #: Per call, the shape of the spatial image conditioning it got (None: not spatial, passed unchanged).
        self.image_shapes: list[tuple[int, ...] | None] = []
        self._image_by_size: dict[tuple[int, int], Any] = {}
        spatial = (
            isinstance(image_cond, torch.Tensor)
            and image_cond.dim() == 4
            and tuple(image_cond.shape[-2:]) == tuple(full_size)
        )
        self._spatial = spatial
        self._image = image_cond
        if spatial:
            img = image_cond
            for k, (mh, mw) in enumerate(plan.levels):
                img = pool(img, mh, mw, plan.offset(k, phase))
                self._image_by_size[(int(img.shape[-2]), int(img.shape[-1]))] = img

    def _image_for(self, size: tuple[int, int]) -> Any:
        if not self._spatial:
            return self._image
        img = self._image_by_size.get(size)
        if img is None:
            raise ValueError(f"image_cond: no pooled image conditioning for latent size {size}")
        return img

    def _text_for(self, text: Cond, size: tuple[int, int]) -> Cond:
        key = self.vector_key
        if self.vector_for is None or not isinstance(text, dict) or key not in text:
            return text
        px = (size[0] * self.latent_factor, size[1] * self.latent_factor)
        return {**text, key: self.vector_for(text[key], px)}

    def __call__(self, x_low: torch.Tensor, sigma_low: torch.Tensor) -> torch.Tensor:
        size = (int(x_low.shape[-2]), int(x_low.shape[-1]))
        image = self._image_for(size)
        out = torch.empty_like(x_low)
        with self.around(size) if self.around is not None else nullcontext():
            self._run(x_low, sigma_low, size, image, out)
        return out

    def _run(
        self, x_low: torch.Tensor, sigma_low: torch.Tensor, size: tuple[int, int], image: Any, out: torch.Tensor
    ) -> None:
        for start, stop, text in self.groups:
            text = self._text_for(text, size)
            step = (stop - start) if not self.chunk else self.chunk
            for a in range(start, stop, step):
                b = min(a + step, stop)
                img = (
                    image[a:b]
                    if isinstance(image, torch.Tensor) and image.shape[0] == x_low.shape[0]
                    else image
                )
                c = cond_rows(text, a - start, b - start)
                self.calls += 1
                self.shapes.append(tuple(x_low[a:b].shape))
                self.image_shapes.append(tuple(img.shape) if self._spatial else None)
                out[a:b] = self.inner(x_low[a:b], sigma_low[a:b], cond=self.make_cond(c, img))
