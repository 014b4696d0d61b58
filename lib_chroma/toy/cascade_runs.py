"""The chromatographic cascade on the toy model (:mod:`lib_chroma.cascade`), with the noise conventions of
:mod:`lib_chroma.toy.runs`.

Sample ``i`` of every stage uses the seed ``seed + i``: the native stage starts from
``initial_noise(32×32) · sigma_0`` (the native samples' own start, so its first steps are theirs) and each later
stage draws its fresh noise with :func:`lib_chroma.toy.sampling.initial_noise` at its own size (as the hires-fix
rows do at the output size). ``torch.manual_seed(seed + start)`` precedes every stage's sampler of a batch.
Each stage runs the k-diffusion sampler on its :attr:`lib_chroma.cascade.Stage.sigmas`; a stopped stage's last step
goes to sigma 0, which for these samplers returns the model's x0 prediction at the stop sigma; the callback
records it and the latent ``x_k`` it was made from. Guided stages run on
:class:`lib_chroma.guidance.UpsampleGuidedDenoiser`, reset per batch (the moving grid's phase).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lib_chroma.cascade import CascadePlan, handover, plan_cascade
from lib_chroma.guidance import UpsampleGuidedDenoiser

from . import runs
from .sampling import initial_noise, make_denoiser

NATIVE = 32


def toy_cascade(factor: tuple[int, int], steps: int, sampler: str = runs.DEFAULT_SAMPLER, **kw) -> CascadePlan:
    """:func:`lib_chroma.cascade.plan_cascade` on the toy's sigmas for ``sampler`` (ValueError when no cascade
    fits the schedule)."""
    plan = plan_cascade(runs.toy_sigmas(sampler, steps), factor, **kw)
    if plan is None:
        raise ValueError(f"steps: no cascade fits {steps} steps of {sampler} at factor {factor}")
    return plan


@torch.no_grad()
def run_cascade(
    model: runs.CountingModel,
    n: int,
    plan: CascadePlan,
    seed: int,
    *,
    handover_mode: str = "fresh",
    upscaler: str = "bilinear",
    sampler: str = runs.DEFAULT_SAMPLER,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Sample ``n`` images through every stage of ``plan``; returns the last stage's output (n, 3, H, W)."""
    den = make_denoiser(model)  # type: ignore[arg-type]
    fn = runs._ks(sampler)

    def one(start: int, m: int) -> torch.Tensor:
        x0 = x_k = None
        prev = None
        for st in plan.stages:
            h, w = NATIVE * st.factor[0], NATIVE * st.factor[1]
            if prev is None:
                x = initial_noise(m, h, w, seed + start) * st.sigmas[0]
            else:
                ratio = (st.factor[0] // prev.factor[0], st.factor[1] // prev.factor[1])
                x = handover(x0, initial_noise(m, h, w, seed + start), st.start, ratio, mode=handover_mode,
                             x_k=x_k, sigma_k=prev.stop, upscaler=upscaler)
            sig = torch.tensor(st.sigmas, dtype=torch.float32)
            model_fn = den
            if st.plan is not None and st.plan.enabled:
                model_fn = UpsampleGuidedDenoiser(den, st.plan)
                model_fn.reset()
            last: dict[str, torch.Tensor] = {}

            def cb(d: dict, last: dict = last, n_steps: int = len(st.sigmas) - 1) -> None:
                if d["i"] == n_steps - 1:
                    last["x"], last["denoised"] = d["x"].clone(), d["denoised"].clone()

            torch.manual_seed(seed + start)
            out = fn(model_fn, x, sig, disable=True, callback=cb)
            if st.stop is not None:
                x0, x_k = last["denoised"], last["x"]
            prev = st
        return out

    return runs._batched(n, batch, one, progress)
