"""The ``hylra`` custom ops: schemas, fake (meta) implementations, and the reference kernel for every device.

Each op's signature and semantics are written once, in its reference implementation
(:func:`reference.topk_attention`, :func:`reference.sparse_attention`): ``custom_op`` infers the schema from it
and runs it on every device the CUDA kernels (:mod:`hylra_compile.lowering.dispatch`) do not cover. The tensors
are positional (``custom_op`` takes no keyword-only tensors); every other argument is keyword-only, so no call
site can shift them.
"""

from __future__ import annotations

import torch

from . import reference

topk_attention = torch.library.custom_op("hylra::topk_attention", mutates_args=())(reference.topk_attention)
sparse_attention = torch.library.custom_op("hylra::sparse_attention", mutates_args=())(reference.sparse_attention)


@topk_attention.register_fake
def _topk_attention_fake(q, k, v, mask, *, block_size, n_select, sink_blocks, local_blocks, **_):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_selection(n_select, sink_blocks, local_blocks)
    B, Hq, Sq, _ = q.shape
    out = q.new_empty(B, Hq, Sq, v.shape[3])
    block_idx = q.new_empty(B, k.shape[1], reference.num_blocks(Sq, block_size), n_select, dtype=torch.int32)
    return out, block_idx


@sparse_attention.register_fake
def _sparse_attention_fake(q, k, v, block_idx, mask, *, block_size, **_):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_block_idx(block_idx, q, k, block_size)
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[3])
