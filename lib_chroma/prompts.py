"""Time-dependent prompts: switch steps from the chromatogram, rendered in A1111's prompt-editing syntax.

A layout prompt steers the steps that generate the coarse levels; a detail prompt takes over once level
``m`` is fraction ``q`` generated (``r_m(sigma) >= q``, see :mod:`lib_chroma.chromatography`).

A1111 resolves ``[a:b:N]`` per model call: ``a`` for calls ``0..N`` and ``b`` from call ``N+1`` (N >= 1; with
N = 0, ``b`` throughout). ``when`` containing a ``.`` is a fraction ``f`` of the pass's call count ``T``
(``N = int(f·T)``; ``T`` is steps × 2 for second-order samplers); in a hires pass's prompt, ``1 + f`` is a
fraction of the hires pass. To start ``b`` at step ``s`` we need ``N = k·s - 1`` (``k`` calls per step) and
render ``f = (k·s - 1/2) / (k·steps)``, the midpoint of the interval that truncates to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from lib_chroma.chromatography import signal_ratio, step_generated
from lib_chroma.validation import check_int, check_number, check_sigmas

__all__ = [
    "switch_step",
    "when_fraction",
    "realized_switch",
    "escape_prompt",
    "split_and",
    "render_switch",
    "DEFAULT_SWITCH_LEVEL",
    "DEFAULT_SWITCH_Q",
]

#: Default switch: the detail prompt takes over once latent level 4 (image scale 32 px) is half generated.
DEFAULT_SWITCH_LEVEL = 4
DEFAULT_SWITCH_Q = 0.5


def switch_step(sigmas: Sequence[float] | torch.Tensor, level: float, q: float = DEFAULT_SWITCH_Q) -> int:
    """The 0-based step at which the detail prompt starts: the step after level ``level`` reaches ``r >= q``.

    In ``[0, N]``; 0 means "detail prompt throughout" (the level was already q generated at the start) and N
    means the detail prompt is never used."""
    s = check_sigmas("sigmas", sigmas)
    n = s.numel() - 1
    if float(signal_ratio(s[0], level)) >= check_number("q", q, 0.0, 1.0):
        return 0
    return min(n, step_generated(s, level, q) + 1)


def realized_switch(step: int, steps: int) -> int:
    """The switch step A1111 can express: 0 (detail throughout), 2..steps, since ``[a:b:N]`` needs N >= 1
    (step 1 would need N = 0, which A1111 reads as "b throughout"); step 1 is moved to 2."""
    check_int("steps", steps, 1)
    check_int("step", step, 0, steps)
    return 2 if step == 1 and steps >= 2 else step


def when_fraction(step: int, steps: int, multiplier: int = 1, hires: bool = False) -> str:
    """A1111 ``when`` string (always with a ``.``) that makes the second prompt start at ``step``.

    ``multiplier`` is A1111's calls-per-step count for prompt editing (2 for second-order samplers).
    ``hires`` renders the hires-pass form ``1 + f``. ``step`` must be in [1, steps]."""
    check_int("steps", steps, 1)
    check_int("step", step, 1, steps)
    k = check_int("multiplier", multiplier, 1, 2)
    total = k * steps
    target = k * step - 1
    f = (k * step - 0.5) / total
    for digits in range(4, 10):
        txt = f"{f:.{digits}f}"
        if int(float(txt) * total) == target:
            break
    return f"{1 + float(txt):.{digits}f}" if hires else txt


_CLOSE = {"(": ")", "[": "]"}
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*$")
Item = tuple  # ("c", text) or ("g", opener, items)


def _tokenize(text: str) -> list[Item]:
    """Characters (escape pairs kept together) and matched bracket groups; stray closers are escaped and
    unclosed openers become escaped literals whose contents stay at the enclosing level."""
    stack: list[list[Item]] = [[]]
    openers: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            stack[-1].append(("c", text[i:i + 2] if i + 1 < len(text) else "\\\\"))
            i += 2
            continue
        if ch in _CLOSE:
            openers.append(ch)
            stack.append([])
        elif ch in ")]":
            if openers and _CLOSE[openers[-1]] == ch:
                items = stack.pop()
                stack[-1].append(("g", openers.pop(), items))
            else:
                stack[-1].append(("c", "\\" + ch))
        else:
            stack[-1].append(("c", ch))
        i += 1
    while openers:
        items = stack.pop()
        stack[-1].append(("c", "\\" + openers.pop()))
        stack[-1].extend(items)
    return stack[0]


def _valid_group(opener: str, items: list[Item]) -> bool:
    """Whether A1111's grammar reads the group as intended: ``(x)``, ``(x:w)``, ``[x]``, ``[a|b|…]``,
    ``[to:N]``, ``[from:to:N]`` with N a plain number."""
    seps = [it[1] for it in items if it[0] == "c" and it[1] in (":", "|")]
    if opener == "(":
        return seps in ([], [":"])
    if not seps or all(c == "|" for c in seps):
        return True
    if not all(c == ":" for c in seps) or len(seps) > 2:
        return False
    tail: list[Item] = []
    for it in reversed(items):
        if it == ("c", ":"):
            break
        tail.insert(0, it)
    return all(it[0] == "c" for it in tail) and bool(_NUMBER.match("".join(it[1] for it in tail)))


def _render(items: list[Item], top: bool) -> str:
    out = []
    for it in items:
        if it[0] == "c":
            out.append("\\" + it[1] if top and it[1] in (":", "|") else it[1])
        elif _valid_group(it[1], it[2]):
            out.append(it[1] + _render(it[2], top=False) + _CLOSE[it[1]])
        else:
            out.append("\\" + it[1] + _render(it[2], top=True) + "\\" + _CLOSE[it[1]])
    return "".join(out)


def escape_prompt(text: str) -> str:
    """Make ``text`` safe as one operand of ``[a:b:when]`` while keeping A1111 syntax the user wrote.

    Well-formed groups (emphasis ``(x:1.2)``, nested edits ``[a:b:3]``, alternation ``[a|b]``) and existing
    backslash escapes stay as written. Everything that would change the structure gets a backslash: a ``:``
    or ``|`` outside any group (it would split our operands), stray or unclosed brackets, the brackets and
    separators of a malformed group (e.g. ``[a:b]``), and a trailing lone backslash. A1111's attention parser
    turns ``\\x`` back into ``x``, so the conditioning text is what the user typed."""
    if not isinstance(text, str):
        raise ValueError(f"prompt: must be a string, got {type(text).__name__}")
    return _render(_tokenize(text), top=True)


_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(.*?)\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, str | None]]:
    """Split an A1111 prompt at ``AND`` into (text, weight or None) parts, as ``parse_prompt`` does."""
    parts = []
    for part in _AND.split(prompt):
        m = _WEIGHT.match(part)
        parts.append((m.group(1).strip(), m.group(2)) if m else (part.strip(), None))
    return parts


def render_switch(layout: str, detail: str, when: str | None) -> str:
    """``[layout:detail:when]`` with both operands escaped; ``when=None`` renders the detail prompt alone.

    Composable prompts (``AND``) are switched part by part, so both prompts need the same number of parts;
    a part's weight (``… :1.2``) is taken from the detail prompt, else from the layout prompt."""
    a, b = split_and(layout), split_and(detail)
    if len(a) != len(b):
        raise ValueError(
            f"detail_prompt: must have as many AND parts as layout_prompt ({len(a)}), got {len(b)}"
        )
    if when is not None:
        check_number("when", when, 0.0, 2.0)
        if "." not in when:
            raise ValueError(f"when: must be a fraction containing '.', got {when!r}")
    out = []
    for (ta, wa), (tb, wb) in zip(a, b):
        body = escape_prompt(tb) if when is None else f"[{escape_prompt(ta)}:{escape_prompt(tb)}:{when}]"
        weight = wb or wa
        out.append(f"{body} :{weight}" if weight else body)
    return " AND ".join(out)
