"""The accordion's curve preview as inline SVG: built from a :func:`lib_chroma.curves.curves_report` in well
under a millisecond, so a preview update stays far below the 50 ms budget (a matplotlib PNG takes 100–300 ms
here).

Top panel: signal ratio ``r_m(sigma_i)`` per level over the step edges, and the finest guided level's weight
(dotted). Bottom panel: per-step chromatogram ``c_m[i]``. Grey band: the guidance window; dashed line: the
prompt switch step. Pure Python, no WebUI import.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["curves_svg"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _poly(xs: list[float], ys: list[float], color: str, extra: str = "") -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{pts}" {extra}/>'


def curves_svg(report: dict[str, Any], width: int = 640, height: int = 320) -> str:
    """An ``<svg>`` element (string) of the report; ``data-*`` attributes carry the key numbers for tests and
    JS."""
    sig = report["sigmas"]
    n = max(len(sig) - 1, 1)
    left, right, top, gap, bottom = 44, 12, 22, 26, 26
    ph = (height - top - gap - bottom) / 2
    pw = width - left - right

    def x(step: float) -> float:
        return left + pw * step / n

    def y_top(v: float) -> float:
        return top + ph * (1 - v)

    cmax = max([max(lv["per_step"] or [0]) for lv in report["levels"].values()] + [1e-9])

    def y_bot(v: float) -> float:
        return top + ph + gap + ph * (1 - v / cmax)

    win = report.get("guidance_window")
    sw = report.get("switch") or {}
    win_attr = "" if win is None else f"{win['first_step']}-{win['last_step']}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rc-curves" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" data-steps="{n}" '
        f'data-window="{win_attr}" data-switch="{sw.get("step", "")}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    if win is not None:
        for y0 in (top, top + ph + gap):
            x0, x1 = x(win["first_step"]), x(win["last_step"] + 1)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{ph:.1f}" '
                'fill="#888" fill-opacity="0.18"/>'
            )
    for y0 in (top, top + ph + gap):
        parts.append(
            f'<rect x="{left}" y="{y0:.1f}" width="{pw}" height="{ph:.1f}" fill="none" stroke="#999"/>'
        )
    for k, (m, lv) in enumerate(report["levels"].items()):
        c = _COLORS[k % len(_COLORS)]
        parts.append(_poly([x(i) for i in range(len(lv["ratio"]))], [y_top(v) for v in lv["ratio"]], c))
        parts.append(
            _poly([x(i + 0.5) for i in range(len(lv["per_step"]))], [y_bot(v) for v in lv["per_step"]], c)
        )
        parts.append(
            f'<text x="{left + 6 + 62 * k}" y="{top - 7}" font-size="10" fill="{c}">level {escape(m)}</text>'
        )
    weights = report.get("guidance_weights") or []
    if weights and win is not None:
        peak = max(abs(w) for w in weights) or 1.0
        xs, ys = [], []
        for i, w in enumerate(weights):
            xs += [x(i), x(i + 1)]
            ys += [y_top(w / peak)] * 2
        parts.append(_poly(xs, ys, "#444", 'stroke-dasharray="2,2"'))
    if sw.get("step") not in (None, 0, n):
        xs_ = x(sw["step"])
        parts.append(
            f'<line x1="{xs_:.1f}" x2="{xs_:.1f}" y1="{top}" y2="{height - bottom}" stroke="black" '
            f'stroke-dasharray="5,3"/>'
        )
        parts.append(
            f'<text x="{xs_ + 3:.1f}" y="{top + 10}" font-size="10">switch @ {sw.get("step")}</text>'
        )
    parts.append(f'<text x="4" y="{top + ph / 2:.1f}" font-size="10">r_m</text>')
    parts.append(f'<text x="4" y="{top + ph + gap + ph / 2:.1f}" font-size="10">c_m</text>')
    for s in range(0, n + 1, max(1, n // 10)):
        parts.append(f'<text x="{x(s):.1f}" y="{height - 10}" font-size="9" text-anchor="middle">{s}</text>')
    parts.append("</svg>")
    return "".join(parts)
