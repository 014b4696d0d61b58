"""Ground-truth scorer for generated toy images at any resolution.

Images are ``(C, H, W)`` or ``(N, C, H, W)`` arrays or tensors in ``[-1, 1]`` (RGB or grayscale). Geometry is
measured in *base units* (see :mod:`lib_chroma.toy.data`): pixel coordinates divided by the per-axis scale
``sy = H / base``, ``sx = W / base``, so the expected face at any output resolution is the training face.

Per image (:class:`ImageScore`):

- objects: 8-connected components of ``lum > LIGHT_THR`` (``lum`` = channel mean), closed by a 3 x 3 square
  and with holes filled, with a filled area of at least ``0.3 * pi * R_MIN^2`` units^2; smaller light
  components are ``specks``.
- the main (largest) object: equivalent radius ``sqrt(area / pi)`` in units, ``size_rel = radius / sqrt(R_MIN
  R_MAX)``, ``size_ok`` when ``0.8 R_MIN <= radius <= 1.15 R_MAX``; ``aspect = sqrt(l1 / l2)`` of its second
  moments and ``extent`` = farthest pixel from the centroid over the radius: ``round_ok`` when
  ``aspect <= 1.3``, ``extent <= 1.35`` and it is not cut by the image border (its contact with any border
  is at most ``0.8`` radii long: a face tangent to the border is whole, one cut by it is not).
- eyes: 4-connected components of ``lum < (median face lum + EYE_LUM) / 2`` inside the object's orthogonal
  hull (between its first and last pixel along both the row and the column), of at
  least 15% of the nominal eye area for that radius (and one pixel). ``eyes_ok``: exactly two, one on each
  side of the centre, both above it, at similar heights, spaced ``0.35..1.3`` radii apart.
- ``proper_face = n_objects == 1 and round_ok and eyes_ok``; ``proper_at_scale`` adds ``size_ok``.
- ``detail``: background high-frequency energy ``mean((x - box3(x))^2)`` (RGB mean, away from objects and the
  border) over the same statistic of the training data rendered at this ``H x W``; 1 means as detailed as
  the data, a bilinear upscale gives far less, over-sharpening more.
- ``edge_sharpness``: the same energy in the one-pixel band around the main object's outline, over the data's.
- ``blockiness[g]``: for a grid of ``g x g`` pixel blocks, the mean squared neighbour difference across block
  boundaries over that inside blocks (geometric mean of both directions); 1 = no grid, ``>> 1`` = blocks.
- ``clipped``: fraction of values with ``|x| > 1``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import data
from .morph import box3, close, dilate, erode, fill_holes, label, ortho_hull

LIGHT_THR = data.BG_LUM_MAX + 0.3 * (data.FACE_LUM_MIN - data.BG_LUM_MAX)
EYE_LUM = -0.85
R_REF = math.sqrt(data.R_MIN * data.R_MAX)
MIN_OBJECT_AREA = 0.3 * math.pi * data.R_MIN**2
SIZE_RANGE = (0.8 * data.R_MIN, 1.15 * data.R_MAX)
MAX_ASPECT = 1.3
MAX_EXTENT = 1.35
MAX_BORDER_CONTACT = 0.8
BLOCK_CAP = 100.0


@dataclasses.dataclass
class ImageScore:
    """Scores of one image; geometric fields are NaN/-1 when there is no object."""

    n_objects: int
    n_specks: int
    n_eyes: int
    radius: float
    size_rel: float
    size_ok: bool
    aspect: float
    extent: float
    round_ok: bool
    eyes_ok: bool
    proper_face: bool
    proper_at_scale: bool
    detail: float
    edge_sharpness: float
    blockiness: dict[str, float]
    clipped: float


def as_batch(images: object, channels: int | None = None) -> np.ndarray:
    """Tensor or array to float64 numpy ``(N, C, H, W)`` (a single ``(C, H, W)`` image gets ``N = 1``);
    with ``channels``, ``C`` must equal it."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()  # type: ignore[attr-defined]
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else channels
        raise ValueError(f"images: expected ({c},H,W) or (N,{c},H,W), got shape {x.shape}")
    return x


def grid_key(g: int | tuple[int, int]) -> str:
    """Name of a block grid in scores and summaries: ``"g"`` for ``g x g``, ``"gyxgx"`` for ``(gy, gx)``."""
    return str(g) if isinstance(g, int) else f"{g[0]}x{g[1]}"


