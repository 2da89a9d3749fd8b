"""Phase 4, ``rewrite(gm, matches, decisions, masks, options)``: each site becomes the op its decision names
(:attr:`Decision.op`): producers ``hylra::topk_attention``, consumers ``hylra::sparse_attention`` fed by their
producer's ``block_idx`` as a graph edge (through ``hylra::expand_blocks`` where producers select in coarser
blocks, ``hylra::map_heads`` where the policy maps heads, and ``hylra::refine_blocks`` under
``selection="refine"``), sites the policy leaves dense ``hylra::attention`` (native KV heads, no
``repeat_kv`` copy); each reads its mask's stored copy and block mask (phase 3). Sites not understood, or compiled
without a policy, are left as they are. Every op is emitted with keyword arguments, so the graph says what each
number is.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
import torch.fx

from ..lowering.reference import num_blocks
from ..options import HylraOptions
from ..policy import tensor_parallel_rank
from .decide import Decision
from .find_attention import AttentionMatch
from .patterns import example_value

if TYPE_CHECKING:  # block_masks inserts its nodes with call_with_meta from here
    from .block_masks import SharedMask

# Node meta that stays true for the replacement: where the code came from, which module ran it.
_KEPT_META = ("stack_trace", "nn_module_stack", "source_fn_stack")


def rewrite(
    gm: torch.fx.GraphModule,
    matches: tuple[AttentionMatch, ...],
    decisions: tuple[Decision, ...],
    masks: dict[torch.fx.Node, SharedMask],
    options: HylraOptions,
) -> dict[int, torch.fx.Node]:
    """Rewrite ``gm`` in place; returns ``layer -> node now computing its output`` for each rewritten site."""
    graph = gm.graph
    # A site's inputs may be an earlier site's output (attention feeding attention): follow replacements.
    replaced: dict[torch.fx.Node, torch.fx.Node] = {}
    block_idx: dict[int, torch.fx.Node] = {}
    outputs: dict[int, torch.fx.Node] = {}
    for match, decision in zip(matches, decisions):
        if decision.op is None:
            continue
        q, k, v = (replaced.get(n, n) for n in (match.q, match.k, match.v))
        shared = masks.get(match.mask)
        mask = None if shared is None else shared.mask

        def block_mask(size: int) -> torch.fx.Node | None:
            return None if shared is None else shared.at(size)

        inputs = dict(q=q, k=k, v=v, mask=mask, block_mask=block_mask(options.block_size))
        settings = dict(is_causal=match.is_causal, scale=match.scale)
        key_blocks = _static_key_blocks(match, options.block_size)
        if decision.op == "topk_attention":
            arguments = {**inputs, "block_mask": block_mask(options.producer_block_size), **settings,
                         **options.producer_settings(_static_key_blocks(match, options.producer_block_size))}
            op = call_with_meta(graph, torch.ops.hylra.topk_attention.default, arguments, match.output)
            out = call_with_meta(graph, operator.getitem, (op, 0), match.output)
            selected = call_with_meta(graph, operator.getitem, (op, 1), match.output)
            if options.expansion > 1:  # candidates in the consumers' blocks
                selected = call_with_meta(graph, torch.ops.hylra.expand_blocks.default,
                                          {"q": q, "k": k, "block_idx": selected, "block_size": options.block_size,
                                           "factor": options.expansion}, match.output)
            block_idx[match.layer] = selected
        elif decision.op == "sparse_attention":
            produced = block_idx[decision.source]
            if decision.heads is not None:  # head-mapped reuse: each KV head reads its producer head's selection
                produced = call_with_meta(graph, torch.ops.hylra.map_heads.default,
                                          {"block_idx": produced, "heads": list(decision.heads)}, match.output)
            selected = consumer_selection(graph, inputs, settings, produced, options, key_blocks, match.output,
                                          layer=match.layer)
            arguments = {**inputs, "block_idx": selected, **settings, **options.consumer_settings()}
            out = call_with_meta(graph, torch.ops.hylra.sparse_attention.default, arguments, match.output)
        else:
            arguments = {**inputs, "block_mask": block_mask(options.dense_block), **settings,
                         "block_size": options.dense_block}
            out = call_with_meta(graph, torch.ops.hylra.attention.default, arguments, match.output)
        match.output.replace_all_uses_with(out)
        replaced[match.output] = out
        outputs[match.layer] = out
        _erase_unused(graph, match.internal)
    if outputs:
        graph.lint()
        gm.recompile()
    return outputs


def consumer_selection(graph: torch.fx.Graph, inputs: dict, settings: dict, produced: torch.fx.Node,
                       options: HylraOptions, key_blocks: int | None, like: torch.fx.Node,
                       layer: int | None = None) -> torch.fx.Node:
    """The node giving a consumer's ``block_idx`` under ``options.selection``: its producer's (``reuse``), the
    top of its producer's candidates by its own attention mass (``refine``: ``hylra::refine_blocks``), or its own
    top blocks among all (``oracle``: ``hylra::topk_attention``'s selection; its output is not used).
    ``key_blocks``: the KV blocks there are, when static (``refine`` over at most ``top_k`` candidates is
    reuse); ``layer``: the consumer's, whose own ``top_k`` the policy may set."""
    own = options.selection_settings(key_blocks, layer, example_value(inputs["k"]).shape[1],
                                     tensor_parallel_rank()[1])
    if options.selection == "reuse" or (options.selection == "refine" and "head_n_select" not in own
                                        and own["n_select"] >= example_value(produced).shape[-1]):
        return produced  # refine keeps every candidate when top_k covers them all: the producer's selection as is
    qk = {"q": inputs["q"], "k": inputs["k"]}
    if options.selection == "refine":
        arguments = {**qk, "candidate_idx": produced, "mask": inputs["mask"], "block_mask": inputs["block_mask"],
                     **settings, **own, **options.prefilter_settings}
        return call_with_meta(graph, torch.ops.hylra.refine_blocks.default, arguments, like)
    arguments = {**inputs, **settings, **own}
    op = call_with_meta(graph, torch.ops.hylra.topk_attention.default, arguments, like)
    return call_with_meta(graph, operator.getitem, (op, 1), like)


def _static_key_blocks(match: AttentionMatch, block_size: int) -> int | None:
    """The number of KV blocks of the site, or None when its KV length is symbolic."""
    length = match.shape("k")[2]
    return num_blocks(length, block_size) if isinstance(length, int) else None


def call_with_meta(graph: torch.fx.Graph, target, arguments, like: torch.fx.Node) -> torch.fx.Node:
    """Insert ``target`` before ``like`` (keyword ``arguments`` as a dict, positional as a tuple) with the meta of
    ``like`` and a fake ``example_value``."""
    args, kwargs = ((), arguments) if isinstance(arguments, dict) else (arguments, {})
    with graph.inserting_before(like):
        node = graph.call_function(target, args, kwargs)
    node.meta.update({key: like.meta[key] for key in _KEPT_META if key in like.meta})
    values = [example_value(a) if isinstance(a, torch.fx.Node) else a for a in args]
    kw_values = {name: example_value(a) if isinstance(a, torch.fx.Node) else a for name, a in kwargs.items()}
    if target is operator.getitem:
        node.meta["example_value"] = values[0][values[1]]
    else:
        # The example values' own fake mode (Dynamo's), which may differ from the ambient one.
        with next(value for value in kw_values.values() if isinstance(value, torch.Tensor)).fake_mode:
            node.meta["example_value"] = target(*values, **kw_values)
    return node


def _erase_unused(graph: torch.fx.Graph, nodes: tuple[torch.fx.Node, ...]) -> None:
    """Erase the site's old nodes once nothing uses them (an input like the cache stays: it is not listed)."""
    alive = list(nodes)
    while True:
        dead = [node for node in alive if not node.users]
        if not dead:
            return
        for node in dead:
            graph.erase_node(node)
            alive.remove(node)
