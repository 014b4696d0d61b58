"""The cascade ("Cascade (faster)", API field ``cascade``) in a real A1111 WebUI, over HTTP.

A server of its own with ``RC_DEBUG_LOG``: the debug record shows the cascade's plan (``cascade``), each pass's
sigmas and every model call with its pass and sigma. The scenarios ask for 128×128 at 20 steps with manual
factor 2 (the tiny checkpoints' "native" size would be 512: 1024² images take the VAE ~25 s on a CPU), so
A1111's first pass is 64×64 and its hires pass 128×128. What they check:

- every k-diffusion sampler family stops its first pass at the sigma the readout names, the hires pass
  samples the planned sigmas with the planned guided (low-resolution) calls, and the model's pixel-evaluations
  stay below a plain 128×128 run of the same steps (model seconds of both are written to
  ``cascade-model-time.json`` in the kit folder: measured, not asserted);
- samplers without a sigma schedule (DDIM, UniPC) step aside: one guided pass, ``RC note`` says why;
- in Forge (``FORGE_DIR``) the cascade steps aside: one guided 128×128 pass, ``RC note`` says why, no hires
  pass; the A1111 scenarios are skipped there;
- batch size and count, SD2-v and SDXL tiny, a user's own Hires. fix (the cascade's steps win, the upscaler is
  kept), infotext and the pasted parameters reproducing the image, and no state leak into later requests.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)

from lib_chroma import settings as S  # noqa: E402
from lib_chroma.webui.cascade_setup import setup_cascade  # noqa: E402
from lib_chroma.webui.preview import preview  # noqa: E402
from tests.webui.test_guided_http import Guided, infotext, only_record  # noqa: E402

STEPS = 20
CASCADE = {"enabled": True, "cascade": True, "factor_h": 2, "factor_w": 2}
SIZE = {"width": 128, "height": 128, "steps": STEPS}
#: The scenarios in which the cascade runs: A1111 only (in Forge it steps aside, see test_forge_steps_aside).
A1111_ONLY = pytest.mark.skipif(kit.is_forge(), reason="the cascade runs in A1111 only (Forge: it steps aside)")
K_SAMPLERS = [("Euler", None), ("Euler a", None), ("DPM++ 2M", "Karras"), ("Heun", None), ("DPM++ SDE", "Karras")]
TIMES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def cascading(start_webui: Any, kit_dir: Path) -> Iterator[Guided]:
    """An API-only server of its own (SD1), with ``RC_DEBUG_LOG`` set."""
    log = kit_dir / "rc-cascade-debug.jsonl"
    log.unlink(missing_ok=True)
    server = start_webui(ckpt="sd1", env={"RC_DEBUG_LOG": str(log)})
    yield Cascading(server, log)
    server.stop()
    if TIMES:
        (kit_dir / "cascade-model-time.json").write_text(json.dumps(TIMES, indent=1))


class Cascading(Guided):
    def run(self, rc: Any, **payload: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # type: ignore[override]
        seen = len(self._lines())
        full = {**SIZE, **payload}
        body = self.server.txt2img(alwayson_scripts={kit.EXTENSION_TITLE: {"args": [rc]}}, **full)
        return body, [json.loads(line) for line in self._lines()[seen:]]


def image_size(b64: str) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    data = kit.image_bytes(b64)
    return struct.unpack(">II", data[16:24])


def calls_of(record: dict[str, Any], which: str) -> list[dict[str, Any]]:
    return [c for c in record["calls"] if c["pass"] == which]


def check_cascade(record: dict[str, Any], sampler: str, scheduler: str | None) -> None:
    """The record matches the plan: stop sigma, calls per pass, low-resolution calls, the readout."""
    cas = record["cascade"]
    user = cas["user_sigmas"]
    k = cas["stop_step"]
    first, hires = record["passes"][:2]
    assert first["pass"] == "first" and hires["pass"] == "hires"
    assert first["latent"] == [8, 8] and hires["latent"] == [16, 16]
    # the first pass runs the user's sigmas up to sigma_k, then 0: its last call is at sigma_k
    assert first["sigmas"][:-1] == pytest.approx(user[: k + 1], rel=1e-5) and first["sigmas"][-1] == 0
    fc, hc = calls_of(record, "first"), calls_of(record, "hires")
    assert len(fc) == cas["stage_calls"][0] and len(hc) == cas["stage_calls"][1]
    assert fc[-1]["sigma"] == pytest.approx(user[k], rel=1e-4)
    assert hires["sigmas"][0] == pytest.approx(2 * user[k], rel=1e-4)  # sigma_s = 2 sigma_k
    assert hc[0]["sigma"] == pytest.approx(hires["sigmas"][0], rel=1e-4)
    assert sum(c["low_calls"] for c in fc) == 0
    assert sum(c["low_calls"] for c in hc) == record["low_calls"] == sum(cas["low_calls"][1]) > 0
    assert hires["handover"] == "renoise"
    # the accordion's readout for the same request says the same
    s = S.from_dict(CASCADE, family="sd1")
    setup = setup_cascade(s, "sd1", sampler, scheduler or "Automatic", STEPS, 128, 128, sigmas=user)
    assert cas["readout"] == setup.readout()
    # the hires pass samples the plan's (thinned) sigmas: one call at each for the first-order samplers
    assert hires["sigmas"] == pytest.approx(list(setup.plan.stages[1].sigmas), rel=1e-5)
    if sampler in ("Euler", "Euler a", "DPM++ 2M"):
        assert [c["sigma"] for c in hc] == pytest.approx(hires["sigmas"][:-1], rel=1e-4)
    readout = preview(s.to_dict(), sampler, scheduler or "Automatic", STEPS, 128, 128, family="sd1")[0]
    assert readout.startswith(f"native 64² steps 1–{k + 1}, then 128² steps ")


@A1111_ONLY
@pytest.mark.parametrize("sampler,scheduler", K_SAMPLERS)
def test_cascade_runs_as_planned(cascading: Cascading, sampler: str, scheduler: str | None) -> None:
    """The first pass stops where the readout says, the hires pass makes the planned calls, and the model's
    pixel-evaluations stay below a plain 128×128 run's (the extension enabled at scale 0: nothing guided, the
    debug record still counts the model's calls, pixel-evaluations and seconds)."""
    payload: dict[str, Any] = {"sampler_name": sampler}
    if scheduler:
        payload["scheduler"] = scheduler
    body, records = cascading.run(CASCADE, **payload)
    record = only_record(records)
    check_cascade(record, sampler, scheduler)
    text = infotext(body)
    assert "RC cascade: true" in text and "Size: 64x64" in text and "Hires resize: 128x128" in text
    assert "RC error" not in text and "RC note" not in text
    assert image_size(body["images"][0]) == (128, 128)
    hires_steps = record["cascade"]["hires_steps"]
    assert f"Hires steps: {hires_steps}" in text
    g = re.search(r"RC guided steps: (\d+)-(\d+)/20", text)
    assert g and int(g.group(1)) >= record["passes"][1]["user_steps"][0] + 1
    # model work below a plain 128x128 run of the same steps (pixel-evaluations counted by the adapter)
    plain_body, plain_records = cascading.run({"enabled": True, "scale": 0}, **payload)
    plain = only_record(plain_records)
    assert plain["pixel_evals"] > 0 and record["pixel_evals"] < plain["pixel_evals"]
    assert record["pixel_evals"] / plain["pixel_evals"] == pytest.approx(
        record["cascade"]["rel_pixel_evals"], rel=0.02)
    TIMES[sampler] = {"cascade_model_s": record["model_seconds"] + record["low_seconds"],
                      "plain_model_s": plain["model_seconds"],
                      "rel_pixel_evals": record["pixel_evals"] / plain["pixel_evals"]}
    assert image_size(plain_body["images"][0]) == (128, 128)


