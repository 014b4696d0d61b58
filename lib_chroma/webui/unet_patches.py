"""Other extensions' UNet block wrappers, left out of the low-resolution call (torch only).

Deep Shrink's A1111 port (the "Kohya Hires.fix" extension) replaces an entry of the UNet's ``input_blocks`` and
the matching ``output_blocks`` entry, while its window is open, by a module that resizes the hidden state and
then runs the original block, kept as its ``block`` attribute. The low-resolution call of upsample guidance
must see the model at its native size: shrinking its input too makes the "native" prediction a shrunk one,
and the correction then pulls the image towards it (on the toy: 0.15 proper faces against 0.94 with the shrink
left out, README "The peers"). :func:`full_size_blocks` swaps every such wrapper for the block it holds around
the low-resolution call and puts it back afterwards; the full-size call keeps it.

A wrapper is recognised by shape, not by name: an entry of ``input_blocks`` / ``output_blocks`` whose
``block`` attribute is itself a module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["BLOCK_LISTS", "wrapped_blocks", "full_size_blocks"]

#: The UNet's block lists that wrappers replace entries of (ldm / sgm UNetModel).
BLOCK_LISTS = ("input_blocks", "output_blocks")


def wrapped_blocks(unet: Any) -> list[tuple[str, int]]:
    """``(list name, index)`` of every block-list entry that wraps another block (module docstring)."""
    out = []
    for name in BLOCK_LISTS:
        blocks = getattr(unet, name, None)
        if not isinstance(blocks, torch.nn.ModuleList):
            continue
        for i, m in enumerate(blocks):
            if isinstance(getattr(m, "block", None), torch.nn.Module):
                out.append((name, i))
    return out


@contextmanager
def full_size_blocks(unet: Any) -> Iterator[list[str]]:
    """Inside: every wrapped block of ``unet`` replaced by the block it wraps (nested wrappers unwound);
    yields their names (``input_blocks.3`` …). The wrappers are back in place on exit, also after an error."""
    saved: list[tuple[str, int, torch.nn.Module]] = []
    try:
        for name, i in wrapped_blocks(unet):
            blocks = getattr(unet, name)
            wrapper = inner = blocks[i]
            while isinstance(getattr(inner, "block", None), torch.nn.Module):
                inner = inner.block
            saved.append((name, i, wrapper))
            blocks[i] = inner
        yield [f"{name}.{i}" for name, i, _ in saved]
    finally:
        for name, i, wrapper in reversed(saved):
            getattr(unet, name)[i] = wrapper
