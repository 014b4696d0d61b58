"""Ground-truth scorer of decoded latent-model images at any resolution: geometry, attributes, detail, colour.

Images are ``(3, H, W)`` or ``(N, 3, H, W)`` RGB arrays or tensors in ``[-1, 1]``. Geometry is measured in
base units (:mod:`lib_chroma.toy.latent.data`): pixel coordinates over ``sy = H / BASE``, ``sx = W / BASE``.
``vmax = max(R, G, B)`` separates background, face and eyes (see the data module).

Per image (:class:`ImageScore`):

- objects: 8-connected components of ``vmax > OBJECT_THR`` (halfway between the data's background maximum
  and face minimum), closed by a 3 x 3 square, holes filled; those of at least ``MIN_OBJECT_AREA`` units²
  (0.3 of the smallest face) are objects, smaller ones ``specks``.
- main (largest) object: ``radius = sqrt(area / pi)``, ``aspect = sqrt(l1 / l2)`` of its second moments,
  ``extent`` = farthest pixel from the centroid over the radius; ``round_ok``: ``aspect <= 1.3``,
  ``extent <= 1.35`` and not cut by the border (contact with any border at most 0.8 radii), as the pixel
  toy's scorer.
- eyes: 4-connected components of ``vmax < face - EYE_DEPTH (face - EYE_MAX)`` (``face`` the median vmax of
  the face's light pixels; ``EYE_DEPTH = 0.4``: darker than the face by 40 % of the face-to-eye contrast, which
  still reads the slightly lightened eyes an f = 4 decoder draws) inside the object's orthogonal hull, of at
  least 15 % of the nominal round-eye area for that radius. ``eyes_ok``: exactly two, one each side of the
  centre, both above it, level (``|dy| < 0.35 r``), ``0.5 r .. 1.4 r`` apart, areas within 3x.
- ``proper_face = n_objects == 1 and round_ok and eyes_ok``.
- attributes (``attrs``; ``None`` when there is nothing to read):
  ``position`` from the main object's centroid ``cx`` against :data:`data.POSITION_SPLITS`;
  ``size`` from its radius against :data:`data.SIZE_SPLIT`;
  ``colour``: the named colour nearest (Euclidean, RGB) to the median colour of the face's own light pixels;
  ``eyes``: ``slit`` if the eyes' mean second-moment aspect ``sqrt(l1 / l2)`` exceeds ``EYE_ASPECT_SPLIT``;
  ``texture`` from the background (pixels at least 2 units from any light component and 2 px from the
  border) luminance ``L``: ``stripes`` when the coherence of its summed structure tensor
  ``J = sum grad L grad L^T``, ``sqrt((Jxx - Jyy)² + 4 Jxy²) / (Jxx + Jyy)``, exceeds ``COHERENCE_SPLIT``;
  else ``dots`` when the skewness of ``L`` minus its masked local mean (box of ``~11`` units) exceeds
  ``SKEW_SPLIT``; else ``noise``.
- ``detail``: background high-frequency energy ``mean((x - box3(x))²)`` over that of the data rendered at
  this ``H x W`` (1 = as detailed as the data).
- ``blockiness[g]``: :func:`lib_chroma.toy.scorer.blockiness` on a ``g x g`` pixel grid; ``blockiness_worst[g]``:
  the same at the grid's worst phase (:func:`lib_chroma.toy.scorer.blockiness_worst`), which a decoder's cell
  pattern cannot move off the grid; ``grid_over_cells[g]``: :func:`lib_chroma.toy.scorer.grid_over_cells` with the
  autoencoder's cell ``F_CELL`` = 4 px (grids that are multiples of at least 2 cells only), the grid's own pattern
  with the decoder's cell pattern divided out.
- ``mean_rgb``: the image's mean colour; ``face_rgb``: the face colour read above (NaN without a face).
  :func:`colour_shift` compares batches by these.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from lib_chroma.toy.morph import erode, ortho_hull
from lib_chroma.toy.scorer import (
    Geometry,
    as_batch,
    background,
    blockiness,
    blockiness_means,
    blockiness_worst,
    eye_blobs,
    face_rates,
    finite_mean,
    geometry_fields,
    grid_key,
    grid_over_cells,
    highpass_energy,
    light_components,
    masked_mean,
    moments,
    object_shape,
)

from . import data

OBJECT_THR = 0.5 * (data.BG_MAX + data.FACE_MIN)
MIN_OBJECT_AREA = 0.3 * math.pi * data.RADIUS["small"][0] ** 2
MAX_ASPECT = 1.3
MAX_EXTENT = 1.35
EYE_SPACING = (0.5, 1.4)
EYE_ASPECT_SPLIT = 1.45
EYE_DEPTH = 0.4
COHERENCE_SPLIT = 0.5
SKEW_SPLIT = 0.8
TEXTURE_WINDOW = 11.0
#: The autoencoder's cell (``autoencoder.F_DOWN``): image pixels per latent pixel, whose pattern
#: :func:`grid_over_cells` divides out.
F_CELL = 4
_PROTOS = np.asarray(list(data.COLOURS.values()))
_NAMES = list(data.COLOURS)


@dataclasses.dataclass
class ImageScore:
    """Scores of one image; geometric fields are NaN / -1 and attributes ``None`` when there is no object."""

    n_objects: int
    n_specks: int
    n_eyes: int
    radius: float
    aspect: float
    extent: float
    round_ok: bool
    eyes_ok: bool
    proper_face: bool
    eye_aspect: float
    coherence: float
    skew: float
    attrs: dict[str, str | None]
    detail: float
    blockiness: dict[str, float]
    mean_rgb: tuple[float, float, float]
    face_rgb: tuple[float, float, float]
    blockiness_worst: dict[str, float] = dataclasses.field(default_factory=dict)
    grid_over_cells: dict[str, float] = dataclasses.field(default_factory=dict)


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over a ``(2k+1)^2`` box with zero padding (separable cumulative sums)."""
    p = np.pad(x, k)
    c = np.cumsum(np.pad(p, ((1, 0), (0, 0))), axis=0)
    p = c[2 * k + 1 :] - c[: -2 * k - 1]
    c = np.cumsum(np.pad(p, ((0, 0), (1, 0))), axis=1)
    return c[:, 2 * k + 1 :] - c[:, : -2 * k - 1]


