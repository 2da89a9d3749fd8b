"""Accuracy of policies against dense attention on the same model and the same inputs.

:func:`evaluate` runs the model once dense and once per policy, on

* retrieval prompts (:mod:`hylra_compile.tasks`): greedy answer, exact match;
* held-out text windows: perplexity and KL(dense ‖ policy) of the next-token distributions, and per layer the
  RNMSE of the attention output against dense, sqrt(Σ‖o_policy − o_dense‖² / Σ‖o_dense‖²). All three are taken
  over the *scored positions*: queries with at least ``min_seq_len`` allowed keys (position ≥ min_seq_len − 1),
  the only ones a consumer attends sparsely; before them every policy is exactly dense.

A policy runs eagerly: each layer's attention is routed (:func:`routing.routed_attention`) to the op the backend
would rewrite it into, with the backend's options: ``hylra::topk_attention`` for a producer,
``hylra::sparse_attention`` over the blocks its ``selection`` gives for a consumer, SDPA for a full layer. These
are the ops' reference semantics on the CPU (no compile per prompt length); on CUDA the same ops run the kernels.

Each evaluated setting is a :class:`Setting`: a policy, the selection options that differ from the evaluation's
(``top_k``, ``selection``, ...), and the phases it is sparse in (``decode`` only: the prompt's prefill runs dense,
and the reverse), so one dense baseline serves a whole frontier. Retrieval is reported with Wilson 95% intervals
(:func:`wilson_interval`).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .files import write_atomic
from .models import cache_argument
from .options import DEFAULT_CANDIDATES, HylraOptions
from .policy import Policy, tensor_parallel_rank
from .routing import AttentionCall, routed_attention
from .tasks import TaskPrompt, first_number, score

DENSE = "dense"


PHASES = ("prefill", "decode")
# The options a Setting may set for itself; the rest (min_seq_len above all: it fixes the scored positions) belong
# to the whole evaluation.
SETTING_OPTIONS = ("top_k", "block_size", "sink_blocks", "local_blocks", "selection", "candidates",
                   "producer_block_size", "prefilter")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One evaluated setting: ``policy``; ``options``, the selection options (:data:`SETTING_OPTIONS`) that differ
    from the evaluation's; ``phases``, where it is sparse: ``prefill`` (calls of more than one query: prompts and
    text windows) and ``decode`` (one query per call). A phase left out runs every layer dense."""

    policy: Policy
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    phases: tuple[str, ...] = PHASES

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise ValueError(f"a setting's policy must be a hylra_compile.Policy, got {type(self.policy).__name__}")
        unknown = sorted(set(self.options) - set(SETTING_OPTIONS))
        if unknown:
            raise ValueError(f"setting options {unknown} are not per setting; valid ones are {list(SETTING_OPTIONS)}")
        bad = sorted(set(self.phases) - set(PHASES))
        if bad or not self.phases:
            raise ValueError(f"setting phases must be a non-empty subset of {list(PHASES)}, got {list(self.phases)}")


