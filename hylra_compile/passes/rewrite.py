"""Pass 3: replace producer and consumer sites with the hylra ops, linking them by a block_idx graph edge."""

from __future__ import annotations

import operator

import torch
import torch.fx

from .base import HylraPass, PassContext
from .find_attention import example_value

# Node meta that stays true for the replacement: where the code came from, which module ran it.
_KEPT_META = ("stack_trace", "nn_module_stack", "source_fn_stack")


def _call_with_meta(graph: torch.fx.Graph, target, args: tuple, like: torch.fx.Node) -> torch.fx.Node:
    """Insert ``target(*args)`` before ``like`` with the meta of ``like`` and a fake ``example_value``."""
    with graph.inserting_before(like):
        node = graph.call_function(target, args)
    node.meta.update({key: like.meta[key] for key in _KEPT_META if key in like.meta})
    values = [example_value(a) if isinstance(a, torch.fx.Node) else a for a in args]
    if target is operator.getitem:
        node.meta["example_value"] = values[0][values[1]]
    else:
        # The example values' own fake mode (Dynamo's), which may differ from the ambient one.
        with values[0].fake_mode:
            node.meta["example_value"] = target(*values)
    return node


def _erase_unused(graph: torch.fx.Graph, nodes: list[torch.fx.Node]) -> None:
    """Erase the site's old nodes once nothing uses them (an input like the cache stays: it is not listed)."""
    alive = list(nodes)
    while True:
        dead = [node for node in alive if not node.users]
        if not dead:
            return
        for node in dead:
            graph.erase_node(node)
            alive.remove(node)


class RewritePass(HylraPass):
    """Producers become ``hylra::topk_attention``; consumers ``hylra::sparse_attention`` fed by their producer."""

    name = "rewrite"

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None:
        opts, sites, graph = ctx.options, ctx.report.sites, gm.graph
        if not any(site.action != "dense" for site in sites):
            return
        # A site's inputs may be an earlier site's output (attention feeding attention): follow replacements.
        replaced: dict[torch.fx.Node, torch.fx.Node] = {}
        for site in sites:
            site.q, site.k, site.v, site.mask = (replaced.get(n, n) for n in (site.q, site.k, site.v, site.mask))
            if site.action == "producer":
                args = (site.q, site.k, site.v, site.mask, site.is_causal, site.scale, opts.block_size)
                args += (opts.n_select, opts.sink_blocks, opts.local_blocks, opts.min_seq_len)
                op = _call_with_meta(graph, torch.ops.hylra.topk_attention.default, args, site.node)
                out = _call_with_meta(graph, operator.getitem, (op, 0), site.node)
                site.block_idx = _call_with_meta(graph, operator.getitem, (op, 1), site.node)
            elif site.action == "consumer":
                block_idx = sites[site.source].block_idx
                args = (site.q, site.k, site.v, block_idx, site.mask, site.is_causal, site.scale, opts.block_size)
                args += (opts.min_seq_len,)
                out = _call_with_meta(graph, torch.ops.hylra.sparse_attention.default, args, site.node)
            else:
                continue
            site.node.replace_all_uses_with(out)
            replaced[site.node] = out
            _erase_unused(graph, site.internal)
        graph.lint()
        gm.recompile()

