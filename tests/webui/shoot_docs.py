"""Take the README's screenshot of the open accordion in a real WebUI: ``docs/screenshot-accordion.png``.

    WEBUI_DIR=~/stable-diffusion-webui .venv/bin/python -m tests.webui.shoot_docs [docs/screenshot-accordion.png]

Starts a WebUI with its UI through the kit (tiny SD1 checkpoint, 127.0.0.1, stopped at the end), sets txt2img to
1024×1024 and 30 steps, opens the "Resolution Chromatography" accordion (its first-time view) and its "Curves" fold
(the plot's labels; "Advanced" and "Time-dependent prompts" stay closed) and saves a screenshot cropped to it,
reduced to a palette PNG when it would be larger than ``--max-kb``. Needs what the browser suite needs
(tests/webui/requirements.txt and a Chromium, see tests/webui/README.md).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

from tests.webui import kit
from tests.webui.browser import VIEWPORT, UIPage, chromium


def shrink_png(png: bytes, max_kb: int) -> bytes:
    """The PNG as is when small enough, else reduced to an adaptive 256-colour palette (lossless look for UI)."""
    if len(png) <= max_kb * 1024:
        return png
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def shoot(server: kit.WebUI, out: Path, max_kb: int) -> Path:
    """Drive one page of ``server`` into the documented state and save the cropped accordion to ``out``."""
    chrome = kit.find_chromium()
    if chrome is None:
        raise SystemExit("no Chromium found: apt-get install chromium (or set WEBUI_KIT_CHROMIUM)")
    with chromium(chrome) as browser, tempfile.TemporaryDirectory() as tmp:
        context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        page = UIPage(context.new_page(), server.url, Path(tmp))
        page.open()
        page.open_accordion()
        for elem_id, value in (("txt2img_width", 1024), ("txt2img_height", 1024), ("txt2img_steps", 30)):
            before = page.readout()
            page.set_slider(elem_id, value)
            page.wait_readout_change(before)
        page.open_fold("plot")
        page.svg().wait_for(state="visible")
        page.expect_readout_in_header(page.readout())  # settled: no event pending, the header shows the readout
        page.page.mouse.move(0, 0)  # no hover highlight in the picture
        raw = page.accordion.screenshot(animations="disabled")
        context.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(shrink_png(raw, max_kb))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: start a UI server, take the screenshot, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=kit.REPO_ROOT / "docs" / "screenshot-accordion.png")
    parser.add_argument("--max-kb", type=int, default=290, help="palette-reduce above this size (default 290)")
    args = parser.parse_args(argv)
    root = kit.webui_dir()
    if root is None:
        print(kit.SKIP_REASON, file=sys.stderr)
        return 2
    python = kit.webui_python(root)
    workdir = Path(tempfile.mkdtemp(prefix="webui-kit-docs-"))
    server = None
    try:
        checkpoints = kit.build_checkpoints(root, python, workdir / "models", ("sd1",))
        server = kit.start_webui(root, python, workdir, checkpoints, ui=True)
        path = shoot(server, args.out, args.max_kb)
        print(f"[webui-kit] wrote {path} ({path.stat().st_size // 1024} KB)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
