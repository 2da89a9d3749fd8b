"""The hylra ops on CPU: opcheck, and the reference semantics against independent computations."""

from __future__ import annotations

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
