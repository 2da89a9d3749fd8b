"""Triton kernels against the reference (hylra_compile.lowering.reference).

Without a GPU these run under TRITON_INTERPRET=1 on CPU tensors at tiny sizes (fp32, block 16; decode with blocks
gathered into tiles of 64 keys and one block per step); ``pytest -m cuda`` runs the same cases on the GPU in bf16 at
blocks 16, 32, 64 and 128 and in fp16 at block 64 (one test per case and setting), plus the op dispatch and a
CUDA-graph replay.
"""

from __future__ import annotations

import faulthandler
import warnings

import numpy as np
import pytest
import torch
import triton

from hylra_compile.kernels import (
    decode_attention,
    decode_refine_blocks,
    decode_sparse_attention,
    decode_topk_attention,
    prefill_attention,
    prefill_prefilter_blocks,
    prefill_refine_blocks,
    prefill_sparse_attention,
    prefill_topk_attention,
)
from hylra_compile.kernels import _common as C
from hylra_compile.kernels import prefill as P
from hylra_compile.lowering import reference as R
from tests.numerics import rel_err

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


# ----------------------------------------------------------------------------------------------------------- helpers


def ref_importance(q, k, v, mask, is_causal, scale, bs):
    """importance [B, Hkv, nqb, nkb] (float64) and candidate, exactly as reference.topk_attention defines them."""
    _, imp, hit = R.attention_with_importance(q.double(), k.double(), v.double(), mask, is_causal, scale, bs)
    return imp, hit


def check_refine(refine, q, k, v, mask, block_mask, producer, rtol):
    """``refine`` (a kernel) against reference.refine_blocks, the candidates being the reference producer's
    selection of twice ``n_select`` blocks, keeping one block beyond the forced ones and ``n_select``; then of every
    block (where it must equal the producer's own selection), keeping ``n_select``."""
    n_sel = producer["n_select"]
    extra = {} if block_mask is None else dict(block_mask=block_mask)
    for n_cand in (2 * n_sel, R.num_blocks(k.shape[2], producer["block_size"]) + 2):
        candidates = R.topk_attention(q, k, v, mask, **dict(producer, n_select=n_cand))[1]
        in_candidates = R._selection_keys(candidates, "candidates", q, k, producer["block_size"])
        _, imp, _hit = R.attention_with_importance(
            q.double(), k.double(), None, mask, producer["is_causal"], producer["scale"], producer["block_size"],
            keep=lambda s, e, allowed: allowed & in_candidates(s, e, allowed))
        forced = producer["sink_blocks"] + producer["local_blocks"]
        for n in (forced + 1, n_sel) if n_cand == 2 * n_sel else (n_sel,):
            settings = dict(producer, n_select=n)
            got = refine(q, k, candidates, mask, **extra, **settings)
            assert_same_selection(got, R.refine_blocks(q, k, candidates, mask, **settings), imp, rtol)
        # budgets by KV head: head h keeps its own count of the row's n_sel, the rest -1
        counts = [forced + (h + 1) % (n_sel - forced + 1) for h in range(k.shape[1])]
        settings = dict(producer, n_select=n_sel)
        got = refine(q, k, candidates, mask, **extra, **settings,
                     head_n_select=torch.tensor(counts, dtype=torch.int32, device=q.device))
        want = R.refine_blocks(q, k, candidates, mask, **settings, head_n_select=counts)
        assert_same_selection(got, want, imp, rtol)


def check_prefilter(q, k, v, mask, block_mask, producer, rtol):
    """prefill_prefilter_blocks against reference.prefilter_blocks, on the reference producer's selection of twice
    ``n_select`` blocks (the kernel takes the mask's block structure where there is a mask, as the dispatch gives
    it)."""
    n_sel, bs = producer["n_select"], producer["block_size"]
    candidates = R.topk_attention(q, k, v, mask, **dict(producer, n_select=2 * n_sel))[1]
    if mask is not None and block_mask is None:
        block_mask = R.mask_blocks(mask, block_size=bs)
    in_range = R.listed_in_range(candidates, k, mask, producer["is_causal"], bs)
    imp = R.mean_key_importance(q.double(), k.double(), in_range, producer["scale"], bs)
    got = prefill_prefilter_blocks(q, R.block_means(k, bs).to(q.dtype), candidates, block_mask, **producer)
    assert_same_selection(got, R.prefilter_blocks(q, k, candidates, mask, **producer), imp, rtol)


