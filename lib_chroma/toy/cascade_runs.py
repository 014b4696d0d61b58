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

from lib_chroma.cascade import CascadePlan, handover, plan_cascade, renoise
from lib_chroma.guidance import GuidancePlan, UpsampleGuidedDenoiser

from . import runs
from .sampling import initial_noise, make_denoiser

NATIVE = 32
#: The toy's handover for one handover, measured best on it held out (docs/theory.md §8, "Which handover, per
#: model"): ``renoise`` keeps the native trajectory's coarse state and with it the native pass's failed faces. A chain
#: keeps :data:`lib_chroma.cascade.DEFAULT_HANDOVER` (``fresh`` lost faces there).
TOY_HANDOVER = "fresh"


def toy_cascade(factor: tuple[int, int], steps: int, sampler: str = runs.DEFAULT_SAMPLER, **kw) -> CascadePlan:
    """:func:`lib_chroma.cascade.plan_cascade` on the toy's sigmas for ``sampler`` (ValueError when no cascade
    fits the schedule)."""
    plan = plan_cascade(runs.toy_sigmas(sampler, steps), factor, **kw)
    if plan is None:
        raise ValueError(f"steps: no cascade fits {steps} steps of {sampler} at factor {factor}")
    return plan


def sample_stages(
    plan: CascadePlan,
    fn: Callable[..., torch.Tensor],
    denoiser: Callable[[GuidancePlan | None], Callable[..., torch.Tensor]],
    noise_at: Callable[[int, int], torch.Tensor],
    seed: int,
    native: int,
    *,
    handover_mode: str = "fresh",
    upscaler: str = "bilinear",
    enlarge: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Every stage of ``plan`` for one batch (module docstring): ``fn`` the k-diffusion sampler, ``denoiser(plan)``
    the model of a stage (its guidance plan, None when unguided), ``noise_at(h, w)`` the batch's unit noise at a
    size, ``seed`` the batch's seed. ``enlarge(x0, h, w)``: the host enlarges the x0 prediction itself (A1111's
    image upscalers) and adds ``sigma_s`` times the handover's noise, as the WebUI adapter does
    (:func:`lib_chroma.cascade.renoise`; ``fresh`` or ``renoise``). Returns the last stage's output."""
    x0 = x_k = prev = out = None
    for st in plan.stages:
        h, w = native * st.factor[0], native * st.factor[1]
        noise = noise_at(h, w)
        if prev is None:
            x = noise * st.sigmas[0]
        else:
            ratio = (st.factor[0] // prev.factor[0], st.factor[1] // prev.factor[1])
            if enlarge is None:
                x = handover(x0, noise, st.start, ratio, mode=handover_mode, x_k=x_k, sigma_k=prev.stop,
                             upscaler=upscaler)
            else:
                if handover_mode not in ("fresh", "renoise"):
                    raise ValueError(f"handover: an enlarging host needs fresh or renoise, got {handover_mode!r}")
                if handover_mode == "renoise":
                    noise = renoise(x0, x_k, noise, st.start, prev.stop, ratio)
                x = enlarge(x0, h, w) + st.start * noise
        last: dict[str, torch.Tensor] = {}

        def cb(d: dict, last: dict = last, final: int = st.steps - 1) -> None:
            if d["i"] == final:
                last["x"], last["denoised"] = d["x"].clone(), d["denoised"].clone()

        model_fn = denoiser(st.plan if st.plan is not None and st.plan.enabled else None)
        torch.manual_seed(seed)
        out = fn(model_fn, x, torch.tensor(st.sigmas, dtype=torch.float32), disable=True, callback=cb)
        if st.stop is not None:
            x0, x_k = last["denoised"], last["x"]
        prev = st
    assert out is not None
    return out


@torch.no_grad()
def run_cascade(
    model: runs.CountingModel,
    n: int,
    plan: CascadePlan,
    seed: int,
    *,
    handover_mode: str = TOY_HANDOVER,
    upscaler: str = "bilinear",
    sampler: str = runs.DEFAULT_SAMPLER,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Sample ``n`` images through every stage of ``plan``; returns the last stage's output (n, 3, H, W)."""
    den = make_denoiser(model)  # type: ignore[arg-type]
    fn = runs._ks(sampler)

    def denoiser(gplan: GuidancePlan | None) -> Callable[..., torch.Tensor]:
        return den if gplan is None else UpsampleGuidedDenoiser(den, gplan)  # fresh: phase 0 per batch and stage

    def one(start: int, m: int) -> torch.Tensor:
        return sample_stages(plan, fn, denoiser, lambda h, w: initial_noise(m, h, w, seed + start), seed + start,
                             NATIVE, handover_mode=handover_mode, upscaler=upscaler)

    return runs._batched(n, batch, one, progress)
