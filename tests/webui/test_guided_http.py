"""Guided runs over HTTP in a real A1111 WebUI or Forge: samplers, model-call counts, features, API forms, infotext,
prompts.

The extension's debug record (one JSON line per generation, written to the file named by ``RC_DEBUG_LOG``)
is how these tests observe what happened inside the sampler: the number of model calls, the low-resolution
calls per call, the passes and the prompt switch. The env variable is used rather than the ``rc_debug``
option because under ``--nowebui`` A1111 never registers an extension's options (``on_ui_settings`` runs only
when the UI is built). Requests use the public API of issue 4: the positional ``args`` list (``ui()`` order,
enable first) or one dict of named fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)

TITLE = kit.EXTENSION_TITLE
STEPS = 6
# Guidance on every model call: the counts below are then exact.
EVERY_CALL = {"enabled": True, "factor_h": 2, "factor_w": 2, "window": "fraction", "shape": "constant"}

# Model calls (CFG-denoiser calls, cond and uncond batched) per generation of N steps in A1111 1.10.1 and in Forge
# (dfdcbab6: the same counts), as this kit measures them, and how many of them a window over all steps guides:
# first-order samplers N of N; Heun 2N-1 (no second call on the last step); DDIM N; UniPC N+1, whose extra last
# call lies past the last step and stays unguided.
MODEL_CALLS = {
    "Euler": (lambda n: n, lambda n: n),
    "Euler a": (lambda n: n, lambda n: n),
    "DPM++ 2M": (lambda n: n, lambda n: n),
    "Heun": (lambda n: 2 * n - 1, lambda n: 2 * n - 1),
    "DDIM": (lambda n: n, lambda n: n),
    "UniPC": (lambda n: n + 1, lambda n: n),
}
SCHEDULERS = {"DPM++ 2M": "Karras"}
# A request that fits resamplers: Forge's full-size VAE took 280-290 s on a 2-core CPU (the tiny ones 15-20 s).
FIT_TIMEOUT = 1200


class Guided:
    """A server started with the debug log on, and a reader of the records each request appends."""

    def __init__(self, server: kit.WebUI, log: Path) -> None:
        self.server = server
        self.log = log

    def _lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []

    def run(self, rc: Any, **payload: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """txt2img with the extension's ``args`` = ``[rc]`` (dict form) or ``rc`` (a list: positional form).

        Returns the answer and the debug records that generation appended (one per generation, batch count
        included; none when the extension was not enabled).
        """
        seen = len(self._lines())
        args = rc if isinstance(rc, list) else [rc]
        body = self.server.txt2img(steps=STEPS, alwayson_scripts={TITLE: {"args": args}}, **payload)
        return body, [json.loads(line) for line in self._lines()[seen:]]


@pytest.fixture(scope="module")
def guided(start_webui: Any, kit_dir: Path) -> Iterator[Guided]:
    """An API-only server of its own (SD1), with ``RC_DEBUG_LOG`` set."""
    log = kit_dir / "rc-debug.jsonl"
    log.unlink(missing_ok=True)
    server = start_webui(ckpt="sd1", env={"RC_DEBUG_LOG": str(log)})
    yield Guided(server, log)
    server.stop()


def infotext(body: dict[str, Any], i: int = 0) -> str:
    """The generation-parameters line of image i."""
    return body["info"]["infotexts"][i].split("\n")[-1]


def only_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The single debug record of a one-generation request, checked to have finished guided."""
    assert len(records) == 1, records
    record = records[0]
    assert record["failed"] is None, record["failed"]
    return record


def disabled_image(guided: Guided, **payload: Any) -> list[bytes]:
    """The same request with the extension off."""
    body, records = guided.run({"enabled": False}, **payload)
    assert records == []
    return [kit.image_bytes(b) for b in body["images"]]


