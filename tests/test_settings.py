"""Settings: defaults, ranges, positional/dict API forms, infotext round trip, presets, append-only order."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_chroma import settings as S

#: The positional order shipped so far: fields may only be appended after these.
SHIPPED = (
    "enabled",
    "preset",
    "scale",
    "factor_h",
    "factor_w",
    "window",
    "window_sigma_hi",
    "window_sigma_lo",
    "window_start",
    "window_end",
    "shape",
    "q_end",
    "operator",
    "nested",
    "passes",
    "prompt_mode",
    "layout_prompt",
    "detail_prompt",
    "marker",
    "switch_level",
    "switch_q",
)

KEY_RE = re.compile(r"^\w[\w \-/]+$")


def test_positional_order_is_append_only():
    assert S.FIELD_NAMES[: len(SHIPPED)] == SHIPPED


def test_dataclass_and_table_agree():
    d = S.RCSettings()
    for f in S.FIELDS:
        assert getattr(d, f.name) == f.default, f.name
        assert f.help and f.label
    assert list(d.to_dict()) == list(S.FIELD_NAMES)


def test_infotext_keys_follow_a1111_pattern():
    for k in S.INFOTEXT_KEYS:
        assert KEY_RE.match(k), k


@pytest.mark.parametrize(
    "name,value",
    [
        ("scale", 3.5),
        ("scale", -0.1),
        ("factor_h", 9),
        ("factor_w", 1.5),
        ("q_end", 0.5),
        ("switch_level", 0),
        ("window", "steps"),
        ("passes", "second"),
        ("enabled", "maybe"),
        ("scale", "abc"),
        ("scale", float("nan")),
        ("scale", True),
    ],
)
def test_out_of_range_names_the_field(name, value):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        S.from_dict({name: value})


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match=r"^scal: unknown field; allowed: enabled, "):
        S.from_dict({"scal": 1})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="window_sigma_lo"):
        S.from_dict({"window": "sigma", "window_sigma_hi": 1, "window_sigma_lo": 2})
    with pytest.raises(ValueError, match="window_end"):
        S.from_dict({"window": "fraction", "window_start": 0.6, "window_end": 0.5})
    with pytest.raises(ValueError, match="marker"):
        S.from_dict({"prompt_mode": "marker", "marker": "  "})


def test_positional_and_dict_forms():
    s = S.from_args([True, "Auto", 0.5])
    assert s.enabled and s.scale == 0.5 and s.window == "auto"
    assert S.from_args([]) == S.RCSettings()
    assert S.from_args([True, None, None, 2]).factor_h == 2
    with pytest.raises(ValueError, match="args"):
        S.from_args([False] * (len(S.FIELDS) + 1))
    d = S.from_args([{"scale": 0.5}, "Auto", 1.0, 0, 0])  # the API fills the other positions with defaults
    assert d.enabled and d.scale == 0.5
    assert not S.from_args([{"enabled": False}]).enabled
    assert S.from_dict({"factor_h": "3", "nested": "false"}).factor_h == 3


def test_presets_fill_only_missing_fields():
    xl = S.from_dict({}, family="sdxl")
    assert xl.scale == S.PRESETS["SDXL"]["scale"] and xl.switch_level == 8
    assert S.from_dict({"scale": 1.5}, family="sdxl").scale == 1.5
    assert S.from_dict({"preset": "SD1.5"}, family="sdxl").switch_level == 4
    assert S.preset_values("Auto", "sd2-v") == S.PRESETS["SD2.x"]


def test_infotext_values_survive_a1111_quoting():
    s = S.RCSettings(enabled=True, prompt_mode="fields", layout_prompt='a "castle", b: c\\d', factor_h=3)
    it = s.to_infotext()
    assert it["RC factor"] == "3 auto"
    for v in it.values():
        assert not re.match(r"^\d+x\d+$", str(v))
    assert S.from_infotext({k: str(v) for k, v in it.items()}) == s


def test_paste_values():
    it = {k: str(v) for k, v in S.RCSettings(enabled=True, scale=0.25).to_infotext().items()}
    assert S.infotext_value("scale", it) == 0.25
    assert S.infotext_value("switch_level", it) == 4  # absent key: the default
    assert S.infotext_value("scale", {"Steps": "20"}) is None  # not a guided image: leave the control alone
    assert S.infotext_value("scale", {"RC scale": "nonsense"}) is None


_values = {
    "scale": st.floats(0, 3, allow_nan=False).map(lambda v: round(v, 3)),
    "factor_h": st.integers(0, 8),
    "factor_w": st.integers(0, 8),
    "window": st.sampled_from(S.WINDOW_CHOICES),
    "window_sigma_hi": st.floats(50, 100).map(lambda v: round(v, 2)),
    "window_sigma_lo": st.floats(0, 49).map(lambda v: round(v, 4)),
    "window_start": st.floats(0, 0.5).map(lambda v: round(v, 3)),
    "window_end": st.floats(0.5, 1).map(lambda v: round(v, 3)),
    "shape": st.sampled_from(S.SHAPE_CHOICES),
    "q_end": st.floats(0.55, 0.99).map(lambda v: round(v, 3)),
    "operator": st.sampled_from(S.OPERATOR_CHOICES),
    "nested": st.booleans(),
    "passes": st.sampled_from(S.PASS_CHOICES),
    "preset": st.sampled_from(S.PRESET_CHOICES),
    "prompt_mode": st.sampled_from(S.PROMPT_MODE_CHOICES),
    "layout_prompt": st.text(max_size=30),
    "detail_prompt": st.text(max_size=30),
    "marker": st.text(min_size=1, max_size=5).filter(lambda t: t.strip() == t and t.strip() != ""),
    "switch_level": st.integers(1, 64),
    "switch_q": st.floats(0.05, 0.95).map(lambda v: round(v, 3)),
}


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries(_values))
def test_infotext_round_trip_restores_every_field_that_matters(vals):
    s = S.RCSettings(enabled=True, **vals)
    back = S.from_infotext({k: str(v) for k, v in s.to_infotext().items()})
    assert back is not None
    for name in S.FIELD_NAMES:
        relevant = not (
            (name in ("window_sigma_hi", "window_sigma_lo") and s.window != "sigma")
            or (name in ("window_start", "window_end") and s.window != "fraction")
            or (name == "q_end" and s.shape != "fade")
            or (name in ("layout_prompt", "detail_prompt") and s.prompt_mode != "fields")
            or (name == "marker" and s.prompt_mode != "marker")
            or (name in ("switch_level", "switch_q") and s.prompt_mode == "off")
        )
        if relevant:
            assert getattr(back, name) == getattr(s, name), name


@settings(max_examples=100, deadline=None)
@given(st.fixed_dictionaries(_values))
def test_dict_and_positional_agree(vals):
    s = S.RCSettings(enabled=True, **vals)
    assert S.from_args(s.to_args()) == s
    assert S.from_args([s.to_dict()]) == s


def test_default_preset_from_the_settings_section():
    assert S.from_dict({}, family="sd1", default_preset="SDXL").scale == S.PRESETS["SDXL"]["scale"]
    assert S.from_dict({"preset": "SD1.5"}, family="sdxl", default_preset="SDXL").switch_level == 4
    assert S.from_args([{}], family="sd1", default_preset="SDXL").switch_level == 8


def test_grid_field_round_trips_and_old_infotext_pastes_as_fixed():
    s = S.RCSettings(enabled=True, grid="moving")
    assert s.to_infotext()["RC grid"] == "moving"
    assert S.from_infotext({k: str(v) for k, v in s.to_infotext().items()}).grid == "moving"
    old = {k: str(v) for k, v in s.to_infotext().items() if k != "RC grid"}  # made before the field existed
    assert S.from_infotext(old).grid == S.LEGACY_GRID == "fixed"
    assert S.infotext_value("grid", old) == "fixed"
    assert S.from_dict({"grid": "Moving"}).grid == "moving"
    with pytest.raises(ValueError, match="^grid: must be one of 'fixed', 'moving'"):
        S.from_dict({"grid": "wobbly"})
    # appended after switch_q: older positional API calls keep their meaning
    assert S.FIELD_NAMES[S.FIELD_NAMES.index("switch_q") + 1] == "grid"


def test_cascade_field_is_appended_and_round_trips():
    # appended after grid: positional calls keep their meaning
    assert S.FIELD_NAMES[S.FIELD_NAMES.index("grid") + 1] == "cascade"
    assert S.RCSettings().cascade is False
    s = S.RCSettings(enabled=True, cascade=True)
    assert s.to_infotext()["RC cascade"] == "true"
    assert "RC cascade" not in S.RCSettings(enabled=True).to_infotext()  # off: the infotext is unchanged
    assert S.from_infotext({k: str(v) for k, v in s.to_infotext().items()}).cascade is True
    assert S.infotext_value("cascade", {"RC scale": "1.5"}) is False
    args = S.RCSettings().to_args()
    args[0], args[S.FIELD_NAMES.index("cascade")] = True, True
    assert S.from_args(args).cascade is True
    assert S.from_dict({"cascade": "true"}).cascade is True
    with pytest.raises(ValueError, match="^cascade: must be true or false"):
        S.from_dict({"cascade": "maybe"})
    assert "RC cascade" in S.INFOTEXT_KEYS and "RC cascade" not in S.INFOTEXT_INFO_KEYS  # pasted


def test_resampler_field_is_appended_and_round_trips():
    assert S.FIELD_NAMES[-2:] == ("cascade", "resampler")  # appended last: positional calls keep their meaning
    assert S.RCSettings().resampler == "pooling"
    assert "RC resampler" not in S.RCSettings(enabled=True).to_infotext()  # the default leaves infotext unchanged
    s = S.RCSettings(enabled=True, resampler="fitted")
    assert s.to_infotext()["RC resampler"] == "fitted"
    assert S.from_infotext({k: str(v) for k, v in s.to_infotext().items()}).resampler == "fitted"
    assert S.infotext_value("resampler", {"RC scale": "1.5"}) == "pooling"  # older images: pooling
    args = S.RCSettings().to_args()
    args[0], args[-1] = True, "fitted"
    assert S.from_args(args).resampler == "fitted"
    with pytest.raises(ValueError, match="^resampler: must be one of 'pooling', 'fitted'"):
        S.from_dict({"resampler": "learned"})
    assert "RC resampler" in S.INFOTEXT_KEYS and "RC resampler" not in S.INFOTEXT_INFO_KEYS


def test_accordion_groups():
    """The first-time view holds enable, scale, the factors and the cascade mode; every other field sits in a
    fold, and a field that names no group lands in the "Advanced" fold."""
    assert S.fields_in("basic") == ("enabled", "scale", "factor_h", "factor_w", "cascade")
    assert set(S.fields_in("prompts")) == {
        "prompt_mode", "layout_prompt", "detail_prompt", "marker", "switch_level", "switch_q"
    }
    assert {"preset", "window", "shape", "q_end", "operator", "nested", "passes", "grid"} <= set(
        S.fields_in("advanced")
    )
    assert sorted(n for g in S.GROUPS for n in S.fields_in(g)) == sorted(S.FIELD_NAMES)
    assert S.FieldSpec("x", "bool", False, "X", None, "").group == "advanced"
    with pytest.raises(ValueError, match="group"):
        S.fields_in("extra")
    with pytest.raises(ValueError, match="x: group"):
        S.FieldSpec("x", "bool", False, "X", None, "", group="extra")


def test_webui_defaults_hold_to_the_latent_models_window_end():
    """The WebUI's families are latent: fields, presets and the slider default carry LATENT_Q_END (the latent
    model's), not the pixel toy's library default, and the slider reaches it."""
    from lib_chroma.guidance import DEFAULT_Q_END

    assert S.LATENT_Q_END != DEFAULT_Q_END
    assert S.RCSettings().q_end == S.LATENT_Q_END == S.FIELD_BY_NAME["q_end"].default
    assert all(S.preset_values(p)["q_end"] == S.LATENT_Q_END for p in S.PRESET_CHOICES)
    spec = S.FIELD_BY_NAME["q_end"]
    assert spec.minimum <= S.LATENT_Q_END <= spec.maximum
    assert abs(round(S.LATENT_Q_END / spec.step) * spec.step - S.LATENT_Q_END) < 1e-9
    assert S.from_dict({}, family="sdxl").q_end == S.LATENT_Q_END
