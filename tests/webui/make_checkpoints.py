"""Build tiny, randomly initialised checkpoints that a real A1111 WebUI loads without any download.

Run it with the WebUI's own Python, which has the WebUI's dependencies (torch, transformers, open_clip,
omegaconf, safetensors) and whose ``repositories/`` hold the ``ldm`` and ``sgm`` packages::

    $WEBUI_DIR/venv/bin/python tests/webui/make_checkpoints.py --webui-dir "$WEBUI_DIR" --out /tmp/tiny

For each family it writes ``<name>.safetensors`` and the ``<name>.yaml`` beside it (the WebUI picks the
architecture from that file), plus the text encoders' local folders that the ``.yaml`` points to:

* ``sd1``: SD1 architecture (``ldm`` LatentDiffusion, HF CLIP text encoder), eps-prediction, with SD1.5's block
  layout (four levels of two res blocks: twelve skip connections and the middle block) at 32/64 channels. Beside
  it, in ``controlnet/``, ``tiny-sd1-controlnet.safetensors``: a ControlNet for it (its encoder copied from the
  UNet's, as ControlNets start, a random hint encoder and random "zero" convolutions, so its residuals are not
  zero), and in ``lora/``, ``tiny-sd1-lora.safetensors``: a rank-4 LoRA on every attention projection of the UNet
  and the text encoder, in A1111's module naming.
* ``sd1inpaint``: the same SD1 as an inpainting model (``LatentInpaintDiffusion``, 9 input channels: latent, mask,
  masked-image latent).
* ``sd2v``: SD2 v-prediction (``ldm`` LatentDiffusion with an OpenCLIP text encoder, ``parameterization: v``).
* ``sdxl``: SDXL base shape (``sgm`` DiffusionEngine with both text encoders and the ``vector`` input).

The configs are the WebUI's own, shrunk: UNet channels 32/64 (GroupNorm needs multiples of 32), an 8x VAE
(A1111 hard-codes the factor), text encoders with a hidden size of 32 and the real CLIP BPE vocabulary taken
from open_clip's packaged ``bpe_simple_vocab_16e6.txt.gz``. The OpenCLIP encoders are served through a
local Hugging Face cache folder (``hf-cache/``): start the WebUI with ``HF_HUB_CACHE`` pointing there and
``HF_HUB_OFFLINE=1``. Weights are seeded, so the same WebUI gives the same files.

ControlNet's loader (Mikubill/sd-webui-controlnet) knows only the full-size SD1.5 and SDXL ControlNet layouts;
the kit's test-only extension ``ext_tiny_controlnet/`` tells it this one (:data:`CONTROLNET_LAYOUT`).

This file is a test helper of the extension; it contains no WebUI code and installs nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HIDDEN = 32  # text encoder width == UNet context_dim
POOLED = 32  # SDXL OpenCLIP pooled projection width
OPENCLIP_REPO = "resolution-chromatography/tiny-openclip"
OPENCLIP_REV = "0" * 40


def _bytes_to_unicode() -> dict[int, str]:
    """Return CLIP's reversible byte -> printable character table (GPT-2 byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer(folder: Path, bpe_gz: Path) -> None:
    """Write a Hugging Face CLIPTokenizer (vocab.json, merges.txt, configs) from CLIP's BPE merges file."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    tok_cfg = dict(special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")


def write_hf_clip(folder: Path, bpe_gz: Path, hidden: int, pooled: int | None = None) -> None:
    """Write a tiny random HF CLIPTextModel (config + weights) with the real tokenizer into ``folder``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    write_clip_tokenizer(folder, bpe_gz)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=pooled or hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(1)
    model = CLIPTextModel(cfg)
    # A fresh LayerNorm (weight 1, bias 0) makes every token's output zero-mean, and A1111's prompt emphasis divides
    # by that mean (0/0 = NaN on some torch builds): a seeded, non-zero final norm keeps the mean away from 0.
    with torch.no_grad():
        norm = model.text_model.final_layer_norm
        norm.weight.add_(0.1 * torch.randn_like(norm.weight))
        norm.bias.copy_(0.1 + 0.1 * torch.randn_like(norm.bias))
    model.save_pretrained(str(folder))


