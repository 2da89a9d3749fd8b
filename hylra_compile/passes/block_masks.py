"""Phase 3, ``block_masks(gm, matches, decisions, options)``: the block structure of each mask, computed once.

Under tracing Hugging Face materialises the attention mask as a [B, 1, S, S] tensor that every layer reads. For
each distinct mask node that a rewritten prefill site reads, one ``hylra::mask_blocks`` node (FlexAttention's
``BlockMask``: per query block, which KV blocks to skip, which are wholly allowed, which need mask reads) is
inserted before its first user and shared by the ops of every layer. A 32-layer model pays one pass over the mask,
and the kernels skip the blocks above the diagonal of a causal mask, read no mask byte in the blocks below it, and
read it only on the diagonal (and where padding or a sliding window cuts a block). Decode sites get none: their
kernels trim each split to the blocks holding an allowed key, reading the one mask row.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..lowering.reference import holds
from ..options import HylraOptions
from .decide import Decision
from .find_attention import AttentionMatch
from .patterns import example_value
from .rewrite import call_with_meta


def block_masks(
    gm: torch.fx.GraphModule,
    matches: tuple[AttentionMatch, ...],
    decisions: tuple[Decision, ...],
    options: HylraOptions,
) -> dict[torch.fx.Node, torch.fx.Node]:
    """Insert the ``mask_blocks`` nodes; returns ``mask node -> its block-mask node``."""
    order = {node: position for position, node in enumerate(gm.graph.nodes)}
    found: dict[torch.fx.Node, torch.fx.Node] = {}
    for match, decision in zip(matches, decisions):
        if decision.op is None or match.mask is None or match.mask in found or not _takes_block_mask(match):
            continue
        first_user = min(match.mask.users, key=order.__getitem__)
        found[match.mask] = call_with_meta(
            gm.graph, torch.ops.hylra.mask_blocks.default, dict(mask=match.mask, block_size=options.block_size),
            first_user,
        )
    return found


def _takes_block_mask(match: AttentionMatch) -> bool:
    """A prefill site whose mask has one head and a column per key (the shapes the kernels' block masks take)."""
    q, k, mask = (example_value(node) for node in (match.q, match.k, match.mask))
    if statically_known_true(q.shape[2] == 1) or mask.dim() > 4:
        return False
    heads = mask.shape[-3] if mask.dim() >= 3 else 1
    rows = mask.shape[-2] if mask.dim() >= 2 else 1
    return (statically_known_true(heads == 1) and holds(mask.shape[-1] == k.shape[2])
            and (statically_known_true(rows == 1) or holds(rows == q.shape[2])))