class PolicyAttention:
    """Attention handler running ``policy`` (None: every layer dense) through the hylra ops in ``phases``;
    optionally keeps each layer's output at the scored positions (``keep_from``) for the RNMSE."""

    def __init__(self, policy: Policy | None, options: HylraOptions, keep_from: int | None = None,
                 phases: Sequence[str] = PHASES):
        self.policy, self.options, self.keep_from, self.phases = policy, options, keep_from, tuple(phases)
        self.block_idx: dict[int, Tensor] = {}  # producer layer -> its block_idx in the forward pass under way
        self.outputs: dict[int, Tensor] = {}

    def __call__(self, call: AttentionCall) -> Tensor:
        o = self.options
        phase = "decode" if call.query.shape[2] == 1 else "prefill"
        mode = "full" if self.policy is None or phase not in self.phases else self.policy.modes[call.layer]
        if mode == "producer":
            out, selected = torch.ops.hylra.topk_attention(
                call.query, call.key, call.value, call.mask, is_causal=call.is_causal, scale=call.scale,
                **o.producer_settings(),
            )
            if o.expansion > 1:
                selected = torch.ops.hylra.expand_blocks(call.query, call.key, selected, block_size=o.block_size,
                                                         factor=o.expansion)
            self.block_idx[call.layer] = selected
        elif mode == "consumer":
            out = torch.ops.hylra.sparse_attention(
                call.query, call.key, call.value, self.consumer_selection(call), call.mask,
                is_causal=call.is_causal, scale=call.scale, **o.consumer_settings(),
            )
        else:
            out = torch.nn.functional.scaled_dot_product_attention(
                call.query, call.key, call.value, attn_mask=call.mask, is_causal=call.is_causal, scale=call.scale,
                enable_gqa=True,
            )
        if self.keep_from is not None:
            self.outputs[call.layer] = out[:, :, self.keep_from :].float()
        return out

    def consumer_selection(self, call: AttentionCall) -> Tensor:
        """A consumer's ``block_idx`` under the options' ``selection`` (as :func:`passes.rewrite.consumer_selection`
        emits it)."""
        produced = self.block_idx[self.policy.sources[call.layer]]
        heads, _ = self.policy.heads_of(call.layer, call.key.shape[1], tensor_parallel_rank()[1])
        if heads is not None:
            produced = torch.ops.hylra.map_heads(produced, heads=heads)
        o, settings = self.options, dict(is_causal=call.is_causal, scale=call.scale)
        if o.selection == "reuse":
            return produced
        if o.selection == "refine":
            own = o.selection_settings(layer=call.layer, num_kv_heads=call.key.shape[1],
                                       rank=tensor_parallel_rank()[1])
            return torch.ops.hylra.refine_blocks(call.query, call.key, produced, call.mask, **settings, **own,
                                                 **o.prefilter_settings)
        return torch.ops.hylra.topk_attention(call.query, call.key, call.value, call.mask, **settings,
                                              **o.selection_settings(layer=call.layer))[1]


@dataclasses.dataclass
class Result:
    """One row of the table: a policy (or dense) over all inputs."""

    name: str
    full_layers: int
    policy: dict[str, Any] | None = None  # Policy.to_dict(), None for dense
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the setting's selection options
    phases: tuple[str, ...] = PHASES
    answers: dict[str, str] = dataclasses.field(default_factory=dict)  # prompt name -> greedy answer
    correct: dict[str, bool] = dataclasses.field(default_factory=dict)
    nll: float = 0.0  # summed over the scored positions
    kl: float = 0.0
    positions: int = 0
    error_sq: list[float] = dataclasses.field(default_factory=list)  # per layer, against dense
    dense_sq: list[float] = dataclasses.field(default_factory=list)

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.nll / self.positions) if self.positions else None

    @property
    def mean_kl(self) -> float | None:
        return self.kl / self.positions if self.positions else None

    @property
    def rnmse(self) -> list[float]:
        return [math.sqrt(e / d) if d > 0 else 0.0 for e, d in zip(self.error_sq, self.dense_sq)]

    def add_window(self, scores: Tensor, dense_scores: Tensor, targets: Tensor, outputs: dict[int, Tensor],
                   dense_outputs: dict[int, Tensor]) -> None:
        """Fold in one text window: next-token log-probabilities [P, vocab] at its P scored positions (this policy's
        and dense's), the targets [P], and each layer's attention output at those positions (policy's, dense's)."""
        self.nll -= scores.gather(-1, targets[:, None]).sum().item()
        self.kl += kl_divergence(dense_scores, scores).sum().item()
        self.positions += targets.numel()
        layers = range(len(dense_outputs))
        self.error_sq = self.error_sq or [0.0] * len(layers)
        self.dense_sq = self.dense_sq or [0.0] * len(layers)
        for layer in layers:
            self.error_sq[layer] += (outputs[layer] - dense_outputs[layer]).square().sum().item()
            self.dense_sq[layer] += dense_outputs[layer].square().sum().item()

    def accuracy(self, task: str | None = None) -> tuple[int, int]:
        hits = [ok for name, ok in self.correct.items() if task is None or task_of(name) == task]
        return sum(hits), len(hits)

    def summary(self) -> dict[str, Any]:
        right, total = self.accuracy()
        tasks = sorted({task_of(name) for name in self.correct})
        return {"name": self.name, "full_layers": self.full_layers, "options": self.options,
                "phases": list(self.phases), "perplexity": self.perplexity, "kl": self.mean_kl,
                "scored_positions": self.positions, "retrieval_correct": right, "retrieval_total": total,
                "retrieval": {task: dict(zip(("correct", "total", "low", "high"),
                                             (*self.accuracy(task), *wilson_interval(*self.accuracy(task)))))
                              for task in tasks},
                "rnmse": self.rnmse, "answers": self.answers, "correct": self.correct, "policy": self.policy}


