"""The block structure of a materialised mask (reference.mask_blocks) in one pass over the mask.

A program reads one query block's rows across ``KV_BLOCKS_PER_PROGRAM`` KV blocks, one [bs, bs] tile at a time (16
bytes per load from hylra::shared_mask's padded rows), and stores per KV block whether any key is allowed and
whether every key is allowed with no additive value; reference.block_ranges turns the two tables into the ranges.
The torch reference reduces the mask in chunks: 250 ms for a [1, 1, 128K, 128K] bool mask on an H100, where one
pass over its 16 GiB at the copy bandwidth takes ~6 ms.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..lowering import reference
from ._common import mask_args, mask_tile

KV_BLOCKS_PER_PROGRAM = 32


@triton.jit
def _block_hits_kernel(Mask, AnyAllowed, Whole, smb, smq, smk, Sqm, Skv, mask_cols, n_kb, mask_thr,
                       MASK_KIND: tl.constexpr, BS: tl.constexpr, PER: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1)
    rows = qb * BS + tl.arange(0, BS)
    row_ok = rows < Sqm
    offs_n = tl.arange(0, BS)
    m_base = Mask + b * smb
    out = (b * tl.num_programs(1) + qb) * n_kb
    for c in range(tl.program_id(2) * PER, tl.minimum(tl.program_id(2) * PER + PER, n_kb)):
        allowed, bias = mask_tile(m_base, smq, smk, rows, c * BS + offs_n, row_ok, Skv, mask_cols, mask_thr,
                                  MASK_KIND, False)
        plain = allowed & (bias == 0.0)
        # Queries past Sqm and keys past Skv count as wholly allowed, as in reference.block_hits.
        inside = row_ok[:, None] & (c * BS + offs_n < Skv)[None, :]
        whole = tl.min(tl.where(inside, plain, True).to(tl.int32))
        tl.store(AnyAllowed + out + c, tl.max(allowed.to(tl.int32)).to(tl.int8))
        tl.store(Whole + out + c, whole.to(tl.int8))


def mask_blocks(mask: torch.Tensor, *, block_size: int) -> torch.Tensor:
    """reference.mask_blocks for a mask [Bm, 1, Sqm, Skv] (one head; leading dims up to 4-d)."""
    reference.check_mask_blocks_inputs(mask, block_size)
    m4 = reference.mask_4d(mask)
    Bm, _, Sqm, Skv = m4.shape
    n_qb, n_kb = triton.cdiv(Sqm, block_size), triton.cdiv(Skv, block_size)
    m, kind, smb, smq, smk, mask_cols, thr = mask_args(m4, Bm, Sqm, Skv, m4)
    any_allowed = torch.empty(Bm, n_qb, n_kb, dtype=torch.int8, device=mask.device)
    whole = torch.empty_like(any_allowed)
    grid = (Bm, n_qb, triton.cdiv(n_kb, KV_BLOCKS_PER_PROGRAM))
    _block_hits_kernel[grid](m, any_allowed, whole, smb, smq, smk, Sqm, Skv, mask_cols, n_kb, thr,
                             MASK_KIND=kind, BS=block_size, PER=KV_BLOCKS_PER_PROGRAM)
    return reference.block_ranges(any_allowed.bool(), whole.bool(), Skv, block_size)