@pytest.mark.parametrize("sampler", list(MODEL_CALLS))
def test_every_sampler_one_low_res_call_per_model_call(guided: Guided, sampler: str) -> None:
    """Every sampler family is guided: one batched low-res call per guided model call, image changed."""
    payload: dict[str, Any] = {"sampler_name": sampler}
    if sampler in SCHEDULERS:
        payload["scheduler"] = SCHEDULERS[sampler]
    body, records = guided.run(EVERY_CALL, **payload)
    record = only_record(records)
    calls, guided_calls = (f(STEPS) for f in MODEL_CALLS[sampler])
    assert record["model_calls"] == calls
    assert record["low_calls"] == guided_calls
    assert [c["low_calls"] for c in record["calls"]] == [1] * guided_calls + [0] * (calls - guided_calls)
    text = infotext(body)
    assert "RC factor: 2" in text and "RC error" not in text
    assert [kit.image_bytes(b) for b in body["images"]] != disabled_image(guided, **payload)


def test_auto_window_guides_a_prefix_of_the_steps(guided: Guided) -> None:
    """With the automatic window, the guided calls are the first ones, as the infotext's step range says."""
    body, records = guided.run({"enabled": True, "factor_h": 2, "factor_w": 2})
    record = only_record(records)
    match = re.search(r"RC guided steps: (\d+)-(\d+)/(\d+)", infotext(body))
    assert match, infotext(body)
    first, last, n = map(int, match.groups())
    per_call = [c["low_calls"] for c in record["calls"]]
    assert n == STEPS and first == 1  # 1-based, inclusive
    assert per_call == [1] * last + [0] * (STEPS - last)


def test_four_times_nests_two_levels(guided: Guided) -> None:
    """Factor 4 with nesting: two 2x levels, so two low-res calls per model call."""
    _, records = guided.run(dict(EVERY_CALL, factor_h=4, factor_w=4))
    record = only_record(records)
    assert record["passes"][0]["levels"] == [[2, 2], [2, 2]]
    assert record["low_calls"] == 2 * record["model_calls"]


FEATURES: dict[str, dict[str, Any]] = {
    "batch_size2": {"batch_size": 2},
    "and_negative": {"prompt": "a cat AND a dog :0.5", "negative_prompt": "blurry"},
    "cfg1": {"cfg_scale": 1},
    "odd_size": {"width": 136, "height": 120},
    "sd2v": {"override_settings": {"sd_model_checkpoint": "tiny-sd2v"}},
    "sdxl": {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}},
}


@pytest.mark.parametrize("name", list(FEATURES))
def test_features_guided(guided: Guided, name: str) -> None:
    """Batches, AND and negative prompts, CFG 1, undivided sizes and the other families run guided."""
    payload = FEATURES[name]
    model = payload.get("override_settings", {}).get("sd_model_checkpoint", "tiny-sd1").removeprefix("tiny-")
    if model not in guided.server.checkpoints:
        pytest.skip(kit.not_built(model))
    body, records = guided.run(EVERY_CALL, **payload)
    record = only_record(records)
    assert record["low_calls"] == record["model_calls"] == STEPS
    assert len(body["info"]["infotexts"]) == payload.get("batch_size", 1)


def test_batch_count_two_is_guided_per_batch(guided: Guided) -> None:
    """Batch count 2: both batches guided, each with its own pass plan."""
    body, records = guided.run(EVERY_CALL, n_iter=2)
    record = only_record(records)
    assert [p["pass"] for p in record["passes"]] == ["first", "first"]
    assert record["low_calls"] == record["model_calls"] == 2 * STEPS
    assert len(body["info"]["infotexts"]) == 2


@pytest.mark.parametrize("passes", ["first", "hires", "both"])
def test_hires_fix_passes(guided: Guided, passes: str) -> None:
    """Hires fix: the passes setting decides which sampling passes are guided."""
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    body, records = guided.run(dict(EVERY_CALL, passes=passes), **hires)
    record = only_record(records)
    want = {"first": ["first"], "hires": ["hires"], "both": ["first", "hires"]}[passes]
    assert [p["pass"] for p in record["passes"]] == want
    assert record["low_calls"] > 0
    assert "RC error" not in infotext(body)


def test_positional_and_dict_forms_agree(guided: Guided) -> None:
    """The positional list (ui() order: enabled, preset, scale, factor_h, factor_w) equals the dict form."""
    positional, _ = guided.run([True, "Auto", 1.0, 2, 2])
    named, _ = guided.run({"enabled": True, "scale": 1.0, "factor_h": 2, "factor_w": 2})
    assert positional["images"] == named["images"]
    assert positional["info"]["infotexts"] == named["info"]["infotexts"]