def texture_features(lum: np.ndarray, bg: np.ndarray, sy: float, sx: float) -> tuple[float, float]:
    """``(coherence, skew)`` of the background luminance (see the module docstring); NaN without background."""
    inner = erode(bg, 1)
    if inner.sum() < 16:
        return math.nan, math.nan
    gy, gx = np.gradient(lum)
    gx, gy = gx[inner] * sx, gy[inner] * sy
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    coh = math.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / max(jxx + jyy, 1e-12)
    k = max(1, round(0.5 * TEXTURE_WINDOW * math.sqrt(sx * sy)))
    m = bg.astype(np.float64)
    local = _box_mean(lum * m, k) / np.maximum(_box_mean(m, k), 1e-9)
    hp = (lum - local)[inner]
    sd = float(hp.std())
    skew = float(((hp - hp.mean()) ** 3).mean() / sd**3) if sd > 1e-6 else 0.0
    return coh, skew


def _texture_class(coh: float, skew: float) -> str | None:
    if math.isnan(coh):
        return None
    if coh > COHERENCE_SPLIT:
        return "stripes"
    return "dots" if skew > SKEW_SPLIT else "noise"


@dataclasses.dataclass
class _Raw(Geometry):
    """Measurements of one image before normalising by the data's statistics."""

    eye_aspect: float
    coherence: float
    skew: float
    cx: float
    face_rgb: tuple[float, float, float]
    detail_raw: float


def _measure(img: np.ndarray) -> _Raw:
    """Segment, read and measure one ``(3, H, W)`` image."""
    _, h, w = img.shape
    sy, sx = h / data.BASE, w / data.BASE
    vmax = img.max(0)
    lum = img.mean(0)
    comps, objects, any_light = light_components(vmax > OBJECT_THR, sy, sx, MIN_OBJECT_AREA)
    bg = background(any_light, max(1, math.ceil(2 * math.sqrt(sx * sy))), 2)
    detail_raw = masked_mean(highpass_energy(img), bg)
    coh, skew = texture_features(lum, bg, sy, sx)
    nan3 = (math.nan, math.nan, math.nan)
    if not objects:
        return _Raw(0, len(comps), math.nan, math.nan, math.nan, False, -1, False, math.nan, coh, skew, math.nan,
                    nan3, detail_raw)
    area, filled, light = objects[0]
    obj = object_shape(filled, area, sy, sx, pixel_spread=True)
    core = erode(light, 1)
    face_px = img[:, core] if core.any() else img[:, light]
    face_rgb = tuple(float(v) for v in np.median(face_px, axis=1))
    face_v = float(np.median(vmax[light]))
    dark = ortho_hull(filled) & (vmax < face_v - EYE_DEPTH * (face_v - data.EYE_MAX))
    eyes, aspects = [], []
    for ey, ex, a in eye_blobs(dark, data.eye_layout(obj.radius)[2], sy, sx):
        mx, my, asp = moments(ey, ex, sy, sx, pixel_spread=True)
        eyes.append((mx, my, a))
        aspects.append(asp)
    return _Raw(
        **geometry_fields(len(comps), len(objects), obj, eyes, EYE_SPACING),
        eye_aspect=float(np.mean(aspects)) if aspects else math.nan,
        coherence=coh,
        skew=skew,
        cx=obj.cx,
        face_rgb=face_rgb,  # type: ignore[arg-type]
        detail_raw=detail_raw,
    )


