"""The ``hylra`` custom ops: schemas, fake (meta) implementations, and the reference kernel for every device.

The semantics of each op is its reference implementation in :mod:`hylra_compile.lowering.reference`. The CUDA
kernels are registered separately (:mod:`hylra_compile.lowering.dispatch`) and are proved against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference


@torch.library.custom_op("hylra::topk_attention", mutates_args=())
def topk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    block_size: int,
    n_select: int,
    sink_blocks: int,
    local_blocks: int,
    min_seq_len: int,
) -> tuple[Tensor, Tensor]:
    """Producer: dense attention + top-k KV-block indices. See :func:`reference.topk_attention`."""
    return reference.topk_attention(
        q, k, v, mask, is_causal, scale, block_size, n_select, sink_blocks, local_blocks, min_seq_len
    )


@topk_attention.register_fake
def _topk_attention_fake(q, k, v, mask, is_causal, scale, block_size, n_select, sink_blocks, local_blocks, min_seq_len):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_selection(n_select, sink_blocks, local_blocks)
    B, Hq, Sq, _ = q.shape
    out = q.new_empty(B, Hq, Sq, v.shape[3])
    block_idx = q.new_empty(B, k.shape[1], reference.num_blocks(Sq, block_size), n_select, dtype=torch.int32)
    return out, block_idx


@torch.library.custom_op("hylra::sparse_attention", mutates_args=())
def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_idx: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    block_size: int,
    min_seq_len: int,
) -> Tensor:
    """Consumer: attention over the selected KV blocks only. See :func:`reference.sparse_attention`."""
    return reference.sparse_attention(q, k, v, block_idx, mask, is_causal, scale, block_size, min_seq_len)


@sparse_attention.register_fake
def _sparse_attention_fake(q, k, v, block_idx, mask, is_causal, scale, block_size, min_seq_len):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_block_idx(block_idx, q, k, block_size)
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[3])
