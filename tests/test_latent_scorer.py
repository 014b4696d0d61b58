"""The latent model's data generator and scorer: attributes read on real and hand-made images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib_chroma.toy.latent import data, scorer


def _scene(**attrs: str) -> data.Scene:
    base = {"position": "centre", "size": "large", "colour": "yellow", "eyes": "round", "texture": "stripes"}
    return data.sample_scene(np.random.default_rng(0), {**base, **attrs})


def _score(sc: data.Scene, res: int = 64) -> scorer.ImageScore:
    return scorer.score_image(data.render([sc], res))


def test_data_is_seeded_in_range_and_follows_requested_attributes() -> None:
    a, sa = data.make_batch(6, seed=3)
    b, _ = data.make_batch(6, seed=3)
    c, _ = data.make_batch(6, seed=4)
    assert a.shape == (6, 3, 64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    asked = [{"position": "left", "eyes": "slit"}] * 6
    _, ss = data.make_batch(6, seed=5, attrs=asked)
    for sc in ss:
        assert sc.attrs["position"] == "left" and sc.attrs["eyes"] == "slit"
        assert sc.r + 1.5 <= sc.cx <= data.POSITION_SPLITS[0] - 3
    with pytest.raises(ValueError, match="attrs.colour"):
        data.sample_scene(np.random.default_rng(0), {"colour": "purple"})


def test_value_classes_are_disjoint_in_the_largest_channel() -> None:
    x, scenes = data.make_batch(32, seed=9)
    vmax = x.max(1)
    u = (np.arange(64) + 0.5)[None, :]
    v = (np.arange(64) + 0.5)[:, None]
    for i, sc in enumerate(scenes):
        d = np.hypot(u - sc.cx, v - sc.cy)
        assert vmax[i][d > sc.r + 1].max() <= data.BG_MAX + 1e-5
        eyes = sc.eye_shapes()
        far = np.min([np.hypot((u - ex) / a, (v - ey) / b) for ex, ey, a, b in eyes], axis=0) > 1.6
        assert vmax[i][(d < sc.r - 1) & far].min() >= data.FACE_MIN - 1e-5
        for ex, ey, _, _ in eyes:
            assert vmax[i][int(ey), int(ex)] <= data.EYE_MAX + 0.05


def test_2x_render_is_the_truth_of_the_1x_one() -> None:
    # Away from the 1/f texture (which gains an octave), average-pooling a 2x render gives the 1x render.
    scenes = [_scene(texture=t) for t in ("stripes", "dots")]
    x1 = torch.from_numpy(data.render(scenes, 64))
    x2 = F.avg_pool2d(torch.from_numpy(data.render(scenes, 128)), 2)
    assert float((x1 - x2).abs().mean()) < 0.02


@pytest.mark.parametrize("res, n", [(64, 200), (128, 100)])
def test_every_attribute_is_read_on_real_images(res: int, n: int) -> None:
    x, scenes = data.make_batch(n, seed=11, h=res)
    summary = scorer.summarize(scorer.score_images(x), [sc.attrs for sc in scenes])
    assert summary["proper_face"] >= 0.98 and summary["one_object"] >= 0.98
    for key in data.ATTRIBUTES:
        assert summary[f"attr_{key}"] >= 0.98, key
    assert 0.8 < summary["detail"] < 1.2


def test_non_square_image_is_read_in_base_units() -> None:
    sc = _scene(position="right", size="small", colour="green", eyes="slit", texture="dots")
    s = scorer.score_image(data.render([sc], 128, 192))
    assert s.proper_face and s.attrs == sc.attrs


@pytest.mark.parametrize(
    "attrs",
    [
        {"position": "left", "size": "small", "colour": "red", "eyes": "slit", "texture": "noise"},
        {"position": "right", "size": "large", "colour": "blue", "eyes": "round", "texture": "dots"},
        {"position": "centre", "size": "small", "colour": "green", "eyes": "round", "texture": "stripes"},
    ],
)
def test_hand_made_attributes_are_read(attrs: dict[str, str]) -> None:
    s = _score(data.sample_scene(np.random.default_rng(1), attrs))
    assert s.proper_face and s.attrs == attrs


def test_slit_and_round_eyes_differ_in_aspect() -> None:
    round_, slit = _score(_scene(eyes="round")), _score(_scene(eyes="slit"))
    assert round_.eye_aspect < 1.3 < 2.0 < slit.eye_aspect
    assert round_.attrs["eyes"] == "round" and slit.attrs["eyes"] == "slit"


def test_two_faces_are_two_objects() -> None:
    sc = _scene(position="left", size="small")
    sc.extra_faces = [(48.0, 32.0, 12.0)]
    s = _score(sc)
    assert s.n_objects == 2 and not s.proper_face


def test_three_eyes_is_not_a_proper_face() -> None:
    sc = _scene()
    ex = sc.eye_shapes()
    sc.eyes = [*ex, (sc.cx, sc.cy + 0.5 * sc.r, *ex[0][2:])]
    s = _score(sc)
    assert s.n_objects == 1 and s.n_eyes == 3 and not s.eyes_ok and not s.proper_face


def test_eyes_below_centre_are_not_a_face() -> None:
    sc = _scene()
    sc.eyes = [(ex, 2 * sc.cy - ey, a, b) for ex, ey, a, b in sc.eye_shapes()]
    s = _score(sc)
    assert s.n_eyes == 2 and not s.eyes_ok and not s.proper_face


def test_face_cut_by_the_border_is_not_round() -> None:
    sc = dataclasses.replace(_scene(size="small"), cx=4.0)
    assert not _score(sc).round_ok


def test_off_palette_colour_is_read_as_the_nearest_name() -> None:
    sc = dataclasses.replace(_scene(colour="red"), face_rgb=(0.9, 0.55, -0.55))  # orange: nearer yellow
    assert _score(sc).attrs["colour"] == "yellow"


def test_texture_from_a_blank_background_is_noise_not_stripes() -> None:
    sc = dataclasses.replace(_scene(texture="stripes"), tex_amp=0.0)
    s = _score(sc)
    assert s.attrs["texture"] == "noise" and s.proper_face


def test_empty_image_has_no_object_and_no_face_attributes() -> None:
    s = scorer.score_image(np.full((3, 64, 64), -0.4))
    assert s.n_objects == 0 and not s.proper_face
    assert s.attrs["position"] is None and s.attrs["colour"] is None and s.attrs["eyes"] is None


def test_blockiness_on_the_latent_grid() -> None:
    # Real 2x data, and the same plus a correction constant on each 8 x 8 pixel block (a 2 x 2 latent block).
    x, _ = data.make_batch(8, seed=6, h=128)
    steps = F.interpolate(0.08 * torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
                          scale_factor=8, mode="nearest")
    clean = scorer.summarize(scorer.score_images(x, (8,)))["blockiness_8"]
    streaky = scorer.summarize(scorer.score_images(torch.from_numpy(x) + steps, (8,)))["blockiness_8"]
    assert clean < 1.15 and streaky > 1.3


def test_worst_phase_blockiness_finds_a_pattern_off_the_grid() -> None:
    # The same 8 x 8 block pattern placed 3 px off the grid: phase 0 misses it, the worst phase does not.
    x, _ = data.make_batch(8, seed=6, h=128)
    steps = F.interpolate(0.08 * torch.randn(8, 3, 17, 17, generator=torch.Generator().manual_seed(0)),
                          scale_factor=8, mode="nearest")
    aligned = torch.from_numpy(x) + steps[..., :128, :128]
    shifted = torch.from_numpy(x) + steps[..., 3:131, 3:131]
    s_clean, s_aligned, s_shifted = (scorer.summarize(scorer.score_images(v, (8,)))
                                     for v in (x, aligned, shifted))
    assert s_shifted["blockiness_8"] < 1.15 < 1.3 < s_shifted["blockiness_worst_8"]
    assert s_aligned["blockiness_worst_8"] >= s_aligned["blockiness_8"] > 1.3
    assert s_clean["blockiness_worst_8"] >= s_clean["blockiness_8"]
    # On white noise (no periodic texture, which the data's stripes can have) phase 0 is the worst for the aligned
    # pattern, and the shifted one reads the same at its own phase.
    from lib_chroma.toy.scorer import blockiness, blockiness_worst

    noise = 0.05 * torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(1))
    on, off = (noise + steps[0, :, :128, :128]).numpy(), (noise + steps[0, :, 3:131, 3:131]).numpy()
    assert blockiness_worst(on, 8) == pytest.approx(blockiness(on, 8)) and blockiness(on, 8) > 2
    assert blockiness(off, 8) < 1.0
    assert blockiness_worst(off, 8) == pytest.approx(blockiness(off[:, 5:, 5:], 8), rel=0.05)  # its phase, cropped


def test_grid_over_cells_divides_out_a_cell_pattern_and_keeps_the_block_imprint() -> None:
    """On white noise: a decoder-like pattern that repeats every 4 px raises phase-0 blockiness on the 8 px grid
    but not ``grid_over_cells``; constant steps on 8 × 8 blocks (2 × 2 latent blocks) raise both; bad grids are
    refused, and the latent scorer reports it only on grids of at least two cells."""
    from lib_chroma.toy.latent.autoencoder import F_DOWN
    from lib_chroma.toy.scorer import blockiness, grid_over_cells

    noise = 0.05 * torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(1))
    cell = torch.zeros(128, 128)
    cell[3::4, :] += 0.15  # a bright line on the last row and column of every 4 px cell
    cell[:, 3::4] += 0.15
    steps = F.interpolate(0.08 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
                          scale_factor=8, mode="nearest")[0]
    plain, cells, blocks = noise.numpy(), (noise + cell).numpy(), (noise + steps).numpy()
    assert blockiness(cells, 8) > blockiness(plain, 8) + 0.3  # phase 0 reads the cell pattern
    assert grid_over_cells(plain, 8, 4) == pytest.approx(1.0, abs=0.05)
    assert grid_over_cells(cells, 8, 4) == pytest.approx(1.0, abs=0.05)
    assert grid_over_cells(cells, 12, 4) == pytest.approx(1.0, abs=0.05)
    assert grid_over_cells(blocks, 8, 4) > 2 and blockiness(blocks, 8) > 2
    for bad in ((4, 4), (6, 4), (8, 0)):
        with pytest.raises(ValueError, match="grid"):
            grid_over_cells(plain, *bad)
    x, _ = data.make_batch(2, seed=6, h=128)
    assert "grid_over_cells_8" in scorer.summarize(scorer.score_images(x, (8,)))
    assert not any(k.startswith("grid_over_cells") for k in scorer.summarize(scorer.score_images(x, (6,))))
    assert scorer.F_CELL == F_DOWN


def test_colour_shift_measures_a_tint() -> None:
    x, scenes = data.make_batch(8, seed=7)
    ref = scorer.summarize(scorer.score_images(x))
    tint = np.array([0.06, 0.0, -0.08], dtype=np.float32)[None, :, None, None]
    shifted = scorer.summarize(scorer.score_images(x + tint))
    assert scorer.colour_shift(ref, ref) == 0.0
    assert abs(scorer.colour_shift(shifted, ref) - 0.1) < 1e-3
