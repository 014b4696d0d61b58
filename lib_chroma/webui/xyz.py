"""X/Y/Z plot axes: enable, scale, factor, window, switch level, pooling grid, cascade, resampler.

Each axis stores its value on the cell's processing copy as ``p.rc_<field>`` (XYZ's ``copy(p)`` is shallow, so
nothing shared is mutated); :func:`lib_chroma.webui.generation.on_process` reads them, and any axis other than
"enabled" implies enabled. Values are validated when the axis is applied, so a bad value fails loudly in XYZ's
own error path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lib_chroma import settings as S

LABEL_PREFIX = "[RC] "


def _setter(*names: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, x: Any, xs: Any) -> None:
        for n in names:
            setattr(p, f"rc_{n}", S.validate_field(n, x))

    return apply


def apply_window(p: Any, x: Any, xs: Any) -> None:
    """``auto``, ``sigma HI to LO`` or ``fraction START to END`` (the infotext form)."""
    for k, v in S.parse_window(str(x)).items():
        setattr(p, f"rc_{k}", S.validate_field(k, v))


def axis_specs() -> list[tuple[str, type, Callable[[Any, Any, Any], None], Callable[[], list[str]] | None]]:
    """(label, type, apply, choices) per axis, host-agnostic (tests use it)."""
    return [
        (LABEL_PREFIX + "Enabled", str, _setter("enabled"), lambda: ["True", "False"]),
        (LABEL_PREFIX + "Scale", float, _setter("scale"), None),
        (LABEL_PREFIX + "Factor", int, _setter("factor_h", "factor_w"), None),
        (LABEL_PREFIX + "Window", str, apply_window, None),
        (LABEL_PREFIX + "Switch level", int, _setter("switch_level"), None),
        (LABEL_PREFIX + "Grid", str, _setter("grid"), lambda: list(S.GRID_CHOICES)),
        (LABEL_PREFIX + "Cascade", str, _setter("cascade"), lambda: ["True", "False"]),
        (LABEL_PREFIX + "Resampler", str, _setter("resampler"), lambda: list(S.RESAMPLER_CHOICES)),
    ]


def add_axes() -> None:
    """Append the axes to the built-in X/Y/Z script (``on_before_ui``); idempotent."""
    from modules import scripts

    xyz = next(
        (
            d.module
            for d in scripts.scripts_data
            if d.script_class.__module__ in ("xyz_grid.py", "xy_grid.py")
        ),
        None,
    )
    if xyz is None:
        return
    if any(getattr(o, "label", "").startswith(LABEL_PREFIX) for o in xyz.axis_options):
        return
    for label, typ, apply, choices in axis_specs():
        if choices is None:
            xyz.axis_options.append(xyz.AxisOption(label, typ, apply))
        else:
            xyz.axis_options.append(xyz.AxisOption(label, typ, apply, choices=choices))
