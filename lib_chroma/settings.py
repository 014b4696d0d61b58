"""The extension's settings: one source of truth for every user-visible field.

Each :class:`FieldSpec` holds the field's default, allowed range or choices, UI label, infotext key, API name
(the field name) and help text. The UI, the HTTP API (positional list *or* a dict of named fields), infotext
writing and pasting, and the X/Y/Z axes all read this table.

Positional order (the ``ui()`` order, which is also the API's ``args`` order) is the order of :data:`FIELDS`;
new fields are only ever appended.

Infotext: a guided image carries compact ``RC …`` keys; several fields may share one key, e.g.
``RC window: sigma 14.6 to 1.2`` (mode, sigma_hi, sigma_lo) or ``RC shape: fade 0.9`` (shape, q_end). Keys
follow A1111's ``\\w[\\w \\-/]+`` pattern and no value looks like ``WxH`` (A1111 would split it).

This module is host-agnostic: it never imports the WebUI.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lib_chroma.guidance import (
    DEFAULT_GRID,
    DEFAULT_OPERATOR,
    DEFAULT_SCALE,
    DEFAULT_SHAPE,
    GRIDS,
    OPERATORS,
    SHAPES,
    WINDOW_MODES,
)

__all__ = [
    "FieldSpec",
    "FIELDS",
    "FIELD_NAMES",
    "FIELD_BY_NAME",
    "GROUPS",
    "fields_in",
    "RCSettings",
    "PRESETS",
    "PRESET_CHOICES",
    "FAMILY_PRESET",
    "preset_values",
    "validate_field",
    "from_args",
    "from_dict",
    "from_infotext",
    "parse_window",
    "infotext_value",
    "INFOTEXT_KEYS",
    "INFOTEXT_INFO_KEYS",
    "INFOTEXT_MARKER",
    "TITLE",
    "LATENT_Q_END",
    "LATENT_CASCADE_LOSS",
    "LATENT_CASCADE_LOSS_LARGE",
    "LATENT_CASCADE_LARGE_RHO",
    "latent_cascade_loss",
]

#: The Script title: the accordion label and the API key of ``alwayson_scripts`` (matched case-insensitively).
TITLE = "Resolution Chromatography"

#: The infotext key whose presence means "this image was made with the extension enabled".
INFOTEXT_MARKER = "RC scale"


#: Accordion groups (see :attr:`FieldSpec.group`), in display order.
GROUPS: tuple[str, ...] = ("basic", "advanced", "prompts")


@dataclass(frozen=True)
class FieldSpec:
    """One user-visible field.

    ``kind``: ``bool``, ``int``, ``float``, ``choice`` or ``str``. ``minimum``/``maximum`` bound numbers
    (inclusive); ``choices`` lists the allowed values of a ``choice``; ``step`` is the UI slider step.
    ``infotext`` is the key the field is written under (shared keys are encoded together, see
    :meth:`RCSettings.to_infotext`). ``group`` places the field in the accordion: ``basic`` (the first-time view),
    ``advanced`` (the "Advanced" fold; where a new field lands unless it says otherwise) or ``prompts`` (the
    "Time-dependent prompts" fold)."""

    name: str
    kind: str
    default: Any
    label: str
    infotext: str | None
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    max_length: int = 4000
    group: str = "advanced"

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"{self.name}: group must be one of {', '.join(GROUPS)}, got {self.group!r}")

    def describe_range(self) -> str:
        """Human-readable allowed values, used in error messages."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return f"a string of at most {self.max_length} characters"
        return f"{'an integer' if self.kind == 'int' else 'a number'} in [{self.minimum}, {self.maximum}]"