def assert_same_selection(got, want, imp, rtol):
    """block_idx identical except where the swapped blocks tie in importance (within the dtype's precision)."""
    assert got.dtype == torch.int32 and got.shape == want.shape
    if torch.equal(got, want):
        return
    g2, w2, imp2 = got.reshape(-1, got.shape[-1]).cpu(), want.reshape(-1, want.shape[-1]).cpu(), imp.reshape(-1, imp.shape[-1]).cpu()
    for r in range(g2.shape[0]):
        if torch.equal(g2[r], w2[r]):
            continue
        gs, ws = set(g2[r].tolist()) - {-1}, set(w2[r].tolist()) - {-1}
        assert len(gs) == len(ws), f"row {r}: {g2[r].tolist()} vs {w2[r].tolist()}"
        assert g2[r].tolist() == sorted(gs) + [-1] * (g2.shape[1] - len(gs)), f"row {r} not ascending/-1 padded"
        only_g, only_w = sorted(gs - ws), sorted(ws - gs)
        gi, wi = imp2[r, only_g], imp2[r, only_w]
        scale = imp2[r].abs().max().item()
        assert (wi.max() - gi.min()).item() <= rtol * scale + 1e-12, (
            f"row {r}: picked {only_g} ({gi.tolist()}) instead of {only_w} ({wi.tolist()})"
        )


