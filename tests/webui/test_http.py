"""HTTP scenarios against a real A1111 WebUI or Forge with the extension linked in (the kit's API-only suite).

These tests know the extension only by its script title and by the API contract of issue 4: the positional
``alwayson_scripts`` list starts with the enable checkbox, and a single dict of named fields is accepted,
whose unknown names fail the request naming the field. Everything else is the WebUI's own behaviour, which
the extension must leave alone when it is disabled.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    pytest.skip(kit.SKIP_REASON, allow_module_level=True)

TITLE = kit.EXTENSION_TITLE
ENABLED = {TITLE: {"args": [True]}}  # positional form: the enable checkbox comes first

SAMPLERS = [
    ("Euler", None),
    ("Euler a", None),
    ("DPM++ 2M", "Karras"),
    ("Heun", None),
    ("DDIM", None),
    ("UniPC", None),
]

# WebUI features the extension must coexist with. Hires fix needs an explicit denoising_strength (without
# it A1111 1.10 fails), and only latent or PIL upscalers: model upscalers would download weights. (In Forge the kit
# adds the hires-fix fields its API needs, see kit.WebUI.txt2img.)
SCENARIOS: dict[str, dict[str, Any]] = {
    "plain": {},
    "batch2_count2": {"batch_size": 2, "n_iter": 2},
    "hires_latent": {
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "denoising_strength": 0.5,
        "hr_second_pass_steps": 3,
    },
    "hires_lanczos": {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.4},
    "and_prompt": {"prompt": "a red ball AND a blue cube :0.7"},
    "negative": {"negative_prompt": "blurry, text"},
    "cfg1": {"cfg_scale": 1, "negative_prompt": "ignored at CFG 1"},
    "odd_size": {"width": 136, "height": 120},
}


def images(body: dict[str, Any]) -> list[bytes]:
    """The decoded PNG files of one answer."""
    return [kit.image_bytes(b64) for b64 in body["images"]]


def n_generated(body: dict[str, Any]) -> int:
    """How many images were generated (a grid, when the WebUI adds one, is not counted)."""
    return len(body["info"]["infotexts"])


def test_checkpoints_are_complete_and_small(tiny_checkpoints: dict[str, Any]) -> None:
    """Every tiny checkpoint exists and stays small; A1111's have their architecture .yaml beside them (Forge guesses
    the architecture from the weights)."""
    assert tiny_checkpoints, "no checkpoint built"
    for family, path in tiny_checkpoints.items():
        assert path.exists(), family
        assert kit.is_forge() or path.with_suffix(".yaml").exists(), family
        limit = kit.MAX_CHECKPOINT_MIB[kit.host() or "a1111"]
        assert path.stat().st_size < limit * 2**20, (family, path.stat().st_size)


def test_server_lists_the_tiny_models(webui: kit.WebUI) -> None:
    """The server sees every built checkpoint in its --ckpt-dir."""
    names = {m["model_name"] for m in webui.get("/sdapi/v1/sd-models")}
    assert {f"tiny-{f}" for f in webui.checkpoints} <= names


@pytest.mark.parametrize("family", kit.FAMILIES)
def test_each_family_generates_and_follows_the_prompt(webui: kit.WebUI, family: str) -> None:
    """Each model family loads, generates deterministically, and its text encoder reaches the UNet."""
    if family not in webui.checkpoints:
        pytest.skip(kit.not_built(family))
    override = {"override_settings": {"sd_model_checkpoint": f"tiny-{family}"}}
    first = webui.txt2img(prompt="a cat", **override)
    assert first["info"]["sd_model_name"] == f"tiny-{family}"
    again = webui.txt2img(prompt="a cat", **override)
    other = webui.txt2img(prompt="a dog", **override)
    assert images(first) == images(again), "same request, same image"
    assert images(first) != images(other), "the prompt must change the image (zero-initialised layers?)"


@pytest.mark.parametrize(("sampler", "scheduler"), SAMPLERS, ids=[s for s, _ in SAMPLERS])
def test_sampler_families_run_deterministically(webui: kit.WebUI, sampler: str, scheduler: str | None) -> None:
    """Every sampler family of the issue runs, disabled, and repeats bit for bit."""
    extra = {"scheduler": scheduler} if scheduler else {}
    one = webui.txt2img(sampler_name=sampler, **extra)
    two = webui.txt2img(sampler_name=sampler, **extra)
    assert one["info"]["sampler_name"] == sampler
    assert images(one) == images(two)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_webui_scenarios_disabled(webui: kit.WebUI, name: str) -> None:
    """The WebUI features the extension must coexist with work with the extension present but disabled."""
    body = webui.txt2img(**SCENARIOS[name])
    expected = SCENARIOS[name].get("batch_size", 1) * SCENARIOS[name].get("n_iter", 1)
    assert n_generated(body) == expected


def test_extension_is_registered(webui: kit.WebUI) -> None:
    """The extension's script is loaded as an always-on txt2img script."""
    scripts = webui.get("/sdapi/v1/script-info")
    txt2img = [s for s in scripts if s["name"] == TITLE.lower() and not s["is_img2img"]]
    assert txt2img, f"no txt2img script titled {TITLE!r}; log:\n{webui.log_tail()}"
    assert txt2img[0]["is_alwayson"]


