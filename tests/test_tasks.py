"""Retrieval task generators: length, one correct answer, distractors never equal to it, exact-match scoring."""

from __future__ import annotations

import re

import pytest

from hylra_compile.tasks import TASKS, first_number, make_prompt, make_prompts, score
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
