"""Prefill (Sq > 1) kernels: FlashAttention-style, GQA-packed.

A program owns one query block (``block_size`` queries) of HP query heads that share a KV head (HP * block_size
rows: 256 for block 64 and G >= 4), so each K/V tile it loads serves HP heads. The grid is 1-D and ordered heaviest
first (``_program_rows``): under a causal mask a program's cost grows with its query block, and a heavy program
dispatched last would run alone on a few SMs.

Producer (one pass over K/V): ``_prefill_attn_kernel`` (dense, causal loop bound) stores each row's block
log2-sum-exp x[row, c] = m + log2(sum_j exp2(s_j - m)) in its program's own [n_kb, rows] scratch slice; once the row's
log2-sum-exp is final, the same program reads its rows back and sums exp2(x - lse_row) over its heads and queries (the
exact softmax mass) into Imp[b, head group, query block, c]; ``_prefill_select_kernel`` sums the head groups of a KV
head and selects per query block. The scratch holds at most ``X_BUDGET_BYTES``: where the grid's slices would not
fit (128K tokens x 32 heads would need 34 GB), the grid is launched in chunks of programs that reuse it, one after
the other on the stream. One launch per chunk, then the selection.

Consumer (1 launch): ``_prefill_attn_kernel`` with SPARSE=True over the query block's selected KV blocks (blocks
smaller than ``_common.TILE_KEYS`` keys that need no mask reads gathered a few at a time into one tile); rows with
fewer than ``min_seq_len`` allowed keys (decided in the kernel) also visit the unselected blocks; a program none of
whose rows can have that many (bounded by its block range) runs the dense pass instead, counting nothing.

Refinement (``refine_blocks``, 2 launches): the consumer pass over the producer's candidate list with WITH_V=False
(scores only, no value reads, no output) stores the row log2-sum-exps per list entry and reduces them as the
producer does; ``_prefill_select_kernel`` selects among the entries and writes their block ids. A pre-filter
(``prefill_prefilter_blocks``) narrows the list first: ``_prefill_mean_key_kernel`` scores each entry's mean key
(one vector per block), a tile of entries per dot, in two passes (the rows' log2-sum-exp, then each entry's mass),
and the select kernel keeps the best.

Every pass walks a query block's KV blocks in three branch-free runs (``_block_ranges``): blocks with mask reads,
blocks that need none (wholly allowed: below the causal diagonal, or inside a mask's full run), blocks with mask
reads; blocks outside ``[first, end)`` are never visited. With a materialised mask the ranges come from its block
structure (``block_mask``, reference.mask_blocks, computed once per graph), so a causal [S, S] mask costs what
``is_causal`` costs, plus one read of the diagonal blocks.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ._common import LOG2E, block_mask_args, blocks_per_tile, mask_args, mask_tile, ptx_stores, select_row, store_rows


@triton.jit
def _attn_block(q, acc, m_i, l_i, c, valid, k_base, v_base, m_base, skn, skd, svn, svd, smq, smk,
                qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr,
                offs_n, offs_d, offs_dv,
                BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, FULL: tl.constexpr,
                WITH_V: tl.constexpr = True):
    offs_k = c * BLOCK_N + offs_n
    # The block's first key in 64 bits, then small in-block offsets: no K/V offset wraps at any length.
    k_blk = k_base + tl.cast(c * BLOCK_N, tl.int64) * skn
    v_blk = v_base + tl.cast(c * BLOCK_N, tl.int64) * svn
    if FULL:
        k = tl.load(k_blk + offs_n[:, None] * skn + offs_d[None, :] * skd)
        sc = tl.dot(q, tl.trans(k)) * qk_scale
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        m_safe = m_new
        p = tl.exp2(sc - m_safe[:, None])
    else:
        allowed, bias = mask_tile(m_base, smq, smk, qpos, offs_k, row_ok & valid, Skv, mask_cols, mask_thr, MASK_KIND,
                                  IS_CAUSAL)
        if MASK_KIND == 0:
            kmask = offs_k < Skv  # causal/bounds only: no cross-row reduction for the load mask
        else:
            kmask = tl.max(allowed.to(tl.int32), 0) != 0
        k = tl.load(k_blk + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kmask[:, None], other=0.0)
        sc = tl.dot(q, tl.trans(k)) * qk_scale
        if MASK_KIND == 2:
            sc += bias * 1.4426950408889634
        sc = tl.where(allowed, sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(sc - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_blk = tl.sum(p, 1)
    l_i = l_i * alpha + l_blk
    if WITH_V:
        if FULL:
            v = tl.load(v_blk + offs_n[:, None] * svn + offs_dv[None, :] * svd)
        else:
            v = tl.load(v_blk + offs_n[:, None] * svn + offs_dv[None, :] * svd, mask=kmask[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    # Block log2-sum-exp per row, exact: m_safe + log2(sum_j exp2(s_j - m_safe)). A row with an allowed key whose
    # terms underflowed gets -1e30 (candidate, ~zero importance); a row with none gets -inf.
    if FULL:
        has = l_blk == l_blk
    else:
        has = tl.max(allowed.to(tl.int32), 1) != 0
    x_blk = tl.where(l_blk > 0, m_safe + tl.log2(tl.where(l_blk > 0, l_blk, 1.0)), tl.where(has, -1e30, float("-inf")))
    return acc, m_new, l_i, x_blk


@triton.jit
def _program_rows(Q, sqb, sqh, sqs, sqd, Hq, Sq, n_qb, pid0, HP: tl.constexpr, G: tl.constexpr, QB: tl.constexpr,
                  D: tl.constexpr):
    """The rows of program pid0 + program_id(0) of a 1-D grid of n_qb * B * Hq / HP (launched whole, or in chunks
    starting at pid0): HP heads of one KV head x the QB queries of one query block. For each (batch, head group) in
    turn, query blocks go from last to first: a causal program costs more for a later query block, so the heaviest
    start first and the lightest fill the last wave (2.8% faster at 32K than first to last); consecutive programs
    share a KV head, whose K/V then stay in L2.
    Returns qb, b, head group, KV head, then per row head, q0, query position, in range, and q [HP * QB, D]."""
    pid = pid0 + tl.program_id(0)
    qb = n_qb - 1 - pid % n_qb
    pid1 = pid // n_qb
    n_hg = Hq // HP
    b = (pid1 // n_hg).to(tl.int64)
    hg = pid1 % n_hg
    h0 = hg * HP
    kvh = (h0 // G).to(tl.int64)
    rows = tl.arange(0, HP * QB)
    head = (h0 + rows // QB).to(tl.int64)
    q0 = qb * QB
    qpos = q0 + rows % QB
    row_ok = qpos < Sq
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + head[:, None] * sqh + qpos.to(tl.int64)[:, None] * sqs + offs_d[None, :] * sqd,
                mask=row_ok[:, None], other=0.0)
    return qb, b, hg, kvh, head, q0, qpos, row_ok, q


@triton.jit
def _kv_blocks(q0, Skv, QB: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """KV range of the query block starting at q0: (kv_end, blocks up to kv_end, leading blocks that every query of
    the block may see whole, i.e. need no causal masking)."""
    if IS_CAUSAL:
        kv_end = tl.minimum(Skv, q0 + QB)
        n_whole = tl.minimum((q0 + 1) // BLOCK_N, Skv // BLOCK_N)
    else:
        kv_end = Skv
        n_whole = Skv // BLOCK_N
    return kv_end, tl.cdiv(kv_end, BLOCK_N), n_whole


@triton.jit
def _dense_run(q, acc, m_i, l_i, c_lo, c_hi, x_base, k_base, v_base, m_base, skn, skd, svn, svd, smq, smk, qpos,
               row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n, offs_d, offs_dv, M: tl.constexpr,
               BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, FULL: tl.constexpr,
               WRITE_X: tl.constexpr, PTX: tl.constexpr, WITH_V: tl.constexpr):
    """KV blocks [c_lo, c_hi) in turn (FULL: with no mask reads), storing each block's row log2-sum-exps if
    WRITE_X."""
    for c in range(c_lo, c_hi):
        acc, m_i, l_i, x_blk = _attn_block(q, acc, m_i, l_i, c, True, k_base, v_base, m_base, skn, skd, svn, svd,
                                           smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n,
                                           offs_d, offs_dv, BLOCK_N, MASK_KIND, IS_CAUSAL, FULL, WITH_V)
        if WRITE_X:
            store_rows(x_base + c * M, x_blk, row_ok, PTX)
    return acc, m_i, l_i


@triton.jit
def _selected_block(q, acc, m_i, l_i, i_base, j, sis, n_kb, k_base, v_base, m_base, skn, skd, svn, svd, smq, smk,
                    qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n, offs_d, offs_dv, x_base,
                    M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
                    WITH_V: tl.constexpr, WRITE_X: tl.constexpr, PTX: tl.constexpr):
    """Entry j of a selection list, with mask reads: skipped (no allowed key, x = -inf) when out of range or a
    repeat of the entry before; with WRITE_X its row log2-sum-exps are stored in column j."""
    c_sel = tl.load(i_base + j * sis)
    prev = tl.load(i_base + (j - 1) * sis, mask=j > 0, other=-1)
    ok = (c_sel >= 0) & (c_sel < n_kb) & (c_sel != prev)
    acc, m_i, l_i, x_blk = _attn_block(q, acc, m_i, l_i, tl.where(ok, c_sel, 0), ok, k_base, v_base, m_base, skn, skd,
                                       svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n,
                                       offs_d, offs_dv, BLOCK_N, MASK_KIND, IS_CAUSAL, False, WITH_V)
    if WRITE_X:
        store_rows(x_base + j * M, x_blk, row_ok, PTX)
    return acc, m_i, l_i


@triton.jit
def _selected_tile(q, acc, m_i, l_i, i_base, j, j_end, sis, full_first, full_end, k_base, v_base, skn, skd, svn,
                   svd, row_ok, qk_scale, offs_t, offs_d, offs_dv, x_base, M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BPT: tl.constexpr, WITH_V: tl.constexpr, WRITE_X: tl.constexpr, PTX: tl.constexpr):
    """Entries [j, min(j + BPT, j_end)) of a selection list, blocks of [full_first, full_end) (no mask reads), as
    one tile of BPT * BLOCK_N gathered keys; with WRITE_X each entry's row log2-sum-exps are stored in its column.
    The entries past j_end fill the tile with keys that score -inf."""
    entry = j + offs_t // BLOCK_N
    in_run = entry < j_end
    # The clamp keeps an unordered list's reads inside the keys (as in the one-block loop).
    c_key = tl.minimum(tl.maximum(tl.load(i_base + entry * sis, mask=in_run, other=0), full_first), full_end - 1)
    k_rows = (c_key * BLOCK_N + offs_t % BLOCK_N).to(tl.int64)
    k = tl.load(k_base + k_rows[:, None] * skn + offs_d[None, :] * skd)
    sc = tl.dot(q, tl.trans(k)) * qk_scale
    sc = tl.where(in_run[None, :], sc, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(sc, 1))  # finite: the tile's first entry is in the run and wholly allowed
    p = tl.exp2(sc - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if WITH_V:
        v = tl.load(v_base + k_rows[:, None] * svn + offs_dv[None, :] * svd)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    if WRITE_X:
        # Per entry, as _attn_block does per block: m + log2(sum over its keys of exp2(s - m)), m the running max.
        l_blk = tl.sum(tl.reshape(p, (M, BPT, BLOCK_N)), 2)
        x = tl.where(l_blk > 0, m_new[:, None] + tl.log2(tl.where(l_blk > 0, l_blk, 1.0)), -1e30)
        offs_e = tl.arange(0, BPT)
        for e in tl.static_range(BPT):
            x_e = tl.sum(tl.where(offs_e[None, :] == e, x, 0.0), 1)
            store_rows(x_base + (j + e) * M, x_e, row_ok & (tl.full([M], j + e, tl.int32) < j_end), PTX)
    return acc, m_new, l_i


@triton.jit
def _block_ranges(Blocks, b, qb, sbb, sbr, n_blocks, n_whole, MASK_KIND: tl.constexpr, HAS_BLOCKS: tl.constexpr):
    """KV block ranges of query block qb: (first, full_first, full_end, end). Blocks outside [first, end) hold no
    allowed key; [full_first, full_end) need no mask read nor causal masking. From the mask's block structure
    (reference.mask_blocks) clamped to the causal bound; without one, (0, 0, n_whole, n_blocks) with no mask and
    (0, 0, 0, n_blocks) with a mask."""
    if HAS_BLOCKS:
        row = Blocks + b * sbb + qb * sbr
        # Clamped into [0, n_blocks), whatever the values: no block outside the keys is ever visited.
        end = tl.maximum(tl.minimum(tl.load(row + 3), n_blocks), 0)
        first = tl.maximum(tl.minimum(tl.load(row), end), 0)
        full_first = tl.minimum(tl.maximum(tl.load(row + 1), first), end)
        full_end = tl.minimum(tl.maximum(tl.minimum(tl.load(row + 2), n_whole), full_first), end)
    else:
        first = tl.zeros([], dtype=tl.int32)
        full_first = first
        full_end = first + (n_whole if MASK_KIND == 0 else 0)
        end = first + n_blocks
    return first, full_first, full_end, end


# pid0 (the first program of a chunked launch) is not specialised on: every chunk runs one compiled kernel, where
# Triton would otherwise compile separate ones for pid0 == 1 and for multiples of 16.
@triton.jit(do_not_specialize=["pid0"])
def _prefill_attn_kernel(
    Q, K, V, Mask, Blocks, Idx, Out, X, Imp,
    sqb, sqh, sqs, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    smb, smq, smk, sbb, sbr,
    sib, sih, sir, sis,
    sob, soh, sos, sod,
    Hq, Sq, Skv, mask_cols, n_kb, n_qb, n_sel, qk_scale, mask_thr, min_seq_len, pid0,
    HP: tl.constexpr, G: tl.constexpr, QB: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, SPARSE: tl.constexpr,
    N_SEL_PAD: tl.constexpr, WRITE_X: tl.constexpr, PTX: tl.constexpr, C_T: tl.constexpr,
    HAS_BLOCKS: tl.constexpr, WITH_V: tl.constexpr, BPT: tl.constexpr,
):
    """X [programs of a launch, n_x, rows] and Imp [B, head groups, n_qb, n_x] (WRITE_X) have a column per KV block
    (dense, n_x = n_kb) or per list entry (SPARSE: the refinement, n_x = n_sel, with WITH_V=False: no output)."""
    qb, b, hg, kvh, head, q0, qpos, row_ok, q = _program_rows(Q, sqb, sqh, sqs, sqd, Hq, Sq, n_qb, pid0, HP, G, QB,
                                                              D)
    M: tl.constexpr = HP * QB
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh
    m_base = Mask + b * smb
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    acc = tl.zeros([M, DV], dtype=tl.float32)
    _kv_end, n_blocks, n_whole = _kv_blocks(q0, Skv, QB, BLOCK_N, IS_CAUSAL)
    # HAS_BLOCKS: only blocks [first, end) hold allowed keys; [full_first, full_end) run with no mask reads.
    first, full_first, full_end, end = _block_ranges(Blocks, b, qb, sbb, sbr, n_blocks, n_whole, MASK_KIND,
                                                     HAS_BLOCKS)
    n_x = n_sel if SPARSE else n_kb
    x_base = X + tl.program_id(0).to(tl.int64) * n_x * M + tl.arange(0, M)

    run_end = end  # the dense pass below visits [first, run_end): every block, or none in a program of selections
    if SPARSE:
        # A program none of whose rows can reach min_seq_len allowed keys (at most those of [first, end)) attends
        # every allowed key: it visits no selection and never counts keys (with a mask, a count read it block by
        # block: 2/3 of a 32K consumer's time), and runs the dense pass, whose wholly allowed blocks need no mask
        # reads. Its bounds gate the work (a branch around the selection loops does not compile on triton 3.6).
        if MASK_KIND == 0:
            most_keys = tl.minimum(q0 + QB, Skv) if IS_CAUSAL else q0 * 0 + Skv  # a tensor, as for the interpreter
        else:
            most_keys = (end - first) * BLOCK_N
        sparse_program = most_keys >= min_seq_len
        run_end = tl.where(sparse_program, first, end)
        i_base = Idx + b * sib + kvh * sih + qb * sir
        offs_s = tl.arange(0, N_SEL_PAD)
        sel_vec = tl.where(sparse_program, tl.load(i_base + offs_s * sis, mask=offs_s < n_sel, other=-1), -1)
        # The list is ascending, then -1 padded (the op contract). The padding is not visited: a query block near
        # the start has few candidates, so most of its list is padding. A dense program's list reads as all padding.
        n_used = tl.sum((sel_vec >= 0).to(tl.int32), 0)
        # The ascending list's entries in [full_first, full_end) need no mask reads: the list splits in three.
        n_masked_lead = tl.sum(((sel_vec >= 0) & (sel_vec < full_first)).to(tl.int32), 0)
        n_full_sel = tl.sum(((sel_vec >= 0) & (sel_vec < full_end)).to(tl.int32), 0)
        for j in range(0, n_masked_lead):
            acc, m_i, l_i = _selected_block(q, acc, m_i, l_i, i_base, j, sis, n_kb, k_base, v_base, m_base, skn, skd,
                                            svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr,
                                            offs_n, offs_d, offs_dv, x_base, M, BLOCK_N, MASK_KIND, IS_CAUSAL,
                                            WITH_V, WRITE_X, PTX)
        # In [full_first, full_end) for an ascending list (the op contract, not checked on the device); the
        # clamp keeps an unordered list's reads inside the keys.
        if BPT == 1:
            for j in range(n_masked_lead, n_full_sel):
                c_sel = tl.minimum(tl.maximum(tl.load(i_base + j * sis), full_first), full_end - 1)
                acc, m_i, l_i, x_blk = _attn_block(q, acc, m_i, l_i, c_sel, True, k_base, v_base, m_base, skn, skd,
                                                   svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale,
                                                   mask_thr, offs_n, offs_d, offs_dv, BLOCK_N, MASK_KIND, IS_CAUSAL,
                                                   True, WITH_V)
                if WRITE_X:
                    store_rows(x_base + j * M, x_blk, row_ok, PTX)
        else:  # small blocks: BPT entries per step, gathered into one tile
            offs_t = tl.arange(0, BPT * BLOCK_N)
            for j in range(n_masked_lead, n_full_sel, BPT):
                acc, m_i, l_i = _selected_tile(q, acc, m_i, l_i, i_base, j, n_full_sel, sis, full_first, full_end,
                                               k_base, v_base, skn, skd, svn, svd, row_ok, qk_scale, offs_t, offs_d,
                                               offs_dv, x_base, M, BLOCK_N, BPT, WITH_V, WRITE_X, PTX)
        for j in range(n_full_sel, n_used):
            acc, m_i, l_i = _selected_block(q, acc, m_i, l_i, i_base, j, sis, n_kb, k_base, v_base, m_base, skn, skd,
                                            svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr,
                                            offs_n, offs_d, offs_dv, x_base, M, BLOCK_N, MASK_KIND, IS_CAUSAL,
                                            WITH_V, WRITE_X, PTX)
        # Rows with fewer than min_seq_len allowed keys attend all of them.
        if MASK_KIND == 0:
            if IS_CAUSAL:
                cnt = tl.minimum(qpos + 1, Skv)
            else:
                cnt = tl.zeros([M], dtype=tl.int32) + Skv
        else:  # whole blocks count without mask reads; scan the others until every row has enough
            cnt = tl.zeros([M], dtype=tl.int32) + (full_end - full_first) * BLOCK_N
            c = first
            while (c < end) & (tl.min(tl.where(row_ok, cnt, min_seq_len), 0) < min_seq_len) & sparse_program:
                al, _b = mask_tile(m_base, smq, smk, qpos, c * BLOCK_N + offs_n, row_ok, Skv, mask_cols, mask_thr,
                                   MASK_KIND, IS_CAUSAL)
                cnt += tl.where((c >= full_first) & (c < full_end), 0, tl.sum(al.to(tl.int32), 1))
                c += 1
        dense_row = (cnt < min_seq_len) & row_ok & sparse_program
        if tl.max(dense_row.to(tl.int32), 0) != 0:
            for c in range(first, end):
                is_sel = tl.sum((sel_vec == c).to(tl.int32), 0) != 0
                acc, m_i, l_i, x_blk = _attn_block(q, acc, m_i, l_i, c, dense_row & (is_sel == 0), k_base, v_base,
                                            m_base, skn, skd, svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols,
                                            qk_scale, mask_thr, offs_n, offs_d, offs_dv, BLOCK_N, MASK_KIND,
                                            IS_CAUSAL, False, WITH_V)
    # The dense pass: mask reads, none (wholly allowed), mask reads: three branch-free runs the compiler can pipeline.
    run_full_first = tl.minimum(full_first, run_end)
    run_full_end = tl.minimum(full_end, run_end)
    acc, m_i, l_i = _dense_run(q, acc, m_i, l_i, first, run_full_first, x_base, k_base, v_base, m_base, skn, skd,
                               svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n, offs_d,
                               offs_dv, M, BLOCK_N, MASK_KIND, IS_CAUSAL, False, WRITE_X, PTX, WITH_V)
    acc, m_i, l_i = _dense_run(q, acc, m_i, l_i, run_full_first, run_full_end, x_base, k_base, v_base, m_base, skn,
                               skd, svn, svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n,
                               offs_d, offs_dv, M, BLOCK_N, MASK_KIND, IS_CAUSAL, True, WRITE_X, PTX, WITH_V)
    acc, m_i, l_i = _dense_run(q, acc, m_i, l_i, run_full_end, run_end, x_base, k_base, v_base, m_base, skn, skd, svn,
                               svd, smq, smk, qpos, row_ok, Skv, mask_cols, qk_scale, mask_thr, offs_n, offs_d,
                               offs_dv, M, BLOCK_N, MASK_KIND, IS_CAUSAL, False, WRITE_X, PTX, WITH_V)

    l_ok = l_i > 0
    if WITH_V:
        out = tl.where(l_ok[:, None], acc / tl.where(l_ok, l_i, 1.0)[:, None], 0.0)
        tl.store(Out + b * sob + head[:, None] * soh + qpos.to(tl.int64)[:, None] * sos + offs_dv[None, :] * sod,
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if WRITE_X:
        # Importance: read back the x rows this program stored, C_T blocks at a time, now that the row LSEs are
        # final. The barrier makes the other lanes' stores visible; .cg reads them from L2. Rows with no allowed
        # key contribute 0 (lse -> +inf); a block is a candidate if some row has an allowed key in it.
        tl.debug_barrier()
        m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
        lse_r = tl.where(l_ok & row_ok, m_safe + tl.log2(tl.where(l_ok, l_i, 1.0)), float("inf"))
        offs_t = tl.arange(0, C_T)
        imp_base = Imp + ((b * (Hq // HP) + hg) * n_qb + qb) * n_x
        # Columns stored: the blocks [first, end) the dense pass visited, or the list's entries [0, n_used).
        if SPARSE:
            x_lo = 0
            x_hi = n_used
        else:
            x_lo = first
            x_hi = end
        # The next tile is loaded before this one is reduced: the loop is bound by load latency. Columns not
        # stored hold no candidates.
        stored = (offs_t >= x_lo) & (offs_t < x_hi)
        x_next = tl.load(x_base[None, :] + offs_t[:, None] * M, mask=stored[:, None] & row_ok[None, :],
                         other=float("-inf"), cache_modifier=".cg")
        for c0 in range(0, x_hi, C_T):
            cols = c0 + offs_t
            x = x_next
            nc = cols + C_T
            stored = (nc >= x_lo) & (nc < x_hi)
            x_next = tl.load(x_base[None, :] + nc[:, None] * M, mask=stored[:, None] & row_ok[None, :],
                             other=float("-inf"), cache_modifier=".cg")
            cand = tl.max((x > float("-inf")).to(tl.int32), 1) != 0
            imp = tl.sum(tl.exp2(x - lse_r[None, :]), 1)
            tl.store(imp_base + cols, tl.where(cand, imp, -1.0), mask=cols < x_hi)
        for c0 in range(x_hi, n_x, C_T):
            cols = c0 + offs_t
            tl.store(imp_base + cols, tl.full([C_T], -1.0, tl.float32), mask=cols < n_x)


@triton.jit
def _prefill_select_kernel(Imp, BlockIdx, Idx, HeadNSel, sib, sih, sir, sis, n_kvh, n_x, n_select, sink_blocks,
                           local_blocks, NG: tl.constexpr, C_PAD: tl.constexpr, N_SEL_PAD: tl.constexpr,
                           FROM_LIST: tl.constexpr, PER_HEAD: tl.constexpr):
    """One program per (b, kv head, query block) row; Imp [B, Hkv, NG, n_qb, n_x] with NG head groups, a column
    per KV block, or with FROM_LIST per entry of the list Idx [B, Hkv, n_qb, n_x] (whose block ids it writes).
    PER_HEAD: KV head h keeps HeadNSel[h] blocks (int32 [Hkv]) of its row's n_select."""
    pid = tl.program_id(0).to(tl.int64)
    n_qb = tl.num_programs(1)
    r = tl.program_id(1)
    offs_c = tl.arange(0, C_PAD)
    cm = offs_c < n_x
    base = Imp + (pid * NG * n_qb + r) * n_x
    first = tl.load(base + offs_c, mask=cm, other=-1.0)
    cand = first >= 0
    imp = tl.where(cand, first, 0.0)
    for g in range(1, NG):
        imp += tl.where(cand, tl.load(base + g * n_qb * n_x + offs_c, mask=cm, other=0.0), 0.0)
    if FROM_LIST:
        ids = tl.load(Idx + (pid // n_kvh) * sib + (pid % n_kvh) * sih + r * sir + offs_c * sis, mask=cm, other=-1)
    else:
        ids = offs_c
    n_keep = tl.load(HeadNSel + pid % n_kvh) if PER_HEAD else n_select
    select_row(imp, cand, ids, BlockIdx + (pid * n_qb + r) * n_select, n_keep, n_select, sink_blocks, local_blocks,
               N_SEL_PAD)


@triton.jit
def _mean_key_scores(q, row_ok, i_base, sis, j0, n_used, first, end, means_base, smn, smd, qk_scale, offs_t, offs_d):
    """Scores [rows, CT] (log2 domain) of list entries [j0, j0 + CT) by their blocks' mean keys, -inf where the
    entry is padding or outside [first, end); and whether each entry is in range."""
    j = j0 + offs_t
    ids = tl.load(i_base + j * sis, mask=j < n_used, other=-1)
    ok = (ids >= first) & (ids < end)
    means = tl.load(means_base + tl.where(ok, ids, 0).to(tl.int64)[:, None] * smn + offs_d[None, :] * smd,
                    mask=ok[:, None], other=0.0)
    s = tl.dot(q, tl.trans(means))
    return tl.where(row_ok[:, None] & ok[None, :], s * qk_scale, float("-inf")), ok


@triton.jit
def _prefill_mean_key_kernel(
    Q, Means, Idx, Blocks, Imp,
    sqb, sqh, sqs, sqd,
    smb, smh, smn, smd,
    sbb, sbr,
    sib, sih, sir, sis,
    Hq, Sq, Skv, n_qb, n_cand, qk_scale,
    HP: tl.constexpr, G: tl.constexpr, QB: tl.constexpr, D: tl.constexpr, CT: tl.constexpr,
    N_SEL_PAD: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_BLOCKS: tl.constexpr,
):
    """Imp [B, Hq / HP, n_qb, n_cand]: per list entry of the query block, the softmax of each row over the entries'
    mean-key scores, summed over the program's rows; -1 for padding and entries outside the block range."""
    qb, b, hg, kvh, head, q0, qpos, row_ok, q = _program_rows(Q, sqb, sqh, sqs, sqd, Hq, Sq, n_qb, 0, HP, G, QB, D)
    _kv_end, n_blocks, n_whole = _kv_blocks(q0, Skv, QB, QB, IS_CAUSAL)
    first, _full_first, _full_end, end = _block_ranges(Blocks, b, qb, sbb, sbr, n_blocks, n_whole, 0, HAS_BLOCKS)
    i_base = Idx + b * sib + kvh * sih + qb * sir
    offs_s = tl.arange(0, N_SEL_PAD)
    n_used = tl.sum((tl.load(i_base + offs_s * sis, mask=offs_s < n_cand, other=-1) >= 0).to(tl.int32), 0)
    means_base = Means + b * smb + kvh * smh
    offs_t = tl.arange(0, CT)
    offs_d = tl.arange(0, D)
    M: tl.constexpr = HP * QB
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    for j0 in range(0, n_used, CT):  # each row's log2-sum-exp over the entries
        s, _ok = _mean_key_scores(q, row_ok, i_base, sis, j0, n_used, first, end, means_base, smn, smd, qk_scale,
                                  offs_t, offs_d)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("inf"))
    imp_base = Imp + ((b * (Hq // HP) + hg) * n_qb + qb) * n_cand
    for j0 in range(0, n_used, CT):  # each entry's mass, summed over the rows
        s, ok = _mean_key_scores(q, row_ok, i_base, sis, j0, n_used, first, end, means_base, smn, smd, qk_scale,
                                 offs_t, offs_d)
        mass = tl.sum(tl.exp2(s - lse[:, None]), 0)
        tl.store(imp_base + j0 + offs_t, tl.where(ok, mass, -1.0), mask=j0 + offs_t < n_cand)
    for j0 in range(tl.cdiv(n_used, CT) * CT, n_cand, CT):
        tl.store(imp_base + j0 + offs_t, tl.full([CT], -1.0, tl.float32), mask=j0 + offs_t < n_cand)


# Candidate list entries per step of the mean-key pre-filter ([rows, MEAN_KEY_TILE] scores per dot).
MEAN_KEY_TILE = 64
# The producer's scratch: an fp32 block log-sum-exp per (query row, KV block), n_kb * HP * block_size * 4 bytes per
# program. A grid whose scratch would exceed this is launched in chunks of programs that reuse one buffer.
X_BUDGET_BYTES = 4 << 30
# KV blocks per step when a producer program reads its block log-sum-exps back ([X_STEP_BLOCKS, rows] tiles). At
# 32K on the H100 (FA pass with this read-back, results/explore-session4-*.json): 32 -> 17.5 ms, 64 -> 16.9,
# 128 -> 17.1.
X_STEP_BLOCKS = 64


def x_chunk(n_kb: int, HP: int, block_size: int) -> int:
    """Producer programs per launch: as many as X_BUDGET_BYTES of scratch holds (at least one)."""
    return max(1, X_BUDGET_BYTES // (max(n_kb, 1) * HP * block_size * 4))


def _pack(G: int, block_size: int, max_rows: int) -> int:
    """Query heads per program: the largest power of two dividing G with at most max_rows rows."""
    hp = 1
    while hp * 2 <= G and G % (hp * 2) == 0 and hp * 2 * block_size <= max_rows:
        hp *= 2
    return hp


# Launch configuration by pass, d=128: (cap on rows per program, num_warps, num_stages),
# measured on an H100 with triton 3.6 at 32K (results/sweep-prefill-*.log, results/explore-*.json): 4 heads x 64
# queries and 8 warps for the plain FA pass (16.6 ms) and for the pass that also stores block log-sum-exps (17.2 ms;
# 19.4 for 2 x 64 taking two KV blocks per step, the best while these stores went through shared memory); the
# sparse consumer with 4 x 64 and 8 warps (2.49 ms). 16 warps and 2 stages were 2.5% faster (2.43 ms) but are not
# used: with them the consumer gave wrong rows on the H100 (triton 3.6) for block 32, d=128, a float mask and no
# block mask (relative error 0.70; 8 or 4 warps on the same inputs: 2e-3).
TUNED = {"dense": (256, 8, 3), "dense_x": (256, 8, 3), "sparse": (256, 8, 3)}


# (kernel, its constexpr arguments) -> the most pipeline stages whose shared memory fits this GPU.
_fitted_stages: dict[tuple, int] = {}


def _launch_fitted(kernel, grid, args, constexprs: dict, num_warps: int, num_stages: int) -> None:
    """Launch with ``num_stages``, or with fewer where this GPU's shared memory cannot hold that many (block 128
    tiles need up to 256 KiB at 3 stages, an H100 block has 227 KiB); the count that fits is remembered, so only
    the first launch of a configuration can fail."""
    key = (kernel.fn.__name__, tuple(sorted(constexprs.items())), num_warps)
    stages = min(num_stages, _fitted_stages.get(key, num_stages))
    while True:
        try:
            kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=stages)
        except OutOfResources:
            if stages == 1:
                raise
            stages -= 1
            continue
        _fitted_stages[key] = stages
        return


def _launch_cfg(kind: str, G: int, block_size: int, D: int):
    """(HP heads per program, num_warps, num_stages); shapes the table was not measured on get a rule by rows."""
    max_rows, nw, ns = TUNED[kind]
    hp = _pack(G, block_size, max_rows)
    rows = hp * block_size
    if D < 128 or rows != max_rows:
        nw, ns = (8, 3) if rows >= 256 else (4, 3)
    return hp, nw, ns


def _prefill_attn(q, k, v, mask, is_causal, scale, block_size, block_idx, min_seq_len, importance=False, cfg=None,
                  block_mask=None):
    """The FA pass: dense (block_idx None) or sparse over the lists ``block_idx``. Returns (out, imp or None):
    ``importance=True`` also stores the row log-sum-exp of each visited block in a scratch buffer and reduces them
    into imp [B, Hq / HP, n_qb, n_x] (see the module docstring), launching the grid in chunks whose scratch fits
    X_BUDGET_BYTES: a column per KV block (dense), or per list entry (sparse: the refinement, which reads no values
    and returns no out). ``cfg`` overrides the tuned (HP, num_warps, num_stages). ``block_mask``:
    reference.mask_blocks of ``mask`` (blocks to skip or to run without mask reads)."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv, DV = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    sparse = block_idx is not None
    refine = sparse and importance
    kind = "sparse" if sparse else ("dense_x" if importance else "dense")
    HP, nw, ns = cfg or _launch_cfg(kind, G, block_size, D)
    n_kb, n_qb = triton.cdiv(Skv, block_size), triton.cdiv(Sq, block_size)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    m, kind, smb, smq, smk, mask_cols, thr = mask_args(mask, B, Sq, Skv, q)
    blocks, sbb, sbr = block_mask_args(block_mask, q)
    if sparse:
        idx, n_sel = block_idx, block_idx.shape[-1]
        sidx = (idx.stride(0), idx.stride(1), idx.stride(2), idx.stride(3))
    else:
        idx, n_sel, sidx = q, 0, (0, 0, 0, 0)
    n_x = n_sel if sparse else n_kb
    out = None if refine else torch.empty(B, Hq, Sq, DV, dtype=q.dtype, device=dev)
    imp = torch.empty(B, Hq // HP, n_qb, n_x, dtype=torch.float32, device=dev) if importance else None
    grid = n_qb * B * (Hq // HP)
    chunk = x_chunk(n_x, HP, block_size) if importance else max(grid, 1)
    x_buf = (torch.empty(min(chunk, grid), n_x, HP * block_size, dtype=torch.float32, device=dev) if importance
             else None)
    constexprs = dict(
        HP=HP, G=G, QB=block_size, BLOCK_N=block_size, D=D, DV=DV, MASK_KIND=kind, IS_CAUSAL=bool(is_causal),
        SPARSE=sparse, N_SEL_PAD=triton.next_power_of_2(max(n_sel, 1)), WRITE_X=importance, PTX=ptx_stores(q),
        C_T=min(X_STEP_BLOCKS, triton.next_power_of_2(max(n_x, 1))), HAS_BLOCKS=block_mask is not None,
        WITH_V=not refine, BPT=blocks_per_tile(block_size) if sparse else 1,
    )
    unused = q  # a pointer the kernel never reads under these constexprs
    for pid0 in range(0, grid, chunk):  # one launch unless the scratch is over budget
        _launch_fitted(_prefill_attn_kernel, (min(chunk, grid - pid0),), (
            q, k, v, m, blocks, idx, unused if out is None else out, unused if x_buf is None else x_buf,
            unused if imp is None else imp,
            q.stride(0), q.stride(1), q.stride(2), q.stride(3),
            k.stride(0), k.stride(1), k.stride(2), k.stride(3),
            v.stride(0), v.stride(1), v.stride(2), v.stride(3),
            smb, smq, smk, sbb, sbr, *sidx,
            *((out.stride(0), out.stride(1), out.stride(2), out.stride(3)) if out is not None else (0, 0, 0, 0)),
            Hq, Sq, Skv, mask_cols, n_kb, n_qb, n_sel, scale * LOG2E, thr, min_seq_len, pid0,
        ), constexprs, nw, ns)
    return out, imp


def _select(imp, block_idx, n_x, n_select, sink_blocks, local_blocks, NG, candidate_idx=None, head_n_select=None):
    """block_idx [B, Hkv, n_qb, n_select] from imp [B, Hkv * NG, n_qb, n_x] (summing NG head groups per KV head):
    a column per KV block, or per entry of ``candidate_idx`` [B, Hkv, n_qb, n_x]; KV head h keeps
    ``head_n_select[h]`` (int32 [Hkv] on the device) blocks where given."""
    B, Hkv, n_qb, _ = block_idx.shape
    ids = candidate_idx if candidate_idx is not None else block_idx
    _prefill_select_kernel[(B * Hkv, n_qb)](
        imp, block_idx, ids, ids if head_n_select is None else head_n_select, ids.stride(0), ids.stride(1),
        ids.stride(2), ids.stride(3), Hkv, n_x, n_select, sink_blocks, local_blocks,
        NG=NG, C_PAD=triton.next_power_of_2(max(n_x, 1)), N_SEL_PAD=triton.next_power_of_2(max(n_select, 1)),
        FROM_LIST=candidate_idx is not None, PER_HEAD=head_n_select is not None,
        num_warps=4 if n_x <= 4096 else 8 if n_x <= 8192 else 16,
    )


def prefill_topk_attention(q, k, v, mask, block_mask=None, *, is_causal, scale, block_size, n_select, sink_blocks,
                           local_blocks):
    """Producer for any Sq: (out [B, Hq, Sq, Dv], block_idx int32 [B, Hkv, ceil(Sq/bs), n_select])."""
    B, Hq, Sq, _ = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    n_kb, n_qb = triton.cdiv(Skv, block_size), triton.cdiv(Sq, block_size)
    block_idx = torch.empty(B, Hkv, n_qb, n_select, dtype=torch.int32, device=q.device)
    out, imp = _prefill_attn(q, k, v, mask, is_causal, scale, block_size, None, 0, importance=True,
                             block_mask=block_mask)
    _select(imp, block_idx, n_kb, n_select, sink_blocks, local_blocks, imp.shape[1] // Hkv)
    return out, block_idx


def prefill_refine_blocks(q, k, candidate_idx, mask, block_mask=None, *, is_causal, scale, block_size, n_select,
                          sink_blocks, local_blocks, head_n_select=None):
    """A consumer's own top ``n_select`` among its producer's candidate blocks, for any Sq (the semantics of
    reference.refine_blocks; ``head_n_select``: its per-head counts as int32 [Hkv] on the device): int32 [B, Hkv,
    ceil(Sq/bs), n_select]. Scores the candidates' keys; reads no values."""
    B, Hkv, n_qb, n_cand = candidate_idx.shape
    block_idx = torch.empty(B, Hkv, n_qb, n_select, dtype=torch.int32, device=q.device)
    _, imp = _prefill_attn(q, k, k, mask, is_causal, scale, block_size, candidate_idx, 0, importance=True,
                           block_mask=block_mask)
    _select(imp, block_idx, n_cand, n_select, sink_blocks, local_blocks, imp.shape[1] // Hkv, candidate_idx,
            head_n_select)
    return block_idx


def prefill_prefilter_blocks(q, means, candidate_idx, block_mask=None, *, is_causal, scale, block_size, n_select,
                             sink_blocks, local_blocks):
    """reference.prefilter_blocks for any Sq: the ``n_select`` candidates of highest mean-key mass, int32 [B, Hkv,
    ceil(Sq/bs), n_select]. ``means`` [B, Hkv, n_kb, D] in q's dtype (reference.block_means); ``block_mask``
    (reference.mask_blocks of the mask, required with one) bounds each query block's candidates."""
    B, Hq, Sq, D = q.shape
    Hkv, n_cand = candidate_idx.shape[1], candidate_idx.shape[3]
    n_qb = triton.cdiv(Sq, block_size)
    HP, nw, ns = _launch_cfg("sparse", Hq // Hkv, block_size, D)
    imp = torch.empty(B, Hq // HP, n_qb, n_cand, dtype=torch.float32, device=q.device)
    blocks, sbb, sbr = block_mask_args(block_mask, q)
    idx = candidate_idx
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    _prefill_mean_key_kernel[(n_qb * B * (Hq // HP),)](
        q, means, idx, blocks, imp,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        means.stride(0), means.stride(1), means.stride(2), means.stride(3),
        sbb, sbr, idx.stride(0), idx.stride(1), idx.stride(2), idx.stride(3),
        Hq, Sq, means.shape[2] * block_size, n_qb, n_cand, scale * LOG2E,  # keys up to whole blocks: same bounds
        HP=HP, G=Hq // Hkv, QB=block_size, D=D, CT=MEAN_KEY_TILE, N_SEL_PAD=triton.next_power_of_2(max(n_cand, 1)),
        IS_CAUSAL=bool(is_causal), HAS_BLOCKS=block_mask is not None, num_warps=nw, num_stages=ns,
    )
    block_idx = torch.empty(B, Hkv, n_qb, n_select, dtype=torch.int32, device=q.device)
    _select(imp, block_idx, n_cand, n_select, sink_blocks, local_blocks, imp.shape[1] // Hkv, candidate_idx)
    return block_idx


def prefill_sparse_attention(q, k, v, block_idx, mask, block_mask=None, *, is_causal, scale, block_size, min_seq_len,
                             **kw):
    """Consumer for any Sq: block-sparse FlashAttention over each query block's selected KV blocks."""
    return _prefill_attn(q, k, v, mask, is_causal, scale, block_size, block_idx, min_seq_len,
                         block_mask=block_mask, **kw)[0]


def prefill_attention(q, k, v, mask, block_mask=None, *, is_causal, scale, block_size, **kw):
    """Dense attention for any Sq (a layer the policy leaves dense): the FlashAttention pass alone."""
    return _prefill_attn(q, k, v, mask, is_causal, scale, block_size, None, 0, block_mask=block_mask, **kw)[0]
