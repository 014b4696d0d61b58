"""API argument validation (middleware) and X/Y/Z axis appliers, without the WebUI."""

from __future__ import annotations

import asyncio
import json
import types

import pytest

from lib_chroma.webui.api import ValidateArgsMiddleware, validate_body
from lib_chroma.webui.xyz import axis_specs


def body(args):
    return {"prompt": "x", "alwayson_scripts": {"resolution chromatography": {"args": args}}}


def test_validate_body():
    assert validate_body({"prompt": "x"}) is None
    assert validate_body(body([True, "Auto", 1.2])) is None
    assert validate_body(body([{"scale": 0.5, "window": "fraction", "window_end": 0.5}])) is None
    assert validate_body(body([{"scale": 5}])).startswith("Resolution Chromatography: scale: must be")
    assert "scael: unknown field" in validate_body(body([{"scael": 1}]))
    assert "factor_h" in validate_body(body([True, "Auto", 1.0, 11]))
    assert "args: must be a list" in validate_body(body({"scale": 1}))
    assert validate_body({"alwayson_scripts": {"Other": {"args": [{"scale": 5}]}}}) is None


def _call(mw_body: bytes, path="/sdapi/v1/txt2img"):
    seen = {}

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = msg["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = []

    async def receive():
        return {"type": "http.request", "body": mw_body, "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(ValidateArgsMiddleware(app)(scope, receive, send))
    return sent, seen


def test_middleware_rejects_and_replays():
    sent, seen = _call(json.dumps(body([{"scale": 9}])).encode())
    assert sent[0]["status"] == 422 and "scale" in json.loads(sent[1]["body"])["detail"] and not seen
    good = json.dumps(body([{"scale": 1}])).encode()
    sent, seen = _call(good)
    assert sent[0]["status"] == 200 and seen["body"] == good
    sent, seen = _call(b"not json")
    assert sent[0]["status"] == 200 and seen["body"] == b"not json"


def test_xyz_axes_set_p_attributes():
    specs = {label: apply for label, _, apply, _ in axis_specs()}
    p = types.SimpleNamespace()
    specs["[RC] Factor"](p, 3, [])
    specs["[RC] Window"](p, "fraction 0 to 0.5", [])
    specs["[RC] Enabled"](p, "False", [])
    assert (p.rc_factor_h, p.rc_factor_w, p.rc_window, p.rc_window_end, p.rc_enabled) == (
        3,
        3,
        "fraction",
        0.5,
        False,
    )
    with pytest.raises(ValueError, match="scale"):
        specs["[RC] Scale"](p, 7.0, [])


@pytest.mark.parametrize(
    "args, field",
    [
        (["yes"], "enabled"),  # a vague string where the enable checkbox's boolean belongs
        ([{}, {}], "args"),  # a dict of named fields must stand alone
        ([{"scale": 1}, True], "args"),
        ([{"nested": "no"}], "nested"),
        ([{"window_start": 0.9, "window_end": 0.1}], "window_end"),  # inverted even with the auto window
        ([{"window": "auto", "window_sigma_hi": 1.0, "window_sigma_lo": 2.0}], "window_sigma_lo"),
        ([True, "Auto", 1.0, 2, 2, "auto", 14.6, 0.0, 0.0, 1.0, "hold", 0.94, "bilinear", "off"], "nested"),
    ],
)
def test_malformed_arguments_are_refused_naming_the_field(args, field):
    msg = validate_body(body(args))
    assert msg is not None and msg.startswith(f"Resolution Chromatography: {field}:"), msg


@pytest.mark.parametrize("value, expected", [(True, True), (0, False), ("true", True), ("False", False), ("1", True)])
def test_documented_boolean_coercions(value, expected):
    from lib_chroma import settings as S

    assert validate_body(body([{"nested": value}])) is None
    assert S.validate_field("nested", value) is expected


@pytest.mark.parametrize("label, field, value, expected, bad", [
    ("[RC] Grid", "grid", "fixed", "fixed", "diagonal"),
    ("[RC] Resampler", "resampler", "Fitted", "fitted", "learned"),
])
def test_choice_axes(label, field, value, expected, bad):
    specs = {lab: apply for lab, _, apply, _ in axis_specs()}
    p = types.SimpleNamespace()
    specs[label](p, value, [])
    assert getattr(p, f"rc_{field}") == expected
    with pytest.raises(ValueError, match=f"^{field}: must be one of"):
        specs[label](p, bad, [])