def default_grids(h: int, w: int, base: int = data.BASE) -> list[int | tuple[int, int]]:
    """Block grids worth checking at ``h x w``: every ``g >= 2`` dividing an integral square factor
    ``h / base = w / base``; for integral per-axis factors ``(fy, fx)`` that differ, the grid ``(fy, fx)``."""
    fy, fx = h / base, w / base
    if fy == fx and fy == int(fy) and fy >= 2:
        f = int(fy)
        return [g for g in range(2, f + 1) if f % g == 0]
    if fy == int(fy) and fx == int(fx) and max(fy, fx) >= 2:
        return [(int(fy), int(fx))]
    return []


def _directions(img: np.ndarray, grid: int | tuple[int, int]) -> list[tuple[int, np.ndarray]]:
    """``(g, d^2)`` per direction with a grid of at least 2: the squared horizontal differences with ``gx``, the
    squared vertical ones (moved to the last axis) with ``gy``."""
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    pairs = ((gx, np.diff(img, axis=-1)), (gy, np.swapaxes(np.diff(img, axis=-2), -1, -2)))
    return [(g, d**2) for g, d in pairs if g >= 2]


def _boundary_ratio(d2: np.ndarray, g: int, phase: int) -> float:
    """``mean(d^2 across the boundaries) / mean(d^2 elsewhere)`` for boundaries after every ``g``-th difference,
    shifted by ``phase``, capped at ``BLOCK_CAP``; ``d2`` the squared differences."""
    pos = (np.arange(d2.shape[-1]) + 1 + phase) % g == 0
    return _masked_ratio(d2, pos, ~pos)


def _masked_ratio(d2: np.ndarray, on: np.ndarray, other: np.ndarray) -> float:
    """``mean(d^2 at on) / mean(d^2 at other)`` over the last axis, capped at ``BLOCK_CAP``."""
    a, b = float(np.mean(d2[..., on])), float(np.mean(d2[..., other]))
    return min(BLOCK_CAP, (a + 1e-12) / (b + 1e-12))


def _geomean(ratios: list[float]) -> float:
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")


def blockiness(img: np.ndarray, grid: int | tuple[int, int]) -> float:
    """Geometric mean over directions of ``mean(d^2 across block boundaries) / mean(d^2 inside blocks)``.

    For ``(gy, gx)`` blocks, ``d`` are the horizontal differences ``x[..., j+1] - x[..., j]`` (across a
    boundary when ``(j+1) % gx == 0``) and the vertical ones likewise with ``gy``. A direction with grid 1 is
    skipped; each ratio is capped at ``BLOCK_CAP``.
    """
    return _geomean([_boundary_ratio(d, g, 0) for g, d in _directions(img, grid)])


def blockiness_worst(img: np.ndarray, grid: int | tuple[int, int]) -> float:
    """:func:`blockiness` at the grid's worst phase, per direction: the geometric mean over directions of
    ``max_p mean(d^2 across the boundaries of the grid shifted by p) / mean(d^2 elsewhere)``, ``p = 0 … g-1``
    (``p = 0`` is :func:`blockiness`'s own reading). A pattern of the grid's period scores the same wherever it lies,
    which phase 0 alone does not (a latent decoder's cell pattern moves with the content). Capped at ``BLOCK_CAP``."""
    return _geomean([max(_boundary_ratio(d, g, p) for p in range(g)) for g, d in _directions(img, grid)])


def grid_over_cells(img: np.ndarray, grid: int, cell: int) -> float:
    """The pooling grid's own pattern with a decoder's cell pattern divided out: the geometric mean over directions
    of ``mean(d^2 across the g-grid's boundaries) / mean(d^2 across the other boundaries of the c-cell grid)``,
    ``g`` a multiple ``m c`` of ``c`` (``m >= 2``). A decoder whose output repeats with its cell ``c`` (f px per
    latent pixel) weighs every cell boundary alike, so only structure of the grid's period that the cell's does
    not explain moves the ratio from 1 (a 2 x 2-latent block imprint reads above 1). Capped at ``BLOCK_CAP``."""
    if cell < 1 or grid < 2 * cell or grid % cell:
        raise ValueError(f"grid: must be a multiple >= 2 of cell {cell}, got {grid}")
    ratios = []
    for g, d2 in _directions(img, grid):
        j = np.arange(d2.shape[-1]) + 1
        ratios.append(_masked_ratio(d2, j % g == 0, (j % cell == 0) & (j % g != 0)))
    return _geomean(ratios)


