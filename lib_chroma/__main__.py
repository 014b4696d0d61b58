"""Command line: ``python -m lib_chroma {curves,demo,bench,train} …`` (``bench`` and ``train`` take
``--model toy|latent``, default ``toy``).

Bad arguments end with a one-line ``error: …`` message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from lib_chroma.schedule import MODEL_FAMILIES, SAMPLERS, SCHEDULERS

# Sub-commands implemented by the toy-model package: (module, function taking argv).
_TOY_COMMANDS = {
    "demo": ("lib_chroma.toy.demo", "demo_main", "run the embedded demo (toy model) into outputs/demo/"),
    "bench": ("lib_chroma.toy.bench", "bench_main", "quality-and-cost benchmark on the toy model "
              "(--model latent: the latent model)"),
    "train": ("lib_chroma.toy.train", "train_main", "train the toy model (reproducible, seeded; "
              "--model latent: the latent model)"),
}
#: The same sub-commands for ``--model latent`` (the SD-like latent reference model).
_LATENT_COMMANDS = {
    "bench": ("lib_chroma.toy.latent.bench", "bench_main"),
    "train": ("lib_chroma.toy.latent.train", "train_main"),
}
MODELS = ("toy", "latent")


def _pop_model(rest: list[str]) -> tuple[str, list[str]]:
    """Take ``--model NAME`` / ``--model=NAME`` out of a toy command's arguments (default ``toy``)."""
    out, model, i = [], "toy", 0
    while i < len(rest):
        a = rest[i]
        if a == "--model" or a.startswith("--model="):
            if a == "--model":
                if i + 1 >= len(rest):
                    raise ValueError(f"model: needs a value, one of {', '.join(MODELS)}")
                model, i = rest[i + 1], i + 2
            else:
                model, i = a.split("=", 1)[1], i + 1
            continue
        out.append(a)
        i += 1
    return model, out


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _curves_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curves", help="chromatogram of a sampler/scheduler run, as JSON and/or PNG")
    p.add_argument("--model", default="sd1", choices=list(MODEL_FAMILIES))
    p.add_argument("--sampler", default="Euler", help=f"A1111 sampler label ({', '.join(SAMPLERS)})")
    p.add_argument("--scheduler", default="Automatic",
                   help=f"A1111 scheduler ({', '.join(v['label'] for v in SCHEDULERS.values())})")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--levels", type=_int_list, default=[1, 2, 4, 8], help="comma-separated, e.g. 1,2,4,8")
    p.add_argument("--factor", type=_int_list, default=None,
                   help="guidance factor 'm' or 'm_h,m_w' (default: auto from size and native size)")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale w")
    p.add_argument("--switch-level", type=float, default=None, help="level at which the prompt switches")
    p.add_argument("--png", metavar="FILE", help="write the curve figure here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_curves(args: argparse.Namespace) -> int:
    from lib_chroma.curves import curves_report
    from lib_chroma.prompts import DEFAULT_SWITCH_LEVEL

    factor = None
    if args.factor:
        if len(args.factor) not in (1, 2):
            raise ValueError(f"factor: give 'm' or 'm_h,m_w', got {args.factor}")
        factor = (args.factor[0], args.factor[-1])
    report = curves_report(
        args.model, args.sampler, args.scheduler, args.steps, args.width, args.height, args.levels,
        factor=factor, scale=args.scale,
        switch_level=DEFAULT_SWITCH_LEVEL if args.switch_level is None else args.switch_level,
    )
    if args.png:
        from lib_chroma.plots import save_png

        save_png(report, args.png)
    if args.json:
        print(json.dumps(report))
    if not args.json:
        win = report["guidance_window"]
        print(f"{report['model']} {report['sampler']} / {report['scheduler']}, {report['steps']} steps, "
              f"{args.width}x{args.height} (factor {report['factor']['h']}x{report['factor']['w']})")
        for m, lvl in report["levels"].items():
            print(f"  level {m:>3}: peak at step {lvl['peak_step']}")
        print("  guidance window: " + ("none" if win is None else f"steps {win['first_step']}–{win['last_step']}"))
        print(f"  prompt switch: step {report['switch']['step']} (when {report['switch']['fraction']})")
        if args.png:
            print(f"  figure: {args.png}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lib_chroma", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _curves_parser(sub)
    for name, (_, _, help_text) in _TOY_COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    argv = list(sys.argv[1:] if argv is None else argv)
    # toy commands parse their own options
    if argv and argv[0] in _TOY_COMMANDS:
        mod_name, func, _ = _TOY_COMMANDS[argv[0]]
        rest = argv[1:]
        if argv[0] in _LATENT_COMMANDS:
            try:
                model, rest = _pop_model(rest)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if model not in MODELS:
                print(f"error: model: must be one of {', '.join(MODELS)}, got {model!r}", file=sys.stderr)
                return 2
            if model == "latent":
                mod_name, func = _LATENT_COMMANDS[argv[0]]
        try:
            fn = getattr(importlib.import_module(mod_name), func)
        except (ImportError, AttributeError) as exc:
            print(f"error: '{argv[0]}' is not available: {exc}", file=sys.stderr)
            return 2
        try:
            return int(fn(rest) or 0)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    try:
        return _run_curves(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
