"""The hylra ops on CPU: opcheck, and the reference semantics against independent computations."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import hylra_compile  # noqa: F401  (registers the ops)
from hylra_compile.lowering import reference as R
from tests.numerics import rel_err

topk_attention = torch.ops.hylra.topk_attention.default
sparse_attention = torch.ops.hylra.sparse_attention.default


def qkv(B=2, Hq=4, Hkv=2, Sq=21, Skv=37, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Skv, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Skv, D, generator=g).to(dtype)
    return q, k, v


def padding_mask(B, Sq, Skv, valid):
    """bool [B, 1, Sq, Skv]: row b keeps its last valid[b] keys (left padding), causal aligned to the end."""
    mask = torch.zeros(B, 1, Sq, Skv, dtype=torch.bool)
    for b, n in enumerate(valid):
        for i in range(Sq):
            last = Skv - Sq + i
            mask[b, 0, i, max(0, Skv - n) : last + 1] = True
    return mask


def independent_sparse(q, k, v, block_idx, allowed, scale, bs):
    """Gather-free loop over (b, query head, query): softmax over allowed keys inside the selected blocks."""
    B, Hq, Sq, _ = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros(B, Hq, Sq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            for i in range(Sq):
                blocks = {int(c) for c in block_idx[b, h // G, i // bs] if c >= 0}
                keys = [j for j in range(k.shape[2]) if allowed[b, 0, i, j] and j // bs in blocks]
                if not keys:
                    continue
                s = torch.stack([q[b, h, i].double() @ k[b, h // G, j].double() * scale for j in keys])
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h // G, keys].double()
    return out


def selection(n_select, sink_blocks, local_blocks, block_size=8):
    return dict(block_size=block_size, n_select=n_select, sink_blocks=sink_blocks, local_blocks=local_blocks)


def test_opcheck_topk_attention():
    q, k, v = qkv()
    mask = padding_mask(2, 21, 37, [37, 30])
    torch.library.opcheck(topk_attention, (q, k, v, mask), dict(is_causal=False, scale=0.3, **selection(3, 1, 1)))
    torch.library.opcheck(topk_attention, (q, k, v, None), dict(is_causal=True, scale=None, **selection(4, 1, 2)))


def test_opcheck_sparse_attention():
    q, k, v = qkv()
    _, block_idx = topk_attention(
        q, k, v, None, is_causal=True, scale=None, block_size=8, n_select=3, sink_blocks=1, local_blocks=1,
    )
    settings = dict(is_causal=True, scale=None, block_size=8, min_seq_len=0)
    torch.library.opcheck(sparse_attention, (q, k, v, block_idx, None), settings)
    mask = padding_mask(2, 21, 37, [37, 30])
    settings = dict(is_causal=False, scale=0.25, block_size=8, min_seq_len=10)
    torch.library.opcheck(sparse_attention, (q, k, v, block_idx, mask), settings)


@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (4, 2), (8, 1)])
def test_topk_output_equals_sdpa_causal_with_sq_ne_skv(Hq, Hkv):
    q, k, v = qkv(Hq=Hq, Hkv=Hkv, Sq=13, Skv=29)
    out, _ = topk_attention(
        q, k, v, None, is_causal=True, scale=None, block_size=8, n_select=2, sink_blocks=1, local_blocks=1,
    )
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_err(out, ref) < 1e-6


def test_float_mask_follows_hf_convention():
    q, k, v = qkv()
    allowed = padding_mask(2, 21, 37, [37, 25])
    bias = torch.randn(2, 1, 21, 37) * 0.1
    float_mask = torch.where(allowed, bias, torch.finfo(torch.float32).min)
    out, _ = topk_attention(
        q, k, v, float_mask, is_causal=False, scale=None, block_size=8, n_select=3, sink_blocks=1, local_blocks=1,
    )
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.where(allowed, bias, -math.inf), enable_gqa=True)
    assert rel_err(out, ref) < 1e-6


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = qkv()
    mask = padding_mask(2, 21, 37, [37, 10])
    mask[1, 0, :5] = False
    out, block_idx = topk_attention(
        q, k, v, mask, is_causal=False, scale=None, block_size=8, n_select=3, sink_blocks=1, local_blocks=1,
    )
    sparse = sparse_attention(q, k, v, block_idx, mask, is_causal=False, scale=None, block_size=8, min_seq_len=0)
    for tensor in (out, sparse):
        assert not tensor.isnan().any()
        assert (tensor[1, :, :5] == 0).all()


def test_block_idx_format_and_forced_blocks():
    q, k, v = qkv(Sq=1, Skv=80)
    valid = [80, 45]
    mask = padding_mask(2, 1, 80, valid)
    _, block_idx = topk_attention(
        q, k, v, mask, is_causal=False, scale=None, block_size=8, n_select=5, sink_blocks=1, local_blocks=2,
    )
    assert block_idx.dtype == torch.int32 and block_idx.shape == (2, 2, 1, 5)
    for b, n in enumerate(valid):
        first, last = (80 - n) // 8, 79 // 8
        for h in range(2):
            row = block_idx[b, h, 0].tolist()
            assert row == sorted(row)
            assert first in row and last in row and last - 1 in row
            assert all(c >= first for c in row)


def test_block_idx_padding_when_few_candidates():
    q, k, v = qkv(Sq=1, Skv=20)
    _, block_idx = topk_attention(
        q, k, v, None, is_causal=False, scale=None, block_size=8, n_select=6, sink_blocks=1, local_blocks=1,
    )
    assert block_idx[0, 0, 0].tolist() == [0, 1, 2, -1, -1, -1]


def test_topk_selects_most_important_blocks():
    q, k, v = qkv(B=1, Hq=1, Hkv=1, Sq=1, Skv=64)
    k[0, 0, 37] = q[0, 0, 0] * 4  # block 4 dominates
    _, block_idx = topk_attention(
        q, k, v, None, is_causal=False, scale=None, block_size=8, n_select=4, sink_blocks=1, local_blocks=2,
    )
    assert block_idx[0, 0, 0].tolist() == [0, 4, 6, 7]


@pytest.mark.parametrize("min_seq_len", [0, 12])
def test_sparse_equals_independent_computation(min_seq_len):
    q, k, v = qkv()
    mask = padding_mask(2, 21, 37, [37, 30])
    _, block_idx = topk_attention(
        q, k, v, mask, is_causal=False, scale=0.3, block_size=8, n_select=3, sink_blocks=1, local_blocks=1,
    )
    out = sparse_attention(q, k, v, block_idx, mask, is_causal=False, scale=0.3, block_size=8, min_seq_len=min_seq_len)
    dense_rows = mask.sum(-1, keepdim=True) < min_seq_len  # [B, 1, Sq, 1]
    ref_sparse = independent_sparse(q, k, v, block_idx, mask, 0.3, 8)
    ref_dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    ref = torch.where(dense_rows, ref_dense.double(), ref_sparse)
    assert rel_err(out, ref) < 1e-6
    if min_seq_len:
        assert dense_rows.any() and not dense_rows.all()


def test_sparse_with_every_block_equals_sdpa():
    q, k, v = qkv(Sq=13, Skv=29)
    block_idx = torch.arange(4, dtype=torch.int32).expand(2, 2, 2, 4).contiguous()
    out = sparse_attention(q, k, v, block_idx, None, is_causal=True, scale=None, block_size=8, min_seq_len=0)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp64(dtype):
    q, k, v = qkv(dtype=dtype)
    out, block_idx = topk_attention(
        q, k, v, None, is_causal=True, scale=None, block_size=8, n_select=3, sink_blocks=1, local_blocks=1,
    )
    assert out.dtype == dtype and block_idx.dtype == torch.int32
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True)
    assert rel_err(out, ref) < 1e-2


def test_errors_are_clear():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="sink_blocks \\+ local_blocks"):
        topk_attention(
            q, k, v, None, is_causal=True, scale=None, block_size=8, n_select=1, sink_blocks=1, local_blocks=1,
        )
    with pytest.raises(ValueError, match="block_idx must be"):
        sparse_attention(
            q, k, v, torch.zeros(2, 2, 1, 3, dtype=torch.int32), None, is_causal=True, scale=None, block_size=8,
            min_seq_len=0,
        )
    with pytest.raises(ValueError, match="outside"):
        sparse_attention(
            q, k, v, torch.full((2, 2, 3, 3), 9, dtype=torch.int32), None, is_causal=True, scale=None, block_size=8,
            min_seq_len=0,
        )


def test_block_idx_must_be_ascending_and_mask_must_broadcast():
    q, k, v = qkv(Sq=1, Skv=40)
    unsorted = torch.tensor([3, 1, -1], dtype=torch.int32).expand(2, 2, 1, 3).contiguous()
    with pytest.raises(ValueError, match="strictly ascending block indices followed by -1"):
        sparse_attention(q, k, v, unsorted, None, is_causal=False, scale=None, block_size=8, min_seq_len=0)
    with pytest.raises(ValueError, match=r"does not broadcast to \[B, Hq, Sq, Skv\] = \[2, 4, 1, 40\]"):
        topk_attention(
            q, k, v, torch.ones(2, 1, 1, 39, dtype=torch.bool), is_causal=False, scale=None, block_size=8, n_select=3,
            sink_blocks=1, local_blocks=1,
        )
    with pytest.raises(ValueError, match="mask must be bool"):
        topk_attention(
            q, k, v, torch.ones(2, 1, 1, 40, dtype=torch.int64), is_causal=False, scale=None, block_size=8,
            n_select=3, sink_blocks=1, local_blocks=1,
        )


def brute_force_blocks(mask, bs):
    """mask_blocks from its definition, one (batch, query block, KV block) at a time."""
    m = R.mask_4d(mask)
    allowed = m if m.dtype == torch.bool else ~((m == float("-inf")) | (m <= torch.finfo(m.dtype).min / 2))
    plain = allowed if m.dtype == torch.bool else allowed & (m == 0)
    Bm, _, Sq, Skv = m.shape
    n_qb, n_kb = -(-Sq // bs), -(-Skv // bs)
    ranges = torch.zeros(Bm, n_qb, 4, dtype=torch.int32)
    for b in range(Bm):
        for r in range(n_qb):
            rows = slice(r * bs, (r + 1) * bs)
            hit = [bool(allowed[b, :, rows, c * bs : (c + 1) * bs].any()) for c in range(n_kb)]
            whole = [hit[c] and (c + 1) * bs <= Skv and bool(plain[b, :, rows, c * bs : (c + 1) * bs].all())
                     for c in range(n_kb)]
            first = hit.index(True) if any(hit) else 0
            end = n_kb - hit[::-1].index(True) if any(hit) else 0
            best = (first, first)
            for c in range(n_kb):  # the first longest run of whole blocks
                length = 0
                while c + length < n_kb and whole[c + length]:
                    length += 1
                if length > best[1] - best[0]:
                    best = (c, c + length)
            ranges[b, r] = torch.tensor([first, *best, end])
    return ranges


@pytest.mark.parametrize("kind", ["causal", "padded", "sliding", "float_bias", "row"])
def test_mask_blocks_equals_brute_force(kind):
    Sq = Skv = 45
    i, j = torch.arange(Sq)[:, None], torch.arange(Skv)[None, :]
    if kind == "causal":
        mask = (j <= i)[None, None]
    elif kind == "padded":
        mask = padding_mask(2, Sq, Skv, [45, 20])
    elif kind == "sliding":
        mask = ((j <= i) & (j > i - 12))[None, None].expand(2, 1, Sq, Skv)
    elif kind == "float_bias":  # HF's additive convention: 0 allowed, min dropped, other values a bias
        mask = torch.where(j <= i, torch.where(j % 9 == 0, 0.5, 0.0), torch.finfo(torch.float32).min)[None, None]
    else:  # one mask row shared by every query (decode-style padding)
        mask = (torch.arange(Skv) >= 7)[None, None, None].expand(3, 1, 1, Skv)
    got = torch.ops.hylra.mask_blocks(mask, block_size=8)
    assert torch.equal(got, brute_force_blocks(mask, 8))
    if kind == "causal":  # (0, 0, r, r + 1): blocks below the diagonal whole, then the diagonal
        r = torch.arange(6, dtype=torch.int32)
        assert torch.equal(got[0], torch.stack([0 * r, 0 * r, r, r + 1], -1))
    torch.library.opcheck(torch.ops.hylra.mask_blocks.default, (mask,), dict(block_size=8))
    stored = torch.ops.hylra.shared_mask(mask)  # the copy the passes give every op of a graph
    assert torch.equal(stored, mask) and stored.data_ptr() != mask.data_ptr()
    assert stored.stride()[-2:] == (R.MASK_ROW_ALIGN, 1)  # rows the kernels load 16 bytes at a time
    torch.library.opcheck(torch.ops.hylra.shared_mask.default, (mask,))


@pytest.mark.parametrize("S", [45, 48])  # padded to whole blocks, and whole blocks read as they are
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_blocks_in_chunks(S, kind, monkeypatch):
    """The mask read a few query blocks at a time gives the same structure as in one piece."""
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    window = ((j <= i) & (j > i - 20))[None, None].expand(2, 1, S, S)
    if kind == "bool":
        mask = window
    else:  # additive: 0 allowed, a bias on every 9th key, min dropped
        mask = torch.where(window, torch.where(j % 9 == 0, 0.5, 0.0), torch.finfo(torch.float32).min)
    whole = torch.ops.hylra.mask_blocks(mask, block_size=8)
    monkeypatch.setattr(R, "_MASK_CHUNK_ELEMENTS", 2 * 8 * 2 * 48)  # two query blocks per chunk
    assert torch.equal(R.mask_blocks(mask, block_size=8), whole)
    assert torch.equal(whole, brute_force_blocks(mask, 8))


def test_block_mask_changes_no_result_and_dense_op_is_sdpa():
    q, k, v = qkv()
    mask = padding_mask(2, 21, 37, [37, 30])
    block_mask = torch.ops.hylra.mask_blocks(mask, block_size=8)
    producer = dict(is_causal=False, scale=None, block_size=8, n_select=3, sink_blocks=1, local_blocks=1)
    out, block_idx = topk_attention(q, k, v, mask, **producer)
    with_blocks = topk_attention(q, k, v, mask, block_mask, **producer)
    assert torch.equal(out, with_blocks[0]) and torch.equal(block_idx, with_blocks[1])
    dense = torch.ops.hylra.attention(q, k, v, mask, block_mask, is_causal=False, scale=None, block_size=8)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert rel_err(dense, want) < 1e-5
    torch.library.opcheck(torch.ops.hylra.attention.default, (q, k, v, mask, block_mask),
                          dict(is_causal=False, scale=0.3, block_size=8))
    torch.library.opcheck(torch.ops.hylra.attention.default, (q, k, v, None), dict(is_causal=True, scale=None,
                                                                                  block_size=8))
    with pytest.raises(ValueError, match=r"block_mask must be int32 \[2, 3, 4\]"):
        topk_attention(q, k, v, mask, block_mask[:, :2], **producer)


# -- refine_blocks --------------------------------------------------------------------------------------------------
refine_blocks = torch.ops.hylra.refine_blocks.default


def every_block(B, Hkv, Sq, Skv, bs, padding=0):
    """candidate_idx listing every KV block for every query block, then ``padding`` columns of -1."""
    n_qb, n_kb = -(-Sq // bs), -(-Skv // bs)
    blocks = torch.arange(n_kb, dtype=torch.int32).expand(B, Hkv, n_qb, n_kb)
    return F.pad(blocks, (0, padding), value=-1).contiguous()


def random_candidates(B, Hkv, n_qb, n_kb, width, seed=0):
    """int32 [B, Hkv, n_qb, width]: each row a random subset of the KV blocks (possibly empty), ascending, -1 padded."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.full((B, Hkv, n_qb, width), -1, dtype=torch.int32)
    for index in torch.cartesian_prod(torch.arange(B), torch.arange(Hkv), torch.arange(n_qb)).tolist():
        count = int(torch.randint(0, min(width, n_kb) + 1, (1,), generator=g))
        chosen = torch.randperm(n_kb, generator=g)[:count].sort().values
        rows[tuple(index)][:count] = chosen.to(torch.int32)
    return rows


