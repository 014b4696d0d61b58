"""Build a tiny, randomly initialised SD1.5 checkpoint that a real Stable Diffusion WebUI Forge loads offline.

Run it with Forge's own Python (its venv has torch, diffusers, transformers, safetensors), from anywhere::

    $FORGE_DIR/venv/bin/python tests/webui/make_forge_checkpoint.py --forge-dir "$FORGE_DIR" --out /tmp/tiny

Forge does not read a ``.yaml`` beside the checkpoint as A1111 does: its loader (``backend/loader.py``) guesses the
architecture from the UNet's state dict with ``huggingface_guess`` and accepts SD1.5 only with 320 model channels
and a 768-wide cross-attention context; it then builds the VAE and the text encoder from its own fixed configs
(``backend/huggingface/runwayml/stable-diffusion-v1-5``), so those two must have their full size. What can be
small is the UNet's depth: this builder uses two levels of 320 channels (one res block each, cross-attention on
the coarser level and in the middle block), about 37M parameters instead of 860M. With the full-size VAE
(84M) and CLIP-L text encoder (123M), stored in fp16, the file is about 464 MiB. Weights are seeded, so the same
Forge gives the same file.

The UNet is Forge's own ``IntegratedUNet2DConditionModel`` and the VAE Forge's ``IntegratedAutoencoderKL``, built
from Forge's config files at run time; the text encoder is transformers' ``CLIPTextModel`` with Forge's config.
Keys are written in the single-file layout Forge reads (``model.diffusion_model.``, ``first_stage_model.``,
``cond_stage_model.transformer.``). This file is a test helper of the extension; it contains no Forge code and
installs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAME = "tiny-sd1"  # the kit names its checkpoints tiny-<family>
SD15_DIR = Path("backend") / "huggingface" / "runwayml" / "stable-diffusion-v1-5"

#: The shallow SD1.5 UNet (ldm argument names, as huggingface_guess detects them back from the keys).
UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 1],
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
}


def _rerandomise_zeros(model: Any) -> int:
    """Re-initialise every conv/linear layer that was zero-initialised (else the prompt never reaches the output)."""
    import torch

    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and not bool(module.weight.detach().abs().sum()):
            module.reset_parameters()
            n += 1
    return n


def build(forge: Path, out: Path) -> Path:
    """Build the checkpoint into ``out``; return its path."""
    # Forge's backend parses the command line at import (it must be told to stay on the CPU) and finds its
    # vendored packages (gguf) on a path that its launcher adds.
    sys.argv = [sys.argv[0], "--always-cpu"]
    sys.path[:0] = [str(forge), str(forge / "packages_3rdparty")]
    import torch
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = IntegratedUNet2DConditionModel(**UNET_CONFIG)
    _rerandomise_zeros(unet)
    vae_config = json.loads((forge / SD15_DIR / "vae" / "config.json").read_text(encoding="utf-8"))
    vae = IntegratedAutoencoderKL.from_config(vae_config)
    clip = CLIPTextModel(CLIPTextConfig.from_pretrained(str(forge / SD15_DIR / "text_encoder")))
    state: dict[str, torch.Tensor] = {}
    for prefix, module in (
        ("model.diffusion_model.", unet),
        ("first_stage_model.", vae),
        ("cond_stage_model.transformer.", clip),
    ):
        for key, value in module.state_dict().items():
            if key.endswith("position_ids"):
                continue
            state[prefix + key] = value.detach().to(torch.float16).contiguous().clone()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{NAME}.safetensors"
    save_file(state, str(target))
    n_unet = sum(p.numel() for p in unet.parameters())
    print(f"{target}: {len(state)} tensors, UNet {n_unet / 1e6:.1f}M params, {target.stat().st_size / 2**20:.0f} MiB")
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: build the checkpoint into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--forge-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    build(args.forge_dir.resolve(), args.out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
