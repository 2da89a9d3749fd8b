"""Retrieval task generators: length, one correct answer, distractors never equal to it, exact-match scoring."""

from __future__ import annotations

import re

import pytest

from hylra_compile.tasks import FILLER, TASKS, TaskPrompt, first_number, make_prompt, make_prompts, score, spread_order
from tests.smollm2 import smollm2


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2()[1]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_prompt_has_one_answer_and_fits_its_length(tokenizer, task, depth):
    for seed in range(3):
        prompt = make_prompt(task, tokenizer, 600, depth, seed)
        tokens = len(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
        assert 500 <= tokens <= 600
        numbers = re.findall(r"(?<![A-Za-z0-9])\d+", prompt.text)
        assert prompt.answer in numbers and prompt.answer not in prompt.distractors
        assert set(numbers) == {prompt.answer, *prompt.distractors}  # no other number anywhere
        assert len(set(prompt.distractors)) == len(prompt.distractors)
        if task == "multikey":  # the question's word is next to the answer only
            word = re.search(r"number for (\w+)\?", prompt.text).group(1)
            assert re.findall(rf"for {word} is: (\d+)", prompt.text) == [prompt.answer]
        if task == "vartrack":  # the chain from the asked variable leads to the answer only
            assert re.findall(r"VAR X1 = (\d+)", prompt.text) == [prompt.answer]


def test_answer_sits_at_its_depth(tokenizer):
    early, late = (make_prompt("passkey", tokenizer, 600, depth, 0).text for depth in (0.1, 0.9))
    assert early.index("pass key is") < len(early) * 0.35 < len(late) * 0.65 < late.index("pass key is")


def test_prompts_are_seeded_and_spread(tokenizer):
    first = make_prompts(["passkey"], tokenizer, [400], samples=3, seed=5)
    again = make_prompts(["passkey"], tokenizer, [400], samples=3, seed=5)
    assert [p.text for p in first] == [p.text for p in again]
    assert [p.depth for p in first] == pytest.approx([0.1, 0.5, 0.9])
    assert len({p.answer for p in first}) == 3


def test_scoring_and_errors(tokenizer):
    assert first_number("The value of X2 is 4821.") == ("4821", True)
    assert first_number("The pass key is 48") == ("48", False)
    assert score("4821", "The value of X2 is 4821.") and not score("4821", "X2 is 48210")
    assert not score("4821", "no number")
    with pytest.raises(ValueError, match="unknown task 'needle'; valid tasks are"):
        make_prompt("needle", tokenizer, 500, 0.5, 0)
    with pytest.raises(ValueError, match="more than length=20"):
        make_prompt("passkey", tokenizer, 20, 0.5, 0)


# -- prose haystacks ----------------------------------------------------------------------------------------------
NEEDLE = {"passkey": "pass key is {}", "multikey": "is: {}", "vartrack": "X1 = {}"}


@pytest.fixture(scope="module")
def prose(tokenizer):
    """(prompt, its tokens) of 1024-token prose prompts: every task, depths 0.1 / 0.5 / 0.9, seeds 0-7."""
    prompts = [make_prompt(task, tokenizer, 1024, depth, seed, haystack="prose")
               for task in TASKS for depth in (0.1, 0.5, 0.9) for seed in range(8)]
    return [(p, len(tokenizer(p.text, add_special_tokens=False)["input_ids"])) for p in prompts]


def needle_offset(prompt) -> float:
    """Where the answer's needle starts, as a fraction of the prompt's characters."""
    return prompt.text.index(NEEDLE[prompt.task].format(prompt.answer)) / len(prompt.text)


def test_prose_prompts_are_named_labelled_and_seeded(tokenizer):
    """make_prompts crosses tasks, haystacks and lengths; a prose prompt is labelled and named with its haystack,
    reads consecutive paragraphs of builtin:prose from a seeded start, and is the same for the same seed."""
    from hylra_compile.corpora import builtin_text

    prompts = make_prompts(["passkey", "vartrack"], tokenizer, [300, 400], samples=2, seed=3,
                           haystacks=("filler", "prose"))
    assert [(p.task, p.haystack, p.length, p.seed) for p in prompts[:8]] == [
        ("passkey", haystack, length, seed) for haystack in ("filler", "prose") for length in (300, 400)
        for seed in (3, 4)]
    assert len(prompts) == 16 and prompts[0].label == "passkey" and prompts[-1].label == "vartrack.prose"
    assert prompts[4].name == "passkey.prose-300-d0.10-s3" and prompts[0].name == "passkey-300-d0.10-s3"
    assert prompts[4].haystack == "prose" and FILLER not in prompts[4].text and FILLER in prompts[0].text
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(builtin_text("builtin:prose").split()))
    assert sum(p in prompts[4].text for p in sentences if len(p) > 80) >= 2
    again = make_prompt("passkey", tokenizer, 300, 0.1, 3, haystack="prose")
    assert again == prompts[4] and make_prompt("passkey", tokenizer, 300, 0.1, 5, haystack="prose").text != again.text
    assert make_prompt("passkey", tokenizer, 300, 0.1, 3) == make_prompt("passkey", tokenizer, 300, 0.1, 3, "filler")