Component = tuple[float, np.ndarray, np.ndarray]  # (area in units^2, filled mask, own pixels)


def light_components(
    mask: np.ndarray, sy: float, sx: float, min_area: float
) -> tuple[list[Component], list[Component], np.ndarray]:
    """The 8-connected components of ``mask``, each closed by a 3 x 3 square and hole-filled: all of them,
    the objects (filled area at least ``min_area`` units^2) largest first, and the union of all filled masks."""
    lab, n = label(mask, conn8=True)
    comps = []
    any_light = np.zeros(mask.shape, dtype=bool)
    for k in range(1, n + 1):
        filled = fill_holes(close(lab == k))  # closing: a 1-px break does not open a hole
        any_light |= filled
        comps.append((filled.sum() / (sx * sy), filled, lab == k))
    objects = sorted((c for c in comps if c[0] >= min_area), key=lambda c: -c[0])
    return comps, objects, any_light


def background(any_light: np.ndarray, margin: int, border: int) -> np.ndarray:
    """Pixels more than ``margin`` px (square distance) from ``any_light`` and at least ``border`` px from the
    image border."""
    bg = ~dilate(any_light, margin)
    bg[:border], bg[-border:], bg[:, :border], bg[:, -border:] = False, False, False, False
    return bg


def highpass_energy(img: np.ndarray) -> np.ndarray:
    """Per-pixel high-frequency energy of a ``(C, H, W)`` image: channel mean of ``(x - box3(x))^2``."""
    return ((img - box3(img)) ** 2).mean(0)


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values`` over ``mask``; NaN for an empty mask."""
    return float(values[mask].mean()) if mask.any() else math.nan


def moments(
    ys: np.ndarray, xs: np.ndarray, sy: float, sx: float, pixel_spread: bool = False
) -> tuple[float, float, float]:
    """Centroid ``(cx, cy)`` in units and aspect ``sqrt(l1 / l2)`` of the pixel set's second moments (1 for a
    single pixel); with ``pixel_spread`` the covariance gets ``I / (12 sx sy)``, each pixel's own spread."""
    v, u = (ys + 0.5) / sy, (xs + 0.5) / sx
    if len(u) < 2:
        return float(u.mean()), float(v.mean()), 1.0
    cov = np.cov(np.stack([u, v]))
    if pixel_spread:
        cov = cov + np.eye(2) / (12 * sx * sy)
    ev = np.linalg.eigvalsh(cov)
    return float(u.mean()), float(v.mean()), float(math.sqrt(max(ev[1], 1e-12) / max(ev[0], 1e-12)))


class ObjectShape(NamedTuple):
    """Geometry of an object in units: centroid, aspect (see :func:`moments`), equivalent radius, extent (the
    farthest pixel from the centroid over the radius) and its longest contact with an image border."""

    cx: float
    cy: float
    aspect: float
    radius: float
    extent: float
    contact: float


def object_shape(filled: np.ndarray, area: float, sy: float, sx: float, pixel_spread: bool = False) -> ObjectShape:
    """:class:`ObjectShape` of the filled mask ``filled`` of ``area`` units^2."""
    yy, xx = np.nonzero(filled)
    cx, cy, aspect = moments(yy, xx, sy, sx, pixel_spread)
    radius = math.sqrt(area / math.pi)
    extent = float(np.sqrt(((xx + 0.5) / sx - cx) ** 2 + ((yy + 0.5) / sy - cy) ** 2).max() / radius)
    contact = max(filled[0].sum() / sx, filled[-1].sum() / sx, filled[:, 0].sum() / sy, filled[:, -1].sum() / sy)
    return ObjectShape(cx, cy, aspect, radius, extent, contact)


