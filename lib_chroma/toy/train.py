"""Seeded training of the toy UNet on synthetic faces, and loading of the shipped weights.

Objective (DDPM, eps-prediction): ``t ~ U{0..999}``, ``eps ~ N(0, I)``,
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, loss ``= mean((eps_theta(x_t, t) - eps)^2)``.
AdamW with linear warm-up and cosine decay; the shipped weights are an exponential moving average
``ema <- d * ema + (1 - d) * theta`` with ``d = min(ema_decay, (1 + n) / (10 + n))`` at step ``n``.
Every batch is drawn fresh from :mod:`lib_chroma.toy.data` with seed ``seed * 1_000_003 + step``, so a run is
fully determined by its arguments (and bit-reproducible on the same torch build and thread count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from . import data
from .model import TinyUNet, param_count, scaled_linear_alphas_cumprod

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "toy_faces32.safetensors"


def save_weights(model: TinyUNet, path: Path, meta: dict | None = None) -> None:
    """Save the state dict in fp16 safetensors, with the model config (and ``meta``) as JSON metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(model.config), "meta": json.dumps(meta or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> TinyUNet:
    """Load a model saved by :func:`save_weights` (float32, eval mode); default: the shipped weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = TinyUNet(**config)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.to(device).eval()


def cosine_lr(lr: float, step: int, steps: int, warmup: int) -> float:
    """Learning rate at ``step`` of ``steps``: ``lr min(1, (step + 1) / warmup) (1 + cos(pi step / steps)) / 2``
    (linear warm-up, cosine decay)."""
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """In place, parameter by parameter: ``ema <- d ema + (1 - d) model``, ``d = min(decay, (1 + step) / (10 +
    step))``."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(d).add_(pm, alpha=1 - d)


def noised(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """DDPM forward process: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` per batch item."""
    a = abar[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def train(
    steps: int = 3600,
    batch: int = 32,
    lr: float = 1.5e-3,
    warmup: int = 100,
    ema_decay: float = 0.998,
    seed: int = 0,
    res: int = data.BASE,
    channels: tuple[int, ...] = (32, 64, 128),
    blocks: tuple[int, ...] = (1, 2, 2),
    out: Path | None = DEFAULT_WEIGHTS,
    checkpoint_every: int = 0,
    log_every: int = 50,
) -> TinyUNet:
    """Train from scratch and return the EMA model; write it to ``out`` (and every ``checkpoint_every``)."""
    torch.manual_seed(seed)
    model = TinyUNet(channels=channels, blocks=blocks)
    ema = TinyUNet(channels=channels, blocks=blocks)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    abar = scaled_linear_alphas_cumprod().float()
    gen = torch.Generator().manual_seed(seed)
    print(f"toy train: {param_count(model)} params, {steps} steps x batch {batch} at {res}x{res}", flush=True)
    t0 = time.time()
    run_loss = 0.0
    for step in range(steps):
        x0 = torch.from_numpy(data.make_batch(batch, seed * 1_000_003 + step, res)[0])
        t = torch.randint(0, len(abar), (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = noised(x0, t, eps, abar)
        cur_lr = cosine_lr(lr, step, steps, warmup)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        loss = (model(xt, t) - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, step, ema_decay)
        run_loss += loss.item()
        if log_every and (step + 1) % log_every == 0:
            el = time.time() - t0
            avg = run_loss / log_every
            print(f"step {step + 1}/{steps} loss {avg:.4f} lr {cur_lr:.2e} {el:.0f}s", flush=True)
            run_loss = 0.0
        if out is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            save_weights(ema, out.with_suffix(f".step{step + 1}.safetensors"), {"step": step + 1})
    meta = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "res": res,
        "ema_decay": ema_decay,
        "train_seconds": round(time.time() - t0, 1),
        "threads": torch.get_num_threads(),
    }
    if out is not None:
        save_weights(ema, out, meta)
        print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {meta['train_seconds']}s", flush=True)
    return ema.eval()


def train_main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m lib_chroma train [--steps N] [--out PATH] ...``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m lib_chroma train", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2: the shipped weights took 28 min; a run is bit-reproducible "
                        "on the same torch build and thread count)")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--checkpoint-every", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    train(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main())
