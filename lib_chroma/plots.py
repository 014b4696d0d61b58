"""Curve figures of a curves report (see :mod:`lib_chroma.curves`): the accordion preview and the CLI's PNG.

Top panel: the cumulative signal ratio ``r_m`` of each level against the step. Bottom panel: the per-step
chromatogram ``c_m[i]``. The guidance window is shaded (its weight profile drawn in grey) and the prompt
switch step is a dashed line.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

__all__ = ["curves_figure", "save_png"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def curves_figure(report: dict[str, Any], width_in: float = 6.4, height_in: float = 4.2) -> Figure:
    """Draw the report. Uses the object-oriented API only (no pyplot state), so it is safe in a server."""
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    ax_r, ax_c = fig.subplots(2, 1, sharex=True)
    n = len(report["sigmas"]) - 1
    steps_edges = list(range(n + 1))
    steps_mid = [i + 0.5 for i in range(n)]
    for k, (m, lvl) in enumerate(report["levels"].items()):
        color = _COLORS[k % len(_COLORS)]
        ax_r.plot(steps_edges, lvl["ratio"], color=color, label=f"level {m}")
        ax_c.plot(steps_mid, lvl["per_step"], color=color, marker="o", markersize=2.5)
        ax_c.axvline(lvl["peak_step"] + 0.5, color=color, alpha=0.25, linewidth=0.8)
    win = report.get("guidance_window")
    weights = report.get("guidance_weights") or []
    if win is not None:
        for ax in (ax_r, ax_c):
            ax.axvspan(win["first_step"], win["last_step"] + 1, color="#888888", alpha=0.15, linewidth=0)
        peak = max(abs(w) for w in weights) or 1.0
        ax_r.step(steps_edges[:-1], [w / peak for w in weights], where="post", color="#555555", linewidth=0.9,
                  linestyle=":", label="guidance weight")
    sw = report.get("switch") or {}
    if sw.get("step") not in (None, 0, n):
        for ax in (ax_r, ax_c):
            ax.axvline(sw["step"], color="black", linestyle="--", linewidth=1.0)
        ax_r.text(sw["step"], 1.02, f" switch @ {sw['step']}", fontsize=7, va="bottom")
    ax_r.set_ylabel("signal ratio r_m")
    ax_r.set_ylim(0, 1.08)
    ax_c.set_ylabel("generated per step")
    ax_c.set_xlabel("step")
    ax_c.set_xlim(0, max(n, 1))
    f = report.get("factor", {})
    title = (f"{report.get('model', '')} · {report.get('sampler', '')} · {report.get('scheduler', '')} · "
             f"{n} steps · ×{f.get('h', 1)}/×{f.get('w', 1)}")
    if win is not None:
        title += f" · guided {win['first_step'] + 1}–{win['last_step'] + 1}"
    ax_r.set_title(title, fontsize=8)
    ax_r.legend(fontsize=7, loc="lower right", ncol=2)
    for ax in (ax_r, ax_c):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def save_png(report: dict[str, Any], path: str) -> None:
    """Write the figure of ``report`` to ``path`` as PNG."""
    curves_figure(report).savefig(path, format="png")