PRESET_CHOICES: tuple[str, ...] = ("Auto", "SD1.5", "SD2.x", "SDXL")
WINDOW_CHOICES: tuple[str, ...] = WINDOW_MODES
SHAPE_CHOICES: tuple[str, ...] = SHAPES
OPERATOR_CHOICES: tuple[str, ...] = OPERATORS
PASS_CHOICES: tuple[str, ...] = ("first", "hires", "both")
PROMPT_MODE_CHOICES: tuple[str, ...] = ("off", "fields", "marker")
GRID_CHOICES: tuple[str, ...] = GRIDS
#: ``D`` and ``U`` of guidance: average pooling / the plan's operator, or resamplers fitted to the loaded VAE
#: (:mod:`lib_chroma.encoder_fit`)
RESAMPLER_CHOICES: tuple[str, ...] = ("pooling", "fitted")
#: The grid of images whose infotext predates the ``RC grid`` key (pasting them must reproduce them).
LEGACY_GRID = "fixed"
#: The WebUI's window end for its latent families (SD1/SD2/SDXL): q = 1, the guided level is never "done", guidance
#: holds through the last step (``lib_chroma.guidance.DEFAULT_Q_END``, 0.98, is the pixel toy's). Chosen on the
#: latent reference model's tuning seeds and confirmed on 128 held-out samples per row (README "Benchmark (latent
#: model)", docs/theory.md §10): at 2× the later the end, the fewer deformed faces (DPM++ 2M Karras 20, CFG 5:
#: q 0.98 0.46, 0.995 0.63, 0.999 0.70, 1 0.74 proper faces; native 0.94).
LATENT_Q_END = 1.0
#: The cascade's loss bound q for latent models up to 3× (the WebUI's stop rule, ``lib_chroma.cascade.stop_sigma``,
#: through :func:`latent_cascade_loss`): the native pass stops once the octave below its pixels would be 5 % formed
#: (``lib_chroma.cascade.DEFAULT_LOSS``, 0.1, is the pixel toy's, where 0.05 raised blockiness). Chosen on the latent
#: model's tuning seeds 6000–6127 (2×: proper faces at or above q 0.1's in DPM++ 2M CFG 5 / CFG 7 and Euler a 30) and
#: confirmed on 128 held-out samples per cell (seeds 5000–5127, Latent upscaler: 0.75 / 0.70 / 0.74 against 0.73 /
#: 0.64 / 0.70; docs/theory.md §8).
LATENT_CASCADE_LOSS = 0.05
#: ... and above ``LATENT_CASCADE_LARGE_RHO`` (the factor's area root ``ρ = sqrt(m_h m_w)``, so 4× and 4 × 3, not 3×
#: nor 4 × 2) q 0.1: there q 0.05 starts the full-size pass near the top of the schedule (4×, DPM++ 2M Karras 20:
#: sigma 10.6 of 14.6, 0.62× plain's pixel-evaluations) for no more faces than q 0.1 (sigma 8.0, 0.55×): tuning seeds
#: 6000–6127 0.59 against 0.59, held out 0.52 against 0.54 (one object 0.94 against 0.98); at 3× the two cost the same
#: and q 0.05 kept more faces on the tuning seeds (0.73 against 0.70; docs/theory.md §8).
LATENT_CASCADE_LOSS_LARGE = 0.1
LATENT_CASCADE_LARGE_RHO = 3.0


def latent_cascade_loss(factor: tuple[int, int]) -> float:
    """The WebUI's cascade loss bound for a per-axis ``factor``: ``LATENT_CASCADE_LOSS`` while ``sqrt(m_h m_w) <=
    LATENT_CASCADE_LARGE_RHO``, ``LATENT_CASCADE_LOSS_LARGE`` above."""
    # compared as areas (ρ² = m_h m_w): exact for integer factors, no square root to round
    area = factor[0] * factor[1]
    return LATENT_CASCADE_LOSS if area <= LATENT_CASCADE_LARGE_RHO**2 else LATENT_CASCADE_LOSS_LARGE


