"""Prompts for the latent model: a small grammar over the scene attributes, its tokenizer and text encoder.

Grammar (every part optional; attributes left out of the prompt are drawn at random by the data):

    a [small|large] [red|green|blue|yellow] face [on the left|in the centre|on the right]
      [, round|slit eyes] [, noisy|striped|dotted background]

e.g. ``"a large red face on the left, slit eyes, striped background"``; an empty attribute set gives
``"a face"``, and the empty prompt ``""`` is the unconditional prompt of classifier-free guidance.

Tokens: lower-cased words and commas (regex ``[a-z]+|,``), each mapped to its index in :data:`VOCAB`
(``<unk>`` if absent); a sequence is ``<bos> tokens <eos>`` truncated to ``MAX_LEN`` and right-padded with
``<pad>`` to exactly ``MAX_LEN``. The encoder is a token embedding plus a learned position embedding followed
by a pre-norm transformer encoder and a final LayerNorm; its output ``(B, MAX_LEN, width)`` is the
cross-attention context of the UNet (all positions, padding included, as SD attends to all 77 CLIP tokens).
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from . import data

MAX_LEN = 16
POSITION_WORDS = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
TEXTURE_WORDS = {"noise": "noisy", "stripes": "striped", "dots": "dotted"}
VOCAB: tuple[str, ...] = (
    "<pad>", "<bos>", "<eos>", "<unk>", ",", "a", "face", "on", "in", "the", "left", "centre", "right",
    *data.SIZES, *data.COLOURS, *data.EYES, "eyes", *TEXTURE_WORDS.values(), "background",
)
PAD, BOS, EOS, UNK = 0, 1, 2, 3
_INDEX = {w: i for i, w in enumerate(VOCAB)}
_TOKEN = re.compile(r"[a-z]+|,")


def prompt_text(attrs: dict[str, str]) -> str:
    """The grammar's sentence naming exactly the attributes in ``attrs`` (any subset, in a fixed order)."""
    for k, v in attrs.items():
        if k not in data.ATTRIBUTES or v not in data.ATTRIBUTES[k]:
            raise ValueError(f"attrs.{k}: unknown value {v!r}; allowed: {data.ATTRIBUTES.get(k)}")
    words = ["a"]
    if "size" in attrs:
        words.append(attrs["size"])
    if "colour" in attrs:
        words.append(attrs["colour"])
    words.append("face")
    if "position" in attrs:
        words.append(POSITION_WORDS[attrs["position"]])
    text = " ".join(words)
    if "eyes" in attrs:
        text += f", {attrs['eyes']} eyes"
    if "texture" in attrs:
        text += f", {TEXTURE_WORDS[attrs['texture']]} background"
    return text


def drop_attributes(attrs: dict[str, str], rng: np.random.Generator, p_omit: float) -> dict[str, str]:
    """``attrs`` with each attribute independently left out with probability ``p_omit``."""
    return {k: v for k, v in attrs.items() if rng.random() >= p_omit}


def prompt_set(n: int, seed: int, named: tuple[str, ...] = tuple(data.ATTRIBUTES)) -> list[dict[str, str]]:
    """``n`` attribute sets from ``default_rng(seed)``, each naming the attributes ``named`` (uniform values):
    the prompts a benchmark gives every method, sample ``i`` getting entry ``i``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        full = data.random_attributes(rng)
        out.append({k: full[k] for k in named})
    return out


def tokenize(prompts: list[str] | str) -> torch.Tensor:
    """Token ids ``(B, MAX_LEN)`` int64 (see the module docstring); deterministic."""
    if isinstance(prompts, str):
        prompts = [prompts]
    out = torch.full((len(prompts), MAX_LEN), PAD, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = [BOS, *(_INDEX.get(t, UNK) for t in _TOKEN.findall(p.lower()))][: MAX_LEN - 1] + [EOS]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class TextEncoder(nn.Module):
    """Token + position embedding, ``layers`` pre-norm transformer layers (``heads`` heads, GELU MLP of
    ``4 * width``, no dropout), final LayerNorm: ``(B, MAX_LEN) ids -> (B, MAX_LEN, width)``."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.config = {"width": width, "layers": layers, "heads": heads}
        self.tok = nn.Embedding(len(VOCAB), width)
        self.pos = nn.Parameter(torch.randn(MAX_LEN, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    @property
    def width(self) -> int:
        return int(self.config["width"])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.norm(self.blocks(self.tok(ids) + self.pos[: ids.shape[1]]))

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Context for prompts: ``self(tokenize(prompts))``."""
        return self(tokenize(prompts).to(self.pos.device))