def write_openclip_hub(cache: Path, name: str, width: int, embed_dim: int) -> str:
    """Put a tiny OpenCLIP text tower into a local HF hub cache; return the ``hf-hub:`` model name.

    open_clip resolves ``hf-hub:<repo>`` through ``huggingface_hub``, which with ``HF_HUB_OFFLINE=1`` reads
    ``<cache>/models--<org>--<name>/snapshots/<rev>/`` via ``refs/main``. That is how a model architecture
    that open_clip does not ship gets to a WebUI without touching its files.
    """
    import open_clip
    import torch

    repo = f"{OPENCLIP_REPO}-{name}"
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / OPENCLIP_REV
    snap.mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(OPENCLIP_REV, encoding="utf-8")
    (snap / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(2)
    model = open_clip.model.CLIP(**model_cfg)
    # Legacy (non-zip) format: A1111's safe unpickler rejects the zip entries that torch >= 2.x adds
    # (".format_version", ".storage_alignment"). The WebUI overwrites these weights from the checkpoint anyway.
    torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin", _use_new_zipfile_serialization=False)
    return "hf-hub:" + repo


def _rerandomise_zeros(model: Any) -> int:
    """Re-initialise every conv/linear layer that ldm/sgm zero-initialised (else the prompt is ignored)."""
    import torch

    n = 0
    for module in model.modules():
        is_layer = isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Linear)
        if is_layer and not bool(module.weight.detach().abs().sum()):
            module.reset_parameters()
            n += 1
    return n


def _shrink_vae(ddconfig: Any) -> None:
    """8x VAE (four levels, three downsamplings) with 32 channels everywhere.

    Its mid-block attention is left out (``attn_type: none``): at 1024x1024 it would attend over 16384 latent
    positions, which takes minutes on a CPU and tests nothing of the extension.
    """
    ddconfig.ch = 32
    ddconfig.ch_mult = [1, 1, 1, 1]
    ddconfig.num_res_blocks = 1
    ddconfig.attn_resolutions = []
    ddconfig.attn_type = "none"


