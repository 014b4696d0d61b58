"""ControlNet beside upsample guidance, over HTTP in a real A1111 with the ControlNet extension
(Mikubill/sd-webui-controlnet, ``CONTROLNET_DIR``).

The server links ControlNet into its ``extensions/`` with the tiny SD1 ControlNet the kit builds
(``make_checkpoints.py``; the test-only ``ext_tiny_controlnet/`` gives ControlNet's loader its layout). The hint is a
white ring on black, preprocessor ``none``. The extension's debug record (``RC_DEBUG_LOG``) lists, per guided model
call, the hint each ControlNet unit had in the low-resolution call (``controlnet``: unit and hint shape): the pass's
hint pooled to 8 pixels per low-resolution latent pixel.

Without ``CONTROLNET_DIR`` (or in Forge, whose ControlNet is built in and runs another way) the module skips.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)
if kit.is_forge():
    pytest.skip("Mikubill's ControlNet is an A1111 extension (Forge's is built in)", allow_module_level=True)
if kit.controlnet_dir() is None:
    pytest.skip("CONTROLNET_DIR is unset: the ControlNet scenarios need a checkout of Mikubill/sd-webui-controlnet "
                "(see tests/webui/README.md)", allow_module_level=True)

TITLE = kit.EXTENSION_TITLE
CN_TITLE = "ControlNet"
STEPS = 4
EVERY_CALL = {"enabled": True, "factor_h": 2, "factor_w": 2, "window": "fraction", "shape": "constant"}
LOW_HINT = [1, 3, 64, 64]  # 128x128 pixels, factor 2: the hint at the 64x64 low-resolution size


def ring(size: int = 128, width: int = 6) -> str:
    """A white ring on black, ``size`` pixels square, as a base64 PNG (a ControlNet hint, preprocessor none)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size))
    ImageDraw.Draw(img).ellipse((size // 5, size // 4, 4 * size // 5, 3 * size // 4), outline="white", width=width)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unit(**changes: Any) -> dict[str, Any]:
    """One enabled ControlNet unit with the tiny ControlNet and the ring hint."""
    base = {
        "enabled": True,
        "image": ring(),
        "module": "none",
        "model": kit.TINY_CONTROLNET,
        "weight": 1.0,
        "resize_mode": "Just Resize",
        "control_mode": "Balanced",
        "pixel_perfect": False,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
    }
    base.update(changes)
    return base


class Controlled:
    """A server with ControlNet and the debug log; runs txt2img with both extensions' arguments."""

    def __init__(self, server: kit.WebUI, log: Path) -> None:
        self.server = server
        self.log = log

    def _lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []

    def run(
        self, rc: dict[str, Any] | None, units: list[dict[str, Any]] | None, **payload: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """txt2img with the extension's named fields ``rc`` (None: not sent) and ControlNet ``units`` (None: not
        sent); returns the answer and the debug records the generation appended."""
        seen = len(self._lines())
        scripts: dict[str, Any] = {}
        if rc is not None:
            scripts[TITLE] = {"args": [rc]}
        if units is not None:
            scripts[CN_TITLE] = {"args": units}
        body = self.server.txt2img(steps=STEPS, alwayson_scripts=scripts, **payload)
        return body, [json.loads(line) for line in self._lines()[seen:]]


@pytest.fixture(scope="module")
def controlled(start_webui: Any, kit_dir: Path) -> Iterator[Controlled]:
    """An API-only SD1 server with ControlNet linked in, the tiny ControlNet and ``RC_DEBUG_LOG``."""
    log = kit_dir / "rc-debug-controlnet.jsonl"
    log.unlink(missing_ok=True)
    server = start_webui(ckpt="sd1", controlnet=True, env={"RC_DEBUG_LOG": str(log)})
    yield Controlled(server, log)
    server.stop()


def pixels(body: dict[str, Any], i: int = 0) -> bytes:
    """The decoded RGB pixels of image i (image 0 is the generation; ControlNet appends its hint map after it)."""
    from PIL import Image

    with Image.open(io.BytesIO(kit.image_bytes(body["images"][i]))) as img:
        return img.convert("RGB").tobytes()


def infotext(body: dict[str, Any], i: int = 0) -> str:
    """The generation-parameters line of image i."""
    return str(body["info"]["infotexts"][i]).split("\n")[-1]


def guided_record(records: list[dict[str, Any]], calls: int | None = STEPS) -> dict[str, Any]:
    """The one debug record of a guided generation: finished guided, one low-res call per model call (``calls`` of
    them, when given)."""
    assert len(records) == 1, records
    record = records[0]
    assert record["failed"] is None, record["failed"]
    assert record["model_calls"] == record["low_calls"] > 0, record
    assert calls is None or record["model_calls"] == calls, record
    return record


def test_controlnet_is_loaded_with_the_tiny_model(controlled: Controlled) -> None:
    """ControlNet is there with the tiny model, and its unit changes the (unguided) image."""
    models = controlled.server.get("/controlnet/model_list")["model_list"]
    assert any(m.startswith(kit.TINY_CONTROLNET) for m in models), models
    plain, _ = controlled.run(None, None)
    with_cn, _ = controlled.run(None, [unit()])
    assert "ControlNet 0" in infotext(with_cn)
    assert pixels(with_cn) != pixels(plain), "the tiny ControlNet must act (its residuals are not zero)"


def test_one_unit_guided(controlled: Controlled) -> None:
    """One unit: every guided model call makes one low-res call, with the unit's hint pooled to the low-res size;
    the guided image differs from the unguided one with the same unit and from the guided one without it."""
    body, records = controlled.run(EVERY_CALL, [unit()])
    record = guided_record(records)
    assert [c["controlnet"] for c in record["calls"]] == [[{"unit": 0, "hint": LOW_HINT}]] * STEPS
    text = infotext(body)
    assert "RC error" not in text and "RC guided steps: 1-4/4" in text and "ControlNet 0" in text, text
    unguided, none = controlled.run({"enabled": False}, [unit()])
    assert none == []
    without_cn, _ = controlled.run(EVERY_CALL, None)
    assert len({pixels(body), pixels(unguided), pixels(without_cn)}) == 3


def test_two_units_guided(controlled: Controlled) -> None:
    """Two units (different hints and weights): both get their pooled hint in every low-res call."""
    second = unit(image=ring(96, 3), weight=0.5)
    body, records = controlled.run(EVERY_CALL, [unit(), second])
    record = guided_record(records)
    want = [{"unit": 0, "hint": LOW_HINT}, {"unit": 1, "hint": LOW_HINT}]
    assert [c["controlnet"] for c in record["calls"]] == [want] * STEPS
    assert "RC error" not in infotext(body)
    one, _ = controlled.run(EVERY_CALL, [unit()])
    assert pixels(body) != pixels(one)


@pytest.mark.parametrize("mode", ["ControlNet is more important", "My prompt is more important"])
def test_control_modes_guided(controlled: Controlled, mode: str) -> None:
    """The other control modes are guided the same way (ControlNet applies them in the low-res call too)."""
    body, records = controlled.run(EVERY_CALL, [unit(control_mode=mode)])
    record = guided_record(records)
    assert all(c["controlnet"] == [{"unit": 0, "hint": LOW_HINT}] for c in record["calls"])
    assert "RC error" not in infotext(body) and f"Control Mode: {mode}" in infotext(body)
    balanced, _ = controlled.run(EVERY_CALL, [unit()])
    assert pixels(body) != pixels(balanced)


def test_hires_fix_with_controlnet(controlled: Controlled) -> None:
    """Hires fix with a unit, both passes guided: the first pass pools the first-pass hint, the hires pass the
    hires hint (256x256 pixels, pooled to 128x128)."""
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    body, records = controlled.run(dict(EVERY_CALL, passes="both"), [unit()], **hires)
    assert len(records) == 1 and records[0]["failed"] is None, records
    calls = records[0]["calls"]
    assert [p["pass"] for p in records[0]["passes"]] == ["first", "hires"]
    first = [c["controlnet"] for c in calls if c["pass"] == "first"]
    second = [c["controlnet"] for c in calls if c["pass"] == "hires"]
    assert first and all(h == [{"unit": 0, "hint": LOW_HINT}] for h in first), first
    assert second and all(h == [{"unit": 0, "hint": [1, 3, 128, 128]}] for h in second), second
    assert records[0]["low_calls"] == records[0]["model_calls"]
    assert "RC error" not in infotext(body)


def test_ddim_with_controlnet(controlled: Controlled) -> None:
    """A timestep sampler (eps form) with a unit: guided, the hint pooled."""
    body, records = controlled.run(EVERY_CALL, [unit()], sampler_name="DDIM")
    record = guided_record(records, calls=None)  # DDIM's call count differs with the step count (README)
    assert all(c["controlnet"] == [{"unit": 0, "hint": LOW_HINT}] for c in record["calls"])
    assert "RC error" not in infotext(body)


def test_enabled_unit_without_image_is_controlnets_error(controlled: Controlled) -> None:
    """A unit that is enabled but has no image: ControlNet reports its own error (in its log, as without the
    extension) and does not hook the UNet; the generation is guided as without ControlNet, pixel for pixel, and the
    extension reports no error of its own."""
    before = len(controlled.server.log_tail(10**7))
    body, records = controlled.run(EVERY_CALL, [unit(image=None)])
    log = controlled.server.log_tail(10**7)[before:]
    assert "no input image is given" in log, log[-3000:]
    assert "Resolution Chromatography:" not in log, log[-3000:]
    record = guided_record(records)
    assert all("controlnet" not in c for c in record["calls"])
    assert "RC error" not in infotext(body)
    without_cn, _ = controlled.run(EVERY_CALL, None)
    assert pixels(body) == pixels(without_cn)


def test_no_leak_after_controlnet_runs(controlled: Controlled) -> None:
    """After guided runs with ControlNet, the same requests with the extension off are bit-identical to the ones made
    before any guided run (with and without a unit): every hint swap was undone."""
    fresh = {"seed": 11}
    base_cn, _ = controlled.run({"enabled": False}, [unit()], **fresh)
    base_plain, _ = controlled.run(None, None, **fresh)
    controlled.run(EVERY_CALL, [unit(), unit(weight=0.3)], **fresh)
    controlled.run(dict(EVERY_CALL, factor_h=4, factor_w=4), [unit()], **fresh)
    after_cn, _ = controlled.run({"enabled": False}, [unit()], **fresh)
    after_plain, _ = controlled.run(None, None, **fresh)
    assert pixels(after_cn) == pixels(base_cn) and pixels(after_cn, 1) == pixels(base_cn, 1)
    assert pixels(after_plain) == pixels(base_plain)
    assert infotext(after_cn) == infotext(base_cn)
