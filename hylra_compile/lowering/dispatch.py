"""CUDA kernels of the hylra ops: Triton when the inputs are supported, else the reference (one warning per reason).

Supported: q/k/v bf16 or fp16 (same dtype), head_dim and value dim 64 or 128, block_size 16/32/64/128, mask None
or bool/float of shape [B|1, 1, Sq|1, Skv|1] (no per-head masks), any strides. Sq == 1 runs the split-K decode
kernels, other Sq the prefill kernels. Nothing here syncs with the host or allocates data-dependent shapes.
"""

from __future__ import annotations

import warnings

import torch

from . import ops, reference

_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
_warned: set[str] = set()


def _warn_once(op: str, reason: str) -> None:
    key = f"{op}: {reason}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"hylra::{op} falls back to the reference implementation: {reason}", stacklevel=3)


def unsupported_reason(q, k, v, mask, block_size, interpret_ok: bool = False) -> str | None:
    """Why the Triton kernels cannot take these inputs (None when they can)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "inputs are not 4-d"
    if not interpret_ok and q.device.type != "cuda":
        return f"device {q.device.type}"
    if q.dtype not in _SUPPORTED_DTYPES and not (interpret_ok and q.dtype == torch.float32):
        return f"dtype {q.dtype} (bf16/fp16 only)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k, v dtypes differ"
    if q.shape[3] not in (64, 128) or v.shape[3] not in (64, 128):
        return f"head_dim {q.shape[3]} / value dim {v.shape[3]} (64 or 128 only)"
    if block_size not in (16, 32, 64, 128):
        return f"block_size {block_size} (16, 32, 64 or 128 only)"
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0 or k.shape[2] == 0:
        return "empty input"
    if mask is not None:
        m = mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        if m.dim() != 4:
            return "mask is not 4-d"
        B, _, Sq, _ = q.shape
        Skv = k.shape[2]
        if m.shape[1] != 1:
            return "per-head mask"
        if m.shape[0] not in (1, B) or m.shape[2] not in (1, Sq) or m.shape[3] not in (1, Skv):
            return f"mask shape {tuple(mask.shape)}"
        if m.dtype != torch.bool and not m.dtype.is_floating_point:
            return f"mask dtype {m.dtype}"
    return None


def _mask4(mask):
    if mask is None:
        return None
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def topk_attention_triton(q, k, v, mask, is_causal, scale, block_size, n_select, sink_blocks, local_blocks,
                          min_seq_len):
    from ..kernels import decode_topk_attention, prefill_topk_attention

    reference.check_inputs(q, k, v, mask, block_size)
    if n_select < sink_blocks + local_blocks:
        raise ValueError(f"n_select={n_select} is smaller than sink_blocks + local_blocks = {sink_blocks + local_blocks}")
    fn = decode_topk_attention if q.shape[2] == 1 else prefill_topk_attention
    return fn(q, k, v, _mask4(mask), is_causal, scale, block_size, n_select, sink_blocks, local_blocks, min_seq_len)


def sparse_attention_triton(q, k, v, block_idx, mask, is_causal, scale, block_size, min_seq_len):
    from ..kernels import decode_sparse_attention, prefill_sparse_attention

    reference.check_inputs(q, k, v, mask, block_size)
    B, Hq, Sq, _ = q.shape
    n_qb = reference.num_blocks(Sq, block_size)
    if block_idx.dim() != 4 or tuple(block_idx.shape[:3]) != (B, k.shape[1], n_qb):
        raise ValueError(
            f"block_idx must be [B, Hkv, ceil(Sq/bs), n_sel] = [{B}, {k.shape[1]}, {n_qb}, n_sel], "
            f"got {tuple(block_idx.shape)}"
        )
    if block_idx.dtype != torch.int32:
        block_idx = block_idx.to(torch.int32)
    # Entries outside [0, n_kb) are ignored by the kernels (no host-side range check: that would sync).
    fn = decode_sparse_attention if Sq == 1 else prefill_sparse_attention
    return fn(q, k, v, block_idx, _mask4(mask), is_causal, scale, block_size, min_seq_len)


@ops.topk_attention.register_kernel("cuda")
def _topk_attention_cuda(q, k, v, mask, is_causal, scale, block_size, n_select, sink_blocks, local_blocks,
                         min_seq_len):
    reason = unsupported_reason(q, k, v, mask, block_size)
    if reason is not None:
        _warn_once("topk_attention", reason)
        return reference.topk_attention(
            q, k, v, mask, is_causal, scale, block_size, n_select, sink_blocks, local_blocks, min_seq_len
        )
    return topk_attention_triton(
        q, k, v, mask, is_causal, scale, block_size, n_select, sink_blocks, local_blocks, min_seq_len
    )


@ops.sparse_attention.register_kernel("cuda")
def _sparse_attention_cuda(q, k, v, block_idx, mask, is_causal, scale, block_size, min_seq_len):
    reason = unsupported_reason(q, k, v, mask, block_size)
    if reason is not None:
        _warn_once("sparse_attention", reason)
        return reference.sparse_attention(q, k, v, block_idx, mask, is_causal, scale, block_size, min_seq_len)
    return sparse_attention_triton(q, k, v, block_idx, mask, is_causal, scale, block_size, min_seq_len)