@A1111_ONLY
@pytest.mark.parametrize("sampler", ["DDIM", "UniPC"])
def test_samplers_without_sigmas_step_aside(cascading: Cascading, sampler: str) -> None:
    body, records = cascading.run(CASCADE, sampler_name=sampler)
    record = only_record(records)
    assert "cascade" not in record and [p["pass"] for p in record["passes"]] == ["first"]
    assert record["low_calls"] > 0  # guided in one pass at 128x128, as without the cascade
    text = infotext(body)
    assert f"cascade not applied: {sampler} has no sigma schedule" in text  # RC note (quoted: it has a colon)
    assert "Size: 128x128" in text and "Hires" not in text


@A1111_ONLY
@pytest.mark.parametrize("name,payload", [
    ("batch", {"batch_size": 2, "n_iter": 2}),
    ("sd2v", {"override_settings": {"sd_model_checkpoint": "tiny-sd2v"}}),
    ("sdxl", {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}),
])
def test_cascade_features(cascading: Cascading, name: str, payload: dict[str, Any]) -> None:
    model = payload.get("override_settings", {}).get("sd_model_checkpoint", "tiny-sd1").removeprefix("tiny-")
    if model not in cascading.server.checkpoints:
        pytest.skip(f"tiny-{model} not built")
    body, records = cascading.run(CASCADE, sampler_name="DPM++ 2M", scheduler="Karras", **payload)
    record = only_record(records)
    batches = payload.get("n_iter", 1)
    assert [p["pass"] for p in record["passes"]] == ["first", "hires"] * batches
    assert [p["handover"] for p in record["passes"][1::2]] == ["renoise"] * batches
    cas = record["cascade"]
    assert len(calls_of(record, "first")) == batches * cas["stage_calls"][0]
    assert len(calls_of(record, "hires")) == batches * cas["stage_calls"][1]
    assert record["low_calls"] == batches * sum(cas["low_calls"][1])
    assert len(body["info"]["infotexts"]) == batches * payload.get("batch_size", 1)
    assert "RC error" not in infotext(body)