def eye_blobs(dark: np.ndarray, eye_r: float, sy: float, sx: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The 4-connected components of ``dark`` with at least 15% of the area of a round eye of radius ``eye_r``
    (and one pixel), as ``(ys, xs, area in units^2)``."""
    elab, en = label(dark, conn8=False)
    min_eye = max(1.0 / (sx * sy), 0.15 * math.pi * eye_r**2)
    blobs = []
    for k in range(1, en + 1):
        ey, ex = np.nonzero(elab == k)
        a = len(ey) / (sx * sy)
        if a >= min_eye:
            blobs.append((ey, ex, a))
    return blobs


def eyes_placed_like_a_face(
    eyes: list[tuple[float, float, float]], cx: float, cy: float, r: float, spacing: tuple[float, float] = (0.35, 1.3)
) -> bool:
    """Two eyes ``(x, y, area)`` in units: one each side of ``cx``, both above ``cy``, ``|y1 - y2| < 0.35 r``,
    ``spacing[0] r < x2 - x1 < spacing[1] r`` and areas within a factor 3."""
    if len(eyes) != 2:
        return False
    (x1, y1, a1), (x2, y2, a2) = sorted(eyes)
    return (
        x1 < cx < x2
        and y1 < cy
        and y2 < cy
        and abs(y1 - y2) < 0.35 * r
        and spacing[0] * r < x2 - x1 < spacing[1] * r
        and 1 / 3 < a1 / a2 < 3
    )


@dataclasses.dataclass
class Geometry:
    """Segmentation of one image: object and speck counts, the main object's shape and its eyes (NaN / -1 without
    an object)."""

    n_objects: int
    n_specks: int
    radius: float
    aspect: float
    extent: float
    inside: bool
    n_eyes: int
    eyes_ok: bool

    def round_ok(self, max_aspect: float, max_extent: float) -> bool:
        """Whether there is an object with ``aspect <= max_aspect`` and ``extent <= max_extent``, not cut by the
        image border."""
        return bool(self.n_objects >= 1 and self.aspect <= max_aspect and self.extent <= max_extent and self.inside)


def geometry_fields(
    n_comps: int,
    n_objects: int,
    obj: ObjectShape,
    eyes: list[tuple[float, float, float]],
    spacing: tuple[float, float] = (0.35, 1.3),
) -> dict[str, Any]:
    """The :class:`Geometry` fields of an image with ``n_comps`` light components, ``n_objects`` of them objects,
    whose main object ``obj`` has ``eyes`` (``(x, y, area)``; ``spacing`` as in :func:`eyes_placed_like_a_face`)."""
    return {
        "n_objects": n_objects,
        "n_specks": n_comps - n_objects,
        "radius": obj.radius,
        "aspect": obj.aspect,
        "extent": obj.extent,
        "inside": bool(obj.contact <= MAX_BORDER_CONTACT * obj.radius),
        "n_eyes": len(eyes),
        "eyes_ok": eyes_placed_like_a_face(eyes, obj.cx, obj.cy, obj.radius, spacing),
    }


@dataclasses.dataclass
class _Raw(Geometry):
    """Intermediate measurements of one image, before normalising by the data's statistics."""

    detail_raw: float
    edge_raw: float


def _measure(img: np.ndarray, base: int) -> _Raw:
    """Segment objects and eyes and measure the raw high-frequency energies of one ``(C, H, W)`` image."""
    _, h, w = img.shape
    sy, sx = h / base, w / base
    lum = img.mean(0)
    comps, objects, any_light = light_components(lum > LIGHT_THR, sy, sx, MIN_OBJECT_AREA)
    hp2 = highpass_energy(img)
    margin = max(1, math.ceil(1.5 * math.sqrt(sx * sy)))
    detail_raw = masked_mean(hp2, background(any_light, margin, 1))
    if not objects:
        return _Raw(0, len(comps), math.nan, math.nan, math.nan, False, -1, False, detail_raw, math.nan)
    area, filled, light = objects[0]
    obj = object_shape(filled, area, sy, sx)
    face_lum = float(np.median(lum[light]))
    dark = ortho_hull(filled) & (lum < 0.5 * (face_lum + EYE_LUM))
    blobs = eye_blobs(dark, data.eye_layout(obj.radius)[2], sy, sx)
    eyes = [(float((ex + 0.5).mean() / sx), float((ey + 0.5).mean() / sy), a) for ey, ex, a in blobs]
    band = dilate(filled, 1) & ~erode(filled, 1)
    geometry = geometry_fields(len(comps), len(objects), obj, eyes)
    return _Raw(**geometry, detail_raw=detail_raw, edge_raw=masked_mean(hp2, band))


@functools.lru_cache(maxsize=32)
def reference_stats(
    h: int, w: int, base: int = data.BASE, n: int = 64, seed: int = 20260
) -> dict[str, float]:
    """Mean raw background and edge high-frequency energies of ``n`` training images rendered at ``h x w``."""
    if base != data.BASE:
        raise ValueError(f"base: only the data's own base {data.BASE} has reference statistics, got {base}")
    x, _ = data.make_batch(n, seed, h, w)
    raws = [_measure(img.astype(np.float64), base) for img in x]
    return {
        "detail_raw": float(np.nanmean([r.detail_raw for r in raws])),
        "edge_raw": float(np.nanmean([r.edge_raw for r in raws])),
    }