#: The table. ORDER MATTERS: it is the positional API order; append new fields at the end only.
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "enabled",
        "bool",
        False,
        TITLE,
        None,
        "Turn the extension on. Off means no extra work at all and bit-identical images.",
        group="basic",
    ),
    FieldSpec(
        "preset",
        "choice",
        "Auto",
        "Preset",
        "RC preset",
        "Starting values per model family; Auto picks by the loaded checkpoint. Fields you set win.",
        choices=PRESET_CHOICES,
    ),
    FieldSpec(
        "scale",
        "float",
        DEFAULT_SCALE,
        "Guidance scale",
        "RC scale",
        "w in denoised + w·U(denoised_low − D(denoised)); 0 = no guidance, 1 = the paper's rule.",
        0.0,
        3.0,
        0.05,
        group="basic",
    ),
    FieldSpec(
        "factor_h",
        "int",
        0,
        "Factor (height)",
        "RC factor",
        "Integer factor m_h between the requested height and the model's native height; 0 = auto.",
        0,
        8,
        1,
        group="basic",
    ),
    FieldSpec(
        "factor_w",
        "int",
        0,
        "Factor (width)",
        "RC factor",
        "Integer factor m_w between the requested width and the model's native width; 0 = auto.",
        0,
        8,
        1,
        group="basic",
    ),
    FieldSpec(
        "window",
        "choice",
        "auto",
        "Window",
        "RC window",
        "When guidance is active: auto (from the chromatogram: until the level the low-res model knows is "
        "q_end generated, weighted by the shape), a sigma range, or step fractions.",
        choices=WINDOW_CHOICES,
    ),
    FieldSpec(
        "window_sigma_hi",
        "float",
        14.6147,
        "Window sigma from",
        "RC window",
        "Sigma window (mode 'sigma'): guidance while sigma_lo <= sigma <= sigma_hi.",
        0.0,
        100.0,
        0.01,
    ),
    FieldSpec(
        "window_sigma_lo",
        "float",
        0.0,
        "Window sigma to",
        "RC window",
        "Lower end of the sigma window (mode 'sigma').",
        0.0,
        100.0,
        0.01,
    ),
    FieldSpec(
        "window_start",
        "float",
        0.0,
        "Window start (fraction)",
        "RC window",
        "Step-fraction window (mode 'fraction'): steps i with start <= i/N < end.",
        0.0,
        1.0,
        0.01,
    ),
    FieldSpec(
        "window_end",
        "float",
        1.0,
        "Window end (fraction)",
        "RC window",
        "End of the step-fraction window (mode 'fraction').",
        0.0,
        1.0,
        0.01,
    ),
    FieldSpec(
        "shape",
        "choice",
        DEFAULT_SHAPE,
        "Weight shape",
        "RC shape",
        "fade: weight fades out as the guided level completes; hold: full weight until the guided level is "
        "q_end generated, then off; constant: w throughout the window.",
        choices=SHAPE_CHOICES,
    ),
    FieldSpec(
        "q_end",
        "float",
        LATENT_Q_END,
        "Guided level done at (q)",
        "RC shape",
        "fade/hold: the weight is 0 once the guided level is this fraction generated (r_m >= q); hold with 1: "
        "never, guidance holds through the last step (the default: latent models keep their features only so).",
        0.55,
        1.0,
        0.005,
    ),
    FieldSpec(
        "operator",
        "choice",
        DEFAULT_OPERATOR,
        "Upsampling",
        "RC operator",
        "U: nearest (exact, blocky corrections) or bilinear (smoother).",
        choices=OPERATOR_CHOICES,
    ),
    FieldSpec(
        "nested",
        "bool",
        True,
        "Nested levels",
        "RC nested",
        "Split factors >= 4 into nested levels (4 = 2·2), one model call per level and step.",
    ),
    FieldSpec(
        "passes",
        "choice",
        "first",
        "Passes",
        "RC passes",
        "Which sampling passes are guided: the first pass, the hires-fix pass, or both.",
        choices=PASS_CHOICES,
    ),
    FieldSpec(
        "prompt_mode",
        "choice",
        "off",
        "Time-dependent prompts",
        "RC prompts",
        "off; fields (layout and detail prompts below; empty = the main prompt); marker (the main prompt "
        "'layout MARKER detail': the layout part alone first, then the whole prompt).",
        choices=PROMPT_MODE_CHOICES,
        group="prompts",
    ),
    FieldSpec(
        "layout_prompt",
        "str",
        "",
        "Layout prompt",
        "RC layout",
        "Prompt while the coarse levels are generated (mode 'fields'; empty = main prompt).",
        group="prompts",
    ),
    FieldSpec(
        "detail_prompt",
        "str",
        "",
        "Detail prompt",
        "RC detail",
        "Prompt once the switch level is generated (mode 'fields'; empty = main prompt).",
        group="prompts",
    ),
    FieldSpec(
        "marker",
        "str",
        ">>",
        "Marker",
        "RC marker",
        "The marker that splits the main prompt in mode 'marker'.",
        max_length=32,
        group="prompts",
    ),
    FieldSpec(
        "switch_level",
        "int",
        4,
        "Switch level",
        "RC switch",
        "Switch once shapes of 8m px (latent level m) are q formed: larger shapes (the layout) stay as the "
        "layout prompt made them, details of 8m px and finer follow the detail prompt. Lower m: later switch.",
        1,
        64,
        1,
        group="prompts",
    ),
    FieldSpec(
        "switch_q",
        "float",
        0.5,
        "Switch at fraction q",
        "RC switch",
        "Switch once level m is this fraction generated (r_m(sigma) >= q, i.e. sigma <= m sqrt((1-q)/q): "
        "m and q together set one noise level, the same on every sampler and step count).",
        0.05,
        0.95,
        0.05,
        group="prompts",
    ),
    FieldSpec(
        "grid",
        "choice",
        DEFAULT_GRID,
        "Pooling grid",
        "RC grid",
        "moving: the m×m pooling blocks shift from model call to model call, so no block grid is imprinted; "
        "fixed: the same blocks every call.",
        choices=GRID_CHOICES,
    ),
    FieldSpec(
        "cascade",
        "bool",
        False,
        "Cascade (faster)",
        "RC cascade",
        "txt2img above the native size: a native-size pass stopped early (when the chromatogram says the next "
        "octave would start forming), upscaled, re-noised and finished at full size with guidance, through "
        "A1111's hires fix (it sets the first-pass size, strength and hires steps). Cheaper than one pass "
        "at full size.",
        group="basic",
    ),
    FieldSpec(
        "resampler",
        "choice",
        "pooling",
        "Resampler (experimental)",
        "RC resampler",
        "pooling: D is average pooling of latents; fitted: D and U are linear maps fitted to the loaded VAE on "
        "generic (dead-leaves) images at the first use (once per VAE and factor: seconds on a GPU, minutes for a "
        "full-size VAE on a CPU; kept in the WebUI's cache folder), so the low-resolution call sees the latent of a "
        "smaller image. On the latent reference model it keeps more faces proper (0.74 -> 0.87 at 2x) with some "
        "texture lost; not yet measured on SD's VAEs.",
        choices=RESAMPLER_CHOICES,
    ),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELD_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}

