"""A low-resolution call that fails inside the sampler, in a real A1111 WebUI or Forge, over HTTP.

Other extensions can make the extra model call of upsample guidance fail: ControlNet-like extensions feed the
UNet hints computed for the full latent size, and a smaller latent no longer fits them. The kit reproduces this
with a test-only extension (``ext_full_size_hints/``, copied into this server's ``extensions/`` at run time,
never committed to a WebUI): when its script is enabled, every UNet call adds a zero full-size hint to its
input on the side, so full-size calls are unchanged and the low-resolution call raises torch's own size-mismatch
``RuntimeError`` deep inside ``CFGDenoiser.forward``'s callbacks.

What the extension promises then (``lib_chroma/webui/generation.py``): the request still succeeds and gives its
image, the rest of the generation runs unguided (so a failure at the first guided call gives exactly the
unguided image), the reason goes into the infotext under ``RC error``, and the next generation is guided again
as if nothing had happened.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)

TITLE = kit.EXTENSION_TITLE
HINTS_DIR = Path(__file__).with_name("ext_full_size_hints")
HINTS_TITLE = "RC kit full-size hints"
STEPS = 6
# Guidance on every model call, one 2x level: one low-res call per model call, so counts are exact.
EVERY_CALL = {"enabled": True, "factor_h": 2, "factor_w": 2, "window": "fraction", "shape": "constant"}
OFF = {"enabled": False}
REASON = "low-resolution call failed (RuntimeError"
SAMPLERS = ["Euler", "DPM++ 2M", "DDIM"]


class Hinted:
    """A server with the hint extension and the debug log; runs txt2img with both scripts' arguments."""

    def __init__(self, server: kit.WebUI, log: Path) -> None:
        self.server = server
        self.log = log

    def _lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []

    def run(
        self, rc: dict[str, Any], hints: int | None = None, replace_wrapper: bool = False, **payload: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """txt2img with the extension's named fields ``rc``; ``hints`` = None (off) or the number of full-size
        calls after which low-res calls fail (0: the first one fails); ``replace_wrapper`` (Forge): the test-only
        extension replaces the UNet function wrapper before every model call. Returns the answer and the debug
        records the generation appended."""
        seen = len(self._lines())
        hint_args = [hints is not None, hints or 0, replace_wrapper]
        scripts = {TITLE: {"args": [rc]}, HINTS_TITLE: {"args": hint_args}}
        full = {"steps": STEPS, "alwayson_scripts": scripts, **payload}
        body = self.server.txt2img(**full)
        return body, [json.loads(line) for line in self._lines()[seen:]]


@pytest.fixture(scope="module")
def hinted(start_webui: Any, kit_dir: Path) -> Iterator[Hinted]:
    """An API-only SD1 server of its own with the test-only hint extension and ``RC_DEBUG_LOG``."""
    log = kit_dir / "rc-debug-hints.jsonl"
    log.unlink(missing_ok=True)
    server = start_webui(ckpt="sd1", env={"RC_DEBUG_LOG": str(log)}, extra_extensions=[HINTS_DIR])
    yield Hinted(server, log)
    server.stop()


def pixels(body: dict[str, Any], i: int = 0) -> bytes:
    """The decoded RGB pixels of image i (the PNG bytes also hold the infotext, which differs by design)."""
    from PIL import Image

    with Image.open(io.BytesIO(kit.image_bytes(body["images"][i]))) as img:
        return img.convert("RGB").tobytes()


def infotext(body: dict[str, Any], i: int = 0) -> str:
    """The generation-parameters line of image i."""
    return str(body["info"]["infotexts"][i]).split("\n")[-1]


def references(hinted: Hinted, sampler: str) -> tuple[bytes, bytes]:
    """(guided, unguided) pixels for ``sampler`` with no failure: guided without hints, unguided with them."""
    guided, recs = hinted.run(EVERY_CALL, sampler_name=sampler)
    assert "RC error" not in infotext(guided), infotext(guided)
    assert recs and recs[0]["failed"] is None and recs[0]["low_calls"] > 0, recs
    unguided, recs = hinted.run(OFF, hints=0, sampler_name=sampler)
    assert not recs, "disabled runs write no debug record"
    return pixels(guided), pixels(unguided)


def test_hint_extension_is_loaded_and_harmless_at_full_size(hinted: Hinted) -> None:
    """The test-only extension is there, and with the guidance off it changes nothing at all."""
    scripts = hinted.server.get("/sdapi/v1/script-info")
    assert any(s["name"] == HINTS_TITLE.lower() and s["is_alwayson"] for s in scripts), hinted.server.log_tail()
    plain, _ = hinted.run(OFF)
    with_hints, _ = hinted.run(OFF, hints=0)
    assert "RC kit hints: from call 0" in infotext(with_hints)
    assert pixels(with_hints) == pixels(plain), "full-size calls must run exactly as without the hints"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_failing_lowres_call_gives_the_unguided_image(hinted: Hinted, sampler: str) -> None:
    """The first low-res call fails: 200, one image, bit-identical to the unguided one, ``RC error`` says why."""
    guided, unguided = references(hinted, sampler)
    assert guided != unguided
    body, recs = hinted.run(EVERY_CALL, hints=0, sampler_name=sampler)
    assert len(body["images"]) == 1
    assert pixels(body) == unguided, "after a failure at the first guided call the image is the unguided one"
    text = infotext(body)
    assert f"RC error: {REASON}" in text or f'RC error: "{REASON}' in text, text
    assert "RC scale: " in text, "the settings keys stay: the image says what was asked and what happened"
    assert len(recs) == 1 and str(recs[0]["failed"]).startswith(REASON), recs
    assert recs[0]["low_calls"] == 0
    assert f"Resolution Chromatography: {REASON}" in hinted.server.log_tail(20000)


def test_failure_mid_run_keeps_the_guided_steps(hinted: Hinted) -> None:
    """Low-res calls fail from the third model call on: two guided calls, then unguided to the end."""
    guided, unguided = references(hinted, "Euler")
    body, recs = hinted.run(EVERY_CALL, hints=2, sampler_name="Euler")
    assert REASON in infotext(body), infotext(body)
    assert len(recs) == 1 and recs[0]["low_calls"] == 2, recs
    assert pixels(body) not in (guided, unguided), "two guided steps, then unguided: neither reference"


def test_failure_in_the_hires_pass(hinted: Hinted) -> None:
    """Guidance of the hires-fix pass only (``passes: hires``), failing there: the unguided hires image."""
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    rc = dict(EVERY_CALL, passes="hires")
    guided, recs = hinted.run(rc, sampler_name="Euler", **hires)
    assert recs[0]["failed"] is None and recs[0]["low_calls"] > 0, recs
    assert [p["pass"] for p in recs[0]["passes"]] == ["hires"], recs[0]["passes"]
    unguided, _ = hinted.run(OFF, hints=0, sampler_name="Euler", **hires)
    body, recs = hinted.run(rc, hints=0, sampler_name="Euler", **hires)
    assert REASON in infotext(body), infotext(body)
    assert len(recs) == 1 and recs[0]["low_calls"] == 0, recs
    assert pixels(body) == pixels(unguided) != pixels(guided)


def test_batch_with_a_failing_lowres_call(hinted: Hinted) -> None:
    """Batch size 2, batch count 2: every image comes back unguided and says why (one failure ends the guidance
    for the rest of the generation, later batches included: one debug record per generation)."""
    batch = {"batch_size": 2, "n_iter": 2, "sampler_name": "Euler"}
    unguided, _ = hinted.run(OFF, hints=0, **batch)
    body, recs = hinted.run(EVERY_CALL, hints=0, **batch)
    assert len(body["info"]["all_seeds"]) == 4
    assert [pixels(body, i) for i in range(4)] == [pixels(unguided, i) for i in range(4)]
    assert all(REASON in infotext(body, i) for i in range(4)), body["info"]["infotexts"]
    assert len(recs) == 1 and str(recs[0]["failed"]).startswith(REASON), recs
    assert recs[0]["low_calls"] == 0


def test_next_run_after_a_failure_is_guided_again(hinted: Hinted) -> None:
    """No state leak from a failed generation: the next guided run equals one made before the failure."""
    before, recs_before = hinted.run(EVERY_CALL, sampler_name="Euler", seed=5)
    failed, _ = hinted.run(EVERY_CALL, hints=0, sampler_name="Euler", seed=5)
    assert REASON in infotext(failed)
    after, recs_after = hinted.run(EVERY_CALL, sampler_name="Euler", seed=5)
    assert "RC error" not in infotext(after), infotext(after)
    assert recs_after[0]["failed"] is None
    assert recs_after[0]["low_calls"] == recs_before[0]["low_calls"] == STEPS
    assert pixels(after) == pixels(before)
    assert infotext(after) == infotext(before)
    assert hinted.server.healthy()


def test_replaced_unet_wrapper_is_reported_not_claimed(hinted: Hinted) -> None:
    """Forge: another extension replaces the UNet function wrapper, so no model call reaches the guidance. The
    image is the unguided one, and the infotext says why instead of claiming guided steps (issue 15: Forge used to
    report ``RC guided steps`` for a generation with no guided call)."""
    if not kit.is_forge():
        pytest.skip("A1111 has no UNet function wrapper (Forge only)")
    _, unguided = references(hinted, "Euler")
    body, recs = hinted.run(EVERY_CALL, replace_wrapper=True, sampler_name="Euler")
    text = infotext(body)
    assert "RC kit hints: replace wrapper" in text, text
    assert pixels(body) == unguided
    assert "RC guided steps" not in text, text
    assert "nothing was guided" in text and "RC scale: " in text, text
    assert len(recs) == 1 and recs[0]["low_calls"] == 0 and "nothing was guided" in str(recs[0]["failed"]), recs
