"""Phase 3, ``block_masks(gm, matches, decisions, options)``: each mask stored once, and its block structure.

Under tracing Hugging Face materialises the attention mask as a [B, 1, S, S] tensor that every layer reads. For
each distinct mask node that a rewritten site reads, one ``hylra::shared_mask`` node stores it once for all the
ops (Inductor would otherwise compute it into a buffer per op: 32 copies of 16 GiB at 128K tokens), and one
``hylra::mask_blocks`` node of that copy (FlexAttention's ``BlockMask``: per query block, which KV blocks to skip,
which are wholly allowed, which need mask reads) is inserted before its first user and shared by the ops of every
layer. A 32-layer model pays one pass over the mask. In prefill the kernels skip the blocks above the diagonal of
a causal mask, read no mask byte in the blocks below it, and read it only on the diagonal (and where padding or a
sliding window cuts a block); in decode they visit only the blocks of the mask row holding allowed keys (a short
prompt in a long static cache costs its own length), and consumers count allowed keys from the block ranges.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..lowering.reference import holds
from ..options import HylraOptions
from .decide import Decision
from .find_attention import AttentionMatch
from .patterns import example_value
from .rewrite import call_with_meta


class SharedMask(NamedTuple):
    """What the ops of a graph read for one mask node: its stored copy, and its block structure by block size (one
    ``mask_blocks`` node per size the graph's ops run in: consumers', producers', dense layers'; none where the
    kernels take no block mask)."""

    mask: torch.fx.Node
    block_masks: dict[int, torch.fx.Node]

    def at(self, block_size: int) -> torch.fx.Node | None:
        """The block mask in blocks of ``block_size`` (None where the kernels take none)."""
        return self.block_masks.get(block_size)


def block_masks(
    gm: torch.fx.GraphModule,
    matches: tuple[AttentionMatch, ...],
    decisions: tuple[Decision, ...],
    options: HylraOptions,
) -> dict[torch.fx.Node, SharedMask]:
    """Insert the ``shared_mask`` and ``mask_blocks`` nodes; returns ``mask node -> what the ops read for it``."""
    order = {node: position for position, node in enumerate(gm.graph.nodes)}
    # Each mask's block sizes: those its readers run in, consumers' (and their refinement's), producers', dense's.
    size_of = {"sparse_attention": options.block_size, "topk_attention": options.producer_block_size,
               "attention": options.dense_block}
    readers: dict[torch.fx.Node, set[str]] = {}
    for match, decision in zip(matches, decisions):
        if decision.op is not None and match.mask is not None:
            readers.setdefault(match.mask, set()).add(decision.op)
    found: dict[torch.fx.Node, SharedMask] = {}
    for match, decision in zip(matches, decisions):
        if decision.op is None or match.mask is None or match.mask in found:
            continue
        first_user = min(match.mask.users, key=order.__getitem__)
        stored = call_with_meta(gm.graph, torch.ops.hylra.shared_mask.default, dict(mask=match.mask), first_user)
        sizes = dict.fromkeys(size_of[op] for op in size_of if op in readers[match.mask])
        by_size = {size: call_with_meta(gm.graph, torch.ops.hylra.mask_blocks.default,
                                        dict(mask=stored, block_size=size), first_user)
                   for size in (sizes if _takes_block_mask(match) else ())}
        found[match.mask] = SharedMask(stored, by_size)
    return found


def _takes_block_mask(match: AttentionMatch) -> bool:
    """A site whose mask has one head and a column per key (the shapes the kernels' block masks take)."""
    q, k, mask = (example_value(node) for node in (match.q, match.k, match.mask))
    if mask.dim() > 4:
        return False
    heads = mask.shape[-3] if mask.dim() >= 3 else 1
    rows = mask.shape[-2] if mask.dim() >= 2 else 1
    return (statically_known_true(heads == 1) and holds(mask.shape[-1] == k.shape[2])
            and (statically_known_true(rows == 1) or holds(rows == q.shape[2])))
