"""Long-context retrieval tasks generated in code (RULER-style), seeded, sized in tokens.

Each :class:`TaskPrompt` is a chat-formatted prompt whose answer is one number, stated once as the answer to the
question, among filler text and (for ``multikey`` and ``vartrack``) distractors whose values never equal it:

* ``passkey``: "The pass key is 48213. Remember it. 48213 is the pass key." at a given depth of the filler.
* ``multikey``: several "The special magic number for <word> is: <7 digits>." needles; the question asks for one
  word; the others are distractors.
* ``vartrack``: a chain "VAR X1 = 52843", "VAR X2 = X1", ... spread over the filler, among a distractor chain
  of other names and another value; the question asks for the value of the last variable of the first chain.

The haystack around the needles is ``filler`` (one line of filler repeated, RULER's noise: the needle stands out)
or ``prose`` (consecutive sentences of natural English, ``builtin:prose``, from a seeded start: the needle is one
sentence among many unlike each other; the text has numbers of its own besides the task's).

A greedy answer is correct when the first number standing alone in it equals the answer (exact match).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import Any, Sequence

TASKS = ("passkey", "multikey", "vartrack")
HAYSTACKS = ("filler", "prose")
VARTRACK_HOPS = 2  # variables per vartrack chain (SmolLM2-135M already fails most 2-hop chains dense)

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_WORDS = ("apple", "river", "candle", "falcon", "marble", "velvet", "harbor", "lantern", "meadow", "copper",
          "saddle", "thistle", "glacier", "pepper", "orchid", "quartz")


@dataclasses.dataclass(frozen=True)
class TaskPrompt:
    """``text``: the prompt as the model reads it (chat template applied when the tokenizer has one);
    ``answer``: the digits of the one correct answer; ``depth``: where the answer's needle sits (0 = start, 1 =
    end of the filler); ``distractors``: the other numbers in the prompt, none equal to ``answer``."""

    task: str
    length: int
    depth: float
    seed: int
    text: str
    answer: str
    distractors: tuple[str, ...] = ()
    haystack: str = "filler"

    @property
    def label(self) -> str:
        """The task with its haystack: ``passkey`` (filler), ``passkey.prose``."""
        return self.task if self.haystack == "filler" else f"{self.task}.{self.haystack}"

    @property
    def name(self) -> str:
        return f"{self.label}-{self.length}-d{self.depth:.2f}-s{self.seed}"


_NUMBER = re.compile(r"(?<![A-Za-z0-9])\d+")  # a number standing alone (not the 2 of "X2")


def first_number(generated: str) -> tuple[str | None, bool]:
    """(the first number standing alone in ``generated`` or None, whether text follows it, i.e. it is complete)."""
    found = _NUMBER.search(generated)
    return (None, False) if found is None else (found.group(0), found.end() < len(generated))


def score(answer: str, generated: str) -> bool:
    """Exact match: the first number standing alone in ``generated`` equals ``answer``."""
    return first_number(generated)[0] == answer


def _number(rng: random.Random, digits: int, avoid: set[str]) -> str:
    while True:
        value = str(rng.randrange(10 ** (digits - 1), 10**digits))
        if value not in avoid:
            avoid.add(value)
            return value


def _needles(task: str, rng: random.Random) -> tuple[list[str], str, str, tuple[str, ...], int]:
    """(needle sentences in order, question, answer, distractor values, index of the answer's needle; for
    ``vartrack`` it is the chain's first needle, 0)."""
    used: set[str] = set()
    if task == "passkey":
        key = _number(rng, 5, used)
        return ([f"The pass key is {key}. Remember it. {key} is the pass key."],
                "What is the pass key? Answer with the number only.", key, (), 0)
    if task == "multikey":
        words = rng.sample(_WORDS, 4)
        values = [_number(rng, 7, used) for _ in words]
        target = rng.randrange(len(words))
        needles = [f"One of the special magic numbers for {w} is: {v}." for w, v in zip(words, values)]
        question = f"What is the special magic number for {words[target]}? Answer with the number only."
        return needles, question, values[target], tuple(v for i, v in enumerate(values) if i != target), target
    if task == "vartrack":
        value, other = _number(rng, 5, used), _number(rng, 5, used)
        hops = VARTRACK_HOPS
        chain = [f"VAR X1 = {value}."] + [f"VAR X{i + 1} = X{i}." for i in range(1, hops)]
        decoy = [f"VAR Y1 = {other}."] + [f"VAR Y{i + 1} = Y{i}." for i in range(1, hops)]
        # Interleave the two chains, each in its own order.
        needles = [chain[i] if name == "x" else decoy[i]
                   for i in range(hops) for name in sorted("xy", key=lambda _: rng.random())]
        if needles[0] != chain[0]:  # the answer's chain opens, so that it sits at the requested depth
            needles[0], needles[1] = needles[1], needles[0]
        question = f"What is the value of X{hops}? Answer with the number only."
        return needles, question, value, (other,), 0
    raise ValueError(f"unknown task {task!r}; valid tasks are {list(TASKS)}")


def _format(tokenizer: Any, body: str, question: str) -> str:
    content = f"{body}\n\n{question}"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{content}\nAnswer:"


# Prose units: whole sentences, merged up to at least this many characters and cut (between words) at most this
# many, so a unit is a small, even share of the prompt (the needle's depth and the prompt's length then track the
# text, not paragraphs of 6 to 1000 tokens).
_UNIT_CHARS = (60, 200)


@functools.cache
def _prose_units() -> tuple[str, ...]:
    from .corpora import builtin_text

    units, unit = [], ""
    for word in " ".join(builtin_text("builtin:prose").split()).split(" "):
        if unit and len(unit) + len(word) >= _UNIT_CHARS[1]:
            units.append(unit)
            unit = ""
        unit += word + " "
        if len(unit) >= _UNIT_CHARS[0] and word[-1] in ".!?":
            units.append(unit)
            unit = ""
    return tuple(units)


def _haystack_units(haystack: str, rng: random.Random) -> list[str]:
    """The haystack as units the needles go between: the filler line, or units of whole sentences of prose
    (:data:`_UNIT_CHARS`) from a seeded start (wrapping around)."""
    if haystack == "filler":
        return [FILLER]
    if haystack == "prose":
        units = _prose_units()
        start = rng.randrange(len(units))
        return units[start:] + units[:start]
    raise ValueError(f"unknown haystack {haystack!r}; valid haystacks are {list(HAYSTACKS)}")


def make_prompt(task: str, tokenizer: Any, length: int, depth: float, seed: int,
                haystack: str = "filler") -> TaskPrompt:
    """One prompt of about ``length`` tokens (never more) with the answer's needle at ``depth`` of the haystack
    (other needles of the task are spread evenly over it)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are {list(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    rng = random.Random(f"{task}/{length}/{depth}/{seed}" + ("" if haystack == "filler" else f"/{haystack}"))
    needles, question, answer, distractors, target = _needles(task, rng)
    units = _haystack_units(haystack, rng)

    def build(repeats: int) -> str:
        if task == "vartrack":  # the chain keeps its order: spread from the answer's depth to the end
            slots = [round((depth + (1 - depth) * i / len(needles)) * repeats) for i in range(len(needles))]
        else:  # the answer's needle at the requested depth, the distractors spread evenly
            slots = [round(i * repeats / (len(needles) + 1)) for i in range(1, len(needles) + 1)]
            slots[target] = round(depth * repeats)
        parts = []
        for position in range(repeats + 1):
            parts += [needle + " " for needle, slot in zip(needles, slots) if slot == position]
            if position < repeats:
                parts.append(units[position % len(units)])
        return _format(tokenizer, "".join(parts).strip(), question)

    def tokens(repeats: int) -> int:
        return len(tokenizer(build(repeats), add_special_tokens=False)["input_ids"])

    sample = "".join(units[i % len(units)] for i in range(8))
    per_unit = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 8
    repeats = max(0, int((length - tokens(0)) / per_unit))
    while repeats > 0 and tokens(repeats) > length:
        repeats = max(0, min(repeats - 1, int(repeats * length / tokens(repeats))))
    while tokens(repeats + 1) <= length:  # a unit longer than the average estimate left room
        repeats += 1
    if tokens(repeats) > length:
        raise ValueError(f"{task}: even with no filler the prompt has {tokens(0)} tokens, more than length={length}")
    return TaskPrompt(task, length, depth, seed, build(repeats), answer, distractors, haystack)


def make_prompts(tasks, tokenizer: Any, lengths, samples: int, seed: int = 0,
                 haystacks: Sequence[str] = ("filler",)) -> list[TaskPrompt]:
    """``samples`` prompts per (task, haystack, length), the answer's depth spread evenly over [0.1, 0.9]."""
    depths = [0.5] if samples == 1 else [0.1 + 0.8 * i / (samples - 1) for i in range(samples)]
    return [make_prompt(task, tokenizer, length, depth, seed + i, haystack)
            for task in tasks for haystack in haystacks for length in lengths for i, depth in enumerate(depths)]


def spread_order(prompts: Sequence[TaskPrompt]) -> list[TaskPrompt]:
    """``prompts`` reordered so that every prefix holds each (task, haystack, length) in turn, and within each its
    prompts in bit-reversed order of position (of 24 at :func:`make_prompts`' depths: 0.1, 0.66, 0.38, 0.24, 0.8,
    ...): a run cut short has measured a fair sample of tasks and depths."""
    groups: dict[tuple, list[TaskPrompt]] = {}
    for prompt in prompts:
        groups.setdefault((prompt.task, prompt.haystack, prompt.length), []).append(prompt)

    def bit_reversed(items: list[TaskPrompt]) -> list[TaskPrompt]:
        bits = max(len(items) - 1, 0).bit_length()
        positions = (int(f"{j:0{bits}b}"[::-1], 2) if bits else 0 for j in range(1 << bits))
        return [items[i] for i in positions if i < len(items)]

    ordered = [bit_reversed(items) for items in groups.values()]
    return [items[i] for i in range(max(map(len, ordered), default=0)) for items in ordered if i < len(items)]
