"""Phase 2, ``decide(matches, policy, model, top_k)``: one :class:`Decision` per match -- producer, consumer or
dense, and why.

The policy is applied by layer index: each graph takes the entries of the layers it holds, so a model split by
graph breaks compiles graph by graph. A consumer whose producer lies in another graph (or stays dense, runs later,
has other shapes, or another mask: a sliding-window layer beside a global one) stays dense with that reason; a
producer that no layer of this graph consumes runs as full. Non-causal attention (an encoder's, cross-attention),
and a sliding-window layer whose window is no longer than ``top_k`` (its selection would keep every key it may see),
are left as the model wrote them whatever the policy says: on a hybrid model the policy governs the global layers.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal, Mapping

from ..layers import TracedModel, window_within_top_k
from ..lowering.reference import holds
from ..policy import Policy, tensor_parallel_rank
from .find_attention import AttentionMatch

SiteAction = Literal["producer", "consumer", "dense"]

# Why a site stays dense: the counter key (``counters["hylra"]["dense." + cause]``) and what it means.
DENSE_CAUSES = {
    "not_understood": "the call is attention the ops cannot take (match problem)",
    "non_causal": "attention whose queries see keys after them (a bidirectional encoder, cross-attention)",
    "sliding_window": "a sliding-window layer whose window is no longer than top_k (sparsity gains nothing)",
    "no_policy": "no policy given",
    "policy_full": "the policy says full",
    "unconsumed_producer": "a producer no layer of this graph consumes",
    "source_in_other_graph": "a consumer whose producer is in another graph",
    "source_unusable": "a consumer whose producer stays dense or runs after it",
    "shape_mismatch": "a consumer whose shapes differ from its producer's",
    "mask_mismatch": "a consumer whose mask differs from its producer's (another mask kind or window)",
}


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the rewrite does with one match. ``source``: the producer layer of a consumer. ``heads``: a consumer's
    head map in the graph's head numbering (for each of its KV heads, the producer KV head whose selection it reads;
    None: equal heads). ``reason``: the human-readable why (report); ``dense_cause``: a key of
    :data:`DENSE_CAUSES` for a dense site."""

    action: SiteAction
    source: int | None = None
    reason: str | None = None
    dense_cause: str | None = None
    heads: tuple[int, ...] | None = None

    @property
    def op(self) -> str | None:
        """The hylra op the rewrite puts in place of the site: ``topk_attention`` (producer), ``sparse_attention``
        (consumer), ``attention`` (a site the policy leaves dense: native KV heads, the shared block mask), or
        None for a site left as the model wrote it (not understood, non-causal: the model's own attention computes
        an encoder's or a cross-attention best, a window within top_k: the model's own windowed attention is already
        as sparse, or compiled without a policy)."""
        if self.action == "producer":
            return "topk_attention"
        if self.action == "consumer":
            return "sparse_attention"
        left_as_written = ("not_understood", "non_causal", "sliding_window", "no_policy")
        return None if self.dense_cause in left_as_written else "attention"


# The selection's forced local blocks are the last that hold an allowed key: a causal query's neighbours, but the
# sequence's end for a query that sees keys after it.
NON_CAUSAL = ("non-causal attention: its queries see keys after them (a bidirectional encoder or cross-attention), "
              "and the hylra selection is made for causal queries (its local blocks would be the sequence's last)")

# (name, operand, dim) a consumer must share with its producer for the indices to mean the same blocks.
_SHARED_DIMS = (("batch", "q", 0), ("query length", "q", 2), ("KV heads", "k", 1), ("KV length", "k", 2))


