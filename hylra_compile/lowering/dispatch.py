"""CUDA kernels of the hylra ops: Triton when the inputs are supported, else the reference (one warning per reason).

Supported: q/k/v bf16 or fp16 (same dtype), head_dim and value dim 64 or 128, block_size 16/32/64/128, mask None
or bool/float broadcastable to [B, 1, Sq, Skv] (no per-head masks), any strides; a selection over every KV block
(``topk_attention``) at most 16384 of them (256K keys at block 16, 1M at 64). Consumers and the refinement read
listed blocks only and take any number.
Sq == 1 runs the split-K decode kernels, other Sq the prefill kernels. ``mask_blocks`` runs its Triton pass over the
mask for a one-head mask and those block sizes. Nothing here syncs with the host or allocates data-dependent
shapes.
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


# One program of a producer's selection step holds every KV block of a row (padded to a power of two). 16384: a 128K
# cache at block 16 has 8192 blocks and a few more for the tokens generated after the prompt.
_MAX_SELECTED_FROM = 16384


def _mask_and_block_reason(mask, block_size) -> str | None:
    """Why no Triton kernel (attention or mask_blocks) takes this mask or block size (None when they do)."""
    if block_size not in (16, 32, 64, 128):
        return f"block_size {block_size} (16, 32, 64 or 128 only)"
    if mask is not None and reference.mask_4d(mask).shape[1] != 1:
        return "per-head mask"
    return None


def unsupported_reason(q, k, v, mask, block_size, selects_from_every_block: bool = False) -> str | None:
    """Why the Triton kernels cannot take these inputs (None when they can): ``selects_from_every_block`` for an op
    that ranks every KV block in one program (a producer's ``topk_attention``). Inputs the ops reject outright are
    left to :func:`reference.check_inputs`."""
    if q.device.type != "cuda":
        return f"device {q.device.type}"
    if q.dtype not in _SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (bf16/fp16 only)"
    if q.shape[3] not in (64, 128) or v.shape[3] not in (64, 128):
        return f"head_dim {q.shape[3]} / value dim {v.shape[3]} (64 or 128 only)"
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0 or k.shape[2] == 0:
        return "empty input"
    if selects_from_every_block and (n_kb := reference.num_blocks(k.shape[2], block_size)) > _MAX_SELECTED_FROM:
        return (f"a selection among {n_kb} KV blocks of {block_size} keys, more than {_MAX_SELECTED_FROM} (a larger "
                "block_size, or producer_block_size under selection='refine', keeps them under; the reference holds "
                "whole score rows)")
    return _mask_and_block_reason(mask, block_size)


def topk_attention_triton(q, k, v, mask, block_mask=None, **params):
    from ..kernels import decode_topk_attention, prefill_topk_attention

    reference.check_inputs(q, k, v, mask, params["block_size"])
    reference.check_block_mask(block_mask, mask, k, params["block_size"])
    reference.check_selection(params["n_select"], params["sink_blocks"], params["local_blocks"])
    fn = decode_topk_attention if q.shape[2] == 1 else prefill_topk_attention
    return fn(q, k, v, reference.mask_4d(mask), block_mask, **params)


def sparse_attention_triton(q, k, v, block_idx, mask, block_mask=None, **params):
    from ..kernels import decode_sparse_attention, prefill_sparse_attention

    reference.check_inputs(q, k, v, mask, params["block_size"])
    reference.check_block_mask(block_mask, mask, k, params["block_size"])
    reference.check_block_idx(block_idx, q, k, params["block_size"])
    # The row order and range of block_idx are not checked here: that would synchronise with the host.
    fn = decode_sparse_attention if q.shape[2] == 1 else prefill_sparse_attention
    return fn(q, k, v, block_idx, reference.mask_4d(mask), block_mask, **params)


def refine_blocks_triton(q, k, candidate_idx, mask, block_mask=None, *, head_n_select=None, prefilter=0,
                         **params):
    from ..kernels import decode_refine_blocks, prefill_prefilter_blocks, prefill_refine_blocks
    from ..kernels.masks import mask_blocks

    bs, n_select = params["block_size"], params["n_select"]
    reference.check_inputs(q, k, k, mask, bs)
    reference.check_block_mask(block_mask, mask, k, bs)
    reference.check_selection(n_select, params["sink_blocks"], params["local_blocks"])
    reference.check_head_n_select(head_n_select, n_select, params["sink_blocks"], params["local_blocks"], k.shape[1])
    reference.check_block_idx(candidate_idx, q, k, bs, "candidate_idx")
    reference.check_prefilter(prefilter)
    # As for block_idx, the rows' order and range are the producer's contract, not checked on the host.
    counts = None if head_n_select is None else device_ints(head_n_select, q.device)
    if q.shape[2] == 1:
        return decode_refine_blocks(q, k, candidate_idx, reference.mask_4d(mask), block_mask, **params,
                                    head_n_select=counts)
    if reference.prefilters(prefilter, q, candidate_idx, n_select):
        # The mean keys' candidates are bounded by the mask's block ranges.
        ranges = block_mask if mask is None or block_mask is not None else mask_blocks(reference.mask_4d(mask),
                                                                                         block_size=bs)
        means = reference.block_means(k, bs).to(q.dtype)
        candidate_idx = prefill_prefilter_blocks(q, means, candidate_idx, ranges,
                                                 **dict(params, n_select=prefilter * n_select))
    return prefill_refine_blocks(q, k, candidate_idx, reference.mask_4d(mask), block_mask, **params,
                                 head_n_select=counts)


_device_ints: dict[tuple, torch.Tensor] = {}


def device_ints(values, device: torch.device) -> torch.Tensor:
    """``values`` as an int32 tensor on ``device``, made once per (values, device): a copy from the host on every
    call would cost a transfer per decode step and is not allowed while a CUDA graph is captured. Made by fills on
    the device (no host copy), so the first call may come during a capture: that tensor belongs to the graph and is
    not kept."""
    key = (tuple(values), device)
    if (kept := _device_ints.get(key)) is not None:
        return kept
    made = torch.empty(len(values), dtype=torch.int32, device=device)
    for position, value in enumerate(values):
        made[position].fill_(value)
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        _device_ints[key] = made
    return made


def attention_triton(q, k, v, mask, block_mask=None, **params):
    from ..kernels import decode_attention, prefill_attention

    reference.check_inputs(q, k, v, mask, params["block_size"])
    reference.check_block_mask(block_mask, mask, k, params["block_size"])
    fn = decode_attention if q.shape[2] == 1 else prefill_attention
    return fn(q, k, v, reference.mask_4d(mask), block_mask, **params)


# The CUDA kernels go straight to the dispatcher, not through custom_op's register_kernel: its wrapper re-reads the
# op schema and checks the outputs for aliasing on every call (~100 µs of a decode step's host time, measured on
# an H100); ours never alias, every output is freshly allocated.
_CUDA_KERNELS = torch.library.Library("hylra", "IMPL")


def _register_cuda(op, triton_fn, reference_fn, mask_at: int, values_at: int = 2,
                   selects_from_every_block: bool = False) -> None:
    """Register ``triton_fn`` as ``op``'s CUDA kernel, falling back to the reference for inputs it cannot take;
    ``mask_at``, ``values_at``: the positions of ``mask`` and of the values (the keys for an op that reads none)
    among the op's tensors."""

    def kernel(*tensors, **params):
        q, k, v = tensors[0], tensors[1], tensors[values_at]
        reason = unsupported_reason(q, k, v, tensors[mask_at], params["block_size"], selects_from_every_block)
        if reason is not None:
            _warn_once(op._name, reason)
            return reference_fn(*tensors, **params)
        return triton_fn(*tensors, **params)

    _CUDA_KERNELS.impl(op._name, kernel, "CUDA")


def _mask_blocks_cuda(mask, *, block_size):
    """Triton for a mask the kernels take (4-d at most, one head, not empty), else the reference."""
    from ..kernels.masks import mask_blocks

    reason = (f"mask of {mask.dim()} dims" if mask.dim() > 4 else "empty mask" if mask.numel() == 0
              else _mask_and_block_reason(mask, block_size))
    if reason is not None:
        _warn_once("mask_blocks", reason)
        return reference.mask_blocks(mask, block_size=block_size)
    return mask_blocks(mask, block_size=block_size)


_CUDA_KERNELS.impl("mask_blocks", _mask_blocks_cuda, "CUDA")
_register_cuda(ops.topk_attention, topk_attention_triton, reference.topk_attention, mask_at=3,
               selects_from_every_block=True)
_register_cuda(ops.sparse_attention, sparse_attention_triton, reference.sparse_attention, mask_at=4)
_register_cuda(ops.attention, attention_triton, reference.attention, mask_at=3)
_register_cuda(ops.refine_blocks, refine_blocks_triton, reference.refine_blocks, mask_at=3, values_at=1)