@A1111_ONLY
def test_user_hires_fix_yields_to_the_cascade(cascading: Cascading) -> None:
    """Hires. fix ticked: its target is the output size; its steps and strength are replaced, its upscaler kept."""
    hires = {"width": 64, "height": 64, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent (bicubic)",
             "denoising_strength": 0.7, "hr_second_pass_steps": 30}
    body, records = cascading.run(CASCADE, sampler_name="DPM++ 2M", scheduler="Karras", **hires)
    record = only_record(records)
    text = infotext(body)
    assert image_size(body["images"][0]) == (128, 128)
    assert f"Hires steps: {record['cascade']['hires_steps']}" in text and "Hires steps: 30" not in text
    assert "Hires upscaler: Latent (bicubic)" in text
    assert f"Denoising strength: {record['cascade']['strength']}" in text


@A1111_ONLY
def test_infotext_and_paste_reproduce_the_image(cascading: Cascading) -> None:
    body, _ = cascading.run(CASCADE, sampler_name="DPM++ 2M", scheduler="Karras")
    info = cascading.server.post("/sdapi/v1/png-info", {"image": body["images"][0]})
    params = info["parameters"]
    restored = S.from_infotext(params)
    assert restored is not None and restored.cascade is True
    w, h = int(params["Size-1"]), int(params["Size-2"])
    rx, ry = int(params["Hires resize-1"]), int(params["Hires resize-2"])
    assert (w, h, rx, ry) == (64, 64, 128, 128)
    again = cascading.server.txt2img(
        prompt=body["info"]["prompt"], steps=STEPS, width=w, height=h, seed=int(params["Seed"]),
        sampler_name="DPM++ 2M", scheduler="Karras", enable_hr=True, hr_resize_x=rx, hr_resize_y=ry,
        hr_upscaler=params["Hires upscaler"], denoising_strength=float(params["Denoising strength"]),
        hr_second_pass_steps=int(params["Hires steps"]), cfg_scale=float(params["CFG scale"]),
        alwayson_scripts={kit.EXTENSION_TITLE: {"args": [restored.to_dict()]}},
    )
    assert again["images"] == body["images"]