def read_attributes(raw: _Raw) -> dict[str, str | None]:
    """The five attributes as read from the measurements (``None`` where there is nothing to read)."""
    out: dict[str, str | None] = {"position": None, "size": None, "colour": None, "eyes": None}
    if raw.n_objects:
        lo, hi = data.POSITION_SPLITS
        out["position"] = "left" if raw.cx < lo else ("right" if raw.cx > hi else "centre")
        out["size"] = "large" if raw.radius > data.SIZE_SPLIT else "small"
        out["colour"] = _NAMES[int(np.argmin(((_PROTOS - np.asarray(raw.face_rgb)) ** 2).sum(1)))]
        if not math.isnan(raw.eye_aspect):
            out["eyes"] = "slit" if raw.eye_aspect > EYE_ASPECT_SPLIT else "round"
    out["texture"] = _texture_class(raw.coherence, raw.skew)
    return out


@functools.lru_cache(maxsize=32)
def reference_detail(h: int, w: int, n: int = 64, seed: int = 20260) -> float:
    """Mean raw background high-frequency energy of ``n`` data images rendered at ``h x w``."""
    x, _ = data.make_batch(n, seed, h, w)
    return float(np.nanmean([_measure(img.astype(np.float64)).detail_raw for img in x]))


def score_image(img: object, grids: Sequence[int | tuple[int, int]] = ()) -> ImageScore:
    """Score one ``(3, H, W)`` image; ``grids``: pixel block sizes for blockiness (e.g. ``(8,)`` at 2x, f=4)."""
    x = as_batch(img, 3)[0]
    _, h, w = x.shape
    raw = _measure(x)
    round_ok = raw.round_ok(MAX_ASPECT, MAX_EXTENT)
    return ImageScore(
        n_objects=raw.n_objects,
        n_specks=raw.n_specks,
        n_eyes=raw.n_eyes,
        radius=raw.radius,
        aspect=raw.aspect,
        extent=raw.extent,
        round_ok=round_ok,
        eyes_ok=raw.eyes_ok,
        proper_face=bool(raw.n_objects == 1 and round_ok and raw.eyes_ok),
        eye_aspect=raw.eye_aspect,
        coherence=raw.coherence,
        skew=raw.skew,
        attrs=read_attributes(raw),
        detail=raw.detail_raw / reference_detail(h, w),
        blockiness={grid_key(g): blockiness(x, g) for g in grids},
        blockiness_worst={grid_key(g): blockiness_worst(x, g) for g in grids},
        grid_over_cells={grid_key(g): grid_over_cells(x, g, F_CELL) for g in grids
                         if isinstance(g, int) and g >= 2 * F_CELL and g % F_CELL == 0},
        mean_rgb=tuple(float(v) for v in x.mean(axis=(1, 2))),  # type: ignore[arg-type]
        face_rgb=raw.face_rgb,
    )


def score_images(images: object, grids: Sequence[int | tuple[int, int]] = ()) -> list[ImageScore]:
    """Score every image of an ``(N, 3, H, W)`` batch."""
    return [score_image(img, grids) for img in as_batch(images, 3)]


def summarize(scores: Sequence[ImageScore], targets: Sequence[dict[str, str]] | None = None) -> dict[str, float]:
    """Rates and means over a batch.

    ``one_object``, ``two_eyes``, ``proper_face`` are fractions of all images; with ``targets`` (the
    attributes each image was asked for; a missing key is not scored), ``attr_<name>`` is the fraction of the
    images asked for that attribute whose reading matches, and ``all_attrs`` the fraction matching every
    attribute asked for. ``detail`` and ``mean_r/g/b``, ``face_r/g/b`` are means (NaNs skipped);
    ``blockiness_<g>``, ``blockiness_worst_<g>`` and ``grid_over_cells_<g>`` the means per grid.
    """
    n = len(scores)
    out: dict[str, float] = {"n": float(n)}
    if n == 0:
        return out
    out.update(face_rates(scores))
    if targets is not None:
        if len(targets) != n:
            raise ValueError(f"targets: need one per score ({n}), got {len(targets)}")
        for key in data.ATTRIBUTES:
            hits = [s.attrs[key] == t[key] for s, t in zip(scores, targets) if key in t]
            if hits:
                out[f"attr_{key}"] = float(np.mean(hits))
        out["all_attrs"] = float(np.mean([all(s.attrs[k] == v for k, v in t.items())
                                          for s, t in zip(scores, targets)]))
    out["detail"] = finite_mean([s.detail for s in scores])
    out.update(blockiness_means(scores))
    out.update(blockiness_means(scores, "blockiness_worst"))
    out.update(blockiness_means(scores, "grid_over_cells"))
    for i, c in enumerate("rgb"):
        out[f"mean_{c}"] = float(np.mean([s.mean_rgb[i] for s in scores]))
        out[f"face_{c}"] = finite_mean([s.face_rgb[i] for s in scores])
    return out


def colour_shift(summary: dict[str, float], reference: dict[str, float]) -> float:
    """Euclidean distance between the batches' mean image colours, ``||mean_rgb - mean_rgb_ref||`` (RGB in
    ``[-1, 1]``; e.g. a method's samples against native samples of the same prompts)."""
    return float(math.sqrt(sum((summary[f"mean_{c}"] - reference[f"mean_{c}"]) ** 2 for c in "rgb")))