def make_qkv(B, Hq, Hkv, Sq, Skv, D, dtype, device, layout="contig", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def t(H, S):
        x = torch.randn(B, S, H, D, generator=g)  # [B, S, H, D] then transposed: non-contiguous
        x = x.transpose(1, 2) if layout == "bshd" else x.transpose(1, 2).contiguous()
        return x.to(device=device, dtype=dtype)

    return t(Hq, Sq), t(Hkv, Skv), t(Hkv, Skv)


def make_mask(kind, B, Sq, Skv, valid, device, left=False, dtype=torch.float32, seed=1):
    """bool / float masks [B, 1, Sq|1, Skv]: key j valid for row b when j < valid[b] (or >= Skv - valid[b] if left)."""
    if kind is None:
        return None
    j = torch.arange(Skv)
    lens = torch.tensor(valid)[:, None]
    keep = (j[None, :] >= Skv - lens) if left else (j[None, :] < lens)  # [B, Skv]
    keep = keep[:, None, None, :].expand(B, 1, Sq, Skv)
    if Sq > 1:  # causal part aligned to the end of the valid region, HF style
        i = torch.arange(Sq)[:, None]
        keep = keep & (j[None, :] <= i + (Skv - Sq))
    if kind == "bool":
        return keep.contiguous().to(device)
    g = torch.Generator().manual_seed(seed)
    bias = 0.5 * torch.randn(B, 1, Sq, Skv, generator=g)
    m = torch.where(keep, bias, torch.finfo(dtype).min)
    return m.to(dtype=dtype, device=device)


def stored_like_shared_mask(mask):
    """``mask`` in hylra::shared_mask's layout (the one the passes give the ops), its row padding holding values
    that would allow every key if a kernel read them as mask values (True; NaN for a float mask)."""
    stored = R.shared_mask(mask)
    rows = torch.as_strided(stored, (*stored.shape[:-1], stored.stride(-2)), stored.stride())
    rows[..., mask.shape[-1]:] = True if mask.dtype == torch.bool else float("nan")
    return stored


# -------------------------------------------------------------------------------------------------------- the cases
DECODE_CASES = {
    # name: (B, Hq, Hkv, Skv, D, mask kind, valid lengths, left, is_causal, n_select, sink, local)
    "d64_g1_nomask": (1, 2, 2, 200, 64, None, None, False, False, 5, 1, 1),
    "d128_g4_bool_static": (3, 8, 2, 250, 128, "bool", [250, 90, 17], False, False, 4, 1, 1),
    "d64_g8_float_left": (3, 8, 1, 230, 64, "float", [230, 100, 33], True, False, 5, 1, 2),
    "d64_g4_causal_topleft": (2, 4, 1, 100, 64, None, None, False, True, 3, 1, 1),
    "d64_g4_nsel_ge_blocks": (2, 8, 2, 150, 64, "bool", [150, 70], False, False, 12, 1, 1),
    "d64_g4_fully_masked": (2, 4, 1, 120, 64, "bool", [120, 0], False, False, 3, 1, 1),
}
PREFILL_CASES = {
    # name: (B, Hq, Hkv, Sq, Skv, D, mask kind, valid, left, is_causal, n_select, sink, local)
    "d64_g4_causal": (1, 4, 1, 100, 100, 64, None, None, False, True, 3, 1, 1),
    "d64_g1_bool_left": (3, 2, 2, 70, 70, 64, "bool", [70, 50, 9], True, False, 3, 1, 1),
    "d128_g8_float_sq_ne_skv": (1, 8, 1, 40, 90, 128, "float", [90], False, False, 3, 1, 1),
    "d64_g2_causal_sq_lt_skv": (2, 4, 2, 40, 90, 64, None, None, False, True, 2, 1, 1),
    "d64_g4_nsel_ge_blocks": (2, 4, 1, 60, 60, 64, "bool", [60, 33], False, False, 8, 1, 1),
    "d64_g4_fully_masked": (2, 4, 1, 50, 50, 64, "bool", [50, 0], False, False, 2, 1, 1),
    # more selected blocks below the diagonal than one gathered tile holds
    "d64_g4_causal_long": (1, 4, 1, 200, 200, 64, None, None, False, True, 9, 1, 2),
}


# (dtype, block size) by device. On the GPU every block size the dispatch accepts: their launch configurations
# differ (shared memory, rows per program); one test each, so the GPU run compiles them in parallel processes.
SETTINGS = {
    "cpu": {"f32-16": (torch.float32, 16)},
    "cuda": {"bf16-64": (torch.bfloat16, 64), "fp16-64": (torch.float16, 64), "bf16-32": (torch.bfloat16, 32),
             "bf16-16": (torch.bfloat16, 16), "bf16-128": (torch.bfloat16, 128)},
}


def _scale_case(case, device, prefill):
    """On the GPU multiply lengths so that block 64 gives several blocks (and lengths stay non-multiples of 64)."""
    if device == "cpu":
        return case
    f = 4
    if prefill:
        B, Hq, Hkv, Sq, Skv, D, mk, valid, left, causal, n, s, l = case
        return (B, Hq, Hkv, Sq * f + 3, Skv * f + 3, D, mk, None if valid is None else [v * f + (v > 0) * 3 for v in valid],
                left, causal, n, s, l)
    B, Hq, Hkv, Skv, D, mk, valid, left, causal, n, s, l = case
    return (B, Hq, Hkv, Skv * f + 3, D, mk, None if valid is None else [v * f + (v > 0) * 3 for v in valid], left,
            causal, n, s, l)


def _check_decode(case, device, setting):
    dtype, bs = SETTINGS[device][setting]
    B, Hq, Hkv, Skv, D, mk, valid, left, causal, n_sel, sink, local = _scale_case(case, device, False)
    q, k, v = make_qkv(B, Hq, Hkv, 1, Skv, D, dtype, device, layout="bshd")
    mask = make_mask(mk, B, 1, Skv, valid, device, left=left, dtype=torch.float32 if dtype == torch.float32 else dtype)
    tol = TOL[dtype]
    common = dict(is_causal=causal, scale=None, block_size=bs)
    producer = dict(common, n_select=n_sel, sink_blocks=sink, local_blocks=local)
    rout, rbidx = R.topk_attention(q, k, v, mask, **producer)
    imp, cand = ref_importance(q, k, v, mask, causal, None, bs)
    n_kb = R.num_blocks(Skv, bs)
    # With a mask: as given, then as the passes give it, stored with padded rows and with its block ranges (the
    # blocks to visit; the consumer's key count decided from them where they can).
    layouts = [(mask, None)]
    if mask is not None:
        stored = stored_like_shared_mask(mask)
        layouts.append((stored, R.mask_blocks(stored, block_size=bs)))
    for mask, block_mask in layouts:
        out, bidx = decode_topk_attention(q, k, v, mask, block_mask, **producer)
        assert out.dtype == q.dtype and out.shape == rout.shape
        assert rel_err(out, rout) <= tol, (dtype, rel_err(out, rout))
        assert_same_selection(bidx, rbidx, imp, 10 * tol)
        # consumer on the reference selection: no row dense, rows dense by their count, every row dense
        for msl in (0, 40 * (bs // 16), 10**6):
            sout = decode_sparse_attention(q, k, v, rbidx, mask, block_mask, **common, min_seq_len=msl)
            rsout = R.sparse_attention(q, k, v, rbidx, mask, **common, min_seq_len=msl)
            assert rel_err(sout, rsout) <= tol, (dtype, msl, rel_err(sout, rsout))
        if n_sel >= n_kb:  # selection covers every candidate: the consumer equals dense attention
            assert ((bidx >= 0).sum(-1) == cand.sum(-1)).all()
            sout = decode_sparse_attention(q, k, v, bidx, mask, block_mask, **common, min_seq_len=0)
            assert rel_err(sout, rout) <= tol
        assert rel_err(decode_attention(q, k, v, mask, block_mask, **common), rout) <= tol
        check_refine(decode_refine_blocks, q, k, v, mask, block_mask, producer, 10 * tol)
    if valid is not None and min(valid) == 0:
        b0 = valid.index(0)
        assert torch.all(out[b0] == 0) and torch.all(bidx[b0] == -1)


def _check_prefill(case, device, setting):
    dtype, bs = SETTINGS[device][setting]
    B, Hq, Hkv, Sq, Skv, D, mk, valid, left, causal, n_sel, sink, local = _scale_case(case, device, True)
    q, k, v = make_qkv(B, Hq, Hkv, Sq, Skv, D, dtype, device, layout="bshd" if B > 1 else "contig")
    mask = make_mask(mk, B, Sq, Skv, valid, device, left=left, dtype=torch.float32 if dtype == torch.float32 else dtype)
    tol = TOL[dtype]
    common = dict(is_causal=causal, scale=None, block_size=bs)
    producer = dict(common, n_select=n_sel, sink_blocks=sink, local_blocks=local)
    rout, rbidx = R.topk_attention(q, k, v, mask, **producer)
    imp, cand = ref_importance(q, k, v, mask, causal, None, bs)
    # With a mask: as given, then as the passes give it, stored with padded rows (16-byte loads) and with its
    # block structure (blocks skipped, or run without mask reads).
    layouts = [(mask, None)]
    if mask is not None:
        stored = stored_like_shared_mask(mask)
        layouts.append((stored, R.mask_blocks(stored, block_size=bs)))
    for mask, block_mask in layouts:
        # the producer's scratch in one launch, and over budget: launches of 3 programs (the last one shorter
        # where the grid is no multiple of 3), and of one (budget 0); on the CPU the read-back takes 2 blocks per
        # step, so its loop runs several
        hp = P._launch_cfg("dense_x", Hq // Hkv, bs, D)[0]
        for budget in (P.X_BUDGET_BYTES, 3 * R.num_blocks(Skv, bs) * hp * bs * 4, 0):
            saved = P.X_BUDGET_BYTES, P.X_STEP_BLOCKS
            P.X_BUDGET_BYTES, P.X_STEP_BLOCKS = budget, 2 if device == "cpu" else P.X_STEP_BLOCKS
            try:
                out, bidx = prefill_topk_attention(q, k, v, mask, block_mask, **producer)
            finally:
                P.X_BUDGET_BYTES, P.X_STEP_BLOCKS = saved
            assert out.dtype == q.dtype and out.shape == rout.shape
            assert rel_err(out, rout) <= tol, (dtype, budget, rel_err(out, rout))
            assert_same_selection(bidx, rbidx, imp, 10 * tol)
        # min_seq_len: none dense; the first query blocks' rows dense (whole programs, then some rows of one);
        # every program dense (it runs the dense pass, its selection unread).
        for msl in (0, 30 * (bs // 16), 10**6):
            sout = prefill_sparse_attention(q, k, v, rbidx, mask, block_mask, **common, min_seq_len=msl)
            rsout = R.sparse_attention(q, k, v, rbidx, mask, **common, min_seq_len=msl)
            assert rel_err(sout, rsout) <= tol, (dtype, msl, rel_err(sout, rsout))
        if n_sel >= R.num_blocks(Skv, bs):
            assert ((bidx >= 0).sum(-1) == cand.sum(-1)).all()
            sout = prefill_sparse_attention(q, k, v, bidx, mask, block_mask, **common, min_seq_len=0)
            assert rel_err(sout, rout) <= tol
        assert rel_err(prefill_attention(q, k, v, mask, block_mask, **common), rout) <= tol
        check_refine(prefill_refine_blocks, q, k, v, mask, block_mask, producer, 10 * tol)
        check_prefilter(q, k, v, mask, block_mask, producer, 10 * tol)
    if valid is not None and min(valid) == 0:
        b0 = valid.index(0)
        assert torch.all(out[b0] == 0) and torch.all(bidx[b0] == -1)


# ------------------------------------------------------------------------------------------------ interpreter (CI)
# Triton 3.6's interpreter turns size-1 arrays into Python ints with int(), an error from numpy 2.4 on (3.8 and 3.9
# run these; the kernels compiled for a GPU are not affected).
needs_working_interpreter = pytest.mark.skipif(
    tuple(int(part) for part in triton.__version__.split(".")[:2]) == (3, 6)
    and tuple(int(part) for part in np.__version__.split(".")[:2]) >= (2, 4),
    reason=f"triton {triton.__version__}'s interpreter fails on numpy {np.__version__}: install numpy<2.4 or "
    "triton>=3.8",
)


# The kernels' keys per step over selected blocks: 64 gathers four blocks of 16 into a tile (what the GPU runs at
# blocks of 16 and 32), 16 takes one block per step (what it runs at 64 and 128, and its GPU tests cover). Every
# case runs gathered; a few also one block per step, on the CPU too.
TILES = {"gathered-tiles": 64, "block-tiles": 16}
BLOCK_TILE_CASES = {"d128_g4_bool_static", "d64_g8_float_left", "d64_g4_causal_long", "d128_g8_float_sq_ne_skv"}


def _cases(cases):
    return [pytest.param(name, tiles, id=f"{tiles}-{name}") for name in sorted(cases) for tiles in TILES
            if tiles == "gathered-tiles" or name in BLOCK_TILE_CASES]


@pytest.fixture(params=list(TILES))
def tile_keys(request, monkeypatch):
    monkeypatch.setattr(C, "TILE_KEYS", TILES[request.param])


@needs_working_interpreter
@pytest.mark.parametrize("name, tiles", _cases(DECODE_CASES))
def test_decode_interpreter(name, tiles, monkeypatch):
    monkeypatch.setattr(C, "TILE_KEYS", TILES[tiles])
    _check_decode(DECODE_CASES[name], "cpu", "f32-16")


@needs_working_interpreter
@pytest.mark.parametrize("name, tiles", _cases(PREFILL_CASES))
def test_prefill_interpreter(name, tiles, monkeypatch):
    monkeypatch.setattr(C, "TILE_KEYS", TILES[tiles])
    _check_prefill(PREFILL_CASES[name], "cpu", "f32-16")


def test_select_ties_and_padding_interpreter():
    """Exact ties resolve to the lower index; forced sink/local; too few candidates pad -1 (prefill select path);
    selecting among a list's entries writes the entries' block ids."""

    def check(imp, cases):
        cand = imp >= 0
        rows, n_x = imp.shape
        ids = torch.arange(n_x, dtype=torch.int32) * 3 + 1  # a candidate list: ascending block ids
        for n_select, sink, local in cases:
            want = R.select_blocks(imp.clamp_min(0), cand, n_select, sink, local)
            for listed in (None, ids.expand(rows, n_x).reshape(1, rows, 1, n_x)):
                out = torch.empty(1, rows, 1, n_select, dtype=torch.int32)
                P._select(imp.reshape(1, rows, 1, n_x), out, n_x, n_select, sink, local, NG=1, candidate_idx=listed)
                expected = want if listed is None else torch.where(want >= 0, ids[want.clamp_min(0).long()], -1)
                assert torch.equal(out.reshape(rows, n_select), expected), (n_select, sink, local, out, expected)

    imp = torch.tensor([[0.5, 0.1, 0.3, 0.3, 0.3, -1.0, 0.2, 0.3, 0.0, 0.05],
                        [-1.0] * 8 + [0.7, 0.2]], dtype=torch.float32)
    check(imp, [(4, 1, 1), (6, 2, 1), (12, 1, 2), (2, 1, 1)])
    # Distinct values (the search stops early), underflowed zeros and repeated values, non-candidates.
    g = torch.Generator().manual_seed(3)
    imp = torch.rand(3, 50, generator=g) ** 8
    imp[0, ::7] = 0.0
    imp[1, 10:30] = imp[1, 5]
    imp[2, ::3] = -1.0
    check(imp, [(8, 1, 2), (20, 0, 0), (3, 1, 2), (45, 2, 2)])


def _check_select_nan_and_inf(device: str) -> None:
    """A candidate whose summed importance is CUDA's NaN (bits 0x7FFFFFFF: the int32 search overflowed and spun
    forever on it), +inf or -0.0: the selection ends and equals the reference, which counts NaN and +inf as the
    largest number (after the forced blocks) and -0.0 as 0."""
    faulthandler.dump_traceback_later(300, exit=True)  # a search that spins again ends the run with its stack
    try:
        imp = torch.rand(2, 2, 40, generator=torch.Generator().manual_seed(7))  # [head group, row, block]
        imp.view(torch.int32)[1, 0, 17] = 0x7FFFFFFF  # NaN in the second group: the sum is NaN
        imp.view(torch.int32)[1, 0, 3] = 0x7FFFFFFF
        imp[0, 1, 9] = float("inf")
        imp[:, 1, 20:30] = -0.0
        for n_select, sink, local in ((8, 1, 2), (4, 0, 0), (39, 2, 2)):
            out = torch.empty(1, 1, 2, n_select, dtype=torch.int32, device=device)  # [B, Hkv, query blocks, n]
            P._select(imp.reshape(1, 2, 2, 40).to(device), out, 40, n_select, sink, local, NG=2)
            want = R.select_blocks(imp.sum(0), imp[0] >= 0, n_select, sink, local)
            assert torch.equal(out.cpu().reshape(2, n_select), want), (n_select, out, want)
            assert {3, 17} <= set(out[0, 0, 0].tolist())  # NaN ranks first among the free blocks
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_select_nan_and_inf_importance_interpreter():
    _check_select_nan_and_inf("cpu")


@needs_working_interpreter
@pytest.mark.parametrize("sq", [1, 16])
def test_consumers_past_16384_blocks_interpreter(sq):
    """Blocks of 16 past 256K keys, as consumers meet them when producers select in blocks of 64: the consumer and
    the refinement read listed blocks beyond block 16384 (no cap in the dispatch) and give the reference."""
    bs, Skv = 16, 16 * 16384 + 40
    q, k, v = make_qkv(1, 2, 1, sq, Skv, 64, torch.float32, "cpu", seed=5)
    n_kb = R.num_blocks(Skv, bs)
    listed = [0, 5000, 16383, 16384, n_kb - 2, n_kb - 1]
    candidates = torch.tensor(listed + [-1, -1], dtype=torch.int32).view(1, 1, 1, -1)
    common = dict(is_causal=True, scale=None, block_size=bs)
    sparse = decode_sparse_attention if sq == 1 else prefill_sparse_attention
    out = sparse(q, k, v, candidates, None, **common, min_seq_len=0)
    assert rel_err(out, R.sparse_attention(q, k, v, candidates, None, **common, min_seq_len=0)) <= 1e-4
    refine = decode_refine_blocks if sq == 1 else prefill_refine_blocks
    settings = dict(common, n_select=4, sink_blocks=1, local_blocks=1)
    got = refine(q, k, candidates, None, **settings)
    in_candidates = R._selection_keys(candidates, "candidates", q, k, bs)
    _, imp, _ = R.attention_with_importance(q.double(), k.double(), None, None, True, None, bs,
                                            keep=lambda s, e, allowed: allowed & in_candidates(s, e, allowed))
    assert_same_selection(got, R.refine_blocks(q, k, candidates, None, **settings), imp, 1e-3)


# ---------------------------------------------------------------------------------------------------------- on GPU
cuda = pytest.mark.cuda


@cuda
@pytest.mark.parametrize("setting", sorted(SETTINGS["cuda"]))
@pytest.mark.parametrize("name", sorted(DECODE_CASES))
def test_decode_cuda(name, setting):
    _check_decode(DECODE_CASES[name], "cuda", setting)


@cuda
@pytest.mark.parametrize("setting", sorted(SETTINGS["cuda"]))
@pytest.mark.parametrize("name", sorted(PREFILL_CASES))
def test_prefill_cuda(name, setting):
    _check_prefill(PREFILL_CASES[name], "cuda", setting)


@cuda
def test_select_nan_and_inf_importance_cuda():
    _check_select_nan_and_inf("cuda")


@cuda
def test_ops_dispatch_cuda():
    """torch.ops.hylra.* route supported inputs to Triton (no warning) and the rest to the reference (one warning)."""
    from hylra_compile.lowering import dispatch

    q, k, v = make_qkv(2, 8, 2, 1, 1000, 128, torch.bfloat16, "cuda")
    common = dict(is_causal=False, scale=None, block_size=64)
    producer = dict(common, n_select=4, sink_blocks=1, local_blocks=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, bidx = torch.ops.hylra.topk_attention(q, k, v, None, **producer)
        sout = torch.ops.hylra.sparse_attention(q, k, v, bidx, None, **common, min_seq_len=0)
    rout, rbidx = R.topk_attention(q, k, v, None, **producer)
    rsout = R.sparse_attention(q, k, v, rbidx, None, **common, min_seq_len=0)
    assert rel_err(out, rout) <= 2e-2 and rel_err(sout, rsout) <= 2e-2
    dispatch._warned.clear()
    q32, k32, v32 = q.float(), k.float(), v.float()
    with pytest.warns(UserWarning, match="reference"):
        torch.ops.hylra.topk_attention(q32, k32, v32, None, **producer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second time: no new warning
        torch.ops.hylra.topk_attention(q32, k32, v32, None, **producer)
    # A prompt's refinement with a mean-key pre-filter, a mask and no block mask: the dispatch derives the ranges.
    qp, kp, vp = make_qkv(2, 8, 2, 300, 1000, 128, torch.bfloat16, "cuda", seed=1)
    mask = make_mask("bool", 2, 300, 1000, [1000, 640], "cuda", left=True)
    candidates = R.topk_attention(qp, kp, vp, mask, **dict(producer, n_select=12))[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = torch.ops.hylra.refine_blocks(qp, kp, candidates, mask, **producer, prefilter=2)
    narrowed = R.prefilter_blocks(qp, kp, candidates, mask, **dict(producer, n_select=8))
    in_narrowed = R._selection_keys(narrowed, "narrowed", qp, kp, 64)
    _, imp, _ = R.attention_with_importance(qp.double(), kp.double(), None, mask, False, None, 64,
                                            keep=lambda s, e, allowed: allowed & in_narrowed(s, e, allowed))
    assert_same_selection(got, R.refine_blocks(qp, kp, candidates, mask, **producer, prefilter=2), imp, 0.2)


@cuda
@pytest.mark.parametrize("sq", [1, 40])
def test_more_than_8192_blocks_cuda(sq):
    """A 128K cache at block 16 (8192 blocks and a few for generated tokens) runs the Triton kernels, not the
    reference (which would hold [Sq, Skv] scores per head): producer, consumer and refinement against it."""
    bs, Skv = 16, 16 * 8200 + 5
    q, k, v = make_qkv(1, 4, 1, sq, Skv, 64, torch.bfloat16, "cuda")
    common = dict(is_causal=True, scale=None, block_size=bs)
    producer = dict(common, n_select=64, sink_blocks=4, local_blocks=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the reference warns
        out, bidx = torch.ops.hylra.topk_attention(q, k, v, None, **producer)
        sout = torch.ops.hylra.sparse_attention(q, k, v, bidx, None, **common, min_seq_len=0)
    rout, rbidx = R.topk_attention(q, k, v, None, **producer)
    imp, _ = ref_importance(q, k, v, None, True, None, bs)
    tol = TOL[torch.bfloat16]
    assert rel_err(out, rout) <= tol
    assert_same_selection(bidx, rbidx, imp, 10 * tol)
    assert rel_err(sout, R.sparse_attention(q, k, v, bidx, None, **common, min_seq_len=0)) <= tol
    check_refine(decode_refine_blocks if sq == 1 else prefill_refine_blocks, q, k, v, None, None, producer, 10 * tol)


@cuda
@pytest.mark.parametrize("sq", [1, 40])
def test_consumers_past_16384_blocks_cuda(sq):
    """Blocks of 16 past 256K keys (producers in blocks of 64): the ops run the consumer and refinement kernels,
    not the reference, and give it."""
    bs, Skv = 16, 16 * 16384 + 40
    q, k, v = make_qkv(1, 4, 1, sq, Skv, 64, torch.bfloat16, "cuda")
    n_kb = R.num_blocks(Skv, bs)
    listed = [0, 5000, 16383, 16384, n_kb - 2, n_kb - 1]  # n_kb is 16387: 16384 and these two are the last blocks
    candidates = torch.tensor(listed + [-1, -1], dtype=torch.int32, device="cuda").view(1, 1, 1, -1)
    candidates = candidates.expand(1, 1, R.num_blocks(sq, bs), -1).contiguous()
    common = dict(is_causal=True, scale=None, block_size=bs)
    settings = dict(common, n_select=4, sink_blocks=1, local_blocks=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the reference warns
        out = torch.ops.hylra.sparse_attention(q, k, v, candidates, None, **common, min_seq_len=0)
        got = torch.ops.hylra.refine_blocks(q, k, candidates, None, **settings)
    tol = TOL[torch.bfloat16]
    assert rel_err(out, R.sparse_attention(q, k, v, candidates, None, **common, min_seq_len=0)) <= tol
    in_candidates = R._selection_keys(candidates, "candidates", q, k, bs)
    _, imp, _ = R.attention_with_importance(q.double(), k.double(), None, None, True, None, bs,
                                            keep=lambda s, e, allowed: allowed & in_candidates(s, e, allowed))
    assert_same_selection(got, R.refine_blocks(q, k, candidates, None, **settings), imp, 10 * tol)


@cuda
def test_decode_cuda_graph():
    """Producer + consumer captured in one CUDA graph and replayed on new data give the eager results."""
    B, Hq, Hkv, Skv, D = 3, 32, 8, 4000, 128
    q, k, v = make_qkv(B, Hq, Hkv, 1, Skv, D, torch.bfloat16, "cuda")
    mask = make_mask("bool", B, 1, Skv, [4000, 2500, 300], "cuda")

    def step():
        common = dict(is_causal=False, scale=None, block_size=64)
        o, b = torch.ops.hylra.topk_attention(q, k, v, mask, **common, n_select=8, sink_blocks=1, local_blocks=2)
        return o, b, torch.ops.hylra.sparse_attention(q, k, v, b, mask, **common, min_seq_len=1024)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        res = step()
    q.copy_(torch.randn_like(q))
    g.replay()
    torch.cuda.synchronize()
    want = step()
    for a, b_ in zip(res, want):
        assert torch.equal(a, b_)


@needs_working_interpreter
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_decode_many_splits_interpreter(kind, tile_keys):
    """Several splits (strided over blocks when masked, trimmed to the allowed range; tiles cut at a split's end)
    give the reference."""
    B, Hq, Hkv, Skv, D, bs = 3, 4, 1, 300, 64, 16
    q, k, v = make_qkv(B, Hq, Hkv, 1, Skv, D, torch.float32, "cpu", layout="bshd", seed=3)
    mask = make_mask(kind, B, 1, Skv, [300, 70, 0], "cpu", left=(kind == "float"))
    common = dict(is_causal=False, scale=None, block_size=bs)
    producer = dict(common, n_select=5, sink_blocks=1, local_blocks=1)
    for splits in (3, 7):
        out, bidx = decode_topk_attention(q, k, v, mask, **producer, splits=splits)
        rout, rbidx = R.topk_attention(q, k, v, mask, **producer)
        assert rel_err(out, rout) <= 1e-4
        assert_same_selection(bidx, rbidx, ref_importance(q, k, v, mask, False, None, bs)[0], 1e-3)
        sout = decode_sparse_attention(q, k, v, rbidx, mask, **common, min_seq_len=100, splits=splits)
        assert rel_err(sout, R.sparse_attention(q, k, v, rbidx, mask, **common, min_seq_len=100)) <= 1e-4


@needs_working_interpreter
def test_mask_blocks_interpreter():
    """The Triton pass over a mask gives reference.mask_blocks: causal, padded and windowed bool masks, float masks
    with biases (a zero-bias block is whole, a biased one is not), one row for all queries, the stored layout."""
    from hylra_compile.kernels.masks import mask_blocks

    S, L, bs = 45, 53, 16
    i, j = torch.arange(S)[:, None], torch.arange(L)[None, :]
    causal = (j <= i + (L - S))[None, None]
    padded = causal & (j >= torch.tensor([0, 20])[:, None, None, None])
    window = causal & (j > i - 20)
    biased = torch.where(causal, torch.where(j < 16, 0.0, 0.5 * (j % 3 == 0)), torch.finfo(torch.float32).min)
    row = (j < 40)[None, None].expand(3, 1, 1, L)
    for mask in (causal, padded, window, biased, row, R.shared_mask(padded), R.shared_mask(biased)):
        assert torch.equal(mask_blocks(mask, block_size=bs), R.mask_blocks(mask, block_size=bs))


def test_readable_columns():
    """The kernels load mask columns up to Skv rounded up to 16 only where every row has them in its storage."""
    from hylra_compile.kernels._common import readable_columns

    mask = torch.ones(2, 1, 5, 90, dtype=torch.bool)
    assert readable_columns(mask) == 90  # the last row ends the storage
    assert readable_columns(R.shared_mask(mask)) == 96  # rows padded to 128
    assert readable_columns(torch.ones(2, 1, 5, 100, dtype=torch.bool)[..., :90]) == 96
    assert readable_columns(torch.ones(2, 1, 5, 92, dtype=torch.bool)[..., :90]) == 92
    assert readable_columns(torch.ones(2, 1, 90, 5, dtype=torch.bool).transpose(2, 3)) == 90  # columns strided
    assert readable_columns(torch.ones(1, 1, 1, 100)[..., :90].expand(3, 1, 7, 90)) == 96  # broadcast rows


@cuda
@pytest.mark.parametrize("chunked, stored", [(False, False), (True, False), (False, True)])
def test_materialised_mask_past_2_31_elements_cuda(chunked, stored):
    """A [1, 1, N, N] bool mask with N^2 > 2^31 (what HF materialises under tracing at 48K tokens): the producer
    (its scratch in one launch, or in chunks of 100 programs) and the consumer give the reference's rows, checked
    on the last query blocks; ``stored``: the mask as the passes give it (padded rows, with its block structure)."""
    N, bs, rows = 49216, 64, 128  # rows of N bytes: padded to 49280 when stored
    assert N * N > 2**31
    q, k, v = make_qkv(1, 4, 1, N, N, 64, torch.bfloat16, "cuda")
    mask = torch.ones(N, N, dtype=torch.bool, device="cuda").tril_()[None, None]
    block_mask = None
    if stored:
        mask = torch.ops.hylra.shared_mask(mask)
        block_mask = torch.ops.hylra.mask_blocks(mask, block_size=bs)  # the Triton pass over the mask
        assert torch.equal(block_mask, R.mask_blocks(mask, block_size=bs))
    common = dict(is_causal=False, scale=None, block_size=bs)
    producer = dict(common, n_select=16, sink_blocks=1, local_blocks=2)
    saved = P.X_BUDGET_BYTES
    P.X_BUDGET_BYTES = 100 * (N // bs) * 4 * bs * 4 if chunked else saved  # 4 heads x 64 queries per program
    try:
        out, bidx = torch.ops.hylra.topk_attention(q, k, v, mask, block_mask, **producer)
    finally:
        P.X_BUDGET_BYTES = saved
    sout = torch.ops.hylra.sparse_attention(q, k, v, bidx, mask, block_mask, **common, min_seq_len=0)
    tail_q, tail_mask = q[:, :, -rows:], mask[:, :, -rows:]
    rout, rbidx = R.topk_attention(tail_q, k, v, tail_mask, **producer)
    assert rel_err(out[:, :, -rows:], rout) <= TOL[torch.bfloat16]
    imp, _ = ref_importance(tail_q, k, v, tail_mask, False, None, bs)
    assert_same_selection(bidx[:, :, -rows // bs:], rbidx, imp, 10 * TOL[torch.bfloat16])
    rsout = R.sparse_attention(tail_q, k, v, bidx[:, :, -rows // bs:], tail_mask, **common, min_seq_len=0)
    assert rel_err(sout[:, :, -rows:], rsout) <= TOL[torch.bfloat16]
