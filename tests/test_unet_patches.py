"""Other extensions' UNet block wrappers (Deep Shrink's A1111 port) are unwound around the low-resolution call."""

from __future__ import annotations

import pytest
import torch

from lib_chroma.webui.unet_patches import full_size_blocks, wrapped_blocks


class Block(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Resizing(torch.nn.Module):
    """Like Kohya Hires.fix's wrapper: resize the hidden state, then run the original block (kept as ``block``)."""

    def __init__(self, block: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.block, self.scale = block, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="bicubic"))


class UNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([Block() for _ in range(4)])
        self.output_blocks = torch.nn.ModuleList([Block() for _ in range(4)])


def test_wrappers_are_found_unwound_inside_and_restored_after() -> None:
    unet = UNet()
    assert wrapped_blocks(unet) == [] and wrapped_blocks(object()) == []
    orig_in, orig_out = unet.input_blocks[3], unet.output_blocks[0]
    unet.input_blocks[3] = Resizing(orig_in, 0.5)
    unet.output_blocks[0] = Resizing(Resizing(orig_out, 2.0), 1.0)  # nested: unwound to the original
    wrappers = (unet.input_blocks[3], unet.output_blocks[0])
    assert wrapped_blocks(unet) == [("input_blocks", 3), ("output_blocks", 0)]
    x = torch.rand(1, 2, 8, 8)
    assert unet.input_blocks[3](x).shape[-1] == 4
    with full_size_blocks(unet) as names:
        assert names == ["input_blocks.3", "output_blocks.0"]
        assert unet.input_blocks[3] is orig_in and unet.output_blocks[0] is orig_out
        assert unet.input_blocks[3](x).shape[-1] == 8
    assert (unet.input_blocks[3], unet.output_blocks[0]) == wrappers
    with pytest.raises(RuntimeError, match="boom"), full_size_blocks(unet):
        raise RuntimeError("boom")
    assert (unet.input_blocks[3], unet.output_blocks[0]) == wrappers


def test_a_unet_without_wrappers_is_left_alone() -> None:
    unet = UNet()
    blocks = list(unet.input_blocks) + list(unet.output_blocks)
    with full_size_blocks(unet) as names:
        assert names == []
    assert list(unet.input_blocks) + list(unet.output_blocks) == blocks
