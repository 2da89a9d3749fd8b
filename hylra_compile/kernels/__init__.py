"""Triton kernels for the hylra ops (decode split-K and prefill FlashAttention-style producers / consumers, the
dense attention of layers a policy leaves dense, and consumers' refinement of their producer's candidates).

The wrappers allocate outputs and launch; they run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
Routing (which inputs go here, which to the reference) lives in :mod:`hylra_compile.lowering.dispatch`.
"""

from .decode import decode_attention, decode_refine_blocks, decode_sparse_attention, decode_topk_attention
from .prefill import (
    prefill_attention,
    prefill_prefilter_blocks,
    prefill_refine_blocks,
    prefill_sparse_attention,
    prefill_topk_attention,
)

__all__ = [
    "decode_attention",
    "decode_refine_blocks",
    "decode_sparse_attention",
    "decode_topk_attention",
    "prefill_attention",
    "prefill_prefilter_blocks",
    "prefill_refine_blocks",
    "prefill_sparse_attention",
    "prefill_topk_attention",
]
