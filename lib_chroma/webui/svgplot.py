"""The accordion's curve preview as inline SVG: built from a :func:`lib_chroma.curves.curves_report` in well
under a millisecond, so a preview update stays far below the 50 ms budget (a matplotlib PNG takes 100–300 ms
here).

It reads without the paper. x: the sampling steps, numbered 1..N as in the readout (step i runs from the sampler's
sigma i-1 down to sigma i; its tick sits in its middle). Top panel: "share of the level generated", the signal
ratio ``r_m`` of each resolution level at the step edges (0 = pure noise, 1 = done), and the finest guided level's
guidance weight (dotted, relative to its peak). Bottom panel: "generated in the step", the per-step chromatogram
``c_m``. The legend says what a level is: level m = details of m latent pixels (8m image pixels). Grey band: the
guided steps, labelled with the readout's 1-based range; dashed line: the prompt switch, drawn where the first
step with the detail prompt starts and labelled with that step's 1-based number, as in the switch info. Pure
Python, no WebUI import.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["curves_svg", "LEVEL_NOTE", "X_TITLE", "Y_TITLE", "Y2_TITLE"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
#: What a resolution level is (legend caption and tooltip).
LEVEL_NOTE = "level m = details of m latent pixels (8m image pixels)"
X_TITLE = "sampling step"
Y_TITLE = "share of the level generated"
Y2_TITLE = "generated in the step"


def _poly(xs: list[float], ys: list[float], color: str, extra: str = "") -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{pts}" {extra}/>'


def _text(x: float, y: float, text: str, size: int = 10, anchor: str = "start", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-family="sans-serif" '
        f'{extra}>{escape(text)}</text>'
    )


def _tick_steps(n: int) -> list[int]:
    """1-based step numbers to label: 1, the multiples of a round stride (at most about ten labels) and N, without
    labels that would crowd 1 or N."""
    stride = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if n / s <= 10), n)
    inner = [t for t in range(stride, n, stride) if t - 1 > stride / 2 and n - t >= stride / 2]
    return sorted({1, n, *inner})


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if v < 10 else f"{v:.0f}"


def curves_svg(report: dict[str, Any], width: int = 640, height: int = 370) -> str:
    """An ``<svg>`` element (string) of the report; ``data-*`` attributes carry the key numbers for tests and JS:
    ``data-steps`` N, ``data-guided`` the guided steps ``a-b`` (1-based, inclusive, '' when none), ``data-switch``
    the 1-based first step with the detail prompt ('' when there is no switch)."""
    sig = report["sigmas"]
    n = max(len(sig) - 1, 1)
    left, right, top, gap, bottom = 64, 14, 60, 26, 40
    ph = (height - top - gap - bottom) / 2
    pw = width - left - right
    top2 = top + ph + gap

    def x(edge: float) -> float:
        return left + pw * edge / n

    def y_top(v: float) -> float:
        return top + ph * (1 - v)

    cmax = max([max(lv["per_step"] or [0]) for lv in report["levels"].values()] + [1e-9])

    def y_bot(v: float) -> float:
        return top2 + ph * (1 - v / cmax)

    win = report.get("guidance_window")
    sw = report.get("switch") or {}
    step = sw.get("step")
    switch = step is not None and 0 < step < n
    guided = "" if win is None else f"{win['first_step'] + 1}-{win['last_step'] + 1}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rc-curves" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" data-steps="{n}" data-guided="{guided}" '
        f'data-switch="{step + 1 if switch else ""}">',
        f"<title>Resolution chromatography: {escape(LEVEL_NOTE)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    if win is not None:
        x0, x1 = x(win["first_step"]), x(win["last_step"] + 1)
        for y0 in (top, top2):
            parts.append(
                f'<rect class="rc-guided" x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{ph:.1f}" '
                'fill="#888" fill-opacity="0.18"/>'
            )
        label = f"grey: guided steps {win['first_step'] + 1}–{win['last_step'] + 1}"
        parts.append(_text(left + pw, 29, label, 10, "end", 'class="rc-guided-label" fill="#444"'))
    for y0 in (top, top2):
        parts.append(f'<rect x="{left}" y="{y0:.1f}" width="{pw}" height="{ph:.1f}" fill="none" stroke="#999"/>')
    # y ticks: 0, 0.5, 1 on top; 0 and the largest value below
    for v in (0.0, 0.5, 1.0):
        yy = y_top(v)
        parts.append(f'<line x1="{left - 4}" x2="{left}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#999"/>')
        parts.append(_text(left - 6, yy + 3, _fmt(v), 9, "end", 'class="rc-ytick"'))
    for v in (0.0, cmax):
        yy = y_bot(v)
        parts.append(f'<line x1="{left - 4}" x2="{left}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#999"/>')
        parts.append(_text(left - 6, yy + 3, _fmt(v), 9, "end", 'class="rc-ytick"'))
    for title, y0 in ((Y_TITLE, top), (Y2_TITLE, top2)):
        cy = y0 + ph / 2
        parts.append(
            _text(12, cy, title, 9, "middle", f'class="rc-ytitle" transform="rotate(-90 12 {cy:.1f})"')
        )
    # x ticks at step centres, 1-based like the readout
    for s in _tick_steps(n):
        xx = x(s - 0.5)
        parts.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{height - bottom}" y2="{height - bottom + 4}" '
                     'stroke="#999"/>')
        parts.append(_text(xx, height - bottom + 14, str(s), 9, "middle", 'class="rc-xtick"'))
    parts.append(_text(left + pw / 2, height - 6, X_TITLE, 10, "middle", 'class="rc-xtitle"'))
    # curves and legend
    lx = left
    for k, (m, lv) in enumerate(report["levels"].items()):
        c = _COLORS[k % len(_COLORS)]
        parts.append(_poly([x(i) for i in range(len(lv["ratio"]))], [y_top(v) for v in lv["ratio"]], c))
        parts.append(
            _poly([x(i + 0.5) for i in range(len(lv["per_step"]))], [y_bot(v) for v in lv["per_step"]], c)
        )
        try:
            px = f" ({int(float(m)) * 8} px)"
        except ValueError:
            px = ""
        label = f"level {m}{px}"
        parts.append(f'<line x1="{lx}" x2="{lx + 14}" y1="10" y2="10" stroke="{c}" stroke-width="2"/>')
        parts.append(_text(lx + 17, 13, label, 10, extra=f'class="rc-legend" fill="{c}"'))
        lx += 26 + 6 * len(label)
    weights = report.get("guidance_weights") or []
    if weights and win is not None:
        peak = max(abs(w) for w in weights) or 1.0
        xs, ys = [], []
        for i, w in enumerate(weights):
            xs += [x(i), x(i + 1)]
            ys += [y_top(w / peak)] * 2
        parts.append(_poly(xs, ys, "#444", 'stroke-dasharray="2,2"'))
        parts.append(f'<line x1="{lx}" x2="{lx + 14}" y1="10" y2="10" stroke="#444" stroke-dasharray="2,2"/>')
        parts.append(_text(lx + 17, 13, "guidance weight", 10, extra='class="rc-legend" fill="#444"'))
    parts.append(_text(left, 29, LEVEL_NOTE, 10, extra='class="rc-level-note" fill="#555"'))
    if switch:
        xs_ = x(step)
        parts.append(
            f'<line class="rc-switch" x1="{xs_:.1f}" x2="{xs_:.1f}" y1="{top - 14}" y2="{height - bottom}" '
            'stroke="black" stroke-dasharray="5,3"/>'
        )
        anchor = "start" if step < 0.6 * n else "end"
        parts.append(
            _text(xs_, top - 5, f"detail prompt from step {step + 1}", 10, anchor, 'class="rc-switch-label"')
        )
    parts.append("</svg>")
    return "".join(parts)