def test_cascade_off_is_bit_identical_and_leaves_no_state(cascading: Cascading) -> None:
    base = cascading.server.txt2img(**SIZE, sampler_name="DPM++ 2M", scheduler="Karras")
    guided_off, _ = cascading.run({"enabled": True, "factor_h": 2, "factor_w": 2}, sampler_name="DPM++ 2M",
                                  scheduler="Karras")
    guided_false, _ = cascading.run({"enabled": True, "factor_h": 2, "factor_w": 2, "cascade": False},
                                    sampler_name="DPM++ 2M", scheduler="Karras")
    assert guided_off["images"] == guided_false["images"]
    disabled, records = cascading.run({"enabled": False, "cascade": True}, sampler_name="DPM++ 2M",
                                      scheduler="Karras")
    assert records == [] and disabled["images"] == base["images"]
    cascading.run(CASCADE, sampler_name="DPM++ 2M", scheduler="Karras")
    after = cascading.server.txt2img(**SIZE, sampler_name="DPM++ 2M", scheduler="Karras")
    assert after["images"] == base["images"] and after["info"]["infotexts"] == base["info"]["infotexts"]


@A1111_ONLY
def test_model_time_at_512(cascading: Cascading) -> None:
    """512×512 (first pass 256×256): the model's seconds of a cascade and of a plain run, measured side by side
    and written to cascade-model-time.json (at 128×128 the tiny UNet's calls cost the same at any size, so
    its seconds follow the call count there, not the pixels). Only the pixel-evaluations are asserted."""
    size = {"width": 512, "height": 512, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    rows = []
    for _ in range(2):  # alternate, twice
        _, cas = cascading.run(CASCADE, **size)
        _, plain = cascading.run({"enabled": True, "scale": 0}, **size)
        rows.append((only_record(cas), only_record(plain)))
    cas_s = sum(c["model_seconds"] + c["low_seconds"] for c, _ in rows)
    plain_s = sum(p["model_seconds"] for _, p in rows)
    ratio = rows[0][0]["pixel_evals"] / rows[0][1]["pixel_evals"]
    TIMES["512x512 DPM++ 2M Karras (2 runs each)"] = {"cascade_model_s": cas_s, "plain_model_s": plain_s,
                                                     "rel_pixel_evals": ratio}
    assert ratio == pytest.approx(rows[0][0]["cascade"]["rel_pixel_evals"], rel=0.02) and ratio < 1


@A1111_ONLY
def test_cascade_with_fitted_resamplers(cascading: Cascading) -> None:
    """Cascade and ``resampler = fitted``: the hires pass is guided with the VAE's fitted 2×2 resamplers (the
    unguided native pass needs none), the calls are as planned, the infotext says so, the image differs from the
    pooled cascade's and repeats bit for bit."""
    rc = dict(CASCADE, resampler="fitted")
    body, records = cascading.run(rc, sampler_name="DPM++ 2M", scheduler="Karras")
    record = only_record(records)
    check_cascade(record, "DPM++ 2M", "Karras")
    first, hires = record["passes"][:2]
    assert first.get("resamplers") is None and hires["resamplers"] == [[2, 2]]
    text = infotext(body)
    assert "RC resampler: fitted" in text and "RC note" not in text and "RC error" not in text, text
    pooled, _ = cascading.run(CASCADE, sampler_name="DPM++ 2M", scheduler="Karras")
    again, _ = cascading.run(rc, sampler_name="DPM++ 2M", scheduler="Karras")
    assert again["images"] == body["images"] != pooled["images"]


@pytest.mark.skipif(not kit.is_forge(), reason="Forge only (in A1111 the cascade runs)")
def test_forge_steps_aside(cascading: Cascading) -> None:
    """Forge samples its passes through its own backend: the request stays one guided pass at the size asked
    for, and the infotext says why the cascade did not run."""
    body, records = cascading.run(CASCADE, sampler_name="DPM++ 2M", scheduler="Karras")
    record = only_record(records)
    assert "cascade" not in record and [p["pass"] for p in record["passes"]] == ["first"]
    assert record["low_calls"] > 0
    text = infotext(body)
    assert "cascade not applied: the cascade runs in A1111" in text and "RC error" not in text
    assert "Size: 128x128" in text and "Hires" not in text
    assert image_size(body["images"][0]) == (128, 128)