def task_of(prompt_name: str) -> str:
    """The task a prompt's name (:attr:`tasks.TaskPrompt.name`) belongs to, with its haystack: ``passkey``,
    ``passkey.prose``, ..."""
    return prompt_name.split("-")[0]


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a success rate ``correct / total``, as fractions; (0, 1)
    when ``total`` is 0."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # At none or all correct an end is exactly 0 or 1 (the formula gives it up to rounding).
    return 0.0 if correct == 0 else centre - half, 1.0 if correct == total else centre + half


def same_within_intervals(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two retrieval results (correct, total) are no different at 95%: their Wilson intervals overlap."""
    (low_a, high_a), (low_b, high_b) = wilson_interval(*a), wilson_interval(*b)
    return low_a <= high_b and low_b <= high_a


@dataclasses.dataclass
class Evaluation:
    """Dense and every policy on the same inputs, plus how it was run."""

    results: list[Result]
    metadata: dict[str, Any]

    def __getitem__(self, name: str) -> Result:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no result named {name!r}; have {[r.name for r in self.results]}")

    @property
    def partial(self) -> bool:
        """Whether the run was cut short (a checkpoint of fewer prompts than planned)."""
        return self.metadata.get("prompts", 0) < self.metadata.get("prompts_planned", 0)

    @property
    def tasks(self) -> list[str]:
        return sorted({task_of(name) for name in self.results[0].correct})

    def to_markdown(self) -> str:
        """One row per setting; retrieval as correct/total with the Wilson 95% interval, marked ``*`` where the
        interval does not overlap dense's (a difference; anything else is no measurable difference)."""
        dense = self[DENSE]
        head = ["setting", "full-attention layers"]
        if dense.positions:
            head += [f"perplexity (dense {dense.perplexity:.3f})", "KL(dense ‖ setting)", "mean layer RNMSE"]
        head += [f"{task} (dense {_retrieval_cell(dense.accuracy(task))})" for task in self.tasks]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for result in self.results:
            row = [result.name, f"{result.full_layers} / {self.metadata.get('num_layers')}"]
            if dense.positions:
                change = 100 * (result.perplexity / dense.perplexity - 1)
                rnmse = sum(result.rnmse) / len(result.rnmse)
                row += [f"{result.perplexity:.3f} ({change:+.1f}%)", f"{result.mean_kl:.4f}", f"{rnmse:.4f}"]
            for task in self.tasks:
                differs = not same_within_intervals(result.accuracy(task), dense.accuracy(task))
                row.append(_retrieval_cell(result.accuracy(task)) + (" *" if differs else ""))
            lines.append("| " + " | ".join(row) + " |")
        m = self.metadata
        notes = [f"{m['model']}, {m['device']}, {m['date']}; top_k {m['top_k']}, block {m['block_size']}, "
                 f"sink {m['sink_blocks']}, local {m['local_blocks']}, selection {m['selection']}, "
                 + (f"producers in blocks of {m['producer_block_size']}, "
                    if m.get("producer_block_size") not in (None, m["block_size"]) else "")
                 + f"min_seq_len {m['min_seq_len']} (settings name what they change).",
                 f"Text: {m['text']}, {m['text_windows']} window(s) of {m['seq_len']} tokens, "
                 f"{dense.positions} scored positions. Retrieval: {m['prompts']} prompt(s)"
                 + (f" (**cut short**: {m['prompts_planned']} planned)" if self.partial else "")
                 + f", lengths {m['lengths']}; correct/total [Wilson 95% interval]; * marks a difference from dense "
                 "(intervals apart)."]
        return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "results": [r.summary() for r in self.results]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Evaluation":
        """An evaluation from :meth:`to_json`'s form (the sums it keeps are rebuilt from the means: tables and
        figures come out the same)."""
        results = []
        for r in data["results"]:
            positions = r["scored_positions"]
            result = Result(r["name"], r["full_layers"], r["policy"], r.get("options", {}),
                            tuple(r.get("phases", PHASES)), r["answers"], r["correct"],
                            math.log(r["perplexity"]) * positions if positions else 0.0,
                            r["kl"] * positions if positions else 0.0, positions,
                            [x * x for x in r["rnmse"]], [1.0] * len(r["rnmse"]))
            results.append(result)
        return cls(results, data["metadata"])

    def save(self, out_dir: str | Path, stem: str = "eval") -> list[Path]:
        """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``, each written atomically."""
        from .plots import plot_evaluation

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{stem}.{suffix}" for suffix in ("json", "md", "png")]
        figure = io.BytesIO()
        plot_evaluation(self, figure)  # drawn first: a plotting error leaves no new file
        write_atomic(paths[0], json.dumps(self.to_json(), indent=1) + "\n")
        write_atomic(paths[1], self.to_markdown())
        write_atomic(paths[2], figure.getvalue())
        return paths


def _retrieval_cell(accuracy: tuple[int, int]) -> str:
    low, high = wilson_interval(*accuracy)
    return f"{accuracy[0]}/{accuracy[1]} [{100 * low:.0f}–{100 * high:.0f}%]"


def greedy_answer(model, tokenizer, text: str, max_new_tokens: int, prompt_logits: int = 1) -> tuple[str, Tensor]:
    """Greedy decoding of ``text`` with the model's KV cache (``model`` may be a ``torch.compile``d one), stopping
    at end of sequence or once the first number has ended. Returns the answer and the prompt's last
    ``prompt_logits`` logits [prompt_logits, vocab]."""
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    eos = model.generation_config.eos_token_id
    stop = {tokenizer.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])} - {None}
    output = model(input_ids=ids, use_cache=True, logits_to_keep=prompt_logits)
    cache_name = cache_argument(model)
    logits = output.logits[0]
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(output.logits[0, -1].argmax())
        if token in stop:
            break
        generated.append(token)
        if first_number(tokenizer.decode(generated))[1]:
            break
        cache = {cache_name: getattr(output, cache_name)}
        output = model(input_ids=torch.tensor([[token]], device=device), **cache, use_cache=True, logits_to_keep=1)
    return tokenizer.decode(generated), logits


