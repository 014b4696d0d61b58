"""Synthetic faces with nameable attributes, at any resolution, with their ground truth.

A scene lives on a canvas of ``BASE`` x ``BASE`` *base units* (64 x 64 pixels at the native resolution).
Rendering at ``H x W`` pixels maps units to pixels with per-axis scales ``sy = H / BASE``, ``sx = W / BASE``,
so a 2x render is the high-resolution truth of the 1x one (the 1/f texture gains one octave of fine detail
per doubling, with the same per-band energy, as in :mod:`lib_chroma.toy.data`).

One scene has one face and five attributes a prompt can name. Three are decided at coarse levels, two only
at fine ones:

- ``position`` (coarse): face centre ``cx`` in ``[r + 2, 24]`` (left), ``[30, 34]`` (centre) or
  ``[40, 62 - r]`` (right); ``cy`` in ``[29, 35]``.
- ``size`` (coarse): radius ``r`` uniform in ``[12, 14.5]`` (small) or ``[17, 21]`` (large).
- ``colour`` (coarse): a saturated face colour, ``COLOURS[name] + U(-0.08, 0.08)`` per channel; its largest
  channel is ``>= 0.67``.
- ``eyes`` (fine): two dark eyes at ``(cx -+ dx, cy - dy)``, ``dx = 0.42 r + 0.8``, ``dy = 0.22 r + 0.4``,
  size ``e = 0.2 r + 1.2``: ``round`` discs of radius ``e``, or ``slit`` ellipses with half-axes
  ``1.15 e`` x ``0.5 e`` (aspect 2.3). An eye is at least 7.2 units wide and a slit 3.6 units high (1.8 and
  0.9 latent pixels at f = 4).
- ``texture`` (fine) of the dark, nearly grey background (luminance ``U(-0.55, -0.25)``, tint <= 0.08):
  ``noise``: ``amp tanh(0.8 t)``, ``t`` the toy's 1/f texture (:func:`lib_chroma.toy.data.texture`);
  ``stripes``: ``amp sin(2 pi (u cos th + v sin th) / P + phi)``, period ``P`` in ``[10, 14]`` units, any angle;
  ``dots``: a rotated square lattice (spacing ``[10, 12]``) of discs of radius ``[2.2, 2.8]``, ``amp`` brighter.

Value classes are disjoint in the *largest channel* ``vmax = max(R, G, B)``: background ``<= BG_MAX``,
face ``>= FACE_MIN``, eyes ``<= EYE_MAX``; the scorer relies on it. Shapes carry a one-pixel anti-aliased edge
``alpha = clip(0.5 - d * s, 0, 1)`` (``d`` signed distance in units, ``s`` pixels per unit).

Images are float32 ``(N, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lib_chroma.toy.data import texture

BASE = 64
POSITIONS = ("left", "centre", "right")
SIZES = ("small", "large")
EYES = ("round", "slit")
TEXTURES = ("noise", "stripes", "dots")
#: Named face colours (RGB in [-1, 1]); samples jitter each channel by up to ``COLOUR_JITTER``.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, -0.55, -0.5),
    "green": (-0.5, 0.78, -0.45),
    "blue": (-0.45, -0.2, 0.88),
    "yellow": (0.85, 0.78, -0.55),
}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "position": POSITIONS,
    "size": SIZES,
    "colour": tuple(COLOURS),
    "eyes": EYES,
    "texture": TEXTURES,
}
COLOUR_JITTER = 0.08
RADIUS: dict[str, tuple[float, float]] = {"small": (12.0, 14.5), "large": (17.0, 21.0)}
#: Radius threshold (units) between the size classes, halfway between their ranges.
SIZE_SPLIT = 0.5 * (RADIUS["small"][1] + RADIUS["large"][0])
#: ``cx`` thresholds (units) between left | centre | right, halfway between the position ranges.
POSITION_SPLITS = (27.0, 37.0)
CY_RANGE = (29.0, 35.0)
BG_LUM_RANGE = (-0.55, -0.25)
BG_TINT = 0.08
TEX_AMP_RANGE = (0.2, 0.3)
DOT_AMP_RANGE = (0.35, 0.45)
EYE_GREY_RANGE = (-0.9, -0.8)
BG_MAX = BG_LUM_RANGE[1] + BG_TINT + DOT_AMP_RANGE[1]
FACE_MIN = min(max(rgb) for rgb in COLOURS.values()) - COLOUR_JITTER
EYE_MAX = EYE_GREY_RANGE[1]
SLIT_AXES = (1.15, 0.5)


def eye_layout(r: float) -> tuple[float, float, float]:
    """Nominal eye geometry for a face of radius ``r`` (units): ``(dx, dy, e)`` with ``dx = 0.42 r + 0.8``,
    ``dy = 0.22 r + 0.4`` (eyes at ``(cx -+ dx, cy - dy)``) and eye size ``e = 0.2 r + 1.2``."""
    return 0.42 * r + 0.8, 0.22 * r + 0.4, 0.2 * r + 1.2


@dataclasses.dataclass
class Scene:
    """One face and its background; lengths in base units, colours in ``[-1, 1]``.

    ``attrs`` maps each attribute name of :data:`ATTRIBUTES` to its value (the ground truth)."""

    attrs: dict[str, str]
    cx: float
    cy: float
    r: float
    face_rgb: tuple[float, float, float]
    eye_grey: float
    bg_rgb: tuple[float, float, float]
    tex_amp: float
    tex_seed: int
    period: float = 10.0
    angle: float = 0.0
    phase: float = 0.0
    dot_radius: float = 2.5
    offset: tuple[float, float] = (0.0, 0.0)
    extra_faces: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    eyes: list[tuple[float, float, float, float]] | None = None

    def eye_shapes(self) -> list[tuple[float, float, float, float]]:
        """Eyes as ``(ex, ey, half_width, half_height)``: the explicit ``eyes`` or the nominal pair."""
        if self.eyes is not None:
            return list(self.eyes)
        dx, dy, e = eye_layout(self.r)
        a, b = (e, e) if self.attrs["eyes"] == "round" else (SLIT_AXES[0] * e, SLIT_AXES[1] * e)
        return [(self.cx - dx, self.cy - dy, a, b), (self.cx + dx, self.cy - dy, a, b)]


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Every attribute drawn uniformly from its values."""
    return {k: str(v[int(rng.integers(len(v)))]) for k, v in ATTRIBUTES.items()}


