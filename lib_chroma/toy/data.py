"""Synthetic "faces" at any resolution, with their ground-truth parameters.

A scene lives in *base units*: the training canvas is ``BASE`` x ``BASE`` units (32 x 32 pixels at the
training resolution). Rendering at ``H x W`` pixels maps the canvas onto the pixel grid with per-axis scales
``sy = H / BASE`` and ``sx = W / BASE``, so the same scene renders at any resolution and a 2x render is the
"high-resolution truth" of the 1x one (up to the texture, which is drawn per resolution with the same
statistics in base units).

One training scene: a light disc ("face") of radius ``r`` in ``[R_MIN, R_MAX]`` (log-uniform), two dark eyes
in its upper half, on a dark background tinted with a random hue and modulated by a 1/f texture:

- texture: ``t = IFFT(FFT(w) * a(k))`` with ``w`` white noise and amplitude spectrum
  ``a(k) = sqrt(H*W) * c / max(|k|, 1)``, ``|k|`` in cycles per canvas, DC removed; ``c`` makes ``std(t) = 1``
  at the base resolution. Per-octave energy of a 1/f spectrum is constant, so each resolution doubling adds
  one octave of fine detail with the same energy as the octave below it.
- background ``bg_rgb + amp * tanh(0.8 t)``; face and eyes are flat colours drawn with a one-pixel
  anti-aliased edge ``alpha = clip(0.5 - (d - r) * s, 0, 1)`` (``d`` distance in base units, ``s`` pixels
  per unit).
- luminance (mean of RGB) ranges are disjoint: background <= ``BG_LUM_MAX``, face >= ``FACE_LUM_MIN``,
  eyes <= ``EYE_LUM_MAX``, which is what the scorer relies on.

Images are float32 arrays in ``[-1, 1]``, shape ``(N, 3, H, W)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

BASE = 32
R_MIN = 5.0
R_MAX = 14.0
BG_LUM_RANGE = (-0.55, -0.2)
TEX_AMP_RANGE = (0.2, 0.32)
BG_LUM_MAX = BG_LUM_RANGE[1] + TEX_AMP_RANGE[1] * math.tanh(0.8 * 4.0)
FACE_LUM_RANGE = (0.45, 0.8)
FACE_LUM_MIN = FACE_LUM_RANGE[0]
EYE_LUM_RANGE = (-0.95, -0.75)
EYE_LUM_MAX = EYE_LUM_RANGE[1]
MAX_JITTER = 6.0


def eye_layout(r: float) -> tuple[float, float, float]:
    """Nominal eye geometry for a face of radius ``r`` (base units).

    Returns ``(dx, dy, er)``: eyes at ``(cx -+ dx, cy - dy)`` with radius ``er``, where
    ``dx = 0.36 r + 0.3``, ``dy = 0.2 r + 0.3``, ``er = 0.18 r + 0.35`` (the offsets keep eyes of small faces
    resolvable at 32 x 32).
    """
    return 0.36 * r + 0.3, 0.2 * r + 0.3, 0.18 * r + 0.35


@dataclasses.dataclass
class Face:
    """A light disc with dark round eyes; all lengths in base units, colours in ``[-1, 1]``."""

    cx: float
    cy: float
    r: float
    rgb: tuple[float, float, float]
    eyes: list[tuple[float, float, float]]  # (ex, ey, er)
    eye_rgb: tuple[float, float, float] = (-0.85, -0.85, -0.85)


@dataclasses.dataclass
class Scene:
    """Background colour, texture amplitude and seed, and the faces drawn on top in order."""

    bg_rgb: tuple[float, float, float]
    tex_amp: float
    tex_seed: int
    faces: list[Face]


def _tinted(rng: np.random.Generator, lum: float, chroma: float) -> tuple[float, float, float]:
    """``lum + chroma * v``, ``v`` a random unit vector orthogonal to (1,1,1): luminance (mean) = ``lum``."""
    v = rng.standard_normal(3)
    v -= v.mean()
    v /= np.linalg.norm(v) + 1e-12
    rgb = lum + chroma * v
    return tuple(float(c) for c in rgb)  # type: ignore[return-value]


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one training scene: one face, radius log-uniform in ``[R_MIN, R_MAX]``, centre jittered."""
    r = float(math.exp(rng.uniform(math.log(R_MIN), math.log(R_MAX))))
    jit = min(MAX_JITTER, BASE / 2 - r - 1.0)
    cx, cy = (BASE / 2 + rng.uniform(-jit, jit, size=2)).tolist()
    dx, dy, er = eye_layout(r)
    ej = 0.04 * r
    eyes = [
        (cx - dx + rng.uniform(-ej, ej), cy - dy + rng.uniform(-ej, ej), er),
        (cx + dx + rng.uniform(-ej, ej), cy - dy + rng.uniform(-ej, ej), er),
    ]
    face_rgb = _tinted(rng, rng.uniform(*FACE_LUM_RANGE), rng.uniform(0.0, 0.15))
    eye_rgb = _tinted(rng, rng.uniform(*EYE_LUM_RANGE), rng.uniform(0.0, 0.05))
    bg_rgb = _tinted(rng, rng.uniform(*BG_LUM_RANGE), rng.uniform(0.0, 0.25))
    return Scene(
        bg_rgb=bg_rgb,
        tex_amp=float(rng.uniform(*TEX_AMP_RANGE)),
        tex_seed=int(rng.integers(0, 2**63 - 1)),
        faces=[Face(cx, cy, r, face_rgb, eyes, eye_rgb)],
    )