def test_prose_prompts_never_exceed_their_length_and_state_the_answer_once(prose):
    """Every prose prompt fits its length; the answer appears only in its needle (the prose has numbers of its own,
    never the answer) and not among the distractors."""
    for prompt, tokens in prose:
        assert tokens <= 1024
        numbers = re.findall(r"(?<![A-Za-z0-9])\d+", prompt.text)
        assert numbers.count(prompt.answer) == (2 if prompt.task == "passkey" else 1)
        assert prompt.answer not in prompt.distractors


def test_prose_needle_roughly_tracks_its_depth(prose):
    """The needle's character offset follows its depth: on average over seeds within 0.1, each within 0.3."""
    offsets: dict[tuple[str, float], list[float]] = {}
    for prompt, _ in prose:
        offsets.setdefault((prompt.task, prompt.depth), []).append(needle_offset(prompt))
    for (task, depth), found in offsets.items():
        assert abs(sum(found) / len(found) - depth) < 0.1, (task, depth, found)
        assert max(abs(offset - depth) for offset in found) < 0.3, (task, depth, found)


def test_prose_prompts_come_close_to_their_length(prose):
    """Like filler prompts, prose prompts of 1024 tokens have at least 90% of them."""
    assert [(prompt.name, tokens) for prompt, tokens in prose if tokens < 0.9 * 1024] == []


def test_prose_needle_sits_within_015_of_its_depth(prose):
    """As with filler, the needle's character offset is within 0.15 of its depth."""
    assert [(p.name, round(needle_offset(p), 2)) for p, _ in prose if abs(needle_offset(p) - p.depth) > 0.15] == []


def test_unknown_haystack_names_the_valid_ones(tokenizer):
    with pytest.raises(ValueError, match=r"unknown haystack 'novel'; valid haystacks are \['filler', 'prose'\]"):
        make_prompt("passkey", tokenizer, 500, 0.5, 0, haystack="novel")
    with pytest.raises(ValueError, match="unknown haystack 'novel'"):
        make_prompts(["passkey"], tokenizer, [500], samples=1, haystacks=("filler", "novel"))


def test_spread_order_takes_tasks_and_haystacks_in_turn_and_spreads_depths():
    """Every prefix of spread_order is a fair sample: (task, haystack) groups in turn, each group's prompts in
    bit-reversed order (ends first, then midpoints), every prompt once."""
    prompts = [TaskPrompt(task, 64, i / 4, i, "", "1", (), haystack)
               for task in ("passkey", "multikey") for haystack in ("filler", "prose") for i in range(5)]
    ordered = spread_order(prompts)
    assert sorted(map(id, ordered)) == sorted(map(id, prompts))
    assert [(p.task, p.haystack) for p in ordered[:4]] == [("passkey", "filler"), ("passkey", "prose"),
                                                           ("multikey", "filler"), ("multikey", "prose")]
    assert [p.depth for p in ordered if (p.task, p.haystack) == ("passkey", "filler")] == [0, 1, 0.5, 0.25, 0.75]
    assert spread_order([]) == []