def test_out_of_range_value_fails_naming_the_field(healthy_after: kit.WebUI) -> None:
    """An out-of-range value fails the request with a message that names the field."""
    status, body = healthy_after.request(
        "POST",
        "/sdapi/v1/txt2img",
        {"prompt": "x", "steps": 2, "alwayson_scripts": {TITLE: {"args": [{"enabled": True, "scale": 99}]}}},
    )
    assert status == 422, body
    assert "scale" in json.dumps(body)


def test_guided_infotext_round_trip(guided: Guided) -> None:
    """Every RC key written into the PNG comes back through /sdapi/v1/png-info, and restores the settings."""
    from lib_chroma import settings as S

    request = dict(EVERY_CALL, scale=1.25, prompt_mode="fields", layout_prompt="a red ball", detail_prompt="a cube")
    body, _ = guided.run(request)
    info = guided.server.post("/sdapi/v1/png-info", {"image": body["images"][0]})
    assert info["info"] == body["info"]["infotexts"][0]
    written = dict(item.split(": ", 1) for item in infotext(body).split(", ") if item.startswith("RC "))
    assert written and all(str(info["parameters"].get(k)) == v for k, v in written.items()), written
    restored = S.from_infotext(info["parameters"])
    assert restored is not None
    assert restored.to_dict() == S.from_dict(request, family="sd1").to_dict()


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_prompt_switches_at_the_computed_step(guided: Guided, sampler: str) -> None:
    """Time-dependent prompts: the conditioning changes at exactly the step the infotext reports."""
    rc = dict(EVERY_CALL, prompt_mode="fields", layout_prompt="a red ball", detail_prompt="a blue cube", switch_level=2)
    body, records = guided.run(rc, sampler_name=sampler, prompt="a scene")
    record = only_record(records)
    match = re.search(r"RC switch step: (\d+)/(\d+)", infotext(body))
    assert match, infotext(body)
    step = int(match.group(1)) - 1  # the infotext is 1-based, the debug record 0-based
    assert 0 < step < STEPS
    assert record["prompts"][0]["switch_step"] == step
    assert [c["call"] for c in record["cond_changes"]] == [step]
    assert body["info"]["infotexts"][0].startswith("a scene\n"), "the infotext keeps the user's prompt"


@pytest.mark.parametrize("sampler", list(MODEL_CALLS))
def test_moving_grid_phase_is_the_pass_model_call(guided: Guided, sampler: str) -> None:
    """The moving pooling grid: call k of the pass pools at phase k (Heun's two calls per step included); the
    image differs from the fixed grid's and a repeat is bit-identical."""
    payload: dict[str, Any] = {"sampler_name": sampler}
    if sampler in SCHEDULERS:
        payload["scheduler"] = SCHEDULERS[sampler]
    rc = dict(EVERY_CALL, grid="moving")
    body, records = guided.run(rc, **payload)
    record = only_record(records)
    assert [c["phase"] for c in record["calls"]] == list(range(MODEL_CALLS[sampler][0](STEPS)))
    assert "RC grid: moving" in infotext(body)
    fixed, _ = guided.run(dict(rc, grid="fixed"), **payload)
    again, _ = guided.run(rc, **payload)
    assert again["images"] == body["images"] != fixed["images"]


def test_moving_grid_restarts_for_every_batch_and_pass(guided: Guided) -> None:
    """Batch count 2 with hires fix on both passes: four passes, each counting its model calls from 0."""
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    body, records = guided.run(dict(EVERY_CALL, grid="moving", passes="both"), n_iter=2, **hires)
    record = only_record(records)
    assert [p["pass"] for p in record["passes"]] == ["first", "hires", "first", "hires"]
    phases = [c["phase"] for c in record["calls"]]
    starts = [i for i, ph in enumerate(phases) if ph == 0]
    assert len(starts) == 4 and starts[0] == 0
    assert all(ph == phases[i - 1] + 1 for i, ph in enumerate(phases) if i not in starts)
    assert [record["calls"][i]["pass"] for i in starts] == ["first", "hires", "first", "hires"]
    assert len(body["info"]["infotexts"]) == 2


