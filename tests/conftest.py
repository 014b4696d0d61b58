"""Fixtures shared by the adapter test modules."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture()
def web() -> Iterator[Any]:
    """The stand-in A1111 WebUI (tests/fake_webui) with the extension's A1111 callbacks registered; the handle
    carries the reloaded adapter module as ``.a1111``. test_adapter_forge.py has its own ``web`` for Forge."""
    from tests import fake_webui  # here, not at the top: the real-WebUI kit under tests/webui needs no torch

    h = fake_webui.install()
    import lib_chroma.webui.a1111 as a1111

    importlib.reload(a1111)
    a1111.register_callbacks()
    h.a1111 = a1111
    yield h
    a1111.reset()
    fake_webui.uninstall()
