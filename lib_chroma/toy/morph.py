"""Small numpy-only binary morphology: connected components, hole filling, dilation, box filter."""

from __future__ import annotations

import numpy as np

_N4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
_N8 = _N4 + ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _shifted(a: np.ndarray, dy: int, dx: int, fill: int | bool) -> np.ndarray:
    """``out[i, j] = a[i + dy, j + dx]`` with ``fill`` outside the array."""
    p = np.pad(a, 1, constant_values=fill)
    h, w = a.shape
    return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def label(mask: np.ndarray, conn8: bool = True) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: labels ``1..n`` (0 = outside), and ``n``.

    Min-label propagation: every pixel repeatedly takes the smallest label among itself and its neighbours
    (4- or 8-connectivity) inside the mask, with pointer jumping ``l <- l[l]`` to converge in few rounds.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    big = h * w
    idx = np.arange(big).reshape(h, w)
    lab = np.where(mask, idx, big)
    nbrs = _N8 if conn8 else _N4
    while True:
        new = lab.copy()
        for dy, dx in nbrs:
            np.minimum(new, _shifted(lab, dy, dx, big), out=new)
        new = np.where(mask, new, big)
        flat = new[mask]
        new[mask] = new.reshape(-1)[flat]  # pointer jumping: labels are pixel indices inside the mask
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.zeros((h, w), dtype=np.int32)
    if not mask.any():
        return out, 0
    uniq, inv = np.unique(lab[mask], return_inverse=True)
    out[mask] = inv + 1
    return out, len(uniq)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every region of its complement (4-connected) that does not touch the image border."""
    mask = np.asarray(mask, dtype=bool)
    lab, n = label(~mask, conn8=False)
    if n == 0:
        return mask.copy()
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    outside = np.isin(lab, border[border > 0])
    return ~outside


def dilate(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """Binary dilation by a (2k+1) x (2k+1) square (``k`` rounds of 8-neighbour dilation)."""
    out = np.asarray(mask, dtype=bool)
    for _ in range(k):
        acc = out.copy()
        for dy, dx in _N8:
            acc |= _shifted(out, dy, dx, False)
        out = acc
    return out


def erode(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """Binary erosion by a (2k+1) x (2k+1) square; outside the image counts as set."""
    return ~dilate(~np.asarray(mask, dtype=bool), k)


def close(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """Binary closing (dilate then erode by a (2k+1)^2 square) with everything outside the image unset."""
    p = np.pad(np.asarray(mask, dtype=bool), 2 * k)
    return erode(dilate(p, k), k)[2 * k : -2 * k, 2 * k : -2 * k]


def ortho_hull(mask: np.ndarray) -> np.ndarray:
    """Pixels between the first and last set pixel of their row *and* of their column."""
    mask = np.asarray(mask, dtype=bool)

    def span(m: np.ndarray) -> np.ndarray:
        left = np.maximum.accumulate(m, axis=1)
        right = np.maximum.accumulate(m[:, ::-1], axis=1)[:, ::-1]
        return left & right

    return span(mask) & span(mask.T).T


def box3(x: np.ndarray) -> np.ndarray:
    """3 x 3 box mean over the last two axes with edge replication: ``mean_{|dy|,|dx|<=1} x[i+dy, j+dx]``."""
    pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(x, pad, mode="edge")
    h, w = x.shape[-2:]
    acc = np.zeros_like(x, dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            acc += p[..., dy : dy + h, dx : dx + w]
    return acc / 9.0