def allowed_and_bias(mask, is_causal, B, Sq, Skv):
    """(allowed bool, bias fp64), both [B, 1|Hq, Sq, Skv], of a mask as SDPA reads it (HF's convention for floats)."""
    if mask is None:
        allowed = torch.ones(1, 1, Sq, Skv, dtype=torch.bool)
        bias = torch.zeros(1, 1, Sq, Skv, dtype=torch.float64)
    elif mask.dtype == torch.bool:
        allowed, bias = mask, torch.zeros(mask.shape, dtype=torch.float64)
    else:
        allowed = (mask != -math.inf) & (mask > torch.finfo(mask.dtype).min / 2)
        bias = torch.where(allowed, mask.double(), 0.0)
    if is_causal:
        allowed = allowed & torch.ones(Sq, Skv, dtype=torch.bool).tril()
    return allowed.expand(B, -1, Sq, Skv), bias.expand(B, -1, Sq, Skv)


def independent_refine(q, k, candidate_idx, allowed, bias, scale, bs, n_select, sink, local):
    """refine_blocks from its definition, one (batch, KV head, query block) at a time in fp64: each query's softmax
    over its allowed keys inside the row's candidate blocks, its probabilities summed per KV block over the head group
    and the block's queries; the first ``sink`` and last ``local`` candidate blocks holding such a key, then the most
    important others (ties to the lower index), ascending, -1 padded."""
    Skv = k.shape[2]

    def row(b, h, r, rows, heads):
        listed = {int(c) for c in candidate_idx[b, h, r] if c >= 0}
        mass: dict[int, float] = {}
        for head in heads:
            m = min(head, allowed.shape[1] - 1)
            for i in rows:
                keys = [j for j in range(Skv) if allowed[b, m, i, j] and j // bs in listed]
                if not keys:
                    continue
                scores = (k[b, h, keys].double() @ q[b, head, i].double()) * scale + bias[b, m, i, keys]
                for j, p in zip(keys, torch.softmax(scores, 0).tolist()):
                    mass[j // bs] = mass.get(j // bs, 0.0) + p
        return sorted(mass), mass

    return independent_selections(q, k, bs, n_select, sink, local, row)


def independent_selections(q, k, bs, n_select, sink, local, row):
    """int32 [B, Hkv, ceil(Sq / bs), n_select] from ``row(b, h, r, queries, query heads)`` -> (the row's ascending
    candidates, their masses): the first ``sink`` and last ``local`` candidates, then the others of most mass (ties
    to the lower index), ascending, -1 padded."""
    B, Hq, Sq, _ = q.shape
    Hkv = k.shape[1]
    G, n_qb = Hq // Hkv, -(-Sq // bs)
    out = torch.full((B, Hkv, n_qb, n_select), -1, dtype=torch.int32)
    for b in range(B):
        for h in range(Hkv):
            for r in range(n_qb):
                candidates, mass = row(b, h, r, range(r * bs, min((r + 1) * bs, Sq)), range(h * G, (h + 1) * G))
                forced = set(candidates[:sink]) | set(candidates[len(candidates) - local :])
                rest = sorted((c for c in candidates if c not in forced), key=lambda c: (-mass[c], c))
                chosen = sorted(forced | set(rest[: n_select - len(forced)]))
                out[b, h, r, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
    return out


@pytest.mark.parametrize("case", ["causal", "bool_mask", "float_mask", "padded_gqa8", "sq_not_multiple", "decode"])
def test_refine_with_every_block_a_candidate_is_topk_selection(case):
    """With every KV block a candidate (and -1 padding after them), refine_blocks gives exactly topk_attention's
    block_idx: causal, bool and additive masks, a padded batch, 8 query heads per KV head, a query length that is
    not a multiple of the block size, and a one-query decode step against a longer key sequence."""
    shapes = dict(causal=(4, 2, 24, 24), bool_mask=(4, 2, 21, 37), float_mask=(4, 2, 21, 37),
                  padded_gqa8=(8, 1, 21, 37), sq_not_multiple=(4, 2, 13, 29), decode=(4, 2, 1, 80))
    Hq, Hkv, Sq, Skv = shapes[case]
    q, k, v = qkv(Hq=Hq, Hkv=Hkv, Sq=Sq, Skv=Skv, seed=3)
    mask, is_causal = None, case in ("causal", "sq_not_multiple")
    if case in ("bool_mask", "padded_gqa8", "decode"):
        mask = padding_mask(2, Sq, Skv, [Skv, Skv - 19])
    elif case == "float_mask":
        allowed = padding_mask(2, Sq, Skv, [Skv, 25])
        mask = torch.where(allowed, torch.randn(2, 1, Sq, Skv) * 0.5, torch.finfo(torch.float32).min)
    settings = dict(is_causal=is_causal, scale=None, **selection(3, 1, 1))
    _, block_idx = topk_attention(q, k, v, mask, **settings)
    refined = refine_blocks(q, k, every_block(2, Hkv, Sq, Skv, 8, padding=2), mask, **settings)
    assert torch.equal(refined, block_idx)


@pytest.mark.parametrize("is_causal", [True, False])
def test_refine_keeps_a_subset_of_the_candidates_in_block_idx_format(is_causal):
    """Each row is a subset of its candidates (a producer's wider selection, or random subsets), strictly ascending
    and then -1 padded, of shape [B, Hkv, ceil(Sq / bs), n_select]; it keeps every candidate when they fit."""
    q, k, v = qkv(Sq=21, Skv=37, seed=1)
    mask = None if is_causal else padding_mask(2, 21, 37, [37, 30])
    _, wide = topk_attention(q, k, v, mask, is_causal=is_causal, scale=None, **selection(4, 1, 1))
    for candidates in (wide, random_candidates(2, 2, 3, 5, 4, seed=2)):
        for n_select in (2, 3, 5):
            refined = refine_blocks(q, k, candidates, mask, is_causal=is_causal, scale=None,
                                    **selection(n_select, 1, 1 if n_select > 2 else 0))
            assert refined.dtype == torch.int32 and refined.shape == (2, 2, 3, n_select)
            for row, listed in zip(refined.reshape(-1, n_select).tolist(), candidates.reshape(-1, 4).tolist()):
                kept = [c for c in row if c >= 0]
                assert row == kept + [-1] * (n_select - len(kept)) and kept == sorted(set(kept))
                assert set(kept) <= {c for c in listed if c >= 0}
            if candidates is wide and n_select >= 4 and not is_causal:  # each listed block holds an allowed key
                assert torch.equal(refined[..., :4], wide)


def refinement_mask(kind: str, seed: int = 0):
    """The [2, 1 | 4, 21, 37] mask of the refinement tests' ``kind``: none (``causal``: the ops' is_causal), padding
    (``bool``), padding with random additive biases (``float``, drawn from ``seed``), random per KV head
    (``per_head``, from ``seed + 1``)."""
    if kind == "bool":
        return padding_mask(2, 21, 37, [37, 22])
    if kind == "float":
        g = torch.Generator().manual_seed(seed)
        return torch.where(padding_mask(2, 21, 37, [37, 30]), torch.randn(2, 1, 21, 37, generator=g,
                                                                          dtype=torch.float64), -math.inf)
    if kind == "per_head":
        return torch.rand(2, 4, 21, 37, generator=torch.Generator().manual_seed(seed + 1)) > 0.3
    return None


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float", "per_head"])
@pytest.mark.parametrize("n_select,sink,local", [(3, 1, 1), (4, 0, 2), (2, 0, 0)])
def test_refine_equals_independent_computation(mask_kind, n_select, sink, local):
    """refine_blocks agrees exactly with :func:`independent_refine` on random fp64 inputs and random candidate
    sets, including empty rows and candidate blocks holding no allowed key (above the causal diagonal, padding)."""
    q, k, _ = qkv(Sq=21, Skv=37, dtype=torch.float64, seed=4)
    mask, is_causal = refinement_mask(mask_kind, seed=5), mask_kind == "causal"
    scale = 0.3 if mask_kind == "float" else None
    candidates = random_candidates(2, 2, 3, 5, 4, seed=7)
    got = refine_blocks(q, k, candidates, mask, is_causal=is_causal, scale=scale,
                        **selection(n_select, sink, local))
    allowed, bias = allowed_and_bias(mask, is_causal, 2, 21, 37)
    want = independent_refine(q, k, candidates, allowed, bias, scale or 1 / math.sqrt(16), 8, n_select, sink, local)
    assert torch.equal(got, want)
    assert (candidates < 0).all(-1).any() and (got >= 0).any()  # empty rows and real selections both occur


@pytest.mark.parametrize("mask_kind", ["causal", "bool"])
def test_refine_with_a_budget_per_kv_head(mask_kind):
    """``head_n_select``: KV head h's rows are :func:`independent_refine`'s with ``head_n_select[h]`` blocks, -1
    padded to ``n_select``; opcheck passes; counts below the forced blocks or above ``n_select``, or not one per KV
    head, are refused by the real and the fake op alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, _ = qkv(Sq=21, Skv=37, dtype=torch.float64, seed=8)
    mask, is_causal = refinement_mask(mask_kind), mask_kind == "causal"
    candidates = random_candidates(2, 2, 3, 5, 5, seed=9)
    got = refine_blocks(q, k, candidates, mask, is_causal=is_causal, scale=None, **selection(4, 1, 0),
                        head_n_select=[2, 4])
    allowed, bias = allowed_and_bias(mask, is_causal, 2, 21, 37)
    for h, count in enumerate([2, 4]):
        want = independent_refine(q, k, candidates, allowed, bias, 1 / math.sqrt(16), 8, count, 1, 0)[:, h]
        assert torch.equal(got[:, h, :, :count], want) and (got[:, h, :, count:] == -1).all()
    assert (got[:, 0] >= 0).sum() < (got[:, 1] >= 0).sum()
    torch.library.opcheck(refine_blocks, (q, k, candidates, mask),
                          dict(is_causal=is_causal, scale=None, **selection(4, 1, 0), head_n_select=[3, 1]))
    mode = FakeTensorMode()
    fakes = [mode.from_tensor(t) for t in (q, k, candidates)]
    for tensors, context in ((fakes, mode), ((q, k, candidates), contextlib.nullcontext())):
        for counts in ([0, 4], [2, 5], [2], [2, 4, 4]):
            with context, pytest.raises(ValueError, match=r"head_n_select must list one block count in \[1, 4\]"):
                refine_blocks(*tensors, None, is_causal=True, scale=None, **selection(4, 1, 0), head_n_select=counts)


def independent_prefilter(q, k, candidate_idx, allowed, scale, bs, n_select, sink, local):
    """prefilter_blocks from its definition, one (batch, KV head, query block) at a time in fp64: the listed blocks
    between the first and the last block holding an allowed key of the query block (these masks allow one run of
    keys per query), each block's mean key by a loop over its keys, every query's softmax over their scores, the
    masses summed over the head group and the queries; selected as independent_refine selects."""
    Skv = k.shape[2]

    def row(b, h, r, rows, heads):
        hit = sorted({j // bs for i in rows for j in range(Skv) if allowed[b, 0, i, j]})
        candidates = [int(c) for c in candidate_idx[b, h, r] if c >= 0 and hit and hit[0] <= c <= hit[-1]]
        means = [sum(k[b, h, j].double() for j in range(c * bs, min((c + 1) * bs, Skv)))
                 / len(range(c * bs, min((c + 1) * bs, Skv))) for c in candidates]
        mass = dict.fromkeys(candidates, 0.0)
        for head in heads:
            for i in rows:
                if candidates:
                    scores = torch.stack([q[b, head, i].double() @ m for m in means]) * scale
                    for c, p in zip(candidates, torch.softmax(scores, 0).tolist()):
                        mass[c] += p
        return candidates, mass

    return independent_selections(q, k, bs, n_select, sink, local, row)


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float"])
def test_prefilter_equals_independent_computation(mask_kind):
    """prefilter_blocks agrees exactly with :func:`independent_prefilter` on random fp64 inputs and candidate sets
    (blocks past the diagonal or in the padding listed too), for causal, padded and additive masks (the mask bounds
    the candidates; its values do not enter the scores); refine_blocks with ``prefilter`` p is refine_blocks over
    those p * n_select blocks, with budgets by KV head too; opcheck passes."""
    q, k, _ = qkv(Sq=21, Skv=37, dtype=torch.float64, seed=10)
    mask, is_causal = refinement_mask(mask_kind, seed=11), mask_kind == "causal"
    candidates = random_candidates(2, 2, 3, 5, 5, seed=12)
    allowed, _ = allowed_and_bias(mask, is_causal, 2, 21, 37)
    for n_select, sink, local in ((3, 1, 1), (2, 0, 0)):
        narrowed = R.prefilter_blocks(q, k, candidates, mask, is_causal=is_causal, scale=0.5,
                                      **selection(n_select, sink, local))
        assert torch.equal(narrowed, independent_prefilter(q, k, candidates, allowed, 0.5, 8, n_select, sink, local))
    settings = dict(is_causal=is_causal, scale=None, **selection(2, 1, 0))
    narrowed = R.prefilter_blocks(q, k, candidates, mask, **dict(settings, n_select=4))
    for counts in (None, [1, 2]):
        assert torch.equal(refine_blocks(q, k, candidates, mask, **settings, head_n_select=counts, prefilter=2),
                           refine_blocks(q, k, narrowed, mask, **settings, head_n_select=counts))
    torch.library.opcheck(refine_blocks, (q, k, candidates, mask), dict(settings, prefilter=2))


def test_prefilter_applies_to_a_prompt_listing_more_than_it_keeps():
    """A decode step (one query), or a prefilter keeping every listed entry, refines as without one; a prompt's
    pre-filter changes the selection somewhere; a negative prefilter is refused."""
    q, k, _ = qkv(Sq=21, Skv=37, seed=13)
    candidates = random_candidates(2, 2, 3, 5, 5, seed=14)
    settings = dict(is_causal=True, scale=None, **selection(1, 0, 0))
    keys = refine_blocks(q, k, candidates, None, **settings)
    assert not torch.equal(keys, refine_blocks(q, k, candidates, None, **settings, prefilter=2))
    assert torch.equal(keys, refine_blocks(q, k, candidates, None, **settings, prefilter=5))
    decode = dict(settings, is_causal=False)
    one = candidates[:, :, :1]
    assert torch.equal(refine_blocks(q[:, :, -1:], k, one, None, **decode, prefilter=2),
                       refine_blocks(q[:, :, -1:], k, one, None, **decode))
    with pytest.raises(ValueError, match=r"prefilter must be an int >= 0 \(0: none\), got -1"):
        refine_blocks(q, k, candidates, None, **settings, prefilter=-1)


def test_refine_softmax_runs_over_the_candidates_keys_only():
    """Two queries of one block; block 2 is not a candidate. Over all keys, query 0's mass sits on block 2 and block 1
    would win (0.45 against 0.27); over the candidates' keys, query 0 puts 0.88 on block 0, which wins (1.26 against
    0.74). topk_attention itself picks block 2."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)[None, None]
    k = torch.tensor([[2.0, 0.0]] * 2 + [[0.0, 0.5]] * 2 + [[10.0, 0.0]] * 2, dtype=torch.float64)[None, None]
    settings = dict(is_causal=False, scale=1.0, block_size=2, n_select=1, sink_blocks=0, local_blocks=0)
    candidates = torch.tensor([0, 1], dtype=torch.int32).view(1, 1, 1, 2)
    assert refine_blocks(q, k, candidates, None, **settings).tolist() == [[[[0]]]]
    assert topk_attention(q, k, k, None, **settings)[1].tolist() == [[[[2]]]]
    assert refine_blocks(q, k, candidates[..., 1:], None, **settings).tolist() == [[[[1]]]]


def test_refine_candidate_idx_errors_name_it():
    """A malformed candidate_idx (dtype, rank, shape, order, padding, range) is a ValueError naming it."""
    q, k, _ = qkv(Sq=21, Skv=37)
    good = every_block(2, 2, 21, 37, 8)

    def refine(candidates, **changes):
        refine_blocks(q, k, candidates, None, **{"is_causal": True, "scale": None, **selection(3, 1, 1), **changes})

    refine(good)
    row = torch.tensor([[0, 1, 2, 3, 4]], dtype=torch.int32)
    for candidates, message in [
        (good.long(), r"candidate_idx must be int32 \[B, Hkv, ceil\(Sq/bs\), n_sel\] = \[2, 2, 3, n_sel\]"),
        (good[0], "candidate_idx must be int32"),
        (good[:, :, :2], r"candidate_idx must be int32 .* got torch.int32 \(2, 2, 2, 5\)"),
        (good.flip(-1), "each candidate_idx row must be strictly ascending block indices followed by -1 padding"),
        (torch.where(row == 1, 0, row).expand(2, 2, 3, 5), "each candidate_idx row must be strictly ascending"),
        (torch.where(row == 0, -1, row).expand(2, 2, 3, 5), "each candidate_idx row must be strictly ascending"),
        (torch.where(row == 4, 5, row).expand(2, 2, 3, 5), r"candidate_idx holds entries outside \[-1, 5\)"),
        (torch.where(row == 4, -2, row).expand(2, 2, 3, 5), r"candidate_idx holds entries outside \[-1, 5\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            refine(candidates.contiguous())
    with pytest.raises(ValueError, match="sink_blocks \\+ local_blocks"):
        refine(good, n_select=1)


def test_opcheck_refine_blocks_and_fake_shape():
    """opcheck passes, and under FakeTensorMode the op gives int32 [B, Hkv, ceil(Sq / bs), n_select] and refuses a
    candidate_idx of the wrong shape as the real kernel does."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v = qkv()
    mask = padding_mask(2, 21, 37, [37, 30])
    _, candidates = topk_attention(q, k, v, mask, is_causal=False, scale=None, **selection(4, 1, 1))
    torch.library.opcheck(refine_blocks, (q, k, candidates, mask), dict(is_causal=False, scale=0.3,
                                                                        **selection(2, 1, 1)))
    torch.library.opcheck(refine_blocks, (q, k, every_block(2, 2, 21, 37, 8), None),
                          dict(is_causal=True, scale=None, **selection(3, 1, 1)))
    with FakeTensorMode() as mode:
        fake_q, fake_k, fake_candidates = (mode.from_tensor(t) for t in (q, k, candidates))
        out = refine_blocks(fake_q, fake_k, fake_candidates, None, is_causal=True, scale=None, **selection(6, 1, 2))
        assert out.shape == (2, 2, 3, 6) and out.dtype == torch.int32
        with pytest.raises(ValueError, match="candidate_idx must be int32"):
            refine_blocks(fake_q, fake_k, fake_candidates[:, :1], None, is_causal=True, scale=None,
                          **selection(6, 1, 2))


def test_map_heads_reads_the_mapped_heads_and_refuses_bad_maps():
    """``out[:, h] = block_idx[:, heads[h]]`` (written out per head), a new tensor; opcheck passes; a map of the
    wrong length or with a head out of range is refused by the real and the fake op alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    map_heads = torch.ops.hylra.map_heads
    q, k, v = qkv()
    _, block_idx = topk_attention(q, k, v, None, is_causal=True, scale=None, **selection(3, 1, 1))
    for heads in ([1, 0], [1, 1], [0, 1]):
        out = map_heads(block_idx, heads=heads)
        for h, g in enumerate(heads):
            assert torch.equal(out[:, h], block_idx[:, g])
        assert out.data_ptr() != block_idx.data_ptr()
        torch.library.opcheck(map_heads, (block_idx,), {"heads": heads})
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(block_idx)
        assert map_heads(fake, heads=[1, 0]).shape == block_idx.shape
        for bad in ([0], [0, 2], [-1, 0]):
            with pytest.raises(ValueError, match=r"heads must list one KV head in \[0, 2\) for each of the 2"):
                map_heads(fake, heads=bad)
    with pytest.raises(ValueError, match=r"heads must list one KV head in \[0, 2\)"):
        map_heads(block_idx, heads=[0, 1, 1])


def test_expand_blocks_lists_the_fine_blocks_of_each_coarse_block():
    """Each fine query block reads its coarse query block's row, each coarse block c becoming c*f ... c*f+f-1 within
    the keys, then -1 padding (written out on a small case); opcheck passes; the fake op gives the shape."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    expand_blocks = torch.ops.hylra.expand_blocks
    q, k = torch.zeros(1, 2, 70, 8), torch.zeros(1, 1, 150, 8)  # 5 query blocks of 16; 10 KV blocks of 16
    coarse = torch.tensor([[[[0, 2], [1, -1]]]], dtype=torch.int32)  # blocks of 64: 2 query blocks, 3 KV blocks
    out = expand_blocks(q, k, coarse, block_size=16, factor=4)
    first, second = [0, 1, 2, 3, 8, 9, -1, -1], [4, 5, 6, 7, -1, -1, -1, -1]
    assert out.dtype == torch.int32 and out.tolist() == [[[first] * 4 + [second]]]
    assert torch.equal(expand_blocks(q, k, coarse, block_size=64, factor=1), coarse)
    torch.library.opcheck(expand_blocks, (q, k, coarse), {"block_size": 16, "factor": 4})
    with FakeTensorMode() as mode:
        fake = expand_blocks(mode.from_tensor(q), mode.from_tensor(k), mode.from_tensor(coarse), block_size=16,
                             factor=4)
        assert fake.shape == out.shape
    with pytest.raises(ValueError, match="block_idx must be int32"):
        expand_blocks(q, k, coarse, block_size=16, factor=2)  # a selection of blocks of 64 is not one of 32
    with pytest.raises(ValueError, match="factor must be a positive int"):
        expand_blocks(q, k, coarse, block_size=64, factor=0)


@pytest.mark.parametrize("is_causal", [True, False])
def test_refine_among_every_expanded_coarse_block_is_the_fine_topk_selection(is_causal):
    """A coarse producer selecting every block, expanded: refinement among its fine blocks is the fine top-k
    selection (whatever the coarse selection, the keys offered are all of them)."""
    q, k, v = qkv(Sq=37, Skv=37)
    mask = None if is_causal else padding_mask(2, 37, 37, [37, 30])
    settings = dict(is_causal=is_causal, scale=None)
    _, coarse = topk_attention(q, k, v, mask, **settings, **selection(3, 1, 1, block_size=16))
    candidates = torch.ops.hylra.expand_blocks(q, k, coarse, block_size=8, factor=2)
    fine = selection(3, 1, 1, block_size=8)
    refined = torch.ops.hylra.refine_blocks(q, k, candidates, mask, **settings, **fine)
    assert torch.equal(refined, topk_attention(q, k, v, mask, **settings, **fine)[1])
