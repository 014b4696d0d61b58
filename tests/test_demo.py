"""The demo's latent-model rows (the README's main command shows both models)."""

from __future__ import annotations

from lib_chroma.settings import LATENT_Q_END
from lib_chroma.toy.latent import runs
from lib_chroma.toy.latent.demo import PROGRESS_UNITS, latent_demo


def test_latent_demo_rows_grid_and_calls(tmp_path) -> None:
    seen: list[tuple[int, str]] = []
    res = latent_demo(2, 0, tmp_path, steps=3, progress=lambda k, label: seen.append((k, label)))
    rows = res["table"]
    assert [r["size"] for r in rows] == ["64x64", "128x128", "128x128", "128x128"]
    assert rows[0]["calls"] == {"16x16": 3} and rows[1]["calls"] == {"32x32": 3}
    webui, library = rows[2], rows[3]
    assert "WebUI default" in webui["method"] and "library default" in library["method"]
    # the WebUI's default holds through the last step: one low call per step; the library's closes earlier
    win = runs.make_plan((2, 2), 3, q_end=LATENT_Q_END).active_steps(runs.latent_sigmas("dpmpp_2m", 3))
    assert webui["calls"] == {"16x16": len(win), "32x32": 3} and len(win) == 3
    assert library["calls"]["16x16"] <= 3
    assert all(0.0 <= r["proper_face"] <= 1.0 for r in rows) and len(res["prompts"]) == 2
    assert (tmp_path / "latent_grid.png").stat().st_size > 0
    assert sum(k for k, _ in seen) == 2 * PROGRESS_UNITS == 2 * 15
    assert all(label.startswith("latent ") for _, label in seen)