def sample_scene(rng: np.random.Generator, attrs: dict[str, str] | None = None) -> Scene:
    """Draw one scene; attributes missing from ``attrs`` are drawn uniformly (see the module docstring)."""
    full = random_attributes(rng)
    if attrs:
        for k, v in attrs.items():
            if k not in ATTRIBUTES or v not in ATTRIBUTES[k]:
                raise ValueError(f"attrs.{k}: unknown value {v!r}; allowed: {ATTRIBUTES.get(k)}")
        full.update(attrs)
    r = float(rng.uniform(*RADIUS[full["size"]]))
    lo, hi = {"left": (r + 2.0, 24.0), "centre": (30.0, 34.0), "right": (40.0, BASE - 2.0 - r)}[full["position"]]
    cx = float(rng.uniform(lo, hi))
    cy = float(rng.uniform(*CY_RANGE))
    base_rgb = np.asarray(COLOURS[full["colour"]])
    face = np.clip(base_rgb + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), -1, 1)
    tint = rng.uniform(-1, 1, 3)
    tint -= tint.mean()
    tint *= rng.uniform(0, BG_TINT) / (np.abs(tint).max() + 1e-12)
    bg = rng.uniform(*BG_LUM_RANGE) + tint
    amp_range = DOT_AMP_RANGE if full["texture"] == "dots" else TEX_AMP_RANGE
    return Scene(
        attrs=full,
        cx=cx,
        cy=cy,
        r=r,
        face_rgb=tuple(float(v) for v in face),  # type: ignore[arg-type]
        eye_grey=float(rng.uniform(*EYE_GREY_RANGE)),
        bg_rgb=tuple(float(v) for v in bg),  # type: ignore[arg-type]
        tex_amp=float(rng.uniform(*amp_range)),
        tex_seed=int(rng.integers(0, 2**63 - 1)),
        period=float(rng.uniform(10.0, 14.0)) if full["texture"] == "stripes" else float(rng.uniform(10.0, 12.0)),
        angle=float(rng.uniform(0.0, math.pi)),
        phase=float(rng.uniform(0.0, 2 * math.pi)),
        dot_radius=float(rng.uniform(2.2, 2.8)),
        offset=(float(rng.uniform(0, 12)), float(rng.uniform(0, 12))),
    )