def check_sparse(name: str, options: HylraOptions, longest: int) -> None:
    """Refuse a setting whose consumers would attend every allowed key of inputs of up to ``longest`` tokens: its
    ``top_k`` covers every block, or ``min_seq_len`` exceeds every query's keys."""
    blocks = -(-longest // options.block_size)
    if options.n_select >= blocks:
        raise ValueError(
            f"{name}: top_k={options.top_k} keeps all {blocks} blocks of {options.block_size} tokens of the longest "
            f"input ({longest} tokens), so it cannot differ from dense; use a top_k below {longest} or longer inputs")
    if options.min_seq_len > longest:  # a query with fewer than min_seq_len keys attends densely
        raise ValueError(
            f"{name}: no query of inputs of at most {longest} tokens has min_seq_len={options.min_seq_len} keys, so "
            "every layer attends densely; lower min_seq_len or use longer inputs")


def _text_scores(model, window: Tensor, handler: PolicyAttention, start: int) -> Tensor:
    """Log-probabilities [S - 1 - start, vocab] (float32) of the next token at scored positions start..S-2."""
    with routed_attention(model, handler):
        logits = model(input_ids=window[None], use_cache=False, logits_to_keep=window.numel() - start).logits[0, :-1]
    scores = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    for rows in _row_chunks(logits):  # a 32K window of a 150K vocabulary is 17 GiB in float32: no temporaries of it
        scores[rows] = torch.log_softmax(logits[rows].float(), dim=-1)
    return scores


def _row_chunks(x: Tensor, elements: int = 1 << 27) -> list[slice]:
    """Slices of ``x``'s first dimension holding about ``elements`` elements each (one empty slice for no rows)."""
    step = max(1, elements // max(1, x[0].numel())) if x.shape[0] else 1
    return [slice(i, i + step) for i in range(0, x.shape[0], step)] or [slice(0, 0)]


def kl_divergence(dense_logp: Tensor, logp: Tensor) -> Tensor:
    """KL(dense ‖ other) of the next-token distributions given as log-probabilities, per position:
    [P, ..., vocab] -> [P, ...] (computed a few rows at a time)."""
    return torch.cat([(dense_logp[rows].exp() * (dense_logp[rows] - logp[rows])).sum(-1)
                      for rows in _row_chunks(dense_logp)])


def evaluate(
    model,
    policies: Mapping[str, Policy | Setting],
    *,
    tokenizer: Any = None,
    prompts: Sequence[TaskPrompt] = (),
    windows: Sequence[Tensor] = (),
    top_k: int = 2048,
    block_size: int = HylraOptions.block_size,
    sink_blocks: int | None = None,
    local_blocks: int | None = None,
    min_seq_len: int = 1024,
    selection: str = HylraOptions.selection,
    candidates: int = DEFAULT_CANDIDATES,
    producer_block_size: int | None = None,
    prefilter: int = 0,
    max_new_tokens: int = 32,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    checkpoint: Callable[[Evaluation], None] | None = None,
    dense_answers: Mapping[str, str] | None = None,
) -> Evaluation:
    """Dense and each of ``policies`` (name -> :class:`Policy` or :class:`Setting`) on ``prompts`` (need
    ``tokenizer``) and ``windows`` (1-d token tensors of one length); see the module docstring. ``top_k`` …
    ``candidates``, ``producer_block_size``, ``prefilter`` are the backend options of those names, which a
    :class:`Setting` may change for itself.
    ``metadata`` (e.g. the text's and the policies' provenance) is stored in the result. ``checkpoint``, when
    given, receives the evaluation so far after the text windows and after each prompt (every setting run on it):
    its metadata counts the prompts done (``prompts``) of ``prompts_planned``, so a run cut short keeps what it
    measured. The windows run first, so every checkpoint has the KL. ``dense_answers``: dense's answers to some
    of the prompts (prompt name -> answer) from an earlier run of the same model, inputs and ``max_new_tokens``,
    taken as they are instead of run again.

    Refused before any model run: a setting that cannot be sparse on these inputs (its ``top_k`` keeps every
    block of the longest input, or no input reaches ``min_seq_len`` keys): its numbers would equal dense's."""
    from tqdm.auto import tqdm

    base = dict(top_k=top_k, block_size=block_size, sink_blocks=sink_blocks, local_blocks=local_blocks,
                selection=selection, candidates=candidates, producer_block_size=producer_block_size,
                prefilter=prefilter)
    options = HylraOptions(min_seq_len=min_seq_len, **base)
    num_layers = model.config.num_hidden_layers
    if DENSE in policies:
        raise ValueError(f"{DENSE!r} is the name of the dense baseline; give the policy another name")
    settings = {name: p if isinstance(p, Setting) else Setting(p) if isinstance(p, Policy) else None
                for name, p in policies.items()}
    for name, setting in settings.items():
        if setting is None:
            raise ValueError(f"policy {name!r} is a {type(policies[name]).__name__}, not a hylra_compile.Policy "
                             "or Setting")
        setting.policy.check_model(num_layers, getattr(model.config, "num_key_value_heads", None))
    if prompts and tokenizer is None:
        raise ValueError("retrieval prompts need the model's tokenizer (tokenizer=...)")
    lengths = {w.numel() for w in windows}
    if len(lengths) > 1:
        raise ValueError(f"text windows must share one length, got {sorted(lengths)}")
    seq_len = lengths.pop() if lengths else None
    if seq_len is not None and seq_len < max(min_seq_len, 1) + 1:
        raise ValueError(f"text windows of {seq_len} tokens have no position with min_seq_len={min_seq_len} keys "
                         "and a next token to score; use longer windows or a smaller min_seq_len")
    # With its policy: a policy's per-layer top_k is checked against the setting's selection, and read from it.
    setting_options = {name: HylraOptions(policy=s.policy, min_seq_len=min_seq_len, **{**base, **s.options})
                       for name, s in settings.items()}
    longest = max([p.length for p in prompts] + [seq_len or 0])
    for name, o in setting_options.items():
        check_sparse(name, o, longest)
    start = max(min_seq_len - 1, 0)
    configs: dict[str, tuple[Policy | None, HylraOptions, tuple[str, ...]]] = {
        DENSE: (None, options, PHASES),
        **{name: (s.policy, setting_options[name], s.phases) for name, s in settings.items()}}
    results = {name: Result(name, num_layers if p is None else sum(m != "consumer" for m in p.modes),
                            None if p is None else p.to_dict(),
                            {} if p is None else dict(settings[name].options), phases)
               for name, (p, _, phases) in configs.items()}
    device = next(model.parameters()).device
    config = model.config
    info = {
        "model": getattr(config, "_name_or_path", "") or config.model_type,
        "num_layers": num_layers,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        **{f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in
           ("policy", "dump_dir", "inductor", "cudagraphs")},
        "n_select": options.n_select,
        "seq_len": seq_len,
        "text_windows": len(windows),
        "text": "given token windows",
        "prompts": len(prompts),
        "lengths": sorted({p.length for p in prompts}),
        "max_new_tokens": max_new_tokens,
        **dict(metadata or {}),
    }

    def so_far(done: int) -> Evaluation:
        return Evaluation(list(results.values()), {**info, "prompts": done, "prompts_planned": len(prompts)})

    bar = tqdm(total=len(configs) * (len(prompts) + len(windows)), desc="hylra eval", unit="run", disable=not progress)
    with torch.no_grad():
        for window in windows:
            window = window.to(device)
            targets = window[start + 1 :]
            dense_handler = PolicyAttention(None, options, keep_from=start)
            dense_scores = _text_scores(model, window, dense_handler, start)
            bar.update(1)
            for result, (policy, setting, phases) in zip(results.values(), configs.values()):
                # A text window is one prefill: dense, and a setting sparse in decode only, take dense's scores.
                if policy is None or "prefill" not in phases:
                    scores, handler = dense_scores, dense_handler
                else:
                    handler = PolicyAttention(policy, setting, keep_from=start, phases=phases)
                    scores = _text_scores(model, window, handler, start)
                bar.update(policy is not None)
                result.add_window(scores, dense_scores, targets, handler.outputs, dense_handler.outputs)
        if checkpoint is not None and windows:
            checkpoint(so_far(0))
        for done, prompt in enumerate(prompts, 1):
            for name, (policy, setting, phases) in configs.items():
                if name == DENSE and prompt.name in (dense_answers or {}):
                    answer = dense_answers[prompt.name]
                else:
                    with routed_attention(model, PolicyAttention(policy, setting, phases=phases)):
                        answer = greedy_answer(model, tokenizer, prompt.text, max_new_tokens)[0]
                results[name].answers[prompt.name] = answer
                results[name].correct[prompt.name] = score(prompt.answer, answer)
                bar.update(1)
            if checkpoint is not None and done < len(prompts):
                checkpoint(so_far(done))
    bar.close()
    return so_far(len(prompts))