def test_png_info_round_trip(webui: kit.WebUI) -> None:
    """The infotext written into the PNG comes back unchanged through /sdapi/v1/png-info."""
    body = webui.txt2img(prompt="a cat", negative_prompt="a dog", seed=7)
    info = webui.post("/sdapi/v1/png-info", {"image": body["images"][0]})
    assert info["info"] == body["info"]["infotexts"][0]
    assert str(info["parameters"]["Seed"]) == "7"


def test_invalid_requests_keep_the_server_healthy(healthy_after: kit.WebUI) -> None:
    """Bad requests fail cleanly; the fixture then checks that the server still answers."""
    webui = healthy_after
    # (An unknown sampler name is no error in A1111 1.10 or Forge: it is "autocorrected" to the default sampler.)
    status, _ = webui.request("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": "many"})
    assert status == 422
    status, body = webui.request(
        "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "alwayson_scripts": {"No Such Script": {"args": []}}}
    )
    assert status == 422, body
    assert n_generated(webui.txt2img()) == 1


def test_extension_rejects_an_unknown_field_naming_it(healthy_after: kit.WebUI) -> None:
    """Issue 4: in the dict form, an unknown name fails the request with a message naming the field."""
    bad = {TITLE: {"args": [{"no_such_field_xyz": 1}]}}
    status, body = healthy_after.request(
        "POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": bad}
    )
    assert status != 200, "an unknown field must fail the request"
    assert "no_such_field_xyz" in json.dumps(body), body


# Disabled runs compared bit for bit with a fresh server that never saw the extension.
IDENTITY_RUNS: list[dict[str, Any]] = [
    {"sampler_name": "Euler", "prompt": "a cat"},
    {"sampler_name": "Euler a", "prompt": "a cat AND a dog", "negative_prompt": "blurry"},
    {"sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2, "seed": 3},
    {"sampler_name": "DDIM", "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5},
]


def test_disabled_run_is_bit_identical_to_a_fresh_server(webui: kit.WebUI, start_webui: Any) -> None:
    """No state leak: after enabled runs and a failed run, disabled runs equal a fresh server's, bit for bit.

    The reference server runs without the extension, so this also proves that "disabled" costs nothing:
    not in pixels, not in the infotext. Disabled is checked both ways: the script not named at all, and
    named with the enable checkbox off.
    """
    for run in IDENTITY_RUNS[:2]:
        webui.request("POST", "/sdapi/v1/txt2img", dict(run, steps=4, width=128, height=128, alwayson_scripts=ENABLED))
    failing = {TITLE: {"args": [{"no_such_field_xyz": 1}]}}
    webui.request("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "alwayson_scripts": failing})
    after = [webui.txt2img(**run) for run in IDENTITY_RUNS]
    off = [webui.txt2img(**run, alwayson_scripts={TITLE: {"args": [False]}}) for run in IDENTITY_RUNS]

    fresh = start_webui(ckpt="sd1", extension=False)
    try:
        reference = [fresh.txt2img(**run) for run in IDENTITY_RUNS]
    finally:
        fresh.stop()
    for run, got, got_off, ref in zip(IDENTITY_RUNS, after, off, reference):
        assert images(got) == images(ref), ("not named", run)
        assert got["info"]["infotexts"] == ref["info"]["infotexts"], ("not named", run)
        assert images(got_off) == images(ref), ("enable unchecked", run)
        assert got_off["info"]["infotexts"] == ref["info"]["infotexts"], ("enable unchecked", run)
