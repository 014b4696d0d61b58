"""The latent model's part of the embedded demo (``python -m lib_chroma demo``): the same prompts and seeds in
every row, DPM++ 2M Karras 20 steps at CFG 5: native 64 px, plain 2x (128 px), and 2x upsample guidance with the
WebUI's default for its latent families (hold through the last step, :data:`lib_chroma.settings.LATENT_Q_END`)
and with the library's (the pixel toy's) window end. Writes ``latent_grid.png`` and returns the score table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib_chroma.settings import LATENT_Q_END

from . import runs, scorer, text
from .train import load_model

NATIVE = 16  # latent pixels (64 px)
#: Progress units per sample (native-size sample = 1): native, plain 2x, two guided 2x rows.
PROGRESS_UNITS = 1 + 4 + 5 + 5


def latent_demo(n: int, seed: int, out: Path, steps: int = 20, cfg: float = 5.0,
                progress: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    """Sample, score (:mod:`lib_chroma.toy.latent.scorer`) and draw the rows; returns ``{"prompts", "table"}``.
    ``progress(k, label)`` gets native-size sample units (a 2x sample counts 4, a guided one 5)."""
    from ..demo import _grid_png

    model = load_model(None)
    unet = runs.CountingUNet(model.unet)
    prompts = text.prompt_set(n, seed)
    plans = {
        "guidance 2×\nWebUI default\n(hold to the end)": runs.make_plan((2, 2), steps, q_end=LATENT_Q_END),
        "guidance 2×\nlibrary default\n(hold to r₂ 0.98)": runs.make_plan((2, 2), steps),
    }
    rows, table = [], []

    def record(label: str, size: int, cost: int, plan: Any = None) -> None:
        unet.reset()
        t0 = time.time()
        z = runs.run_txt2img(model, unet, prompts, size, size, steps, seed, cfg=cfg, plan=plan, batch=n)
        imgs = runs.decode(model, z)
        grid = 4 * size // NATIVE if size > NATIVE else None
        s = scorer.summarize(scorer.score_images(imgs, (grid,) if grid else ()), prompts)
        rows.append((label, imgs))
        table.append({"method": label.replace("\n", " "), "size": f"{imgs.shape[-1]}x{imgs.shape[-2]}",
                      "one_object": s["one_object"], "proper_face": s["proper_face"], "all_attrs": s["all_attrs"],
                      "detail": s["detail"], "blockiness": s[f"blockiness_{grid}"] if grid else float("nan"),
                      "calls": {f"{h}x{w}": c for (h, w), c in sorted(unet.calls.items())},
                      "wall_s": time.time() - t0})
        if progress is not None:
            progress(cost * n, f"latent {label.splitlines()[0]}")

    record("native 64 px", NATIVE, 1)
    record("plain 2×", 2 * NATIVE, 4)
    for label, plan in plans.items():
        record(label, 2 * NATIVE, 5, plan)
    _grid_png(rows, out / "latent_grid.png")
    return {"prompts": [text.prompt_text(p) for p in prompts], "cfg": cfg, "steps": steps, "table": table}
