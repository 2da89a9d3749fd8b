"""Decode (Sq == 1) kernels: split-K flash-decoding, GQA-native.

Producer: ``_decode_split_kernel`` (grid B x Hkv x splits; each program serves all G query heads of its KV head, so
each KV block is read once) writes per-split partial (max, sum, acc) and the log2-sum-exp of every (head, KV block);
``_decode_combine_kernel`` (grid B x Hkv x G) merges each head's splits into ``out``, turns the block LSEs into exact
importances sum_g exp2(lse_gc - lse_g) and selects the top blocks. Two launches, no host synchronisation.

Consumer: the same two kernels with SPARSE=True: the split programs walk the selected block list (or all blocks
when the query has fewer than ``min_seq_len`` allowed keys, decided in the kernel) and the combine only merges.

Refinement (``refine_blocks``): SPARSE=True over the producer's candidate list with WITH_V=False (scores only, no
value reads) writes the LSE of every list entry; the combine selects among the entries and writes their block ids.
A split's loop takes ``_common.TILE_KEYS`` keys per step: blocks smaller than that are gathered a few at a time into
one tile (the block log-sum-exps taken per block of the tile), so a step's fixed cost does not grow as blocks shrink.
Keys that are not allowed are never loaded (masked loads). With a block mask (reference.mask_blocks of the mask row,
computed once per graph) the kernels visit only the KV blocks ``[first, end)`` holding allowed keys, and a consumer
decides "fewer than ``min_seq_len`` allowed keys" from the block ranges, reading the mask only where they leave it
open: decode in a partly filled static cache costs what the filled part costs.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._common import LOG2E, block_mask_args, blocks_per_tile, mask_args, mask_tile, select_row


@triton.jit
def _decode_split_kernel(
    Q, K, V, Mask, Blocks, Idx, MPart, LPart, AccPart, LseBlk,
    sqb, sqh, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    smb, smk, sbb,
    sib, sih, sis,
    Skv, mask_cols, n_kb, n_sel, n_lse, n_splits, qk_scale, mask_thr, min_seq_len,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, SPARSE: tl.constexpr, WRITE_LSE: tl.constexpr,
    WITH_V: tl.constexpr, HAS_BLOCKS: tl.constexpr, SCAN_N: tl.constexpr, SCAN_IT: tl.constexpr,
    BPT: tl.constexpr,
):
    """LseBlk [B, Hkv, G, n_lse]: the LSE of each KV block (dense, n_lse = n_kb) or of each list entry (SPARSE,
    n_lse = n_sel)."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    s = tl.program_id(2)
    n_kvh = tl.num_programs(1)
    offs_g = tl.arange(0, G_PAD)
    gm = offs_g < G
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    offs_n = tl.arange(0, BPT * BLOCK_N)
    heads = h * G + offs_g
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + offs_d[None, :] * sqd, mask=gm[:, None], other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_base = Mask + b * smb
    zero_q = tl.zeros([1], dtype=tl.int32)
    one_q = zero_q == 0
    # Every allowed key lies in KV blocks [kb_lo, kb_hi); those of [full_first, full_end) are all allowed.
    if HAS_BLOCKS:
        row = Blocks + b * sbb
        kb_hi = tl.maximum(tl.minimum(tl.load(row + 3), n_kb), 0)
        kb_lo = tl.maximum(tl.minimum(tl.load(row), kb_hi), 0)
        full_blocks = tl.minimum(tl.load(row + 2), kb_hi) - tl.maximum(tl.load(row + 1), kb_lo)
        full_keys = tl.maximum(full_blocks, 0) * BLOCK_N
    else:
        kb_lo = tl.zeros([], dtype=tl.int32)
        kb_hi = kb_lo + n_kb
        full_keys = kb_lo

    if SPARSE:
        # A query with fewer than min_seq_len allowed keys attends all of them: count (stop early once enough),
        # unless the block ranges decide it (at least the whole blocks' keys, at most those of [kb_lo, kb_hi)).
        if MASK_KIND == 0:
            if IS_CAUSAL:
                cnt = tl.zeros([], dtype=tl.int32) + tl.minimum(Skv, 1)
            else:
                cnt = tl.zeros([], dtype=tl.int32) + Skv
        else:
            cnt = tl.where(full_keys >= min_seq_len, full_keys, 0)
            j = kb_lo * BLOCK_N
            j_end = tl.where((kb_hi - kb_lo) * BLOCK_N < min_seq_len, j, tl.minimum(kb_hi * BLOCK_N, Skv))
            while (j < j_end) & (cnt < min_seq_len):
                offs = j + tl.arange(0, SCAN_N)
                al, _b = mask_tile(m_base, 0, smk, zero_q, offs, one_q, Skv, mask_cols, mask_thr, MASK_KIND,
                                   IS_CAUSAL)
                cnt += tl.sum(tl.sum(al.to(tl.int32), 1), 0)
                j += SCAN_N
        dense = cnt < min_seq_len
        n_items = tl.where(dense, kb_hi - kb_lo, n_sel)
    else:
        n_items = kb_hi - kb_lo
    # Items of this split: it in [it_lo, it_hi), list entry or block kb_lo + (c0 + it * cstride). Masked producers
    # take blocks strided across the splits, so a valid prefix (static cache, padding) spreads evenly over all
    # programs.
    if SPARSE or MASK_KIND == 0:
        per = (n_items + n_splits - 1) // n_splits
        if BPT > 1:  # whole tiles per split
            per = (per + BPT - 1) // BPT * BPT
        c0 = s * per
        cstride = 1
        it_hi = tl.maximum(tl.minimum(per, n_items - c0), 0)
    else:
        c0 = s
        cstride = n_splits
        it_hi = tl.maximum((n_items - s + n_splits - 1) // n_splits, 0)
    it_lo = 0
    if not SPARSE:
        if MASK_KIND != 0:
            # Trim to the split's first..last block holding an allowed key (one [SCAN_IT, BLOCK_N] mask tile per
            # step); blocks trimmed away get lse = -inf. An unfilled static cache costs only its mask bytes.
            first = tl.zeros([], dtype=tl.int32) + it_hi
            last = tl.zeros([], dtype=tl.int32) - 1
            for i0 in range(0, it_hi, SCAN_IT):
                its = i0 + tl.arange(0, SCAN_IT)
                offs = (kb_lo + c0 + its * cstride)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
                ok = (its[:, None] < it_hi) & (offs < Skv)
                if IS_CAUSAL:
                    ok = ok & (offs <= 0)
                if MASK_KIND == 1:
                    mv = tl.load(m_base + offs * smk, mask=ok, other=0)
                    ok = ok & (mv != 0)
                else:
                    mv = tl.load(m_base + offs * smk, mask=ok, other=0.0).to(tl.float32)
                    ok = ok & (((mv == float("-inf")) | (mv <= mask_thr)) == 0)
                anyb = tl.max(ok.to(tl.int32), 1) != 0
                first = tl.minimum(first, tl.min(tl.where(anyb, its, it_hi), 0))
                last = tl.maximum(last, tl.max(tl.where(anyb, its, -1), 0))
            new_hi = tl.maximum(last + 1, first)
            if WRITE_LSE:
                neg = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
                for it in range(0, first):
                    tl.store(LseBlk + ((b * n_kvh + h) * G + offs_g) * n_lse + kb_lo + c0 + it * cstride, neg,
                             mask=gm)
                for it in range(new_hi, it_hi):
                    tl.store(LseBlk + ((b * n_kvh + h) * G + offs_g) * n_lse + kb_lo + c0 + it * cstride, neg,
                             mask=gm)
            it_lo = first
            it_hi = new_hi

    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_PAD], dtype=tl.float32)
    acc = tl.zeros([G_PAD, DV], dtype=tl.float32)
    i_base = Idx + b * sib + h * sih
    offs_b = tl.arange(0, BPT)
    for t in range(it_lo, it_hi, BPT):
        # The tile: BPT items, each a list entry or a KV block, BLOCK_N keys each.
        if BPT == 1:
            item = c0 + t * cstride
            if SPARSE:
                c_sel = tl.load(i_base + item * sis)
                prev = tl.load(i_base + (item - 1) * sis, mask=item > 0, other=-1)
                ok = (c_sel >= 0) & (c_sel < n_kb) & (c_sel != prev)
                c = tl.where(dense, kb_lo + item, tl.where(ok, c_sel, 0))
                valid = dense | ok
            else:
                c = kb_lo + item
                valid = True
            offs_k = c * BLOCK_N + offs_n
            allowed, bias = mask_tile(m_base, 0, smk, zero_q, offs_k, one_q & valid, Skv, mask_cols, mask_thr,
                                      MASK_KIND, IS_CAUSAL)
            # The block's first key in 64 bits, then small in-block offsets: no K/V offset wraps at any length.
            k_tile = k_base + tl.cast(c * BLOCK_N, tl.int64) * skn
            v_tile = v_base + tl.cast(c * BLOCK_N, tl.int64) * svn
            k_rows = offs_n * skn
            v_rows = offs_n * svn
        else:
            its = t + offs_b
            item = c0 + its * cstride
            in_split = its < it_hi
            if SPARSE:
                c_sel = tl.load(i_base + item * sis, mask=in_split, other=-1)
                prev = tl.load(i_base + (item - 1) * sis, mask=in_split & (item > 0), other=-1)
                ok = (c_sel >= 0) & (c_sel < n_kb) & (c_sel != prev)
                c = tl.where(dense, kb_lo + item, tl.where(ok, c_sel, 0))
                valid = in_split & (dense | ok)
            else:
                c = kb_lo + item
                valid = in_split
            # Each key's block and validity: the BPT-vectors repeated BLOCK_N times, in key order.
            c_key = tl.reshape(tl.broadcast_to(c[:, None], (BPT, BLOCK_N)), (BPT * BLOCK_N,))
            valid_key = tl.reshape(tl.broadcast_to(valid[:, None], (BPT, BLOCK_N)), (BPT * BLOCK_N,))
            offs_k = c_key * BLOCK_N + offs_n % BLOCK_N
            allowed, bias = mask_tile(m_base, 0, smk, zero_q, offs_k, one_q, Skv, mask_cols, mask_thr, MASK_KIND,
                                      IS_CAUSAL)
            allowed = allowed & valid_key[None, :]
            # Gathered rows: 64-bit offsets, as the blocks lie anywhere in the cache.
            k_tile = k_base
            v_tile = v_base
            k_rows = offs_k.to(tl.int64) * skn
            v_rows = offs_k.to(tl.int64) * svn
        kmask = tl.max(allowed.to(tl.int32), 0) != 0  # [BPT * BLOCK_N]
        k = tl.load(k_tile + k_rows[:, None] + offs_d[None, :] * skd, mask=kmask[:, None], other=0.0)
        sc = tl.dot(q, tl.trans(k)) * qk_scale
        if MASK_KIND == 2:
            sc += bias * 1.4426950408889634
        sc = tl.where(kmask[None, :], sc, float("-inf"))
        m_blk = tl.max(sc, 1)
        m_new = tl.maximum(m_i, m_blk)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(sc - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if WITH_V:
            v = tl.load(v_tile + v_rows[:, None] + offs_dv[None, :] * svd, mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
        if WRITE_LSE:
            # A column per list entry (SPARSE: the refinement) or per KV block.
            if SPARSE:
                lse_col = item
            else:
                lse_col = c
            lse_row = ((b * n_kvh + h) * G + offs_g) * n_lse
            if BPT == 1:
                mb = tl.where(m_blk == float("-inf"), 0.0, m_blk)
                lb = tl.sum(tl.exp2(sc - mb[:, None]), 1)
                lse = tl.where(lb > 0, mb + tl.log2(lb), float("-inf"))
                tl.store(LseBlk + lse_row + lse_col, lse, mask=gm)
            else:  # per block of the tile: its BLOCK_N scores
                sc3 = tl.reshape(sc, (G_PAD, BPT, BLOCK_N))
                m3 = tl.max(sc3, 2)
                mb = tl.where(m3 == float("-inf"), 0.0, m3)
                lb = tl.sum(tl.exp2(sc3 - mb[:, :, None]), 2)
                lse = tl.where(lb > 0, mb + tl.log2(tl.where(lb > 0, lb, 1.0)), float("-inf"))
                tl.store(LseBlk + lse_row[:, None] + lse_col[None, :], lse, mask=gm[:, None] & in_split[None, :])

    pbase = (b * n_kvh + h) * n_splits + s
    tl.store(MPart + pbase * G_PAD + offs_g, m_i)
    tl.store(LPart + pbase * G_PAD + offs_g, l_i)
    tl.store(AccPart + (pbase * G_PAD + offs_g[:, None]) * DV + offs_dv[None, :], acc)


@triton.jit
def _decode_combine_kernel(
    MPart, LPart, AccPart, LseBlk, Out, BlockIdx, Idx, Blocks, HeadNSel,
    sob, soh, sod, sib, sih, sis, sbb,
    n_splits, n_lse, n_select, sink_blocks, local_blocks,
    G: tl.constexpr, G_PAD: tl.constexpr, DV: tl.constexpr, S_PAD: tl.constexpr,
    SELECT: tl.constexpr, WRITE_OUT: tl.constexpr, FROM_LIST: tl.constexpr, PER_HEAD: tl.constexpr,
    C_PAD: tl.constexpr,
    N_SEL_PAD: tl.constexpr, HAS_BLOCKS: tl.constexpr,
):
    """Grid (B, Hkv, G), or (B, Hkv, 1) without WRITE_OUT: program g merges the splits of query head g; program 0
    also selects (needs every head's log-sum-exp, which it recomputes from the small (max, sum) partials) among the
    n_lse LSE columns: KV blocks (HAS_BLOCKS: those of [first, end), the only ones the splits wrote), or with
    FROM_LIST the entries of the list Idx, whose block ids it writes. PER_HEAD: KV head h keeps HeadNSel[h]
    (int32 [Hkv]) of its row's n_select blocks."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2)
    n_kvh = tl.num_programs(1)
    offs_g = tl.arange(0, G_PAD)
    offs_s = tl.arange(0, S_PAD)
    sm = offs_s < n_splits
    offs_dv = tl.arange(0, DV)
    pbase = (b * n_kvh + h) * n_splits
    m_s = tl.load(MPart + (pbase + offs_s[:, None]) * G_PAD + offs_g[None, :], mask=sm[:, None], other=float("-inf"))
    l_s = tl.load(LPart + (pbase + offs_s[:, None]) * G_PAD + offs_g[None, :], mask=sm[:, None], other=0.0)
    M = tl.max(m_s, 0)  # [G_PAD]
    M_safe = tl.where(M == float("-inf"), 0.0, M)
    w = tl.exp2(m_s - M_safe[None, :])  # [S_PAD, G_PAD]
    L = tl.sum(l_s * w, 0)
    wg = tl.sum(tl.where(offs_g[None, :] == g, w, 0.0), 1)  # [S_PAD]
    Lg = tl.sum(tl.where(offs_g == g, L, 0.0), 0)
    if WRITE_OUT:
        a_s = tl.load(AccPart + ((pbase + offs_s[:, None]) * G_PAD + g) * DV + offs_dv[None, :], mask=sm[:, None],
                      other=0.0)
        acc = tl.sum(a_s * wg[:, None], 0)
        out = tl.where(Lg > 0, acc / tl.where(Lg > 0, Lg, 1.0), 0.0)
        tl.store(Out + b * sob + (h * G + g) * soh + offs_dv * sod, out.to(Out.dtype.element_ty))
    if SELECT:
        if g == 0:
            lse_g = tl.where(L > 0, M_safe + tl.log2(tl.where(L > 0, L, 1.0)), float("-inf"))
            offs_c = tl.arange(0, C_PAD)
            cm = offs_c < n_lse
            if HAS_BLOCKS and not FROM_LIST:
                end = tl.load(Blocks + b * sbb + 3)
                cm = cm & (offs_c >= tl.minimum(tl.load(Blocks + b * sbb), end)) & (offs_c < end)
            row = (b * n_kvh + h) * G
            l0 = tl.load(LseBlk + row * n_lse + offs_c, mask=cm, other=float("-inf"))
            cand = l0 > float("-inf")
            imp = tl.zeros([C_PAD], dtype=tl.float32)
            for gg in range(G):
                lg = tl.sum(tl.where(offs_g == gg, lse_g, 0.0), 0)
                lc = tl.load(LseBlk + (row + gg) * n_lse + offs_c, mask=cm, other=float("-inf"))
                imp += tl.where(cand & (lc > float("-inf")), tl.exp2(lc - lg), 0.0)
            if FROM_LIST:
                ids = tl.load(Idx + b * sib + h * sih + offs_c * sis, mask=cm, other=-1)
            else:
                ids = offs_c
            n_keep = tl.load(HeadNSel + h) if PER_HEAD else n_select
            select_row(imp, cand, ids, BlockIdx + (b * n_kvh + h) * n_select, n_keep, n_select, sink_blocks,
                       local_blocks, N_SEL_PAD)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def _splits(B: int, Hkv: int, n_items: int, device: torch.device, min_per_split: int, waves: int) -> int:
    target = waves * _num_sms(device)
    want = max(1, -(-target // (B * Hkv)))
    return max(1, min(want, -(-n_items // min_per_split)))


def _decode(q, k, v, mask, block_mask, is_causal, scale, block_size, block_idx, n_select, sink_blocks, local_blocks,
            min_seq_len, select=True, splits=None, num_warps=4, num_stages=3, head_n_select=None):
    """One split-K decode, over the list ``block_idx`` when given, else over every block. ``select``: choose
    ``n_select`` blocks, among all blocks (no list: the producer, which also attends) or among the list's entries
    (the refinement: scores only, no output; KV head h keeps ``head_n_select[h]``, int32 [Hkv], where given).
    ``block_mask``: reference.mask_blocks of the mask, [B | 1, 1, 4] (the blocks to visit), or None. Returns
    (out or None, block_idx or None)."""
    B, Hq, Sq, D = q.shape
    assert Sq == 1
    Hkv, Skv, DV = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    G_PAD = max(16, triton.next_power_of_2(G))
    n_kb = triton.cdiv(Skv, block_size)
    sparse = block_idx is not None
    refine = sparse and select
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    m, kind, smb, _smq, smk, mask_cols, thr = mask_args(mask, B, Sq, Skv, q)
    blocks, sbb, _sbr = block_mask_args(block_mask, q)
    if sparse:
        n_sel = block_idx.shape[-1]
        idx = block_idx
        sib, sih, sis = idx.stride(0), idx.stride(1), idx.stride(3)
        n_items = n_sel
    else:
        n_sel = 0
        idx = q
        sib = sih = sis = 0
        n_items = n_kb
    bpt = blocks_per_tile(block_size)
    if splits is None:  # from the H100 sweep at block 64: at least 128 (sparse) or 512 keys per split
        splits = _splits(B, Hkv, n_items, dev, (2 if sparse else 8) * bpt, 1 if sparse else 2)
    n_lse = (n_sel if sparse else n_kb) if select else 0
    # One scratch allocation, viewed as the split maxima, sums, accumulators and the LSEs selected from.
    part = B * Hkv * splits * G_PAD
    scratch = torch.empty(part * (2 + DV) + B * Hkv * G * n_lse, dtype=torch.float32, device=dev)
    mpart = scratch[:part].view(B, Hkv, splits, G_PAD)
    lpart = scratch[part:2 * part].view(B, Hkv, splits, G_PAD)
    accpart = scratch[2 * part:part * (2 + DV)].view(B, Hkv, splits, G_PAD, DV)
    lse_blk = scratch[part * (2 + DV):].view(B, Hkv, G, n_lse) if select else mpart
    out = None if refine else torch.empty(B, Hq, Sq, DV, dtype=q.dtype, device=dev)
    _decode_split_kernel[(B, Hkv, splits)](
        q, k, v, m, blocks, idx, mpart, lpart, accpart, lse_blk,
        q.stride(0), q.stride(1), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        smb, smk, sbb, sib, sih, sis,
        Skv, mask_cols, n_kb, n_sel, n_lse, splits, scale * LOG2E, thr, min_seq_len,
        G=G, G_PAD=G_PAD, D=D, DV=DV, BLOCK_N=block_size, MASK_KIND=kind, IS_CAUSAL=bool(is_causal),
        SPARSE=sparse, WRITE_LSE=select, WITH_V=not refine, HAS_BLOCKS=block_mask is not None, SCAN_N=1024,
        SCAN_IT=64, BPT=bpt, num_warps=num_warps, num_stages=num_stages,
    )
    bidx = torch.empty(B, Hkv, 1, n_select, dtype=torch.int32, device=dev) if select else None
    _decode_combine_kernel[(B, Hkv, 1 if refine else G)](
        mpart, lpart, accpart, lse_blk, mpart if out is None else out, mpart if bidx is None else bidx, idx, blocks,
        idx if head_n_select is None else head_n_select,
        *((out.stride(0), out.stride(1), out.stride(3)) if out is not None else (0, 0, 0)), sib, sih, sis, sbb,
        splits, n_lse, n_select if select else 0, sink_blocks, local_blocks,
        G=G, G_PAD=G_PAD, DV=DV, S_PAD=triton.next_power_of_2(splits), SELECT=select, WRITE_OUT=not refine,
        FROM_LIST=refine, PER_HEAD=head_n_select is not None, C_PAD=triton.next_power_of_2(max(n_lse, 1)),
        N_SEL_PAD=triton.next_power_of_2(max(n_select if select else 0, 1)), HAS_BLOCKS=block_mask is not None,
        num_warps=4 if n_lse <= 1024 else 8 if n_lse <= 8192 else 16,  # H100: 4 warps best at 32K, 8 at 128K
    )
    return out, bidx


def decode_topk_attention(q, k, v, mask, block_mask=None, *, is_causal, scale, block_size, n_select, sink_blocks,
                          local_blocks, **kw):
    """Producer for Sq == 1: (out [B, Hq, 1, Dv], block_idx int32 [B, Hkv, 1, n_select])."""
    return _decode(q, k, v, mask, block_mask, is_causal, scale, block_size, None, n_select, sink_blocks,
                   local_blocks, 0, **kw)


def decode_sparse_attention(q, k, v, block_idx, mask, block_mask=None, *, is_causal, scale, block_size, min_seq_len,
                            **kw):
    """Consumer for Sq == 1: out [B, Hq, 1, Dv] over the selected blocks (dense below min_seq_len allowed keys)."""
    return _decode(q, k, v, mask, block_mask, is_causal, scale, block_size, block_idx, 0, 0, 0, min_seq_len,
                   select=False, **kw)[0]


def decode_attention(q, k, v, mask, block_mask=None, *, is_causal, scale, block_size, **kw):
    """Dense attention for Sq == 1 (a layer the policy leaves dense): out [B, Hq, 1, Dv], no selection."""
    return _decode(q, k, v, mask, block_mask, is_causal, scale, block_size, None, 0, 0, 0, 0, select=False, **kw)[0]


def decode_refine_blocks(q, k, candidate_idx, mask, block_mask=None, *, is_causal, scale, block_size, n_select,
                         sink_blocks, local_blocks, **kw):
    """A consumer's own top ``n_select`` among its producer's candidate blocks, for Sq == 1 (the semantics of
    reference.refine_blocks; ``head_n_select``: its per-head counts as int32 [Hkv] on the device): int32 [B, Hkv, 1,
    n_select]. Reads the candidates' keys only."""
    return _decode(q, k, k, mask, block_mask, is_causal, scale, block_size, candidate_idx, n_select, sink_blocks,
                   local_blocks, 0, **kw)[1]