@pytest.mark.parametrize("model", ["sd2v", "sdxl"])
def test_moving_grid_other_families(guided: Guided, model: str) -> None:
    """SD2-v and SDXL guided on the moving grid: one low-res call per model call, no error."""
    if model not in guided.server.checkpoints:
        pytest.skip(kit.not_built(model))
    body, records = guided.run(dict(EVERY_CALL, grid="moving"),
                               override_settings={"sd_model_checkpoint": f"tiny-{model}"})
    record = only_record(records)
    assert record["low_calls"] == record["model_calls"] == STEPS
    assert "RC error" not in infotext(body)


@pytest.mark.parametrize("model", ["sd1", "sd2v", "sdxl"])
def test_fitted_resamplers_in_every_family(guided: Guided, model: str) -> None:
    """``resampler = fitted``: resamplers fitted to the checkpoint's own VAE on the first request (the debug record
    names the level they serve), the infotext says so, the image differs from pooling's; the next request, with
    the fit cached, gives the same image bit for bit (the fit takes nothing from the seed's random numbers), the
    fit is saved in the WebUI's cache dir, and a disabled request afterwards equals one made before."""
    if model not in guided.server.checkpoints:
        pytest.skip(kit.not_built(model))
    payload: dict[str, Any] = {"sampler_name": "Euler a", "seed": 11,
                               "override_settings": {"sd_model_checkpoint": f"tiny-{model}"}}
    before = disabled_image(guided, **payload)
    rc = dict(EVERY_CALL, resampler="fitted")
    cold, records = guided.run(rc, request_timeout=FIT_TIMEOUT, **payload)
    record = only_record(records)
    assert record["passes"][0]["resamplers"] == [[2, 2]]
    assert record["passes"][0]["resampler_keep"] == [0.9]
    assert record["low_calls"] == record["model_calls"]
    text = infotext(cold)
    assert "RC resampler: fitted" in text and "RC note" not in text and "RC error" not in text, text
    # kept in the WebUI's cache dir (--data-dir/cache), one file per VAE and factor, for the next start
    saved = sorted((guided.server.data_dir / "cache" / "resolution-chromatography").glob("*-2x2.safetensors"))
    assert saved, "no fitted resamplers in the WebUI's cache dir"
    warm, _ = guided.run(rc, **payload)
    pooled, _ = guided.run(EVERY_CALL, **payload)
    assert warm["images"] == cold["images"] != pooled["images"]
    assert disabled_image(guided, **payload) == before


def test_fitted_resamplers_are_loaded_after_a_restart(start_webui: Any, kit_dir: Path) -> None:
    """The fit is kept in the WebUI's cache dir (here ``SD_WEBUI_CACHE_DIR``): a second server with the same cache
    dir fits nothing (no "fitted" line in its log) and gives the first server's image bit for bit."""
    import shutil

    cache = kit_dir / "rc-cache-restart"
    shutil.rmtree(cache, ignore_errors=True)
    payload: dict[str, Any] = {"sampler_name": "Euler a", "seed": 11, "steps": STEPS,
                               "alwayson_scripts": {TITLE: {"args": [dict(EVERY_CALL, resampler="fitted")]}}}
    images, logs = [], []
    for _ in range(2):
        server = start_webui(ckpt="sd1", env={"SD_WEBUI_CACHE_DIR": str(cache)})
        try:
            body = server.txt2img(request_timeout=FIT_TIMEOUT, **payload)
            assert "RC note" not in infotext(body) and "RC resampler: fitted" in infotext(body)
            images.append(body["images"])
            logs.append(server.log_path.read_text(encoding="utf-8", errors="replace"))
        finally:
            server.stop()
    saved = list((cache / "resolution-chromatography").glob("*-2x2.safetensors"))
    assert len(saved) == 1
    assert "fitted 2x2 resamplers" in logs[0] and "fitted 2x2 resamplers" not in logs[1], logs[1][-2000:]
    assert images[0] == images[1]
