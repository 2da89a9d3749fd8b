"""Pass 2: decide each site's action (producer / consumer / dense) from the policy and what the graph allows."""

from __future__ import annotations

import torch.fx
from torch._dynamo.utils import counters
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..report import AttentionSite
from .base import HylraPass, PassContext
from .find_attention import example_value

# (name, tensor, dim) pairs a consumer must share with its producer for the indices to mean the same blocks.
_SHARED_DIMS = (("batch", "q", 0), ("query length", "q", 2), ("KV heads", "k", 1), ("KV length", "k", 2))


def producer_mismatch(producer: AttentionSite, consumer: AttentionSite, order: dict) -> str | None:
    """Why ``consumer`` cannot take ``producer``'s indices, or None. Shapes are compared symbolically."""
    if producer.problem is not None:
        return f"its source layer {producer.layer} stays dense ({producer.problem})"
    if order[producer.node] > order[consumer.node]:
        return f"its source layer {producer.layer} runs after it in the graph"
    for name, tensor, dim in _SHARED_DIMS:
        a = example_value(getattr(producer, tensor)).shape[dim]
        b = example_value(getattr(consumer, tensor)).shape[dim]
        if not statically_known_true(a == b):
            return f"{name} {b} is not provably equal to {a} of source layer {producer.layer}"
    return None


def _kv_heads(sites: list[AttentionSite]) -> int | None:
    heads = {example_value(site.k).shape[1] for site in sites if site.problem is None}
    if len(heads) == 1:
        (count,) = heads
        return count if isinstance(count, int) else None
    return None


class ApplyPolicyPass(HylraPass):
    """Set ``action``, ``source`` and ``reason`` of every site."""

    name = "apply_policy"

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None:
        sites = ctx.report.sites
        if not sites:
            return
        policy = ctx.options.policy
        for site in sites:
            site.action, site.source = "dense", None
            site.reason = site.problem or ("no policy given" if policy is None else None)
        if policy is not None:
            self._decide(gm, sites, policy)
        for site in sites:
            counters["hylra"][f"{site.action}_sites"] += 1

    @staticmethod
    def _decide(gm: torch.fx.GraphModule, sites: list[AttentionSite], policy) -> None:
        policy.check_model(len(sites), _kv_heads(sites))
        order = {node: position for position, node in enumerate(gm.graph.nodes)}
        for site in sites:
            if site.problem is not None:
                continue
            mode = policy.modes[site.layer]
            if mode == "full":
                site.reason = "policy: full"
            elif mode == "producer":
                site.action = "producer"
            else:
                source = policy.sources[site.layer]
                mismatch = producer_mismatch(sites[source], site, order)
                if mismatch is None:
                    site.action, site.source = "consumer", source
                else:
                    site.reason = f"policy: consumer of {source}, but {mismatch}"
        consumed = {site.source for site in sites if site.action == "consumer"}
        for site in sites:
            if site.action == "producer" and site.layer not in consumed:
                site.action, site.reason = "dense", "policy: producer, but no layer consumes it (runs as full)"
