"""Seeded training of the latent model (autoencoder first, then UNet and text encoder on its frozen latents),
and saving / loading the shipped weights.

Stage 1, autoencoder (:mod:`.autoencoder`): ``ae_steps`` AdamW steps on random ``ae_crop`` x ``ae_crop`` crops
(offsets multiples of 4, so the latent grid stays aligned) of fresh 64 x 64 data images; loss
``mean|x - G(z)| + kl_weight KL / (3HW)``.

Stage 2, latents: ``n_latents`` data images (seed ``seed + 1``) are encoded once to their posterior
``(mu, logvar)``; ``scale = 1 / std(mu)`` (all elements) and the per-level signal power of the scaled latents
``P_m = var(D_m(scale mu))`` (per-channel data mean removed, :func:`lib_chroma.empirical.level_power`) at
``m = 1, 2, 4, 8`` go to the metadata, as SD records 0.18215.

Stage 3, diffusion (DDPM eps objective on SD's scaled-linear schedule): ``t ~ U{0..999}``, ``z = scale (mu +
exp(logvar / 2) n)``, ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``, loss ``mean((eps_theta(z_t, t, c) -
eps)²)`` with ``c = text(prompt)``; the prompt names each of the scene's attributes with probability
``1 - p_omit`` and is empty with probability ``p_uncond`` (classifier-free guidance). UNet and text encoder are
trained jointly; AdamW, linear warm-up, cosine decay, gradient clipping at 1; the shipped weights are an EMA
``ema <- d ema + (1 - d) theta``, ``d = min(ema_decay, (1 + n) / (10 + n))``.

Every random draw comes from generators seeded by ``seed``, so a run is determined by its arguments (and
bit-reproducible on the same torch build and thread count). Stages 1-2 take about a third of the time and do not
depend on the diffusion arguments, so ``--stage1 PATH`` keeps their result (autoencoder state, posterior, attributes,
statistics, timings and the arguments that made them) and reuses it when the arguments match.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib_chroma.empirical import level_power
from lib_chroma.toy.model import scaled_linear_alphas_cumprod
from lib_chroma.toy.train import cosine_lr, ema_update, noised

from . import data
from .autoencoder import AutoEncoder, ae_loss
from .text import TextEncoder, drop_attributes, prompt_text, tokenize
from .unet import LatentUNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "latent_faces64.safetensors"
LEVELS = (1, 2, 4, 8)


@dataclasses.dataclass
class LatentModel:
    """The three trained parts and the training metadata (``meta["scale_factor"]``, ``meta["level_power"]``)."""

    ae: AutoEncoder
    text: TextEncoder
    unet: LatentUNet
    meta: dict[str, Any]

    def eval(self) -> LatentModel:
        """All parts in eval mode without gradients."""
        for m in (self.ae, self.text, self.unet):
            m.eval().requires_grad_(False)
        return self


def train_autoencoder(steps: int = 3000, batch: int = 16, crop: int = 32, lr: float = 2e-3,
                      kl_weight: float = 1e-5, seed: int = 0, log_every: int = 250) -> AutoEncoder:
    """Stage 1 (module docstring); returns the autoencoder in eval mode, scale still 1."""
    if crop % 4 or not 8 <= crop <= data.BASE:
        raise ValueError(f"ae_crop: must be a multiple of 4 in [8, {data.BASE}], got {crop}")
    torch.manual_seed(seed)
    ae = AutoEncoder()
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0, run = time.time(), 0.0
    for step in range(steps):
        x = torch.from_numpy(data.make_batch(batch, seed * 1_000_003 + step)[0])
        oy, ox = (4 * torch.randint(0, (data.BASE - crop) // 4 + 1, (2,), generator=gen)).tolist()
        x = x[..., oy:oy + crop, ox:ox + crop]
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, step, steps, 50)
        recon, mu, logvar = ae(x, gen)
        loss, _ = ae_loss(x, recon, mu, logvar, kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run += loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"ae step {step + 1}/{steps} loss {run / log_every:.4f} {time.time() - t0:.0f}s", flush=True)
            run = 0.0
    return ae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(ae: AutoEncoder, n: int, seed: int, chunk: int = 256
                   ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, str]]]:
    """Posterior ``(mu, logvar)`` (unscaled, float32 ``(n, 4, 16, 16)``) of ``n`` data images drawn with
    ``seed``, and their attributes."""
    rng_seed = np.random.default_rng(seed).integers(0, 2**31 - 1, size=math.ceil(n / chunk))
    mus, lvs, attrs = [], [], []
    for k, s in enumerate(rng_seed):
        m = min(chunk, n - k * chunk)
        x, scenes = data.make_batch(m, int(s))
        mu, lv = ae.posterior(torch.from_numpy(x))
        mus.append(mu)
        lvs.append(lv)
        attrs += [sc.attrs for sc in scenes]
    return torch.cat(mus), torch.cat(lvs), attrs


def latent_stats(mu: torch.Tensor) -> dict[str, Any]:
    """``scale = 1 / std(mu)`` and, for the scaled latents ``z = scale mu``, the per-channel means and the level
    powers ``P_m = var(D_m(z - mean_c))`` at :data:`LEVELS` (:func:`lib_chroma.empirical.level_power`)."""
    scale = 1.0 / float(mu.double().std())
    z = mu.double() * scale
    return {
        "scale_factor": scale,
        "channel_mean": [round(float(v), 5) for v in z.mean(dim=(0, 2, 3))],
        "level_power": {str(m): round(level_power(z, m), 5) for m in LEVELS},
    }


def train_diffusion(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    attrs: list[dict[str, str]],
    scale: float,
    steps: int = 2400,
    batch: int = 64,
    lr: float = 1e-3,
    warmup: int = 100,
    ema_decay: float = 0.998,
    p_omit: float = 0.25,
    p_uncond: float = 0.1,
    seed: int = 0,
    unet_kw: dict[str, Any] | None = None,
    text_kw: dict[str, Any] | None = None,
    log_every: int = 100,
) -> tuple[LatentUNet, TextEncoder]:
    """Stage 3 (module docstring): returns the EMA UNet and EMA text encoder."""
    torch.manual_seed(seed + 2)
    text = TextEncoder(**(text_kw or {}))
    unet = LatentUNet(ctx_dim=text.width, **(unet_kw or {}))
    ema_t, ema_u = TextEncoder(**(text_kw or {})), LatentUNet(ctx_dim=text.width, **(unet_kw or {}))
    ema_t.load_state_dict(text.state_dict())
    ema_u.load_state_dict(unet.state_dict())
    ema_t.requires_grad_(False)
    ema_u.requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    abar = scaled_linear_alphas_cumprod().float()
    gen = torch.Generator().manual_seed(seed + 3)
    rng = np.random.default_rng(seed + 4)
    n = mu.shape[0]
    t0, run = time.time(), 0.0
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        z = (mu[idx] + (0.5 * logvar[idx]).exp() * torch.randn(mu[idx].shape, generator=gen)) * scale
        prompts = ["" if rng.random() < p_uncond else prompt_text(drop_attributes(attrs[i], rng, p_omit))
                   for i in idx.tolist()]
        t = torch.randint(0, len(abar), (batch,), generator=gen)
        eps = torch.randn(z.shape, generator=gen)
        zt = noised(z, t, eps, abar)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, step, steps, warmup)
        loss = (unet(zt, t, text(tokenize(prompts))) - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema_u, unet, step, ema_decay)
        ema_update(ema_t, text, step, ema_decay)
        run += loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"unet step {step + 1}/{steps} loss {run / log_every:.4f} {time.time() - t0:.0f}s", flush=True)
            run = 0.0
    return ema_u.eval(), ema_t.eval()


def save_weights(model: LatentModel, path: Path) -> None:
    """One fp16 safetensors file: tensors ``ae.*``, ``text.*``, ``unet.*``; metadata ``config`` (the three
    constructors' arguments), ``meta`` (training record) and ``scale_factor``, all JSON."""
    from safetensors.torch import save_file

    state = {}
    for name, mod in (("ae", model.ae), ("text", model.text), ("unet", model.unet)):
        for k, v in mod.state_dict().items():
            state[f"{name}.{k}"] = v.detach().to(torch.float16).contiguous()
    config = {"ae": model.ae.config, "text": model.text.config, "unet": model.unet.config}
    metadata = {"config": json.dumps(config), "meta": json.dumps(model.meta),
                "scale_factor": json.dumps(model.meta["scale_factor"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_model(path: str | Path | None = None) -> LatentModel:
    """Load :func:`save_weights` output (float32, eval mode, no gradients; the autoencoder's scale from the
    metadata's exact ``scale_factor``); default: the shipped weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
    config, meta = json.loads(md["config"]), json.loads(md["meta"])
    ae, text = AutoEncoder(**config["ae"]), TextEncoder(**config["text"])
    unet = LatentUNet(**config["unet"])
    state = load_file(str(path))
    for name, mod in (("ae", ae), ("text", text), ("unet", unet)):
        mod.load_state_dict({k[len(name) + 1:]: v.float() for k, v in state.items() if k.startswith(name + ".")})
    ae.scale.fill_(float(meta["scale_factor"]))  # the exact value, not its fp16 copy among the tensors
    return LatentModel(ae, text, unet, meta).eval()


def stage1_args(seed: int, ae_steps: int, ae_batch: int, ae_crop: int, kl_weight: float, n_latents: int
                ) -> dict[str, Any]:
    """The arguments that determine stages 1-2 (the key a ``--stage1`` cache must match)."""
    return {"seed": seed, "ae_steps": ae_steps, "ae_batch": ae_batch, "ae_crop": ae_crop, "kl_weight": kl_weight,
            "n_latents": n_latents, "ae_lr": 2e-3}


def load_stage1(path: Path, args: dict[str, Any]) -> dict[str, Any] | None:
    """A ``--stage1`` cache made with ``args`` (keys ``ae``, ``mu``, ``logvar``, ``attrs``, ``stats``,
    ``seconds``), or ``None`` if there is none or it was made with other arguments."""
    if not path.exists():
        return None
    d = torch.load(path, weights_only=False)
    if d.get("args") != args:
        print(f"stage1 cache {path}: made with {d.get('args')}, not {args}; recomputing", flush=True)
        return None
    return d


def train(
    seed: int = 0,
    ae_steps: int = 3000,
    ae_batch: int = 16,
    ae_crop: int = 32,
    kl_weight: float = 1e-5,
    n_latents: int = 16384,
    steps: int = 2400,
    batch: int = 64,
    lr: float = 1e-3,
    out: Path | None = DEFAULT_WEIGHTS,
    stage1: Path | None = None,
) -> LatentModel:
    """All three stages; writes ``out`` (unless ``None``) and returns the model. With ``stage1``, stages 1-2 are
    loaded from that cache when it was made with the same arguments, else computed and written there; the
    recorded seconds are those of the run that computed them."""
    key = stage1_args(seed, ae_steps, ae_batch, ae_crop, kl_weight, n_latents)
    cached = load_stage1(stage1, key) if stage1 is not None else None
    if cached is not None:
        ae = AutoEncoder()
        ae.load_state_dict(cached["ae"])
        ae.eval().requires_grad_(False)
        mu, logvar, attrs, stats = cached["mu"], cached["logvar"], cached["attrs"], cached["stats"]
        t_ae, t_lat = cached["seconds"]["ae"], cached["seconds"]["latents"]
        print(f"stage1 from {stage1}", flush=True)
    else:
        t0 = time.time()
        ae = train_autoencoder(ae_steps, ae_batch, ae_crop, kl_weight=kl_weight, seed=seed)
        t_ae = time.time() - t0
        mu, logvar, attrs = encode_dataset(ae, n_latents, seed + 1)
        stats = latent_stats(mu)
        ae.scale.fill_(stats["scale_factor"])
        t_lat = time.time() - t0 - t_ae
        if stage1 is not None:
            stage1.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"args": key, "ae": ae.state_dict(), "mu": mu, "logvar": logvar, "attrs": attrs,
                        "stats": stats, "seconds": {"ae": round(t_ae, 1), "latents": round(t_lat, 1)}}, stage1)
    print(f"latents: {tuple(mu.shape)}, scale {stats['scale_factor']:.5f}, level power {stats['level_power']}",
          flush=True)
    t1 = time.time()
    unet, text = train_diffusion(mu, logvar, attrs, stats["scale_factor"], steps=steps, batch=batch, lr=lr,
                                 seed=seed)
    t_diff = time.time() - t1
    total = t_ae + t_lat + t_diff
    meta = {
        **stats,
        "seed": seed,
        "ae": {"steps": ae_steps, "batch": ae_batch, "crop": ae_crop, "kl_weight": kl_weight,
               "seconds": round(t_ae, 1)},
        "latents": {"n": n_latents, "seconds": round(t_lat, 1)},
        "diffusion": {"steps": steps, "batch": batch, "lr": lr, "seconds": round(t_diff, 1)},
        "train_seconds": round(total, 1),
        "threads": torch.get_num_threads(),
        "native": {"pixels": data.BASE, "latent": data.BASE // 4},
    }
    model = LatentModel(ae, text, unet, meta).eval()
    if out is not None:
        save_weights(model, out)
        print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {total:.0f}s", flush=True)
    return model


def train_main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m lib_chroma train --model latent [--steps N] [--out PATH] ...``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m lib_chroma train --model latent",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ae-steps", type=int, default=3000)
    p.add_argument("--n-latents", type=int, default=16384)
    p.add_argument("--steps", type=int, default=2400, help="UNet + text encoder steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--stage1", type=Path, default=None,
                   help="cache of the autoencoder stage: reused when made with the same arguments, else written")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a run is bit-reproducible on the same "
                                                          "torch build and thread count)")
    p.add_argument("--out", type=Path, default=None, help="default: the shipped weights' path")
    p.add_argument("--resamplers", action="store_true",
                   help="only fit the latent resamplers of the shipped (or --weights) model, into --out "
                        "(default weights/latent_resamplers.safetensors)")
    p.add_argument("--weights", type=Path, default=None, help="with --resamplers: the model to fit them for")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    if args.resamplers:
        from . import resamplers

        return resamplers.fit_main(load_model(args.weights), args.out or resamplers.DEFAULT_RESAMPLERS)
    args.out = args.out or DEFAULT_WEIGHTS
    train(seed=args.seed, ae_steps=args.ae_steps, n_latents=args.n_latents, steps=args.steps, batch=args.batch,
          lr=args.lr, out=args.out, stage1=args.stage1)
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main())
