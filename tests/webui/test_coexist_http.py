"""What users run beside upsample guidance, over HTTP in a real A1111 WebUI or Forge: img2img (the resize modes, an
inpainting model), Interrupt and Skip, a model switch, two clients at once, a LoRA in the prompt, and the API's
answer to malformed arguments.

The extension's debug record (``RC_DEBUG_LOG``, one JSON line per generation) shows what happened inside the sampler.
"No state leak" is checked the same way everywhere: after the scenario, a request with the extension off is
bit-identical (pixels and infotext) to the same request made before it.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)

TITLE = kit.EXTENSION_TITLE
STEPS = 6
EVERY_CALL = {"enabled": True, "factor_h": 2, "factor_w": 2, "window": "fraction", "shape": "constant"}
AUTO = {"enabled": True, "factor_h": 2, "factor_w": 2}
OFF = {"enabled": False}


def png(size: tuple[int, int] = (96, 64), mask: bool = False) -> str:
    """An init image (an orange disc on blue) or a mask (a white rectangle on black) as a base64 PNG."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "black" if mask else (90, 120, 200))
    draw = ImageDraw.Draw(img)
    w, h = size
    if mask:
        draw.rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill="white")
    else:
        draw.ellipse((w // 8, h // 8, 7 * w // 8, 7 * h // 8), fill=(220, 90, 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Server:
    """A server with the debug log: txt2img/img2img with the extension's arguments, and the records they wrote."""

    def __init__(self, server: kit.WebUI, log: Path) -> None:
        self.server = server
        self.log = log
        self.lock = threading.Lock()

    def _lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []

    def body(self, rc: dict[str, Any] | None, **payload: Any) -> dict[str, Any]:
        """A request body: small defaults, the extension's named fields ``rc`` (None: not sent)."""
        full = {"prompt": "a red ball", "steps": STEPS, "width": 128, "height": 128, "seed": 1, "sampler_name": "Euler"}
        full.update(payload)
        if rc is not None:
            full["alwayson_scripts"] = {TITLE: {"args": [rc]}}
        return full

    def run(self, path: str, rc: dict[str, Any] | None, **payload: Any) -> tuple[dict[str, Any], list[dict]]:
        """POST one request to ``/sdapi/v1/<path>``; the answer (``info`` decoded) and the debug records it added."""
        seen = len(self._lines())
        if path == "txt2img":
            answer = self.server.txt2img(**self.body(rc, **payload))
        else:
            answer = self.server.post(f"/sdapi/v1/{path}", self.body(rc, **payload))
            answer["info"] = json.loads(answer["info"])
        return answer, [json.loads(line) for line in self._lines()[seen:]]


@pytest.fixture(scope="module")
def co(start_webui: Any, kit_dir: Path) -> Iterator[Server]:
    """An API-only SD1 server of its own, with ``RC_DEBUG_LOG``."""
    log = kit_dir / "rc-debug-coexist.jsonl"
    log.unlink(missing_ok=True)
    server = start_webui(ckpt="sd1", env={"RC_DEBUG_LOG": str(log)})
    yield Server(server, log)
    server.stop()


def pixels(body: dict[str, Any], i: int = 0) -> bytes:
    """The decoded RGB pixels of image i."""
    from PIL import Image

    with Image.open(io.BytesIO(kit.image_bytes(body["images"][i]))) as img:
        return img.convert("RGB").tobytes()


def size_of(body: dict[str, Any], i: int = 0) -> tuple[int, int]:
    """The (width, height) of image i."""
    from PIL import Image

    with Image.open(io.BytesIO(kit.image_bytes(body["images"][i]))) as img:
        return img.size


def infotext(body: dict[str, Any], i: int = 0) -> str:
    """The generation-parameters line of image i."""
    return str(body["info"]["infotexts"][i]).split("\n")[-1]


def one(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The single debug record of a generation, checked to have finished without a failure."""
    assert len(records) == 1, records
    assert records[0]["failed"] is None, records[0]["failed"]
    return records[0]


# ------------------------------------------------------------------------------------------------------------
# img2img
# ------------------------------------------------------------------------------------------------------------

IMG2IMG = {"init_images": [png()], "denoising_strength": 0.5}


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_img2img_guided_over_the_strength_sigma_range(co: Server, sampler: str) -> None:
    """img2img at 2x native with the automatic window: the pass is planned on the sigmas the sampler really runs
    (those below the denoising strength's start), the guided calls are a prefix of them as the infotext says, and
    the image differs from the unguided one."""
    import re

    from lib_chroma.schedule import model_schedule, sampler_sigmas

    body, records = co.run("img2img", AUTO, sampler_name=sampler, **IMG2IMG)
    record = one(records)
    plan = record["passes"][0]
    calls = record["calls"]
    full = [float(s) for s in sampler_sigmas(sampler, "Automatic", STEPS, model_schedule("sd1"))]
    assert plan["sigmas"][0] < 0.5 * full[0], "img2img starts at the strength's sigma, not at sigma_max"
    assert [c["sigma"] for c in calls] == pytest.approx(plan["sigmas"][: len(calls)], rel=1e-3)
    first, last = plan["window"]
    assert first == 0 and [c["low_calls"] for c in calls] == [1] * (last + 1) + [0] * (len(calls) - last - 1)
    match = re.search(r"RC guided steps: (\d+)-(\d+)/(\d+)", infotext(body))
    assert match and (int(match[1]), int(match[2])) == (first + 1, last + 1), infotext(body)
    unguided, none = co.run("img2img", OFF, sampler_name=sampler, **IMG2IMG)
    assert none == [] and pixels(body) != pixels(unguided)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_img2img_resize_modes(co: Server, mode: int) -> None:
    """Every resize mode (just resize, crop and resize, resize and fill, latent upscale) of a 96x64 image to 128x128:
    guided, one low-res call per guided model call, the requested size."""
    body, records = co.run("img2img", EVERY_CALL, resize_mode=mode, **IMG2IMG)
    record = one(records)
    assert record["low_calls"] == record["model_calls"] > 0
    assert size_of(body) == (128, 128) and "RC error" not in infotext(body)
    unguided, _ = co.run("img2img", OFF, resize_mode=mode, **IMG2IMG)
    assert pixels(body) != pixels(unguided)


def test_inpainting_model_pools_its_image_conditioning(co: Server) -> None:
    """An inpainting model (9 input channels): its mask and masked-image latent (``c_concat``) are pooled with the
    latent for the low-res call, cond and uncond rows together; a regular model with a mask gets no spatial image
    conditioning to pool."""
    if "sd1inpaint" not in co.server.checkpoints:
        pytest.skip(kit.not_built("sd1inpaint"))
    inpaint = {**IMG2IMG, "mask": png((96, 64), mask=True), "inpaint_full_res": False}
    model = {"override_settings": {"sd_model_checkpoint": "tiny-sd1inpaint"}}
    body, records = co.run("img2img", EVERY_CALL, **inpaint, **model)
    record = one(records)
    assert record["low_calls"] == record["model_calls"] > 0
    assert all(c["low_image_cond"] == [[2, 5, 8, 8]] for c in record["calls"]), record["calls"][0]
    assert "Model: tiny-sd1inpaint" in infotext(body) and "RC error" not in infotext(body)
    unguided, _ = co.run("img2img", OFF, **inpaint, **model)
    assert pixels(body) != pixels(unguided)
    regular, records = co.run("img2img", EVERY_CALL, **inpaint)
    assert all("low_image_cond" not in c for c in one(records)["calls"])
    assert "Model: tiny-sd1," in infotext(regular)


# ------------------------------------------------------------------------------------------------------------
# Interrupt, Skip, model switch, two clients
# ------------------------------------------------------------------------------------------------------------


def _in_background(co: Server, rc: dict[str, Any], **payload: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["body"], out["records"] = co.run("txt2img", rc, **payload)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


def _wait_for_step(co: Server, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = co.server.get("/sdapi/v1/progress?skip_current_image=true")["state"]
        if state.get("sampling_step", 0) >= step and state.get("job_count", 0) > 0:
            return
        time.sleep(0.02)
    raise TimeoutError(f"sampling did not reach step {step}")


@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_interrupt_and_skip_during_a_guided_generation(co: Server, action: str) -> None:
    """Interrupt (Skip) while a guided generation samples: the request answers with its image(s), the interrupted
    (skipped) batch stopped early, and afterwards the extension off gives the baseline bit for bit and a guided run
    equals one made before."""
    fresh = {"seed": 21}
    baseline, _ = co.run("txt2img", OFF, **fresh)
    guided_before, _ = co.run("txt2img", EVERY_CALL, **fresh)
    long = {"steps": 150, "seed": 22, "n_iter": 2 if action == "skip" else 1}
    thread, out = _in_background(co, EVERY_CALL, **long)
    _wait_for_step(co, 3)
    co.server.post(f"/sdapi/v1/{action}", {})
    thread.join(300)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    record = one(out["records"])
    assert record["model_calls"] < 150 * long["n_iter"], "the guided generation was stopped early"
    assert record["low_calls"] == record["model_calls"], "every model call that ran was guided"
    phases = [c["phase"] for c in record["calls"]]
    starts = [i for i, ph in enumerate(phases) if ph == 0]
    assert len(starts) == long["n_iter"], starts
    if action == "skip":  # the first batch stopped early, the second sampled to the end
        assert 0 < starts[1] < 150 and len(phases) - starts[1] == 150, (starts, len(phases))
        assert len(out["body"]["images"]) == 2
    after, none = co.run("txt2img", OFF, **fresh)
    assert none == [] and pixels(after) == pixels(baseline) and infotext(after) == infotext(baseline)
    guided_after, _ = co.run("txt2img", EVERY_CALL, **fresh)
    assert pixels(guided_after) == pixels(guided_before) and infotext(guided_after) == infotext(guided_before)


def test_model_switch_between_guided_runs(co: Server) -> None:
    """Guided runs on SD1, then SD2-v, then SDXL (checkpoint switched per request): each is guided with its family's
    plan, and back on SD1 the extension off gives the baseline and a guided run the earlier guided image."""
    for model in ("sd2v", "sdxl"):
        if model not in co.server.checkpoints:
            pytest.skip(kit.not_built(model))
    baseline, _ = co.run("txt2img", OFF)
    sd1, records = co.run("txt2img", EVERY_CALL)
    assert one(records)["family"] == "sd1"
    for model, family in (("sd2v", "sd2-v"), ("sdxl", "sdxl")):
        body, records = co.run("txt2img", EVERY_CALL, override_settings={"sd_model_checkpoint": f"tiny-{model}"},
                               override_settings_restore_afterwards=False)
        record = one(records)
        assert record["family"] == family and record["low_calls"] == record["model_calls"] == STEPS
        assert f"Model: tiny-{model}" in infotext(body) and "RC error" not in infotext(body)
    back = {"override_settings": {"sd_model_checkpoint": "tiny-sd1"}, "override_settings_restore_afterwards": False}
    after, none = co.run("txt2img", OFF, **back)
    assert none == [] and pixels(after) == pixels(baseline) and infotext(after) == infotext(baseline)
    again, records = co.run("txt2img", EVERY_CALL)
    assert one(records)["family"] == "sd1"
    assert pixels(again) == pixels(sd1) and infotext(again) == infotext(sd1)


def test_two_clients_guided_and_unguided_at_once(co: Server) -> None:
    """Two clients send guided and unguided requests at the same time (the WebUI queues them): every answer equals
    the same request sent alone."""
    requests = [(EVERY_CALL, 31), (OFF, 32), (EVERY_CALL, 33), (OFF, 34)]
    alone = [co.run("txt2img", rc, seed=seed)[0] for rc, seed in requests]
    started = [_in_background(co, rc, seed=seed) for rc, seed in requests]
    for thread, _ in started:
        thread.join(300)
    for (rc, _), (thread, out), ref in zip(requests, started, alone):
        assert not thread.is_alive() and "error" not in out, out.get("error")
        assert pixels(out["body"]) == pixels(ref) and infotext(out["body"]) == infotext(ref), rc
        assert len(out["records"]) <= 4  # records of concurrent requests interleave in the shared log
    assert pixels(alone[0]) != pixels(alone[1])


# ------------------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------------------


def test_lora_in_the_prompt(co: Server) -> None:
    """A LoRA in the prompt (``<lora:tiny-sd1-lora:1>``) changes the image and is guided like the plain prompt (the
    low-res call runs through the same LoRA-patched modules); afterwards, without the LoRA and with the extension
    off, the image is the baseline again."""
    if kit.is_forge():
        pytest.skip("the tiny LoRA is built for A1111's tiny SD1 (Forge's tiny SD1.5 has another UNet)")
    lora = {"prompt": f"a red ball <lora:{kit.TINY_LORA}:1>"}
    baseline, _ = co.run("txt2img", OFF)
    plain_lora, _ = co.run("txt2img", OFF, **lora)
    assert f"Lora hashes: \"{kit.TINY_LORA}" in infotext(plain_lora), infotext(plain_lora)
    assert pixels(plain_lora) != pixels(baseline), "the tiny LoRA must change the image"
    guided_lora, records = co.run("txt2img", EVERY_CALL, **lora)
    record = one(records)
    assert record["low_calls"] == record["model_calls"] == STEPS and "RC error" not in infotext(guided_lora)
    guided, _ = co.run("txt2img", EVERY_CALL)
    assert len({pixels(guided_lora), pixels(plain_lora), pixels(guided)}) == 3
    again, _ = co.run("txt2img", EVERY_CALL, **lora)
    assert pixels(again) == pixels(guided_lora)
    after, _ = co.run("txt2img", OFF)
    assert pixels(after) == pixels(baseline) and infotext(after) == infotext(baseline)


# ------------------------------------------------------------------------------------------------------------
# Malformed arguments
# ------------------------------------------------------------------------------------------------------------

MALFORMED = [
    (["yes"], "enabled"),  # a string where the enable checkbox's boolean belongs
    ([{}, {}], "args"),  # a dict of named fields must stand alone
    ([{"nested": "no"}], "nested"),  # booleans are true/false/1/0 only
    ([{"window_start": 0.9, "window_end": 0.1}], "window_end"),  # inverted, even with the auto window
]


@pytest.mark.parametrize("args, field", MALFORMED, ids=["yes", "two-dicts", "nested-no", "inverted-window"])
def test_malformed_arguments_are_refused(healthy_after: kit.WebUI, args: list[Any], field: str) -> None:
    """The four malformed ``args`` that used to be accepted fail with HTTP 422 naming the field."""
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": {TITLE: {"args": args}}}
    status, body = healthy_after.request("POST", "/sdapi/v1/txt2img", payload)
    assert status == 422, body
    assert body["detail"].startswith(f"{TITLE}: {field}:"), body