#: The informational infotext keys (written, never read back).
#: Which controls matter for which choice (others are hidden, never disabled: their values still count).
SHOWN_BY: dict[str, dict[str, tuple[str, ...]]] = {
    "window": {
        "window_sigma_hi": ("sigma",),
        "window_sigma_lo": ("sigma",),
        "window_start": ("fraction",),
        "window_end": ("fraction",),
    },
    "shape": {"q_end": ("fade", "hold")},
    "prompt_mode": {
        "layout_prompt": ("fields",),
        "detail_prompt": ("fields",),
        "marker": ("marker",),
        "switch_level": ("fields", "marker"),
        "switch_q": ("fields", "marker"),
    },
}

INFOTEXT_INFO_KEYS: tuple[str, ...] = ("RC guided steps", "RC switch step", "RC error", "RC note")
#: Every infotext key the extension writes: the fields' keys, then the informational ones.
INFOTEXT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(f.infotext for f in FIELDS if f.infotext)) + INFOTEXT_INFO_KEYS

#: Presets per model family: starting values for fields (others keep their defaults).
_GUIDANCE_DEFAULTS: dict[str, Any] = {
    "scale": DEFAULT_SCALE,
    "window": "auto",
    "shape": DEFAULT_SHAPE,
    "q_end": LATENT_Q_END,
    "operator": DEFAULT_OPERATOR,
    "grid": DEFAULT_GRID,
    "switch_q": 0.5,
}
# Same guidance for every family: the latent reference model stands for all three (no SD weights here), so the
# window end is the latent model's (LATENT_Q_END); SDXL's native latent is twice SD1's, so its layout switch is one
# level coarser.
PRESETS: dict[str, dict[str, Any]] = {
    "SD1.5": {**_GUIDANCE_DEFAULTS, "switch_level": 4},
    "SD2.x": {**_GUIDANCE_DEFAULTS, "switch_level": 4},
    "SDXL": {**_GUIDANCE_DEFAULTS, "switch_level": 8},
}

#: Model family (``lib_chroma.schedule.MODEL_FAMILIES`` key) to preset name.
FAMILY_PRESET: dict[str, str] = {"sd1": "SD1.5", "sd2": "SD2.x", "sd2-v": "SD2.x", "sdxl": "SDXL"}


