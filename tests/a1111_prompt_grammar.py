"""An independent reader of A1111's documented prompt syntax, used to check what lib_chroma.prompts renders.

Written from the WebUI's user documentation ("Prompt editing", "Alternating words", "Attention/emphasis",
"Composable diffusion"), not from its code:
- ``[from:to:when]``, ``[to:when]``, ``[from::when]``: ``when`` with a ``.`` is a fraction of the pass's call
  count (in a hires pass's prompt, ``1 + f`` a fraction of the hires pass), else a call number; ``from`` is
  used for calls ``0..N`` and ``to`` afterwards (N = 0 means ``to`` throughout);
- ``[a|b]`` alternates per call; ``(x)``, ``(x:1.2)``, ``[x]`` are emphasis; ``\\x`` is a literal x;
- ``AND`` splits composable prompts, each optionally ending in ``:weight``.
A construct that does not match is a parse error here (A1111 would then read the whole prompt literally).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class PromptSyntaxError(ValueError):
    pass


@dataclass
class Text:
    raw: str


@dataclass
class Emph:
    open: str
    body: list
    weight: list | None


@dataclass
class Sched:
    before: list
    after: list
    when: str


@dataclass
class Alt:
    options: list


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)\s*$")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def parse(self) -> list:
        nodes = self.seq(stop="")
        if self.i != len(self.s):
            raise PromptSyntaxError(f"unexpected {self.s[self.i]!r} at {self.i}")
        return nodes

    def seq(self, stop: str) -> list:
        nodes: list = []
        buf = ""
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "\\" and self.i + 1 < len(self.s):
                buf += self.s[self.i:self.i + 2]
                self.i += 2
            elif ch in stop:
                break
            elif ch in "([":
                if buf:
                    nodes.append(Text(buf))
                    buf = ""
                nodes.append(self.group())
            elif ch in ")]:|":
                raise PromptSyntaxError(f"stray {ch!r} at {self.i}")
            else:
                buf += ch
                self.i += 1
        if buf:
            nodes.append(Text(buf))
        return nodes

    def group(self) -> object:
        opener = self.s[self.i]
        closer = ")" if opener == "(" else "]"
        start = self.i
        self.i += 1
        parts = [self.seq(stop=closer + ":|")]
        seps = []
        while self.i < len(self.s) and self.s[self.i] in ":|":
            seps.append(self.s[self.i])
            self.i += 1
            parts.append(self.seq(stop=closer + ":|"))
        if self.i >= len(self.s) or self.s[self.i] != closer:
            raise PromptSyntaxError(f"unclosed {opener!r} at {start}")
        self.i += 1
        if opener == "(":
            if seps == []:
                return Emph("(", parts[0], None)
            if seps == [":"]:
                return Emph("(", parts[0], parts[1])
            raise PromptSyntaxError(f"bad emphasis at {start}")
        if not seps:
            return Emph("[", parts[0], None)
        if all(c == "|" for c in seps):
            return Alt(parts)
        if all(c == ":" for c in seps) and len(parts) in (2, 3):
            when = _plain(parts[-1])
            if when is None or not _NUMBER.match(when):
                raise PromptSyntaxError(f"scheduled edit without a number at {start}")
            before = parts[0] if len(parts) == 3 else []
            return Sched(before, parts[-2], when.strip())
        raise PromptSyntaxError(f"bad bracket group at {start}")


def _plain(nodes: list) -> str | None:
    if all(isinstance(n, Text) for n in nodes):
        return "".join(n.raw for n in nodes)
    return None


def parse(prompt: str) -> list:
    """Parse one composable part (no AND) into nodes."""
    return _Parser(prompt).parse()


def end_call(when: str, steps: int, hires_steps: int | None = None) -> int:
    """The last call (0-based) of ``from`` for a ``when`` value."""
    v = float(when)
    if "." in when:
        if hires_steps is not None:
            return int((v - 1.0) * hires_steps)
        return int(v * steps)
    return int(v)


def resolve(nodes: list, call: int, steps: int, hires_steps: int | None = None) -> str:
    """The text A1111 conditions on at model call ``call`` (emphasis and escapes kept)."""
    out = []
    for n in nodes:
        if isinstance(n, Text):
            out.append(n.raw)
        elif isinstance(n, Emph):
            inner = resolve(n.body, call, steps, hires_steps)
            close = ")" if n.open == "(" else "]"
            w = "" if n.weight is None else ":" + resolve(n.weight, call, steps, hires_steps)
            out.append(n.open + inner + w + close)
        elif isinstance(n, Alt):
            out.append(resolve(n.options[call % len(n.options)], call, steps, hires_steps))
        else:
            e = end_call(n.when, steps, hires_steps)
            use_before = e >= 1 and call <= e
            out.append(resolve(n.before if use_before else n.after, call, steps, hires_steps))
    return "".join(out)


def unescape(text: str) -> str:
    """What the attention parser makes of backslash escapes: ``\\x`` → ``x``."""
    return re.sub(r"\\(.)", r"\1", text, flags=re.S)


def split_composable(prompt: str) -> list[tuple[str, str | None]]:
    """``a AND b :1.5`` → [("a", None), ("b", "1.5")]."""
    out = []
    for part in re.split(r"\bAND\b", prompt):
        m = re.match(r"^(.*?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*$", part, re.S)
        out.append((m.group(1).strip(), m.group(2)) if m else (part.strip(), None))
    return out


def contains(nodes: list, kind: type) -> bool:
    for n in nodes:
        if isinstance(n, kind):
            return True
        children = []
        if isinstance(n, Emph):
            children = [n.body] + ([n.weight] if n.weight else [])
        elif isinstance(n, Sched):
            children = [n.before, n.after]
        elif isinstance(n, Alt):
            children = n.options
        if any(contains(c, kind) for c in children):
            return True
    return False
