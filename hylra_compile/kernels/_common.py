"""Helpers shared by the decode and prefill kernels: mask arguments and tiles, and the top-k block selection."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Python-side only: inside @triton.jit code the literal is written out (a plain global is not a constexpr there).
LOG2E = 1.4426950408889634

# Keys per step of a loop over selected (or, in decode, any) KV blocks: blocks smaller than this are taken
# TILE_KEYS // block_size at a time, their rows gathered into one tile, so a step's fixed cost (index loads, mask
# tile, softmax rescale) is paid once per 64 keys whatever the block size. One block per step, blocks of 16 took
# 1.4-2.2x the time of blocks of 64 (H200, benchmarks/results/block-size-32k-*).
TILE_KEYS = 64


def blocks_per_tile(block_size: int) -> int:
    """KV blocks per tile of TILE_KEYS keys (1 for blocks at least that large)."""
    return max(1, TILE_KEYS // block_size)


def mask_args(mask: torch.Tensor | None, B: int, Sq: int, Skv: int, q: torch.Tensor):
    """(tensor, kind, stride_b, stride_q, stride_k, readable columns, threshold) for a mask [B|1, 1, Sq|1, Skv|1]
    (already 4-d); see :func:`readable_columns`."""
    if mask is None:
        return q, 0, 0, 0, 0, 0, 0.0
    m = mask.expand(B, 1, Sq, Skv)
    if m.dtype == torch.bool:
        m = m.view(torch.uint8)
        kind, thr = 1, 0.0
    else:
        kind, thr = 2, float(torch.finfo(m.dtype).min) / 2
    return m, kind, m.stride(0), m.stride(2), m.stride(3), readable_columns(m), thr


def readable_columns(m: torch.Tensor) -> int:
    """How many columns from the start of each row of the 4-d mask ``m`` the kernels may load: ``Skv`` rounded up
    to 16 where every row has that many elements in ``m``'s storage (rows padded as ``hylra::shared_mask`` pads
    them; bytes past ``Skv`` are loaded, never used), else ``Skv``.

    Why: a tile load is 16 bytes per instruction only where its predicate is constant over 16 columns; a predicate
    that cut at ``Skv`` made every mask byte a load of its own, with its own 64-bit address (a prefill consumer's
    partially allowed block cost ~14 wholly allowed ones)."""
    Skv = m.shape[3]
    if m.stride(3) != 1:
        return Skv
    last_row_start = m.storage_offset() + sum((n - 1) * s for n, s in zip(m.shape[:3], m.stride()[:3]))
    stored = m.untyped_storage().nbytes() // m.element_size() - last_row_start
    return max(Skv, min(triton.cdiv(Skv, 16) * 16, stored))


def block_mask_args(block_mask: torch.Tensor | None, q: torch.Tensor):
    """(tensor, stride_b, stride_query_block) of a block mask [Bm, n_qb | 1, n_kb] (reference.mask_blocks); a
    dimension of size 1 broadcasts (stride 0). Without one: a dummy pointer (the kernel reads it only with
    HAS_BLOCKS)."""
    if block_mask is None:
        return q, 0, 0
    strides = [block_mask.stride(d) if block_mask.shape[d] > 1 else 0 for d in (0, 1)]
    return block_mask, strides[0], strides[1]


def ptx_stores(t: torch.Tensor) -> bool:
    """Whether kernels on t's device may use NVIDIA PTX (store_rows); not under the interpreter (CPU tensors)."""
    return t.device.type == "cuda" and torch.version.hip is None


@triton.jit
def store_rows(ptr, val, mask, PTX: tl.constexpr):
    """tl.store(ptr, val, mask) for an fp32 per-row vector, with PTX=True written from the layout it was computed in.

    tl.store first moves a row vector of the MMA layout into a coalesced layout through shared memory, a barrier
    per call; inside a FlashAttention loop that barrier stalls the warpgroups. st.global per held element needs no
    move (the lanes holding the same row write the same word). PTX=False for the interpreter.
    """
    if PTX:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b32 [$1], $2; mov.b32 $0, 0; }",
            "=r,l,r,r", [ptr, val.to(tl.int32, bitcast=True), mask.to(tl.int32)], dtype=tl.int32, is_pure=False,
            pack=1)
    else:
        tl.store(ptr, val, mask=mask)


