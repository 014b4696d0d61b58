"""The toy scorer is right on ground-truth renders and on hand-made failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib_chroma.toy import data, scorer
from lib_chroma.toy.data import Face, Scene, eye_layout

BG = {"bg_rgb": (-0.4, -0.35, -0.45), "tex_amp": 0.25, "tex_seed": 1}


def _face(cx: float, cy: float, r: float, eyes: list[tuple[float, float, float]] | None = None) -> Face:
    dx, dy, er = eye_layout(r)
    if eyes is None:
        eyes = [(cx - dx, cy - dy, er), (cx + dx, cy - dy, er)]
    return Face(cx, cy, r, (0.6, 0.58, 0.62), eyes)


def _render(faces: list[Face], h: int = 32, w: int | None = None) -> np.ndarray:
    return data.render([Scene(**BG, faces=faces)], h, w)[0]


@pytest.mark.parametrize(("h", "w", "n"), [(32, 32, 96), (64, 64, 32), (64, 96, 16)])
def test_ground_truth_is_proper(h: int, w: int, n: int) -> None:
    x, scenes = data.make_batch(n, seed=123, h=h, w=w)
    scores = scorer.score_images(x)
    summary = scorer.summarize(scores)
    assert summary["proper_at_scale"] >= 0.98
    assert summary["one_object"] == 1.0
    radius_err = [abs(s.radius - sc.faces[0].r) / sc.faces[0].r for s, sc in zip(scores, scenes)]
    assert max(radius_err) < 0.15
    assert 0.8 < summary["detail"] < 1.2
    assert 0.8 < summary["edge_sharpness"] < 1.2
    for key, value in summary.items():
        if key.startswith("blockiness"):
            assert 0.9 < value < 1.15, key


def test_accepts_tensors_and_single_images() -> None:
    img = _render([_face(16, 16, 8)])
    s = scorer.score_image(torch.from_numpy(img))
    assert s.proper_face and s.n_eyes == 2
    assert len(scorer.score_images(torch.from_numpy(img[None]).repeat(2, 1, 1, 1))) == 2


def test_two_faces() -> None:
    s = scorer.score_image(_render([_face(9, 10, 5), _face(23, 22, 5)], 64))
    assert s.n_objects == 2 and not s.proper_face


def test_no_face() -> None:
    s = scorer.score_image(_render([]))
    assert s.n_objects == 0 and not s.proper_face and s.n_eyes == -1


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("gap", [0.8, 1.0, 1.4])
def test_merged_faces_are_not_round(res: int, gap: float) -> None:
    r = 6.0
    s = scorer.score_image(_render([_face(16 - gap * r / 2, 16, r), _face(16 + gap * r / 2, 16, r)], res))
    assert s.n_objects == 1
    assert not s.round_ok and not s.proper_face


@pytest.mark.parametrize("r", [5.0, 8.0, 12.0])
@pytest.mark.parametrize("layout", ["mouth", "row"])
def test_three_eyes(r: float, layout: str) -> None:
    dx, dy, er = eye_layout(r)
    c = 16.0
    if layout == "mouth":
        eyes = [(c - dx, c - dy, er), (c + dx, c - dy, er), (c, c + 0.4 * r, er)]
    else:
        eyes = [(c - 1.2 * dx, c - dy, 0.7 * er), (c, c - dy, 0.7 * er), (c + 1.2 * dx, c - dy, 0.7 * er)]
    for res in (32, 64):
        s = scorer.score_image(_render([_face(c, c, r, eyes)], res))
        assert s.n_objects == 1 and s.n_eyes == 3 and not s.proper_face


def test_eyes_below_centre_is_not_a_face() -> None:
    dx, dy, er = eye_layout(8)
    s = scorer.score_image(_render([_face(16, 16, 8, [(16 - dx, 16 + dy, er), (16 + dx, 16 + dy, er)])]))
    assert s.n_eyes == 2 and not s.eyes_ok and not s.proper_face


def test_face_cut_by_border_is_not_round() -> None:
    s = scorer.score_image(_render([_face(16, 4, 9)]))
    assert not s.round_ok and not s.proper_face


def test_native_size_face_on_2x_canvas_is_off_scale() -> None:
    # A face of 8 px radius on a 64x64 canvas is 4 base units: a proper face, but at half the expected size.
    s = scorer.score_image(_render([_face(16, 16, 4.0)], 64))
    assert s.proper_face and not s.size_ok and not s.proper_at_scale
    assert s.size_rel < 0.55


def test_blurred_upscale_loses_detail() -> None:
    x, _ = data.make_batch(16, seed=5, h=32)
    up = F.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False)
    summary = scorer.score_batch(up)
    assert summary["proper_face"] >= 0.9  # rates alone cannot tell an upscale from real detail ...
    assert summary["detail"] < 0.5  # ... the detail measure can
    assert summary["edge_sharpness"] < 0.8


def test_nearest_upscale_is_blocky() -> None:
    x, _ = data.make_batch(8, seed=6, h=32)
    up = F.interpolate(torch.from_numpy(x), scale_factor=2, mode="nearest")
    s = scorer.score_batch(up)
    assert s["blockiness_2"] > 10
    up4 = F.interpolate(torch.from_numpy(x), scale_factor=4, mode="nearest")
    s4 = scorer.score_batch(up4)
    assert s4["blockiness_2"] > 10 and s4["blockiness_4"] > 10


def test_block_streaks_from_a_coarse_correction() -> None:
    # Real 2x data plus a correction constant on each 2x2 block (what U(.) of a coarse difference adds).
    x, _ = data.make_batch(8, seed=7, h=64)
    streak = F.interpolate(
        0.08 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        scale_factor=2,
        mode="nearest",
    )
    clean = scorer.score_batch(x)["blockiness_2"]
    streaky = scorer.score_batch(torch.from_numpy(x) + streak)["blockiness_2"]
    assert clean < 1.1 and streaky > 1.3


def test_unsharp_mask_is_oversharpened() -> None:
    x, _ = data.make_batch(8, seed=8, h=64)
    from lib_chroma.toy.morph import box3

    sharp = x + 1.5 * (x - box3(x))
    s = scorer.score_batch(sharp)
    assert s["detail"] > 2.0 and s["edge_sharpness"] > 2.0
    assert s["proper_face"] >= 0.9


def test_non_square_grid_default() -> None:
    assert scorer.default_grids(64, 64) == [2]
    assert scorer.default_grids(128, 128) == [2, 4]
    assert scorer.default_grids(64, 96) == [(2, 3)]
    assert scorer.default_grids(32, 32) == []


def test_reference_needs_data_base() -> None:
    with pytest.raises(ValueError, match="base"):
        scorer.reference_stats(64, 64, base=16)


def test_face_tangent_to_border_is_whole() -> None:
    # touching the top border over a short chord is still a whole face; cut deeper, it is not
    assert scorer.score_image(_render([_face(16, 12.6, 12)])).round_ok
    assert not scorer.score_image(_render([_face(16, 9.5, 12)])).round_ok
