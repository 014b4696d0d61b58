"""Prompt switching: rendered prompts are read back with an independent grammar of A1111's prompt syntax."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_chroma import prompts as P
from lib_chroma.schedule import model_schedule, sampler_sigmas
from tests import a1111_prompt_grammar as gram

SD = model_schedule("sd1")


def _calls_using(rendered: str, first: str, second: str, steps: int, mult: int, hires: bool = False):
    """For each model call, which operand A1111 conditions on (checked part by part)."""
    parts = gram.split_composable(rendered)
    total = mult * steps
    seen = []
    for call in range(total):
        texts = []
        for text, _ in parts:
            nodes = gram.parse(text)
            if hires:
                texts.append(gram.unescape(gram.resolve(nodes, call, steps=10_000, hires_steps=total)))
            else:
                texts.append(gram.unescape(gram.resolve(nodes, call, steps=total)))
        seen.append(texts)
    return seen


@pytest.mark.parametrize("steps", [2, 3, 7, 20, 37, 150])
@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("hires", [False, True])
def test_switch_happens_exactly_at_the_step(steps, mult, hires):
    for step in range(1, steps + 1):
        s = P.realized_switch(step, steps)
        when = P.when_fraction(s, steps, mult, hires=hires)
        rendered = P.render_switch("layout words", "detail words", when)
        seen = _calls_using(rendered, "layout words", "detail words", steps, mult, hires)
        expect = ["layout words"] * (mult * s) + ["detail words"] * (mult * (steps - s))
        assert [t[0] for t in seen] == expect, (steps, mult, step, when)


def test_step_one_is_moved_to_two_because_a1111_cannot_express_it():
    assert P.realized_switch(1, 20) == 2 and P.realized_switch(0, 20) == 0 and P.realized_switch(7, 20) == 7


def test_special_characters_render_safely():
    cases = ["a: b", "x]y", "(red:1.2) car", "[old:new:3] cat", "50% \\ slash", "a|b", "open ( paren",
             "[fe|male]", "back\\", "tricky\\:escaped", "]["]
    for a in cases:
        for b in cases:
            rendered = P.render_switch(a, b, "0.4750")
            (text, _), = gram.split_composable(rendered)
            nodes = gram.parse(text)  # parses: the structure survived
            assert gram.unescape(gram.resolve(nodes, 0, 20)).replace("[old:new:3]", "") is not None
            before = gram.unescape(gram.resolve(nodes, 0, 20))
            after = gram.unescape(gram.resolve(nodes, 19, 20))
            assert before == gram.unescape(gram.resolve(gram.parse(P.escape_prompt(a)), 0, 20))
            assert after == gram.unescape(gram.resolve(gram.parse(P.escape_prompt(b)), 19, 20))
    # user syntax is kept, not escaped away
    nodes = gram.parse(P.escape_prompt("(red:1.2) car [old:new:3]"))
    assert gram.contains(nodes, gram.Emph) and gram.contains(nodes, gram.Sched)
    # stray characters become literal text
    assert gram.unescape(gram.resolve(gram.parse(P.escape_prompt("a: b]")), 0, 20)) == "a: b]"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab :[]()|\\.1", max_size=14), st.text(alphabet="cd :[]()|\\.2", max_size=14))
def test_any_text_keeps_the_switch_structure(a, b):
    rendered = P.render_switch(a, b, "0.5250")
    for text, _ in gram.split_composable(rendered):
        nodes = gram.parse(text)
        assert isinstance(nodes[0], gram.Sched)


def test_and_parts_are_switched_pairwise_with_weights():
    rendered = P.render_switch("castle AND moat :0.5", "towers AND water :1.2", "0.4750")
    parts = gram.split_composable(rendered)
    assert [w for _, w in parts] == [None, "1.2"]
    assert gram.unescape(gram.resolve(gram.parse(parts[1][0]), 0, 20)) == "moat"
    assert gram.unescape(gram.resolve(gram.parse(parts[1][0]), 12, 20)) == "water"
    with pytest.raises(ValueError, match="^detail_prompt:"):
        P.render_switch("a AND b", "c", "0.5")


def test_switch_step_from_the_chromatogram():
    sig = sampler_sigmas("Euler", "Karras", 20, SD)
    s4 = P.switch_step(sig, 4, 0.5)
    s1 = P.switch_step(sig, 1, 0.5)
    assert 0 < s4 < s1 < 20
    # detail starts right after the step that brings level 4 to half generated
    from lib_chroma.chromatography import signal_ratio

    assert float(signal_ratio(sig[s4], 4)) >= 0.5 > float(signal_ratio(sig[s4 - 1], 4))
    assert P.switch_step(sig, 16, 0.5) == 0  # SD never fully noises level 16


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: P.when_fraction(0, 20), "step"),
        (lambda: P.when_fraction(5, 20, multiplier=3), "multiplier"),
        (lambda: P.render_switch("a", "b", "5"), "when"),
        (lambda: P.escape_prompt(None), "prompt"),
        (lambda: P.switch_step([1.0, 2.0], 2), "sigmas"),
    ],
)
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()