def score_image(
    img: object, base: int = data.BASE, grids: Sequence[int | tuple[int, int]] | None = None
) -> ImageScore:
    """Score one ``(C, H, W)`` image (see the module docstring for every field)."""
    x = as_batch(img)[0]
    _, h, w = x.shape
    raw = _measure(x, base)
    ref = reference_stats(h, w, base)
    grids = default_grids(h, w, base) if grids is None else grids
    size_ok = bool(SIZE_RANGE[0] <= raw.radius <= SIZE_RANGE[1])
    round_ok = raw.round_ok(MAX_ASPECT, MAX_EXTENT)
    proper = bool(raw.n_objects == 1 and round_ok and raw.eyes_ok)
    return ImageScore(
        n_objects=raw.n_objects,
        n_specks=raw.n_specks,
        n_eyes=raw.n_eyes,
        radius=raw.radius,
        size_rel=raw.radius / R_REF,
        size_ok=size_ok,
        aspect=raw.aspect,
        extent=raw.extent,
        round_ok=round_ok,
        eyes_ok=raw.eyes_ok,
        proper_face=proper,
        proper_at_scale=proper and size_ok,
        detail=raw.detail_raw / ref["detail_raw"],
        edge_sharpness=raw.edge_raw / ref["edge_raw"],
        blockiness={grid_key(g): blockiness(x, g) for g in grids},
        clipped=float((np.abs(x) > 1.0).mean()),
    )


def score_images(
    images: object, base: int = data.BASE, grids: Sequence[int | tuple[int, int]] | None = None
) -> list[ImageScore]:
    """Score every image of an ``(N, C, H, W)`` batch."""
    return [score_image(img, base, grids) for img in as_batch(images)]


def rate(scores: Sequence[Any], pred: Callable[[Any], object]) -> float:
    """Fraction of ``scores`` for which ``pred`` holds."""
    return float(np.mean([bool(pred(s)) for s in scores]))


def finite_mean(values: Sequence[float]) -> float:
    """Mean of ``values`` skipping NaNs; NaN when no value is finite."""
    vals = np.array(values, dtype=np.float64)
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan


def face_rates(scores: Sequence[Any]) -> dict[str, float]:
    """``one_object``, ``two_eyes`` (one object with exactly two eyes) and ``proper_face`` rates of a non-empty
    batch of scores (of either toy's scorer)."""
    return {
        "one_object": rate(scores, lambda s: s.n_objects == 1),
        "two_eyes": rate(scores, lambda s: s.n_objects == 1 and s.n_eyes == 2),
        "proper_face": rate(scores, lambda s: s.proper_face),
    }


def blockiness_means(scores: Sequence[Any], field: str = "blockiness") -> dict[str, float]:
    """``<field>_<g>``: the mean per grid of the scores' ``field`` (a dict by grid key, e.g. ``blockiness``) over a
    non-empty batch."""
    return {f"{field}_{key}": float(np.mean([getattr(s, field)[key] for s in scores]))
            for key in getattr(scores[0], field)}


def summarize(scores: Sequence[ImageScore]) -> dict[str, float]:
    """Rates and means over a batch of scores.

    ``one_object``, ``two_eyes`` (one object with exactly two eyes), ``proper_face``, ``proper_at_scale``,
    ``size_ok`` are fractions of all images; ``size_rel``, ``detail``, ``edge_sharpness`` and ``clipped`` are
    means (NaNs skipped); ``blockiness_<g>`` is the mean per grid.
    """
    n = len(scores)
    out: dict[str, float] = {"n": float(n)}
    if n == 0:
        return out
    out.update(face_rates(scores))
    out["proper_at_scale"] = rate(scores, lambda s: s.proper_at_scale)
    out["size_ok"] = rate(scores, lambda s: s.size_ok)
    for field in ("size_rel", "detail", "edge_sharpness", "clipped"):
        out[field] = finite_mean([getattr(s, field) for s in scores])
    out.update(blockiness_means(scores))
    return out


def score_batch(
    images: object, base: int = data.BASE, grids: Sequence[int | tuple[int, int]] | None = None
) -> dict[str, float]:
    """``summarize(score_images(images, base, grids))``."""
    return summarize(score_images(images, base, grids))
