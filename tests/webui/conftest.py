"""Fixtures of the real-WebUI kit (see kit.py and README.md beside this file).

Without ``WEBUI_DIR`` or ``FORGE_DIR`` a plain ``pytest`` (CI) reports one clear skip line for the whole kit: only
``test_http.py`` is collected and it skips at module level (every test module starts with that skip too).
Nothing here needs more than the standard library and pytest (the browser suite's own fixtures, which need
Playwright, live in ``test_browser.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui import kit

if kit.webui_dir() is None:
    # One skip line for the whole kit: only test_http.py is collected, and it skips at module level.
    collect_ignore_glob = [p.name for p in Path(__file__).parent.glob("test_*.py") if p.name != "test_http.py"]


#: Screenshot folders made in this session (printed in the terminal summary).
_SHOT_DIRS: list[Path] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item (``item.rep_call``), so fixtures can act on a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say which WebUI the kit runs against."""
    root = kit.webui_dir()
    if root is None:
        return None
    ignored = " (WEBUI_DIR ignored)" if kit.is_forge() and os.environ.get("WEBUI_DIR", "").strip() else ""
    return f"webui-kit: {'Forge' if kit.is_forge() else 'A1111'} at {root}{ignored}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print where the browser suite saved its screenshots."""
    for path in _SHOT_DIRS:
        shots = sorted(path.glob("*.png"))
        terminalreporter.write_line(f"[webui-kit] {len(shots)} screenshots in {path}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``webui`` (``-m "not webui"`` deselects the kit)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.webui)


@pytest.fixture(scope="session")
def webui_root() -> Path:
    """The WebUI checkout (``WEBUI_DIR``); skips when unset."""
    root = kit.webui_dir()
    if root is None:
        pytest.skip(kit.SKIP_REASON)
    if not (root / "launch.py").exists():
        var = "FORGE_DIR" if kit.is_forge() else "WEBUI_DIR"
        raise FileNotFoundError(f"{var}={root} has no launch.py: not a WebUI checkout")
    if kit.is_forge() and not (root / "modules_forge").is_dir():
        raise FileNotFoundError(f"FORGE_DIR={root} has no modules_forge/: not a Forge checkout")
    return root


@pytest.fixture(scope="session")
def webui_python(webui_root: Path) -> Path:
    """The WebUI's own interpreter."""
    return kit.webui_python(webui_root)


@pytest.fixture(scope="session")
def kit_dir() -> Iterator[Path]:
    """The folder the kit writes into; removed at the end unless ``WEBUI_KIT_KEEP=1`` or ``WEBUI_KIT_DIR``."""
    given = os.environ.get("WEBUI_KIT_DIR", "").strip()
    path = Path(given).resolve() if given else Path(tempfile.mkdtemp(prefix="webui-kit-"))
    path.mkdir(parents=True, exist_ok=True)
    yield path
    if given or os.environ.get("WEBUI_KIT_KEEP") == "1":
        print(f"[webui-kit] kept {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    """The browser suite's screenshot folder (``WEBUI_KIT_SHOTS`` or a new temporary one), kept after the run."""
    path = kit.screenshot_dir()
    _SHOT_DIRS.append(path)
    print(f"[webui-kit] screenshots in {path}", file=sys.stderr)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(webui_root: Path, webui_python: Path, kit_dir: Path) -> dict[str, Path]:
    """family -> tiny ``.safetensors`` (with its ``.yaml``), built once per session with the WebUI's Python."""
    names = os.environ.get("WEBUI_KIT_FAMILIES", ",".join(kit.FAMILIES))
    families = tuple(f.strip() for f in names.split(",") if f.strip())
    models = kit_dir / ("forge-models" if kit.is_forge() else "models")  # a kept kit folder may serve both hosts
    return kit.build_checkpoints(webui_root, webui_python, models, families)


StartWebUI = Callable[..., kit.WebUI]


@pytest.fixture(scope="session")
def start_webui(
    webui_root: Path, webui_python: Path, kit_dir: Path, tiny_checkpoints: dict[str, Path]
) -> Iterator[StartWebUI]:
    """Factory: ``start_webui(ckpt="sd1", ui=False, extension=True, config=None)`` -> a fresh server.

    Every server started through it is stopped at the end of the session, whatever happened; a test may
    stop its own earlier with ``server.stop()``.
    """
    started: list[kit.WebUI] = []

    def start(**kwargs: Any) -> kit.WebUI:
        server = kit.start_webui(webui_root, webui_python, kit_dir, tiny_checkpoints, **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def webui(start_webui: StartWebUI) -> kit.WebUI:
    """The shared API-only server of the session: extension linked, tiny SD1 checkpoint loaded."""
    return start_webui(ckpt="sd1")


@pytest.fixture()
def healthy_after(webui: kit.WebUI) -> Iterator[kit.WebUI]:
    """The shared server, asserted to be still healthy after the test (for failure scenarios)."""
    yield webui
    assert webui.healthy(), "the WebUI stopped answering:\n" + webui.log_tail()