def fields_in(group: str) -> tuple[str, ...]:
    """The names of the fields of one accordion group, in :data:`FIELDS` order."""
    if group not in GROUPS:
        raise ValueError(f"group: must be one of {', '.join(GROUPS)}, got {group!r}")
    return tuple(f.name for f in FIELDS if f.group == group)


def preset_values(preset: str, family: str | None = None) -> dict[str, Any]:
    """The field values a preset sets; ``Auto`` resolves through ``family`` (SD1.5 when unknown)."""
    validate_field("preset", preset)
    if preset == "Auto":
        preset = FAMILY_PRESET.get(family or "", "SD1.5")
    return dict(PRESETS[preset])


# ------------------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------------------


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    # strings: what infotext and X/Y/Z write ("true"/"True"), and "1"/"0"; nothing vaguer ("yes", "on")
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"{name}: must be true or false, got {value!r}")


def validate_field(name: str, value: Any) -> Any:
    """Coerce and check one field value; raises ``ValueError`` naming the field and its allowed values.

    Strings are accepted for numbers and booleans (infotext and some API clients send them)."""
    spec = FIELD_BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"{name}: unknown field; allowed: {', '.join(FIELD_NAMES)}")
    if spec.kind == "bool":
        return _as_bool(name, value)
    if spec.kind in ("int", "float"):
        if isinstance(value, bool):
            raise ValueError(f"{name}: must be {spec.describe_range()}, got {value!r}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: must be {spec.describe_range()}, got {value!r}") from None
        if not math.isfinite(v) or (spec.kind == "int" and not v.is_integer()):
            raise ValueError(f"{name}: must be {spec.describe_range()}, got {value!r}")
        if v < float(spec.minimum) or v > float(spec.maximum):  # type: ignore[arg-type]
            raise ValueError(f"{name}: must be {spec.describe_range()}, got {value!r}")
        return int(v) if spec.kind == "int" else v
    if spec.kind == "choice":
        if isinstance(value, str):
            for c in spec.choices:
                if c.lower() == value.strip().lower():
                    return c
        raise ValueError(f"{name}: must be {spec.describe_range()}, got {value!r}")
    if not isinstance(value, str) or len(value) > spec.max_length:
        raise ValueError(f"{name}: must be {spec.describe_range()}, got {value!r:.60}")
    return value