def sample_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` training scenes from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


_TEX_NORM: dict[str, float] = {}


def _spectrum(h: int, w: int) -> np.ndarray:
    """Amplitude ``a(k) = sqrt(h*w) / max(|k|, 1)`` on the FFT grid (k in cycles per canvas), DC zeroed."""
    ky = np.fft.fftfreq(h) * h
    kx = np.fft.fftfreq(w) * w
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    a = math.sqrt(h * w) / np.maximum(k, 1.0)
    a[0, 0] = 0.0
    return a


def _tex_norm() -> float:
    """``c = 1 / sqrt(sum_k max(|k|,1)^-2)`` over the base grid: unit texture variance at ``BASE``."""
    if "c" not in _TEX_NORM:
        a = _spectrum(BASE, BASE)
        _TEX_NORM["c"] = 1.0 / math.sqrt(float((a**2).sum()) / (BASE * BASE))
    return _TEX_NORM["c"]


def texture(seed: int, h: int, w: int) -> np.ndarray:
    """1/f texture ``t = c * IFFT(FFT(n) * a(k))`` for white noise ``n`` seeded by ``seed``.

    The pixel variance is ``c^2 * sum_k a(k)^2 / (h*w) = c^2 * sum_k max(|k|,1)^-2``: the variance in any
    band of physical frequencies (cycles per canvas) is independent of resolution; ``std = 1`` at ``BASE``.
    """
    noise = np.random.default_rng(seed).standard_normal((h, w))
    t = np.fft.ifft2(np.fft.fft2(noise) * _spectrum(h, w)).real
    return (t * _tex_norm()).astype(np.float32)


def _disc_alpha(u: np.ndarray, v: np.ndarray, cx: float, cy: float, r: float, s: float) -> np.ndarray:
    """Anti-aliased disc coverage ``clip(0.5 - (d - r) * s, 0, 1)``, ``d`` the distance in base units."""
    d = np.sqrt((u - cx) ** 2 + (v - cy) ** 2)
    return np.clip(0.5 - (d - r) * s, 0.0, 1.0)


def render(scenes: list[Scene], h: int = BASE, w: int | None = None) -> np.ndarray:
    """Render scenes at ``h x w`` pixels: float32 ``(N, 3, h, w)`` in ``[-1, 1]``."""
    w = h if w is None else w
    sy, sx = h / BASE, w / BASE
    s = math.sqrt(sx * sy)
    v = ((np.arange(h) + 0.5) / sy)[:, None]
    u = ((np.arange(w) + 0.5) / sx)[None, :]
    out = np.empty((len(scenes), 3, h, w), dtype=np.float32)
    for i, sc in enumerate(scenes):
        tex = np.tanh(0.8 * texture(sc.tex_seed, h, w)) * sc.tex_amp
        img = np.asarray(sc.bg_rgb, dtype=np.float32)[:, None, None] + tex[None]
        for f in sc.faces:
            a = _disc_alpha(u, v, f.cx, f.cy, f.r, s)[None]
            img = img * (1 - a) + np.asarray(f.rgb, dtype=np.float32)[:, None, None] * a
            for ex, ey, er in f.eyes:
                a = _disc_alpha(u, v, ex, ey, er, s)[None]
                img = img * (1 - a) + np.asarray(f.eye_rgb, dtype=np.float32)[:, None, None] * a
        out[i] = np.clip(img, -1.0, 1.0)
    return out


def make_batch(n: int, seed: int, h: int = BASE, w: int | None = None) -> tuple[np.ndarray, list[Scene]]:
    """``n`` seeded training images at ``h x w`` and their ground-truth scenes."""
    scenes = sample_scenes(n, seed)
    return render(scenes, h, w), scenes
