"""The fitted resamplers' disk cache (lib_chroma/webui/vae_resamplers.py): a restart loads instead of fitting."""

from __future__ import annotations

import logging

import pytest
import torch

from lib_chroma import encoder_fit
from lib_chroma.webui import vae_resamplers as V
from tests.fake_webui import FakeVAE


class Encoder(FakeVAE):
    """The stand-in WebUI's fixed f = 8 VAE, made nonlinear, counting the images it encodes."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.encodes += len(x)
        with torch.no_grad():
            return torch.tanh(self.conv(x))


@pytest.fixture(autouse=True)
def quick_fit(monkeypatch):
    monkeypatch.setattr(encoder_fit, "FIT_IMAGES", 16)
    V.clear()
    yield
    V.clear()


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("w_down", "b_down", "w_up", "b_up"))


def test_a_fit_is_saved_and_a_restart_loads_it_without_encoding(tmp_path):
    enc = Encoder()
    first = V.resamplers_for([(2, 2)], enc, enc.encode, cache_dir=tmp_path)[(2, 2)]
    assert enc.encodes == 2 * 16
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.endswith("-2x2.safetensors")
    V.clear()  # a restart
    again = V.resamplers_for([(2, 2)], enc, enc.encode, cache_dir=tmp_path)[(2, 2)]
    assert enc.encodes == 2 * 16 and _same(again, first)
    # without a cache dir the same fit is made (the file holds exactly what fitting gives)
    V.clear()
    fresh = V.resamplers_for([(2, 2)], enc, enc.encode)[(2, 2)]
    assert enc.encodes == 4 * 16 and _same(fresh, first)


def test_the_file_name_follows_the_vae_factor_and_recipe(tmp_path, monkeypatch):
    a, b = Encoder(0), Encoder(1)
    key_a = V.vae_checksum(a)
    name = V.cache_file(tmp_path, key_a, (2, 2), a, 8)
    assert name != V.cache_file(tmp_path, V.vae_checksum(b), (2, 2), b, 8)
    assert name != V.cache_file(tmp_path, key_a, (3, 3), a, 8)
    assert name != V.cache_file(tmp_path, key_a, (2, 2), a, 4)
    assert name != V.cache_file(tmp_path, key_a, (2, 2), a.double(), 8)
    monkeypatch.setattr(encoder_fit, "FIT_IMAGES", 32)
    assert name != V.cache_file(tmp_path, key_a, (2, 2), a, 8)


def test_a_damaged_file_is_fitted_again_and_replaced(tmp_path, caplog):
    enc = Encoder()
    first = V.resamplers_for([(2, 2)], enc, enc.encode, cache_dir=tmp_path)[(2, 2)]
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    V.clear()
    with caplog.at_level(logging.WARNING):
        again = V.resamplers_for([(2, 2)], enc, enc.encode, cache_dir=tmp_path)[(2, 2)]
    assert "could not read" in caplog.text
    assert enc.encodes == 4 * 16 and _same(again, first)
    V.clear()
    assert _same(V.resamplers_for([(2, 2)], enc, enc.encode, cache_dir=tmp_path)[(2, 2)], first)
    assert enc.encodes == 4 * 16  # the replaced file was read
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unwritable_cache_dir_costs_only_the_file(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir would be")
    enc = Encoder()
    with caplog.at_level(logging.WARNING):
        rs = V.resamplers_for([(2, 2), (2, 2)], enc, enc.encode, cache_dir=blocker / "cache")
    assert set(rs) == {(2, 2)} and enc.encodes == 2 * 16
    assert "could not save" in caplog.text


def test_host_cache_dir_is_none_without_a_host(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modules", None)
    assert V.host_cache_dir() is None


def test_each_factor_is_used_with_its_keep_and_the_file_holds_only_the_fit(tmp_path, monkeypatch):
    enc = Encoder()
    rs = V.resamplers_for([(2, 2), (3, 3)], enc, enc.encode, cache_dir=tmp_path)
    assert rs[(2, 2)].keep == V.FITTED_KEEP[(2, 2)] == 0.9 and rs[(3, 3)].keep == 1.0
    monkeypatch.setitem(V.FITTED_KEEP, (2, 2), 0.5)
    V.clear()
    again = V.resamplers_for([(2, 2)], enc, enc.encode, cache_dir=tmp_path)[(2, 2)]
    assert again.keep == 0.5 and _same(again, rs[(2, 2)]) and enc.encodes == 2 * 16 + 2 * 16