def decide(matches: tuple[AttentionMatch, ...], policy: Policy | None, model: TracedModel = TracedModel(),
           top_k: int | None = None) -> tuple[Decision, ...]:
    """One decision per match, same order. ``model``: what the model the graph belongs to says of itself, when
    known (:func:`hylra_compile.layers.traced_model`): a policy for another layer count is refused, though the
    graph may hold only some of the layers; a layer whose sliding window is at most ``top_k`` keys is left as
    written."""
    if policy is None:
        return tuple(_dense(m.problem, "not_understood") if m.problem else _dense("no policy given", "no_policy")
                     for m in matches)
    if model.num_layers is not None:
        policy.check_num_layers(model.num_layers)
    usable = [m for m in matches if m.problem is None and not m.bidirectional]
    policy.check_graph([m.layer for m in usable], _kv_heads(usable), tensor_parallel_rank()[0])
    # A layer's source is its causal call (several make a problem, so never a source); a non-causal call beside it
    # (a decoder layer's cross-attention) is the source only of a layer that has no other.
    by_layer = {m.layer: m for m in matches if m.bidirectional} | {m.layer: m for m in matches if not m.bidirectional}
    position = {m.output: i for i, m in enumerate(matches)}
    left = {m.output: kept for m in matches
            if (kept := _left_as_written(m, model.sliding_windows, top_k)) is not None}
    first = [left.get(m.output) or _decide_one(m, policy, by_layer, position, left) for m in matches]
    consumed = {d.source for d in first if d.action == "consumer"}
    return tuple(
        _dense("policy: producer, but no layer of this graph consumes it (runs as full)", "unconsumed_producer")
        if d.action == "producer" and m.layer not in consumed else d
        for m, d in zip(matches, first)
    )


def _dense(reason: str, cause: str) -> Decision:
    return Decision(action="dense", reason=reason, dense_cause=cause)


def _left_as_written(match: AttentionMatch, sliding_windows: Mapping[int, int],
                     top_k: int | None) -> Decision | None:
    """The decision of a site the policy does not govern: not understood, non-causal, or a window within top_k."""
    if match.problem is not None:
        return _dense(match.problem, "not_understood")
    if match.bidirectional:
        return _dense(NON_CAUSAL, "non_causal")
    window = sliding_windows.get(match.layer)
    if window_within_top_k(window, top_k):
        return _dense(f"sliding window of {window} keys, no longer than top_k={top_k}: sparsity gains nothing",
                      "sliding_window")
    return None


def _decide_one(match: AttentionMatch, policy: Policy, by_layer: dict, position: dict, left: dict) -> Decision:
    mode = policy.modes[match.layer]
    if mode == "full":
        return _dense("policy: full", "policy_full")
    if mode == "producer":
        return Decision(action="producer")
    source = policy.sources[match.layer]
    producer = by_layer.get(source)
    if producer is None:
        return _dense(f"policy: consumer of {source}, but layer {source} is not in this graph (a graph break "
                      "splits them)", "source_in_other_graph")
    if producer.output in left:
        return _dense(f"policy: consumer of {source}, but layer {source} stays dense ({left[producer.output].reason})",
                      "source_unusable")
    if position[producer.output] > position[match.output]:
        return _dense(f"policy: consumer of {source}, but layer {source} runs after it in the graph",
                      "source_unusable")
    for name, operand, dim in _SHARED_DIMS:
        a, b = producer.shape(operand)[dim], match.shape(operand)[dim]
        if not holds(a == b):
            return _dense(f"policy: consumer of {source}, but {name} {b} differs from {a} of layer "
                          f"{source}", "shape_mismatch")
    # A selection covers the consumer's keys only if the producer chose among the same allowed keys: a sliding-window
    # producer never selects what a global consumer may see (hybrid models alternate the two), so the mask must be
    # the same graph value and causality the same.
    if producer.mask is not match.mask or producer.is_causal != match.is_causal:
        def kind(m: AttentionMatch) -> str:
            return f"mask {m.mask.name}" if m.mask is not None else "causal, no mask" if m.is_causal else "no mask"

        return _dense(f"policy: consumer of {source}, but its keys ({kind(match)}) differ from layer {source}'s "
                      f"({kind(producer)}): another mask kind or window, whose selection cannot cover them",
                      "mask_mismatch")
    heads, why_not = policy.heads_of(match.layer, match.shape("k")[1], tensor_parallel_rank()[1])
    if why_not is not None:
        warnings.warn(f"layer {match.layer}: {why_not}", stacklevel=2)
    return Decision(action="consumer", source=source, heads=None if heads is None else tuple(heads), reason=why_not)


def _kv_heads(matches: list[AttentionMatch]) -> int | None:
    heads = {m.shape("k")[1] for m in matches}
    if len(heads) == 1:
        (count,) = heads
        return count if isinstance(count, int) else None
    return None