@triton.jit
def mask_tile(
    mask_base,
    stride_mq,
    stride_mk,
    offs_q,
    offs_k,
    q_valid,
    Skv,
    mask_cols,
    mask_thr,
    MASK_KIND: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
):
    """Allowed keys [Q, K] (bool) and the additive bias [Q, K] (fp32, natural-log units) of one tile.

    MASK_KIND 0: no mask; 1: bool/uint8 mask (nonzero = attend); 2: float mask (HF: -inf or <= mask_thr drops the
    key, other values are added to the scores). The load takes columns up to ``mask_cols`` (readable_columns: a
    multiple of 16 where the rows are padded, so it loads 16 bytes per instruction) of the valid rows.
    """
    allowed = (offs_k[None, :] < Skv) & (q_valid[:, None] != 0)
    if IS_CAUSAL:
        allowed = allowed & (offs_k[None, :] <= offs_q[:, None])
    bias = tl.zeros(allowed.shape, dtype=tl.float32)
    # Row offsets in 64 bits: a materialised [S, S] mask passes 2^31 elements at S = 46341.
    mask_ptrs = mask_base + offs_q.to(tl.int64)[:, None] * stride_mq + offs_k[None, :] * stride_mk
    loaded = (q_valid[:, None] != 0) & (offs_k[None, :] < mask_cols)
    if MASK_KIND == 1:
        mv = tl.load(mask_ptrs, mask=loaded, other=0)
        allowed = allowed & (mv != 0)
    elif MASK_KIND == 2:
        mv = tl.load(mask_ptrs, mask=loaded, other=0.0)
        mv = mv.to(tl.float32)
        dropped = (mv == float("-inf")) | (mv <= mask_thr)
        allowed = allowed & (dropped == 0)
        bias = tl.where(allowed, mv, 0.0)
    return allowed, bias


@triton.jit
def select_row(imp, cand, ids, out_ptr, n_keep, n_select, sink_blocks, local_blocks, N_SEL_PAD: tl.constexpr,
               N_THR: tl.constexpr = 8):
    """reference.select_blocks for one row, without sorting: ``n_keep`` blocks of a row of ``n_select`` entries.

    ``imp`` fp32 [C_PAD] (>= 0; NaN and +inf rank highest), ``cand`` bool [C_PAD] (False on padding), ``ids`` int32
    [C_PAD]: the block id of each column (the column itself, or a candidate list's entry), ascending over the
    candidates. Forced: the first ``sink_blocks`` and last ``local_blocks`` candidates. The rest: search on the
    int32 bit pattern of the non-negative importance for the largest threshold T such that at least ``need``
    non-forced candidates are >= T; take all > T, then the lowest-column ones equal to T. Each step counts against N_THR thresholds at once (one
    reduction narrows the range N_THR-fold; 8 measured best on an H100 at 512-2048 blocks), and the search stops as
    soon as some threshold has exactly ``need`` candidates at or above it (it selects the same set as T). The
    selected ids are written in column order (cumsum of the selection), -1 padded to ``n_select``.
    """
    tl.static_assert(N_THR >= 2)
    # NaN counts as +inf and anything below 0 (-0.0) as 0, as in the reference: every candidate's bits then lie in
    # [0, 0x7F800000], so the search's int32 arithmetic cannot overflow (CUDA's NaN, 0x7FFFFFFF, made it spin).
    imp = tl.where(imp != imp, float("inf"), tl.where(imp > 0, imp, 0.0))
    ci = cand.to(tl.int32)
    rank = tl.cumsum(ci, 0)
    total = tl.sum(ci, 0)
    forced = cand & ((rank <= sink_blocks) | (rank > total - local_blocks))
    n_forced = tl.sum(forced.to(tl.int32), 0)
    need = tl.maximum(n_keep - n_forced, 0)
    bits = imp.to(tl.int32, bitcast=True)
    bits = tl.where(cand & (forced == 0), bits, -1)
    # Invariant: count(bits >= lo) >= need, or lo == 0 (fewer candidates than need: take them all); T <= hi.
    # need == 0: a threshold above every finite value takes nothing beyond the forced blocks.
    lo = tl.where(need == 0, 0x7F800000, 0)
    hi = tl.maximum(tl.max(bits, 0), lo)
    exact = lo < 0
    offs_t = tl.arange(0, N_THR)
    while (lo < hi) & (exact == 0):
        step = (hi - lo + N_THR - 1) // N_THR
        thr = tl.minimum(lo + step * (offs_t + 1), hi)
        cnt = tl.sum((bits[None, :] >= thr[:, None]).to(tl.int32), 1)
        ok = cnt >= need  # true for a prefix of the (ascending) thresholds
        exact = tl.max((ok & (cnt == need)).to(tl.int32), 0) != 0
        new_lo = tl.max(tl.where(ok, thr, lo), 0)
        hi = tl.min(tl.where(ok, hi, thr - 1), 0)
        lo = new_lo
    gt = bits > lo
    eq = bits == lo
    n_gt = tl.sum(gt.to(tl.int32), 0)
    eq_rank = tl.cumsum(eq.to(tl.int32), 0)
    sel = forced | gt | (eq & (eq_rank <= need - n_gt))
    si = sel.to(tl.int32)
    pos = tl.cumsum(si, 0) - 1
    n_picked = tl.sum(si, 0)
    tl.store(out_ptr + pos, ids, mask=sel)
    offs_s = tl.arange(0, N_SEL_PAD)
    tl.store(out_ptr + offs_s, tl.full([N_SEL_PAD], -1, tl.int32), mask=(offs_s >= n_picked) & (offs_s < n_select))
