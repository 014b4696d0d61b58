"""Resamplers fitted to an encoder alone: the dead-leaves images, the resize, the fit's shapes and its gain."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib_chroma import guidance as G
from lib_chroma.encoder_fit import dead_leaves, downscale, fit_to_encoder


def test_dead_leaves_are_seeded_images_in_range():
    a, b = dead_leaves(3, (40, 24), seed=7), dead_leaves(3, (40, 24), seed=7)
    assert a.shape == (3, 3, 40, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, dead_leaves(3, (40, 24), seed=8))
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0 and float(a.std()) > 0.3


def test_dead_leaves_have_a_natural_image_spectrum():
    """Power falls by about 2 per octave of frequency (``1/f²``, as in photographs): each octave's slope in
    log2 power lies in [-2.6, -1.4]; white noise would read 0, a blurred image far below -3."""
    x = dead_leaves(16, (128, 128), seed=1)
    p = (torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2).mean(dim=(0, 1))
    f = torch.fft.fftfreq(128)
    r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    bands = [float(p[(r >= lo) & (r < 2 * lo)].mean()) for lo in (0.02, 0.04, 0.08, 0.16)]
    slopes = np.log2(np.array(bands[1:]) / np.array(bands[:-1]))
    assert np.all(slopes > -2.6) and np.all(slopes < -1.4), slopes


def test_downscale_sizes_and_refusal():
    x = torch.rand(2, 3, 24, 18) * 2 - 1
    assert downscale(x, (2, 3)).shape == (2, 3, 12, 6)
    with pytest.raises(ValueError, match="multiple of the factor 2x4"):
        downscale(x, (2, 4))


def pooling_encoder(f):
    """A nonlinear toy encoder: average pooling by ``f``, then a pointwise tanh and a channel mix."""
    mix = torch.tensor([[0.6, 0.3, 0.1], [-0.2, 0.5, 0.4], [0.3, -0.6, 0.2], [0.1, 0.1, -0.5]])

    def enc(x):
        return torch.tanh(1.5 * torch.einsum("oc,bchw->bohw", mix, F.avg_pool2d(x, f)))

    return enc


@pytest.mark.parametrize("factor", [(2, 2), (3, 2)])
def test_fit_to_encoder_beats_pooling_on_images_it_never_saw(factor):
    enc = pooling_encoder(4)
    rs = fit_to_encoder(enc, factor, f=4, n=24, latent=8)
    assert rs.factor == factor and rs.info["images"] == "dead leaves"
    big_px = dead_leaves(8, (8 * factor[0] * 4, 8 * factor[1] * 4), seed=99)
    big, small = enc(big_px), enc(downscale(big_px, factor))

    def rel(a, b):
        return float(((a - b) ** 2).mean() / b.var())

    assert rel(rs.down(big), small) < 0.9 * rel(G.pool(big, *factor), small)
    up_pool = G.unpool(small, *factor, tuple(big.shape[-2:]), "bilinear")
    assert rel(rs.up(small, tuple(big.shape[-2:])), big) < rel(up_pool, big)  # up cannot add what pooling lost


def test_fit_to_encoder_names_a_wrong_latent_size():
    with pytest.raises(ValueError, match=r"^encode: expected latents of 16x16 and 8x8 \(f = 8\)"):
        fit_to_encoder(pooling_encoder(4), (2, 2), f=8, n=16, latent=8)


def test_fit_to_encoder_refuses_non_finite_latents():
    def overflowing(x):
        z = pooling_encoder(8)(x)
        z[:, :, 0, 0] = float("nan")
        return z

    with pytest.raises(ValueError, match="^encode: returned non-finite latents"):
        fit_to_encoder(overflowing, (2, 2), f=8, n=16, latent=4)
