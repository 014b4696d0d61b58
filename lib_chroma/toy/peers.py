"""The UNet-patching peers of upsample guidance, re-implemented (not copied) for any UNet through module hooks.

Each peer is a context manager that hooks the modules a :class:`UNetMap` names and removes every hook (and
restores every conv attribute it changed) on exit; :func:`toy_map` maps the toy UNets (pixel and latent). The
peers read the model's timestep ``t`` from the root module's forward arguments and count its calls; a call
made inside :func:`bypass` is neither patched nor counted (that is how upsample guidance's low-resolution call
skips patches meant for the full size, see :func:`guided_low_model`).

- :class:`DeepShrink` (Kohya "Deep Shrink" / "HiresFix", ComfyUI ``PatchModelAddDownscale``): while
  ``t_lo <= t <= t_hi`` (``t = (1 - percent) * 999``; defaults start 0 %, end 35 %: ``t >= 649.35``, no upper
  bound) the output of the first downsampler is resized by ``1/factor`` (bicubic, factor 2) after the skip;
  the hidden state is resized back (bicubic) where SD would meet the full-size skip of that downsampler.
- :class:`RAUNet` (HiDiffusion's resolution-aware UNet): for the first ``T1 = int(N * t1)`` calls the first
  downsampling conv runs with stride 4, dilation 2, padding 2 (a quarter of the size instead of half) and the
  matching upsampler interpolates (nearest) to its skip's size; for the first ``T2 = int(N * t2)`` calls the
  hidden state after the first block of level 1 is 2x2 average-pooled and restored (bicubic) after the last
  up block of level 1. SD 1.5 below 2048 px: ``t1 = 0.4, t2 = 0``; at 2048 px: ``0.7, 0.3``.
- :class:`ReDilate` (ScaleCrafter): for the first ``tau`` calls every listed 3x3 conv runs with dilation d
  and padding d (integer d only); progressive: ``d_i = max(ceil(d (tau - i) / tau), 2)`` at call i.

Mapping to the toy (3 levels: 32-, 64-, 128-channel; 1, 2, 2 residual blocks; no attention): SD 1.5's
``input_blocks[3]`` (= ``down_blocks.0.downsamplers.0``, the first downsample) is ``downsample[0]``; SD's
"top resolution level" is the toy's level 0; SD's levels 1-3 and mid are the toy's levels 1-2 and mid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import UNetBase

#: ComfyUI's percent_to_sigma: percent p is the sigma of timestep (1 - p) * 999.
T_MAX = 999.0


@dataclass(frozen=True)
class UNetMap:
    """Where the peers hook a UNet with ``L`` resolution levels (level 0 = full size).

    ``downsamplers[i]``: the conv taking level i to i+1. ``upsamplers[i]``: the conv whose output meets level
    i's skips in the up path (its input is the level-(i+1) hidden state, interpolated). ``up_exits[i]``: the
    module whose output leaves level i in the up path (for the levels that have an upsampler below them).
    ``down_blocks[i]``: the blocks of level i in the down path. ``level_convs[i]``: the 3x3 convs of the blocks
    at level i (down and up blocks, the downsampler leaving level i and the upsampler of the up block at level
    i, as SD's block ownership). ``mid_convs``: the bottom (mid) block's 3x3 convs. ``timestep``: the
    timestep from the root's forward ``(args, kwargs)``."""

    root: nn.Module
    downsamplers: tuple[nn.Conv2d, ...]
    upsamplers: tuple[nn.Conv2d, ...]
    up_exits: tuple[nn.Module, ...]
    down_blocks: tuple[tuple[nn.Module, ...], ...]
    level_convs: tuple[tuple[nn.Conv2d, ...], ...]
    mid_convs: tuple[nn.Conv2d, ...]
    timestep: Callable[[tuple, dict], float]


def _convs3(blocks: Any) -> list[nn.Conv2d]:
    return [m for b in blocks for m in b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def toy_map(unet: UNetBase) -> UNetMap:
    """The toy UNets' map: ``downsample[i]``, ``upsample[L-2-i]`` (the up path runs coarsest first), the last
    module of up level ``L-1-i`` as the up exit of level i, ResBlock ``conv1``/``conv2`` as the level convs.
    The latent model's UNet (:class:`lib_chroma.toy.latent.unet.LatentUNet`) has the same levels with a
    transformer after each block: a level's up exit is then its last transformer (the level's last module, as
    in SD's output blocks), and its bottom is ``mid1``, attention, ``mid2``."""
    n = len(unet.down)
    up_attn = getattr(unet, "up_attn", None)

    def exit_of(j: int) -> nn.Module:
        if up_attn is not None and not isinstance(up_attn[j][-1], nn.Identity):
            return up_attn[j][-1]
        return unet.up[j][-1]

    mid = unet.mid if hasattr(unet, "mid") else [unet.mid1, unet.mid2]
    level_convs = []
    for i in range(n):
        convs = _convs3(unet.down[i]) + _convs3(unet.up[n - 1 - i])
        if i < n - 1:
            convs.append(unet.downsample[i])
        if i > 0:
            convs.append(unet.upsample[n - 1 - i])
        level_convs.append(tuple(convs))
    return UNetMap(
        root=unet,
        downsamplers=tuple(unet.downsample),
        upsamplers=tuple(unet.upsample[n - 2 - i] for i in range(n - 1)),
        up_exits=tuple(exit_of(n - 1 - i) for i in range(n)),
        down_blocks=tuple(tuple(lv) for lv in unet.down),
        level_convs=tuple(level_convs),
        mid_convs=tuple(_convs3(mid)),
        timestep=lambda args, kwargs: float(torch.as_tensor(args[1] if len(args) > 1 else kwargs["t"]
                                                            ).reshape(-1)[0]),
    )


@contextmanager
def bypass(root: nn.Module) -> Iterator[None]:
    """Model calls made inside are neither patched nor counted by any peer on ``root``."""
    root._rc_peer_bypass = getattr(root, "_rc_peer_bypass", 0) + 1  # type: ignore[assignment]
    try:
        yield
    finally:
        root._rc_peer_bypass -= 1  # type: ignore[operator]


def bypassed(root: nn.Module) -> bool:
    """Whether a call on ``root`` is inside :func:`bypass`."""
    return getattr(root, "_rc_peer_bypass", 0) > 0


def guided_low_model(den: Callable[..., torch.Tensor], root: nn.Module) -> Callable[..., torch.Tensor]:
    """``den`` run inside :func:`bypass` (for ``UpsampleGuidedDenoiser(low_model=...)``): the low-resolution
    call of upsample guidance is a call at the size the model was trained for and must not be shrunk,
    dilated or strided by patches that are meant for the full size."""
    def low(x: torch.Tensor, sigma: torch.Tensor, **kw: Any) -> torch.Tensor:
        with bypass(root):
            return den(x, sigma, **kw)
    return low


class Patch:
    """Base: hooks the root to read ``t`` and count calls (``step`` = 0-based index of the current patched
    call), installs the peer's hooks on enter and removes them on exit."""

    def __init__(self, m: UNetMap) -> None:
        self.map = m
        self.handles: list[Any] = []
        self.calls = 0
        self.t = math.nan
        self.step = -1

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if bypassed(self.map.root):
            return
        self.t = self.map.timestep(args, kwargs)
        self.step = self.calls
        self.calls += 1

    def live(self) -> bool:
        """A patched (not bypassed) call is running."""
        return not bypassed(self.map.root)

    def install(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Patch:
        self.handles.append(self.map.root.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kw)


class DeepShrink(Patch):
    """Kohya's Deep Shrink: ``h <- resize(h, round(H/f) x round(W/f))`` (bicubic) at the output of
    ``downsamplers[block]`` while ``t_lo <= t <= t_hi``, ``t_lo = (1 - end) 999``, ``t_hi = (1 - start) 999``
    (``start = 0``: no upper bound); the same window as ComfyUI's sigma range, since sigma(t) is increasing.
    The toy's first downsample output is not a skip (SD's ``input_blocks[3]`` output is), so the restore that
    SD does before the output block taking that skip (the last of level 1) is done at the up exit of level
    ``block + 1``: bicubic back to the size the downsampler produced."""

    def __init__(self, m: UNetMap, factor: float = 2.0, start: float = 0.0, end: float = 0.35, block: int = 0,
                 method: str = "bicubic") -> None:
        super().__init__(m)
        if not (factor >= 1.0 and 0.0 <= start <= end <= 1.0):
            raise ValueError(f"factor >= 1 and 0 <= start <= end <= 1 required, got {factor}, {start}, {end}")
        self.factor, self.block, self.method = float(factor), int(block), method
        self.t_lo = (1.0 - end) * T_MAX
        self.t_hi = math.inf if start <= 0.0 else (1.0 - start) * T_MAX
        self.full: tuple[int, int] | None = None

    def active(self) -> bool:
        """Inside the window (by the current call's timestep)."""
        return self.live() and self.t_lo <= self.t <= self.t_hi

    def install(self) -> None:
        def shrink(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not self.active():
                return None
            self.full = (int(out.shape[-2]), int(out.shape[-1]))
            size = (round(out.shape[-2] / self.factor), round(out.shape[-1] / self.factor))
            return _resize(out, size, self.method)

        def restore(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not self.active() or self.full is None:
                return None
            return _resize(out, self.full, self.method)

        self.handles.append(self.map.downsamplers[self.block].register_forward_hook(shrink))
        self.handles.append(self.map.up_exits[self.block + 1].register_forward_hook(restore))


class RAUNet(Patch):
    """HiDiffusion's RAU-Net for ``N`` steps (one call per step): calls ``0 .. int(N t1) - 1`` run
    ``downsamplers[0]`` with stride 4, dilation 2, padding 2 and ``upsamplers[0]``'s input is resized (nearest)
    to the level-0 skip size; calls ``0 .. int(N t2) - 1`` also average-pool (2x2, ceil) the output of
    ``down_blocks[1][0]`` and restore (bicubic) the output of ``up_exits[1]`` to the size before pooling."""

    def __init__(self, m: UNetMap, steps: int, t1: float = 0.4, t2: float = 0.0) -> None:
        super().__init__(m)
        self.T1, self.T2 = int(steps * t1), int(steps * t2)
        self.skip0: tuple[int, int] | None = None
        self.pooled_from: tuple[int, int] | None = None
        self.saved: tuple[Any, Any, Any] | None = None

    def install(self) -> None:
        down, up = self.map.downsamplers[0], self.map.upsamplers[0]

        def down_pre(mod: nn.Conv2d, args: tuple) -> None:
            self.skip0 = (int(args[0].shape[-2]), int(args[0].shape[-1]))
            if self.live() and self.step < self.T1:
                self.saved = (mod.stride, mod.padding, mod.dilation)
                mod.stride, mod.padding, mod.dilation = (4, 4), (2, 2), (2, 2)

        def down_post(mod: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
            if self.saved is not None:
                mod.stride, mod.padding, mod.dilation = self.saved
                self.saved = None

        def up_pre(mod: nn.Conv2d, args: tuple) -> tuple | None:
            if self.live() and self.step < self.T1 and self.skip0 is not None:
                return (_resize(args[0], self.skip0, "nearest"),)
            return None

        def pool(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not (self.live() and self.step < self.T2):
                return None
            self.pooled_from = (int(out.shape[-2]), int(out.shape[-1]))
            return F.avg_pool2d(out, 2, ceil_mode=True)

        def unpool(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not (self.live() and self.step < self.T2) or self.pooled_from is None:
                return None
            return _resize(out, self.pooled_from, "bicubic")

        self.handles += [down.register_forward_pre_hook(down_pre), down.register_forward_hook(down_post),
                         up.register_forward_pre_hook(up_pre)]
        if self.T2 > 0:
            self.handles += [self.map.down_blocks[1][0].register_forward_hook(pool),
                             self.map.up_exits[1].register_forward_hook(unpool)]


class ReDilate(Patch):
    """ScaleCrafter's re-dilation: while ``step < tau``, each conv in ``dilations`` runs with dilation
    ``d_i`` and padding ``d_i`` (3x3 kernels: same output size), ``d_i = d`` or, progressive,
    ``max(ceil(d (tau - i) / tau), 2)``; its attributes are restored after every call."""

    def __init__(self, m: UNetMap, dilations: dict[nn.Conv2d, int], tau: int, progressive: bool = False) -> None:
        super().__init__(m)
        for conv, d in dilations.items():
            if conv.kernel_size != (3, 3) or int(d) != d or d < 1:
                raise ValueError(f"ReDilate: 3x3 convs and integer dilations only, got {conv.kernel_size}, {d}")
        self.dilations, self.tau, self.progressive = dilations, int(tau), progressive

    def dilation(self, d: int, i: int) -> int:
        """The dilation of a conv listed with ``d`` at call ``i`` (1 = off)."""
        if i >= self.tau:
            return 1
        return max(math.ceil(d * (self.tau - i) / self.tau), 2) if self.progressive else int(d)

    def install(self) -> None:
        for conv, d in self.dilations.items():
            def pre(mod: nn.Conv2d, args: tuple, d: int = d) -> None:
                k = self.dilation(d, self.step) if self.live() else 1
                if k > 1:
                    mod._rc_saved = (mod.dilation, mod.padding)  # type: ignore[assignment]
                    mod.dilation, mod.padding = (k, k), (k, k)

            def post(mod: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
                saved = mod.__dict__.pop("_rc_saved", None)
                if saved is not None:
                    mod.dilation, mod.padding = saved

            self.handles += [conv.register_forward_pre_hook(pre), conv.register_forward_hook(post)]


# ------------------------------------------------------------------------------------------------------------
# Defaults per output factor (the toy's 2x = SD 1.5 at 1024 px, 4x = at 2048 px)
# ------------------------------------------------------------------------------------------------------------

def scalecrafter_dilations(m: UNetMap, factor: int) -> dict[nn.Conv2d, int]:
    """ScaleCrafter's SD 1.5 lists mapped to the toy: every conv of the levels below the top and of the mid
    block. 2x (its 1024 px list): dilation 2 everywhere. 4x (its 2048 px list: 2, 3, 4 at SD levels 1, 2, 3
    and mid): level 1 gets 2 and the toy's bottom (level 2 and mid, in the place of SD's level 3 and mid) 4."""
    if factor == 2:
        per_level = {i: 2 for i in range(1, len(m.level_convs))}
        mid = 2
    elif factor == 4:
        per_level = {i: (2 if i == 1 else 4) for i in range(1, len(m.level_convs))}
        mid = 4
    else:
        raise ValueError(f"factor: ScaleCrafter's SD 1.5 settings exist for 2 and 4 here, got {factor}")
    out = {c: d for i, d in per_level.items() for c in m.level_convs[i]}
    out.update({c: mid for c in m.mid_convs})
    return out


def make_peer(name: str, m: UNetMap, factor: int, steps: int) -> Patch:
    """A peer with its defaults for an integer output ``factor`` (side ratio) and ``steps`` one-call steps:
    ``deep_shrink`` (factor 2, 0-35 %), ``hidiffusion`` (2x: T1 0.4; 4x: T1 0.7, T2 0.3),
    ``scalecrafter`` (2x: 30 of 50 steps = 60 %; 4x: 35 of 50 = 70 %, progressive)."""
    if name == "deep_shrink":
        return DeepShrink(m)
    if name == "hidiffusion":
        return RAUNet(m, steps, *((0.4, 0.0) if factor <= 2 else (0.7, 0.3)))
    if name == "scalecrafter":
        frac, prog = (0.6, False) if factor <= 2 else (0.7, True)
        return ReDilate(m, scalecrafter_dilations(m, factor), round(steps * frac), prog)
    raise ValueError(f"peer: unknown {name!r}; allowed: deep_shrink, hidiffusion, scalecrafter")