# ------------------------------------------------------------------------------------------------------------
# The settings object
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RCSettings:
    """All fields, validated (see :data:`FIELDS` for meaning, ranges and defaults).

    Cross-field rules, whatever the window mode (a range that only a hidden mode would use is still checked,
    so an inverted one never waits for a mode switch): ``window_sigma_hi >= window_sigma_lo`` and
    ``window_start <= window_end``; mode ``marker`` needs a non-blank marker."""

    enabled: bool = False
    preset: str = "Auto"
    scale: float = DEFAULT_SCALE
    factor_h: int = 0
    factor_w: int = 0
    window: str = "auto"
    window_sigma_hi: float = 14.6147
    window_sigma_lo: float = 0.0
    window_start: float = 0.0
    window_end: float = 1.0
    shape: str = DEFAULT_SHAPE
    q_end: float = LATENT_Q_END
    operator: str = DEFAULT_OPERATOR
    nested: bool = True
    passes: str = "first"
    prompt_mode: str = "off"
    layout_prompt: str = ""
    detail_prompt: str = ""
    marker: str = ">>"
    switch_level: int = 4
    switch_q: float = 0.5
    grid: str = DEFAULT_GRID
    cascade: bool = False
    resampler: str = "pooling"

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, validate_field(f.name, getattr(self, f.name)))
        if self.window_sigma_hi < self.window_sigma_lo:
            raise ValueError(
                f"window_sigma_lo: must be <= window_sigma_hi ({self.window_sigma_hi}), "
                f"got {self.window_sigma_lo}"
            )
        if self.window_start > self.window_end:
            raise ValueError(
                f"window_end: must be >= window_start ({self.window_start}), got {self.window_end}"
            )
        if self.prompt_mode == "marker" and not self.marker.strip():
            raise ValueError("marker: must be a non-blank string when prompt_mode is 'marker'")

    # -- conversions
    # ------------------------------------------------------------------------------------------

    def with_(self, **changes: Any) -> RCSettings:
        """A validated copy with some fields changed (unknown names raise ``ValueError``)."""
        for k in changes:
            if k not in FIELD_BY_NAME:
                raise ValueError(f"{k}: unknown field; allowed: {', '.join(FIELD_NAMES)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Named fields (the API dict form), plain Python types."""
        return asdict(self)

    def to_args(self) -> list[Any]:
        """Positional values in ``ui()`` / API order."""
        return [getattr(self, n) for n in FIELD_NAMES]

    @property
    def factor(self) -> tuple[int, int]:
        """(m_h, m_w); 0 means automatic for that axis."""
        return self.factor_h, self.factor_w

    def window_range(self) -> tuple[float, float] | None:
        """The ``window_range`` argument of :meth:`lib_chroma.guidance.GuidancePlan.build`."""
        if self.window == "sigma":
            return self.window_sigma_hi, self.window_sigma_lo
        if self.window == "fraction":
            return self.window_start, self.window_end
        return None

    def guides_pass(self, hires: bool) -> bool:
        """Whether the first (``hires=False``) or the hires pass is guided."""
        return self.passes == "both" or self.passes == ("hires" if hires else "first")

    def to_infotext(self) -> dict[str, str | float]:
        """The compact ``RC …`` keys (settings only; the adapter adds the computed ones)."""
        out: dict[str, str | float] = {
            "RC preset": self.preset,
            "RC scale": _num(self.scale),
            "RC factor": _encode_factor(self.factor_h, self.factor_w),
            "RC window": _encode_window(self),
            "RC shape": "constant" if self.shape == "constant" else f"{self.shape} {_num(self.q_end)}",
            "RC operator": self.operator,
            "RC nested": "true" if self.nested else "false",
            "RC passes": self.passes,
            "RC grid": self.grid,
        }
        if self.cascade:
            out["RC cascade"] = "true"
        if self.resampler != "pooling":
            out["RC resampler"] = self.resampler
        if self.prompt_mode != "off":
            out["RC prompts"] = self.prompt_mode
            if self.prompt_mode == "fields":
                if self.layout_prompt:
                    out["RC layout"] = self.layout_prompt
                if self.detail_prompt:
                    out["RC detail"] = self.detail_prompt
            else:
                out["RC marker"] = self.marker
            out["RC switch"] = f"level {self.switch_level} q {_num(self.switch_q)}"
        return out


def _num(v: float) -> str:
    """Shortest round-trip text of a float (``1.0`` → ``1``)."""
    return f"{v:g}" if float(f"{v:g}") == v else repr(float(v))


def _encode_factor(h: int, w: int) -> str:
    def one(v: int) -> str:
        return "auto" if v == 0 else str(v)

    return one(h) if h == w else f"{one(h)} {one(w)}"


def _encode_window(s: RCSettings) -> str:
    if s.window == "sigma":
        return f"sigma {_num(s.window_sigma_hi)} to {_num(s.window_sigma_lo)}"
    if s.window == "fraction":
        return f"fraction {_num(s.window_start)} to {_num(s.window_end)}"
    return "auto"


# ------------------------------------------------------------------------------------------------------------
# Parsing: positional args, API dicts, infotext
# ------------------------------------------------------------------------------------------------------------


def from_dict(
    values: Mapping[str, Any],
    *,
    family: str | None = None,
    api: bool = True,
    default_preset: str = "Auto",
) -> RCSettings:
    """Settings from named fields (the API dict form).

    Unknown names and out-of-range values raise ``ValueError`` naming the field. Missing names take the
    preset's value (``preset``; when absent ``default_preset``, the settings-section default; ``Auto`` = by
    ``family``), else the field default. In the API form (``api``) a dict means "enabled" unless it says
    ``"enabled": false``."""
    if not isinstance(values, Mapping):
        raise ValueError(f"args: a dict of named fields expected, got {type(values).__name__}")
    for k in values:
        if k not in FIELD_BY_NAME:
            raise ValueError(f"{k}: unknown field; allowed: {', '.join(FIELD_NAMES)}")
    preset = validate_field("preset", values.get("preset", default_preset))
    base: dict[str, Any] = {**preset_values(preset, family), "preset": preset}
    if api:
        base["enabled"] = True
    base.update(values)
    return RCSettings(**{k: validate_field(k, v) for k, v in base.items()})


def from_args(
    args: Sequence[Any], *, family: str | None = None, default_preset: str = "Auto", strict: bool = False
) -> RCSettings:
    """Settings from ``ui()``-ordered positional values, or a single dict of named fields in first position.

    Missing trailing values and ``None`` take defaults; extra values raise ``ValueError``. With a dict first,
    the values after it are ignored in the script (they are the UI defaults A1111 fills into the remaining
    positions); ``strict`` (the HTTP request as the client sent it) refuses any value after the dict."""
    args = list(args)
    if args and isinstance(args[0], Mapping):
        if strict and len(args) > 1:
            raise ValueError(f"args: a dict of named fields must be the only value, got {len(args)} values")
        return from_dict(args[0], family=family, default_preset=default_preset)
    if len(args) > len(FIELDS):
        raise ValueError(f"args: at most {len(FIELDS)} positional values, got {len(args)}")
    values = {}
    for spec, v in zip(FIELDS, args):
        if v is not None:
            values[spec.name] = validate_field(spec.name, v)
    return RCSettings(**values)


def _parse_factor(text: str) -> tuple[int, int]:
    parts = text.split()
    if len(parts) not in (1, 2):
        raise ValueError(f"factor_h: cannot parse RC factor {text!r}")

    def one(t: str) -> int:
        return 0 if t.lower() == "auto" else validate_field("factor_h", t)

    h = one(parts[0])
    return h, (one(parts[1]) if len(parts) == 2 else h)


def parse_window(text: str) -> dict[str, Any]:
    parts = text.split()
    mode = validate_field("window", parts[0] if parts else "")
    if mode == "auto":
        return {"window": "auto"}
    if len(parts) != 4 or parts[2] != "to":
        raise ValueError(f"window: cannot parse RC window {text!r}")
    if mode == "sigma":
        return {"window": mode, "window_sigma_hi": parts[1], "window_sigma_lo": parts[3]}
    return {"window": mode, "window_start": parts[1], "window_end": parts[3]}


def _parse_infotext(params: Mapping[str, str]) -> dict[str, Any]:
    """Field values found in parsed infotext (``parse_generation_parameters`` output)."""
    out: dict[str, Any] = {}
    if "RC preset" in params:
        out["preset"] = params["RC preset"]
    if "RC scale" in params:
        out["scale"] = params["RC scale"]
    if "RC factor" in params:
        out["factor_h"], out["factor_w"] = _parse_factor(str(params["RC factor"]))
    if "RC window" in params:
        out.update(parse_window(str(params["RC window"])))
    if "RC shape" in params:
        parts = str(params["RC shape"]).split()
        out["shape"] = parts[0] if parts else ""
        if len(parts) > 1:
            out["q_end"] = parts[1]
    for key, name in (
        ("RC operator", "operator"),
        ("RC nested", "nested"),
        ("RC passes", "passes"),
        ("RC grid", "grid"),
        ("RC cascade", "cascade"),
        ("RC resampler", "resampler"),
        ("RC prompts", "prompt_mode"),
        ("RC layout", "layout_prompt"),
        ("RC detail", "detail_prompt"),
        ("RC marker", "marker"),
    ):
        if key in params:
            out[name] = params[key]
    if "RC switch" in params:
        parts = str(params["RC switch"]).split()
        if len(parts) != 4 or parts[0] != "level" or parts[2] != "q":
            raise ValueError(f"switch_level: cannot parse RC switch {params['RC switch']!r}")
        out["switch_level"], out["switch_q"] = parts[1], parts[3]
    return {k: validate_field(k, v) for k, v in out.items()}


def from_infotext(params: Mapping[str, str]) -> RCSettings | None:
    """The settings an image was made with, or None when its infotext has no ``RC scale`` key.

    Fields absent from the infotext take their defaults (so pasting reproduces the generation), except the
    pooling grid: infotext without ``RC grid`` predates the moving grid and was made with :data:`LEGACY_GRID`."""
    if INFOTEXT_MARKER not in params:
        return None
    return RCSettings(enabled=True, **{"grid": LEGACY_GRID, **_parse_infotext(params)})


def infotext_value(name: str, params: Mapping[str, str]) -> Any:
    """One field's value for a paste: the infotext's value, the default when the image was guided but the key
    is absent, and None (leave the control alone) when the image was not guided or the infotext is
    unreadable."""
    if INFOTEXT_MARKER not in params:
        return None
    try:
        s = from_infotext(params)
    except ValueError:
        return None
    return getattr(s, name) if s is not None else None