def sample_scenes(n: int, seed: int, attrs: list[dict[str, str]] | None = None) -> list[Scene]:
    """``n`` scenes from ``numpy.random.default_rng(seed)``; ``attrs[i]`` fixes attributes of scene ``i``."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, attrs[i] if attrs else None) for i in range(n)]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel-centre coordinates ``(u, v)`` in units and pixels per unit ``s = sqrt(sx sy)``."""
    sy, sx = h / BASE, w / BASE
    v = ((np.arange(h) + 0.5) / sy)[:, None]
    u = ((np.arange(w) + 0.5) / sx)[None, :]
    return u, v, math.sqrt(sx * sy)


def ellipse_alpha(u: np.ndarray, v: np.ndarray, cx: float, cy: float, a: float, b: float, s: float) -> np.ndarray:
    """Anti-aliased coverage of the axis-aligned ellipse with half-axes ``(a, b)``: ``clip(0.5 - d s, 0, 1)``
    with the signed distance approximated by ``d = (sqrt((du/a)² + (dv/b)²) - 1) min(a, b)`` (exact for
    discs)."""
    q = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return np.clip(0.5 - (q - 1.0) * min(a, b) * s, 0.0, 1.0)


def background(sc: Scene, h: int, w: int) -> np.ndarray:
    """The textured background of a scene at ``h x w``: ``(3, h, w)`` float32."""
    u, v, s = _grid(h, w)
    kind = sc.attrs["texture"]
    if kind == "noise":
        tex = sc.tex_amp * np.tanh(0.8 * texture(sc.tex_seed, h, w))
    elif kind == "stripes":
        c, sn = math.cos(sc.angle), math.sin(sc.angle)
        tex = sc.tex_amp * np.sin(2 * math.pi * (u * c + v * sn) / sc.period + sc.phase)
    else:
        c, sn = math.cos(sc.angle), math.sin(sc.angle)
        pu = (u - sc.offset[0]) * c + (v - sc.offset[1]) * sn
        pv = -(u - sc.offset[0]) * sn + (v - sc.offset[1]) * c
        du = pu - sc.period * np.round(pu / sc.period)
        dv = pv - sc.period * np.round(pv / sc.period)
        d = np.sqrt(du**2 + dv**2) - sc.dot_radius
        tex = sc.tex_amp * np.clip(0.5 - d * s, 0.0, 1.0)
    return (np.asarray(sc.bg_rgb, dtype=np.float32)[:, None, None] + tex[None]).astype(np.float32)


def render(scenes: list[Scene], h: int = BASE, w: int | None = None) -> np.ndarray:
    """Render scenes at ``h x w`` pixels: float32 ``(N, 3, h, w)`` in ``[-1, 1]``."""
    w = h if w is None else w
    u, v, s = _grid(h, w)
    out = np.empty((len(scenes), 3, h, w), dtype=np.float32)
    for i, sc in enumerate(scenes):
        img = background(sc, h, w)
        face = np.asarray(sc.face_rgb, dtype=np.float32)[:, None, None]
        eye = np.full((3, 1, 1), sc.eye_grey, dtype=np.float32)
        for cx, cy, r in [(sc.cx, sc.cy, sc.r), *sc.extra_faces]:
            a = ellipse_alpha(u, v, cx, cy, r, r, s)[None]
            img = img * (1 - a) + face * a
        for ex, ey, ea, eb in sc.eye_shapes():
            a = ellipse_alpha(u, v, ex, ey, ea, eb, s)[None]
            img = img * (1 - a) + eye * a
        out[i] = np.clip(img, -1.0, 1.0)
    return out


def make_batch(
    n: int, seed: int, h: int = BASE, w: int | None = None, attrs: list[dict[str, str]] | None = None
) -> tuple[np.ndarray, list[Scene]]:
    """``n`` seeded images at ``h x w`` and their scenes (ground truth in ``scene.attrs``)."""
    scenes = sample_scenes(n, seed, attrs)
    return render(scenes, h, w), scenes
