"""The latent model's text encoder, autoencoder, UNet, CFG batching and shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_chroma.guidance import GuidancePlan
from lib_chroma.toy.latent import data, scorer, text
from lib_chroma.toy.latent.autoencoder import AutoEncoder, psnr
from lib_chroma.toy.latent.runs import CFGDenoiser
from lib_chroma.toy.latent.train import DEFAULT_WEIGHTS, LatentModel, load_model
from lib_chroma.toy.latent.unet import LatentUNet


@pytest.fixture(scope="module")
def shipped() -> LatentModel:
    return load_model()


# ---------------------------------------------------------------------------------------------------------------
# Prompts and text encoder
# ---------------------------------------------------------------------------------------------------------------

def test_prompt_grammar() -> None:
    full = {"position": "left", "size": "large", "colour": "red", "eyes": "slit", "texture": "stripes"}
    assert text.prompt_text(full) == "a large red face on the left, slit eyes, striped background"
    assert text.prompt_text({"texture": "dots", "colour": "blue"}) == "a blue face, dotted background"
    assert text.prompt_text({}) == "a face"
    with pytest.raises(ValueError, match="attrs.eyes"):
        text.prompt_text({"eyes": "square"})


def test_tokenisation_is_deterministic_and_padded() -> None:
    ids = text.tokenize(["a red face, slit eyes", "", "A RED face, frog eyes"])
    assert ids.shape == (3, text.MAX_LEN) and ids.dtype == torch.long
    v = text.VOCAB.index
    expected = [text.BOS, v("a"), v("red"), v("face"), v(","), v("slit"), v("eyes"), text.EOS]
    assert ids[0, :8].tolist() == expected and (ids[0, 8:] == text.PAD).all()
    assert ids[1, :2].tolist() == [text.BOS, text.EOS] and (ids[1, 2:] == text.PAD).all()
    assert ids[2, 5] == text.UNK and ids[2, :5].tolist() == expected[:5]  # case-insensitive; unknown word
    assert torch.equal(ids, text.tokenize(["a red face, slit eyes", "", "A RED face, frog eyes"]))
    long = text.tokenize(" ".join(["face"] * 40))[0]
    assert long[-1] == text.EOS and (long[1:-1] == v("face")).all()


def test_every_full_prompt_fits_without_truncation() -> None:
    for attrs in text.prompt_set(50, seed=0):
        ids = text.tokenize(text.prompt_text(attrs))[0]
        assert (ids == text.EOS).sum() == 1 and (ids != text.UNK).all()


def test_prompt_set_is_seeded_and_names_the_asked_attributes() -> None:
    a = text.prompt_set(20, seed=5000)
    assert a == text.prompt_set(20, seed=5000) and a != text.prompt_set(20, seed=5001)
    assert all(set(p) == set(data.ATTRIBUTES) for p in a)
    assert all(set(p) == {"eyes"} for p in text.prompt_set(5, 1, named=("eyes",)))


def test_text_encoder_is_deterministic_and_row_independent() -> None:
    torch.manual_seed(0)
    enc = text.TextEncoder().eval()
    prompts = ["a large red face on the left, slit eyes, striped background", "", "a face"]
    with torch.no_grad():
        a, b = enc.encode(prompts), enc.encode(prompts)
        alone = enc.encode(prompts[1])
    assert a.shape == (3, text.MAX_LEN, enc.width)
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], alone, atol=1e-6)
    assert not torch.allclose(a[0], a[2])


# ---------------------------------------------------------------------------------------------------------------
# Autoencoder and UNet
# ---------------------------------------------------------------------------------------------------------------

def test_autoencoder_shapes_any_multiple_of_four() -> None:
    ae = AutoEncoder().eval()
    with torch.no_grad():
        z = ae.encode(torch.zeros(2, 3, 48, 80))
        assert z.shape == (2, 4, 12, 20)
        assert ae.decode(z).shape == (2, 3, 48, 80)
        assert ae.decode(torch.zeros(1, 4, 7, 9)).shape == (1, 3, 28, 36)
    with pytest.raises(ValueError, match="multiples of 4"):
        ae.encode(torch.zeros(1, 3, 30, 32))


def test_shipped_autoencoder_round_trip(shipped: LatentModel) -> None:
    for res, n in ((64, 48), (128, 16)):
        x, scenes = data.make_batch(n, seed=321, h=res)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            z = shipped.ae.encode(xt)
            y = shipped.ae.decode(z).clamp(-1, 1)
        assert z.shape == (n, 4, res // 4, res // 4)
        assert psnr(y, xt) > 25.0
        summary = scorer.summarize(scorer.score_images(y), [sc.attrs for sc in scenes])
        assert summary["proper_face"] >= 0.9, res
        for key in data.ATTRIBUTES:
            assert summary[f"attr_{key}"] >= 0.9, (res, key)


def test_shipped_resamplers_commute_better_with_the_autoencoder_than_pooling(shipped: LatentModel) -> None:
    """On scenes neither fitted nor checked on: the fitted ``down`` of a 2x latent is nearer the latent of the
    native render than average pooling, the fitted ``up`` of the native latent nearer the 2x latent than
    bilinear upsampling (held-out errors 0.15 / 0.27 and 0.22 / 0.35 of the latents' variance)."""
    from lib_chroma.toy.latent import resamplers

    rs = resamplers.load()
    assert set(rs) == {(2, 2), (3, 3)}
    for (m, _), r in rs.items():
        assert r.info["fit_seed"] == resamplers.FIT_SEED
        err = resamplers.relative_errors(r, resamplers.render_pairs(shipped, m, 24, seed=303))
        assert err["down"] < 0.85 * err["avg_pool"] and err["up"] < 0.85 * err["bilinear"], (m, err)


def test_shipped_latents_have_unit_variance(shipped: LatentModel) -> None:
    x, _ = data.make_batch(64, seed=99)
    with torch.no_grad():
        z = shipped.ae.encode(torch.from_numpy(x))
    assert abs(float(z.std()) - 1.0) < 0.1
    assert shipped.ae.scale_factor == pytest.approx(shipped.meta["scale_factor"], rel=1e-3)


@pytest.mark.parametrize("shape", [(16, 16), (32, 32), (17, 23), (30, 45), (5, 7)])
def test_unet_runs_at_any_latent_size(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    unet = LatentUNet(channels=(32, 32, 32), attn=("cross", "full", "none"), ctx_dim=16).eval()
    for mod in unet.modules():  # zero-initialised outputs would hide the prompt
        if isinstance(mod, torch.nn.Conv2d) and not bool(mod.weight.any()):
            torch.nn.init.normal_(mod.weight, std=0.1)
    x = torch.randn(2, 4, *shape)
    ctx = torch.randn(2, text.MAX_LEN, 16)
    with torch.no_grad():
        out = unet(x, torch.tensor([10.0, 900.0]), ctx)
        again = unet(x, torch.tensor([10.0, 900.0]), ctx)
        other = unet(x, torch.tensor([10.0, 900.0]), torch.randn(2, text.MAX_LEN, 16))
    assert out.shape == x.shape and torch.equal(out, again)
    assert not torch.allclose(out, other)  # the prompt reaches the output through cross-attention
    with pytest.raises(ValueError, match="context"):
        unet(x, torch.tensor([1.0, 1.0]), ctx[:1])


# ---------------------------------------------------------------------------------------------------------------
# CFG batching
# ---------------------------------------------------------------------------------------------------------------

class _SpyDenoiser(torch.nn.Module):
    """x0 = 0.5 x + mean of the context rows (so cond and uncond differ); records every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), sigma.clone(), context.clone()))
        return 0.5 * x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def test_cfg_is_one_batched_call_combined_as_a1111() -> None:
    spy = _SpyDenoiser()
    cond, uncond = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    x, sigma = torch.randn(3, 4, 16, 16), torch.full((3,), 2.0)
    out = CFGDenoiser(spy, cond, uncond, cfg=5.0)(x, sigma)
    assert len(spy.calls) == 1
    shape, s_in, ctx = spy.calls[0]
    assert shape == (6, 4, 16, 16) and torch.equal(s_in, torch.full((6,), 2.0))
    assert torch.equal(ctx, torch.cat([cond, uncond]))
    c = 0.5 * x + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    u = 0.5 * x + uncond.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    assert torch.allclose(out, u + 5.0 * (c - u), atol=1e-6)
    assert torch.allclose(CFGDenoiser(spy, cond, uncond, cfg=1.0)(x, sigma), c, atol=1e-6)


def test_guidance_sits_inside_cfg_and_its_low_call_gets_the_same_contexts() -> None:
    spy = _SpyDenoiser()
    cond, uncond = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    plan = GuidancePlan(((2, 2),), scale=1.0, shape="constant", operator="nearest")
    x, sigma = torch.randn(2, 4, 32, 32), torch.full((2,), 3.0)
    CFGDenoiser(spy, cond, uncond, cfg=7.0, plan=plan)(x, sigma)
    assert [c[0] for c in spy.calls] == [(4, 4, 32, 32), (4, 4, 16, 16)]
    assert torch.equal(spy.calls[1][1], torch.full((4,), 1.5))  # sigma / m for both halves
    assert torch.equal(spy.calls[0][2], spy.calls[1][2])


# ---------------------------------------------------------------------------------------------------------------
# Shipped weights
# ---------------------------------------------------------------------------------------------------------------

def test_shipped_weights_carry_their_metadata(shipped: LatentModel) -> None:
    from safetensors import safe_open

    assert DEFAULT_WEIGHTS.stat().st_size <= 10_000_000
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as f:
        md = f.metadata()
    assert {"config", "meta", "scale_factor"} <= set(md)
    meta = shipped.meta
    assert float(md["scale_factor"]) == pytest.approx(meta["scale_factor"])
    assert set(meta["level_power"]) == {"1", "2", "4", "8"}
    powers = [meta["level_power"][k] for k in ("1", "2", "4", "8")]
    assert all(0 < p <= 1.5 for p in powers) and powers == sorted(powers, reverse=True)
    assert meta["train_seconds"] == pytest.approx(meta["ae"]["seconds"] + meta["latents"]["seconds"]
                                                  + meta["diffusion"]["seconds"], abs=0.2)
    assert meta["threads"] == 1 and meta["seed"] == 0
    assert np.isfinite(meta["scale_factor"]) and meta["scale_factor"] > 0


def test_training_is_seeded_and_the_stage1_cache_reproduces_it(tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    from lib_chroma.toy.latent.train import train

    kw = dict(seed=3, ae_steps=2, ae_batch=2, ae_crop=16, n_latents=8, steps=2, batch=2)
    a = train(**kw, out=tmp_path / "a.safetensors", stage1=tmp_path / "stage1.pt")
    assert (tmp_path / "stage1.pt").exists() and "stage1 from" not in capsys.readouterr().out
    b = train(**kw, out=tmp_path / "b.safetensors", stage1=tmp_path / "stage1.pt")
    assert "stage1 from" in capsys.readouterr().out
    sa, sb = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.meta["scale_factor"] == b.meta["scale_factor"] and a.meta["ae"]["seconds"] == b.meta["ae"]["seconds"]
    loaded = load_model(tmp_path / "a.safetensors")
    assert loaded.meta["diffusion"]["steps"] == 2 and loaded.ae.scale_factor == pytest.approx(a.meta["scale_factor"])
    # other stage-1 arguments: the cache is not used
    train(**{**kw, "ae_steps": 1}, out=None, stage1=tmp_path / "stage1.pt")
    assert "recomputing" in capsys.readouterr().out


def test_unet_attention_kinds() -> None:
    unet = LatentUNet(channels=(16, 16, 16), attn=("cross", "full", "none"), ctx_dim=8)
    kinds = [None if isinstance(t, torch.nn.Identity) else t.attn1 is not None for t in
             (unet.down_attn[0][0], unet.down_attn[1][0], unet.down_attn[2][0])]
    assert kinds == [False, True, None]
    with pytest.raises(ValueError, match="attn"):
        LatentUNet(attn=("cross", "full", "everything"))