#: The tiny SD1 UNet: SD1.5's block layout (four levels, two res blocks each) at 32/32/64/64 channels, attention on
#: the second level only (ControlNet's loader reads the context width at ``input_blocks.5.1``, as in SD1.5).
SD15_LAYOUT = {"channel_mult": [1, 1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [2]}
#: The ControlNet layout that matches it, in the config keys of ControlNet's ``cldm.ControlNet``.
CONTROLNET_LAYOUT = {
    "model_channels": 32,
    "channel_mult": [1, 1, 2, 2],
    "num_res_blocks": 2,
    "attention_resolutions": [2],
    "transformer_depth": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "num_heads": -1,
    "num_head_channels": 16,
}


def _shrink_unet(params: Any, context_dim: int, sd15_blocks: bool = False) -> None:
    """Two levels (32 and 64 channels), one res block each, cross-attention on the coarser level only; with
    ``sd15_blocks`` SD1.5's block layout instead (:data:`SD15_LAYOUT`).

    No attention at full latent resolution keeps large sizes affordable on a CPU (1024x1024 is 16384 tokens).
    """
    params.model_channels = 32
    params.channel_mult = [1, 2]
    params.num_res_blocks = 1
    params.attention_resolutions = [2]
    if sd15_blocks:
        for key, value in SD15_LAYOUT.items():
            params[key] = value
    params.transformer_depth = 1
    params.context_dim = context_dim
    params.use_checkpoint = False
    for key in ("num_heads", "num_head_channels", "use_fp16", "spatial_transformer_attn_type"):
        params.pop(key, None)
    params.num_head_channels = 16


def config_sd1(webui: Path, out: Path, bpe_gz: Path, cache: Path, inpainting: bool = False) -> Any:
    """The WebUI's v1-inference.yaml (v1-inpainting-inference.yaml) with a tiny UNet in SD1.5's block layout, a tiny
    VAE and a local HF CLIP text encoder."""
    from omegaconf import OmegaConf

    name = "v1-inpainting-inference.yaml" if inpainting else "v1-inference.yaml"
    conf = OmegaConf.load(webui / "configs" / name)
    params = conf.model.params
    _shrink_unet(params.unet_config.params, HIDDEN, sd15_blocks=True)
    _shrink_vae(params.first_stage_config.params.ddconfig)
    clip_dir = out / "sd1-text-encoder"
    write_hf_clip(clip_dir, bpe_gz, HIDDEN)
    params.cond_stage_config.params = {"version": str(clip_dir)}
    params.use_ema = False
    return conf


def config_sd1inpaint(webui: Path, out: Path, bpe_gz: Path, cache: Path) -> Any:
    """The tiny SD1 as an inpainting model (9 input channels, ``conditioning_key: hybrid``)."""
    return config_sd1(webui, out, bpe_gz, cache, inpainting=True)


def config_sd2v(webui: Path, out: Path, bpe_gz: Path, cache: Path) -> Any:
    """Stability's v2-inference-v.yaml, shrunk; OpenCLIP text encoder from the local hub cache."""
    from omegaconf import OmegaConf

    path = webui / "repositories" / "stable-diffusion-stability-ai" / "configs" / "stable-diffusion"
    conf = OmegaConf.load(path / "v2-inference-v.yaml")
    params = conf.model.params
    _shrink_unet(params.unet_config.params, HIDDEN)
    params.unet_config.params.use_linear_in_transformer = True
    _shrink_vae(params.first_stage_config.params.ddconfig)
    arch = write_openclip_hub(cache, "sd2", HIDDEN, HIDDEN)
    params.cond_stage_config.params = {"arch": arch, "version": None, "freeze": True, "layer": "penultimate"}
    return conf


def config_sdxl(webui: Path, out: Path, bpe_gz: Path, cache: Path) -> Any:
    """generative-models' sd_xl_base.yaml, shrunk; both text encoders local."""
    from omegaconf import OmegaConf

    path = webui / "repositories" / "generative-models" / "configs" / "inference"
    conf = OmegaConf.load(path / "sd_xl_base.yaml")
    params = conf.model.params
    unet = params.network_config.params
    _shrink_unet(unet, 2 * HIDDEN)
    unet.transformer_depth = [0, 1]
    unet.use_linear_in_transformer = True
    unet.adm_in_channels = POOLED + 3 * 2 * 256
    _shrink_vae(params.first_stage_config.params.ddconfig)
    clip_dir = out / "sdxl-text-encoder-1"
    write_hf_clip(clip_dir, bpe_gz, HIDDEN)
    embedders = params.conditioner_config.params.emb_models
    embedders[0].params = {"version": str(clip_dir), "layer": "hidden", "layer_idx": -2}
    arch = write_openclip_hub(cache, "sdxl", HIDDEN, POOLED)
    embedders[1].params.arch = arch
    embedders[1].params.version = None
    return conf


FAMILIES: dict[str, Callable[[Path, Path, Path, Path], Any]] = {
    "sd1": config_sd1,
    "sd1inpaint": config_sd1inpaint,
    "sd2v": config_sd2v,
    "sdxl": config_sdxl,
}


def write_controlnet(unet: dict[str, Any], target: Path) -> Path:
    """A ControlNet (``cldm.ControlNet`` key layout) for the tiny SD1 UNet whose weights ``unet`` holds (keys without
    the ``model.diffusion_model.`` prefix).

    As a ControlNet starts from its UNet, its encoder (time embedding, input blocks, middle block) is a copy of the
    UNet's. The hint encoder (3 -> 16 -> 16 -> 32 -> 32 -> 96 -> 96 -> 256 channels, three stride-2 convolutions:
    8 hint pixels per latent pixel, then a convolution to the model width) and the 1x1 convolutions that turn each
    input block's output and the middle block's into residuals are random (seeded), not zero as before training,
    so the residuals change the image.
    """
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state: dict[str, Any] = {
        k: v.clone() for k, v in unet.items() if k.split(".")[0] in ("time_embed", "input_blocks", "middle_block")
    }
    width = int(unet["input_blocks.0.0.weight"].shape[0])
    hint = [(3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2), (256, width, 1)]
    for i, (cin, cout, stride) in enumerate(hint):
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
        state[f"input_hint_block.{2 * i}.weight"] = conv.weight.detach().clone()
        state[f"input_hint_block.{2 * i}.bias"] = conv.bias.detach().clone()
    blocks = sorted({int(k.split(".")[1]) for k in unet if k.startswith("input_blocks.")})
    for i in blocks:  # each input block's output width: any of its 4-D weights' first dimension
        convs = [v for k, v in sorted(unet.items()) if k.startswith(f"input_blocks.{i}.0.") and v.dim() == 4]
        ch = int(convs[0].shape[0])
        conv = torch.nn.Conv2d(ch, ch, 1)
        state[f"zero_convs.{i}.0.weight"] = conv.weight.detach().clone()
        state[f"zero_convs.{i}.0.bias"] = conv.bias.detach().clone()
    mid = int(unet["middle_block.2.out_layers.3.weight"].shape[0])
    conv = torch.nn.Conv2d(mid, mid, 1)
    state["middle_block_out.0.weight"] = conv.weight.detach().clone()
    state["middle_block_out.0.bias"] = conv.bias.detach().clone()
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target


def write_lora(model: Any, target: Path, rank: int = 4) -> Path:
    """A rank-``rank`` LoRA for the tiny SD1 ``model``: every attention projection of the UNet and every self-attention
    projection of the text encoder, named as A1111's Lora extension names the modules (the module path with ``_``
    for ``.``: ``diffusion_model_input_blocks_4_1_transformer_blocks_0_attn2_to_k``,
    ``transformer_text_model_encoder_layers_0_self_attn_q_proj``), ``lora_down``/``lora_up``/``alpha`` each."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(4)
    roots = {"": model.model, "cond": getattr(model.cond_stage_model, "wrapped", model.cond_stage_model)}
    state: dict[str, Any] = {}
    for root in roots.values():
        for name, module in root.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            if not (".attn1.to_" in name or ".attn2.to_" in name or "self_attn." in name and name.endswith("_proj")):
                continue
            key = name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features) / module.in_features**0.5
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank) / rank**0.5
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    if not state:
        raise RuntimeError("no attention projection found for the LoRA")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target


def build(webui: Path, out: Path, family: str) -> Path:
    """Build one family's checkpoint; return the ``.safetensors`` path."""
    import open_clip
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    for sub in ("stable-diffusion-stability-ai", "generative-models"):
        repo = str(webui / "repositories" / sub)
        if repo not in sys.path:
            sys.path.insert(0, repo)
    from ldm.util import instantiate_from_config

    out.mkdir(parents=True, exist_ok=True)
    cache = out / "hf-cache"
    if os.environ.get("HF_HUB_CACHE") != str(cache):
        raise RuntimeError("set HF_HUB_CACHE to <out>/hf-cache before importing huggingface_hub (main() does)")
    bpe_gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    conf = FAMILIES[family](webui, out, bpe_gz, cache)
    torch.manual_seed(0)
    if family == "sdxl":
        from sgm.util import instantiate_from_config as instantiate_sgm

        model = instantiate_sgm(conf.model)
    else:
        model = instantiate_from_config(conf.model)
    _rerandomise_zeros(model)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    target = out / f"tiny-{family}.safetensors"
    save_file(state, str(target))
    OmegaConf.save(conf, out / f"tiny-{family}.yaml")
    if family == "sd1":
        prefix = "model.diffusion_model."
        unet = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        write_controlnet(unet, out / "controlnet" / "tiny-sd1-controlnet.safetensors")
        write_lora(model, out / "lora" / "tiny-sd1-lora.safetensors")
    n_unet = sum(v.numel() for k, v in state.items() if "diffusion_model." in k)
    print(f"{family}: {target} ({len(state)} tensors, UNet {n_unet / 1e6:.2f}M params)")
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: build the requested families into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--webui-dir", type=Path, default=os.environ.get("WEBUI_DIR"), required=False)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--families", default="sd1", help="comma list of " + ", ".join(FAMILIES))
    args = parser.parse_args(argv)
    if args.webui_dir is None:
        parser.error("--webui-dir or WEBUI_DIR is required")
    # huggingface_hub reads these at import time: set them before anything imports it.
    os.environ["HF_HUB_CACHE"] = str(args.out.resolve() / "hf-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    for family in args.families.split(","):
        build(args.webui_dir.resolve(), args.out.resolve(), family.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
