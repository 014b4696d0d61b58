"""The curves CLI: JSON fields, PNG output, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from lib_chroma.__main__ import main


def test_curves_json_has_the_documented_fields(capsys):
    assert main(["curves", "--model", "sd1", "--sampler", "Euler", "--scheduler", "Karras", "--steps", "20",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["sigmas"]) == 21 and rep["sigmas"][-1] == 0.0
    assert set(rep["levels"]) == {"1", "2", "4", "8"}
    for lvl in rep["levels"].values():
        assert len(lvl["ratio"]) == 21 and len(lvl["per_step"]) == 20 and 0 <= lvl["peak_step"] < 20
    assert rep["native"] == {"width": 512, "height": 512} and rep["factor"] == {"h": 2, "w": 2}
    win = rep["guidance_window"]
    assert 0 <= win["first_step"] <= win["last_step"] < 20
    assert 0 < rep["switch"]["step"] < 20 and "." in rep["switch"]["fraction"]


def test_no_guidance_at_native_size(capsys):
    assert main(["curves", "--width", "512", "--height", "512", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["guidance_window"] is None and rep["factor"] == {"h": 1, "w": 1}


def test_per_axis_factor_for_non_square(capsys):
    assert main(["curves", "--width", "1536", "--height", "1024", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["factor"] == {"h": 2, "w": 3}


def test_png_is_written(tmp_path):
    out = tmp_path / "c.png"
    assert main(["curves", "--png", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


@pytest.mark.parametrize("args, field", [
    (["--scheduler", "Bogus"], "scheduler"),
    (["--steps", "0"], "steps"),
    (["--sampler", "Nope"], "sampler"),
    (["--levels", "0,2"], "levels"),
    (["--factor", "0"], "factor_h"),
])
def test_bad_input_is_one_line_and_exit_2(args, field):
    proc = subprocess.run([sys.executable, "-m", "lib_chroma", "curves", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.lower().startswith(("warn", "  "))]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), proc.stderr


def test_model_option_picks_the_latent_commands(monkeypatch):
    import lib_chroma.toy.latent.train as latent_train
    import lib_chroma.toy.train as toy_train

    seen = []
    monkeypatch.setattr(latent_train, "train_main", lambda argv: seen.append(("latent", argv)) or 0)
    monkeypatch.setattr(toy_train, "train_main", lambda argv: seen.append(("toy", argv)) or 0)
    assert main(["train", "--model", "latent", "--steps", "3"]) == 0
    assert main(["train", "--steps", "4", "--model=toy"]) == 0
    assert main(["train", "--steps", "5"]) == 0
    assert seen == [("latent", ["--steps", "3"]), ("toy", ["--steps", "4"]), ("toy", ["--steps", "5"])]


@pytest.mark.parametrize("args", [["train", "--model", "sdxl"], ["train", "--model"]])
def test_unknown_model_is_one_line_and_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model:")
