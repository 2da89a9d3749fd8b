"""The ``hylra`` custom ops: schemas, fake (meta) implementations, and the reference kernel for every device.

Each op's signature and semantics are written once, in its reference implementation
(:func:`reference.topk_attention`, :func:`reference.sparse_attention`, :func:`reference.attention`,
:func:`reference.refine_blocks`, :func:`reference.map_heads`, :func:`reference.expand_blocks`,
:func:`reference.mask_blocks`, :func:`reference.shared_mask`): ``custom_op`` infers the schema from it and runs it
on every device the CUDA kernels (:mod:`hylra_compile.lowering.dispatch`) do not cover. The tensors are positional
(``custom_op`` takes no keyword-only tensors); every other argument is keyword-only, so no call site can shift them.
"""

from __future__ import annotations

import torch

from . import reference


def _op(function):
    return torch.library.custom_op(f"hylra::{function.__name__}", mutates_args=())(function)


topk_attention = _op(reference.topk_attention)
sparse_attention = _op(reference.sparse_attention)
attention = _op(reference.attention)
refine_blocks = _op(reference.refine_blocks)
map_heads = _op(reference.map_heads)
expand_blocks = _op(reference.expand_blocks)
mask_blocks = _op(reference.mask_blocks)
shared_mask = _op(reference.shared_mask)


@topk_attention.register_fake
def _topk_attention_fake(q, k, v, mask, block_mask=None, *, block_size, n_select, sink_blocks, local_blocks, **_):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_block_mask(block_mask, mask, k, block_size)
    reference.check_selection(n_select, sink_blocks, local_blocks)
    B, Hq, Sq, _ = q.shape
    out = q.new_empty(B, Hq, Sq, v.shape[3])
    block_idx = q.new_empty(B, k.shape[1], reference.num_blocks(Sq, block_size), n_select, dtype=torch.int32)
    return out, block_idx


@sparse_attention.register_fake
def _sparse_attention_fake(q, k, v, block_idx, mask, block_mask=None, *, block_size, **_):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_block_mask(block_mask, mask, k, block_size)
    reference.check_block_idx(block_idx, q, k, block_size)
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[3])


@attention.register_fake
def _attention_fake(q, k, v, mask, block_mask=None, *, block_size, **_):
    reference.check_inputs(q, k, v, mask, block_size)
    reference.check_block_mask(block_mask, mask, k, block_size)
    B, Hq, Sq, _ = q.shape
    return q.new_empty(B, Hq, Sq, v.shape[3])


@refine_blocks.register_fake
def _refine_blocks_fake(q, k, candidate_idx, mask, block_mask=None, *, block_size, n_select, sink_blocks,
                        local_blocks, head_n_select=None, prefilter=0, **_):
    reference.check_inputs(q, k, k, mask, block_size)
    reference.check_prefilter(prefilter)
    reference.check_block_mask(block_mask, mask, k, block_size)
    reference.check_selection(n_select, sink_blocks, local_blocks)
    reference.check_head_n_select(head_n_select, n_select, sink_blocks, local_blocks, k.shape[1])
    reference.check_block_idx(candidate_idx, q, k, block_size, "candidate_idx")
    return candidate_idx.new_empty(*candidate_idx.shape[:3], n_select)


@map_heads.register_fake
def _map_heads_fake(block_idx, *, heads):
    reference.check_heads(heads, block_idx.shape[1])
    return torch.empty_like(block_idx)


@expand_blocks.register_fake
def _expand_blocks_fake(q, k, block_idx, *, block_size, factor):
    reference.check_block_idx(block_idx, q, k, block_size * factor)
    B, Hkv, _, n = block_idx.shape
    return block_idx.new_empty(B, Hkv, reference.num_blocks(q.shape[2], block_size), factor * n)


@mask_blocks.register_fake
def _mask_blocks_fake(mask, *, block_size):
    return mask.new_empty(reference.block_mask_shape(mask, block_size), dtype=torch.int32)


@shared_mask.register_fake
def _shared_mask_fake(mask):
    return reference.padded_rows_like(mask)
