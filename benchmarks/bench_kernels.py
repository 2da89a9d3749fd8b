"""Kernel benchmark: HyLRA Triton kernels vs torch SDPA dense, naive gather + SDPA, and FlexAttention.

Llama-3-8B attention shapes (32 query heads, 8 KV heads, head_dim 128, bf16), block 64, top_k 2048 tokens
(n_select 32). Median µs (triton.testing.do_bench, L2 flushed between calls) and, for decode, also under a CUDA graph
(do_bench_cudagraph). Prefill SDPA, producer and consumer take turns over 7 rounds (do_bench, 100 ms each): their
medians over the rounds, and speed ratios as the median of the per-round ratios; at 32K also 15 isolated calls each
(after an idle GPU) and the producer's kernels from torch.profiler. Bandwidth is the bytes a kernel must read (K and V
of the allowed / selected tokens) per second, as a fraction of a measured device-to-device copy (bytes read + written
per second).

    python benchmarks/bench_kernels.py --out benchmarks/results [--quick] [--no-flex] [--sweep] [--prefill-only]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hylra_compile.kernels import (  # noqa: E402
    decode_sparse_attention,
    decode_topk_attention,
    prefill_sparse_attention,
    prefill_topk_attention,
)
from hylra_compile.kernels.decode import _decode  # noqa: E402
from hylra_compile.kernels.prefill import _prefill_attn  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_model import copy_bandwidth  # noqa: E402

HQ, HKV, D, BS, TOPK = 32, 8, 128, 64, 2048
NSEL = TOPK // BS
SINK, LOCAL = 1, 2
DT = torch.bfloat16
F = torch.nn.functional


def med(fn, graph=False, rep=100):
    if graph:
        return 1e3 * do_bench_cudagraph(fn, rep=rep, return_mode="median")
    return 1e3 * do_bench(fn, warmup=10, rep=rep, return_mode="median")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def qkv(B, Sq, Skv):
    q = torch.randn(B, HQ, Sq, D, device="cuda", dtype=DT)
    k = torch.randn(B, HKV, Skv, D, device="cuda", dtype=DT)
    v = torch.randn(B, HKV, Skv, D, device="cuda", dtype=DT)
    return q, k, v


def gather_sdpa(q, k, v, bidx):
    """Naive: gather the selected tokens of each KV head, then SDPA (decode only)."""
    B = q.shape[0]
    tok = (bidx[:, :, 0, :, None].clamp_min(0).long() * BS + torch.arange(BS, device=q.device)).reshape(B, HKV, -1)
    kk = torch.gather(k, 2, tok[..., None].expand(-1, -1, -1, D))
    vv = torch.gather(v, 2, tok[..., None].expand(-1, -1, -1, D))
    return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)


_flex = None


def flex():
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        torch._dynamo.config.recompile_limit = 64
        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex


def flex_block_mask(bidx, Sq, Skv, causal):
    """BlockMask with exactly our selection: per (b, q head, query block) the selected KV blocks of 64; blocks below
    the diagonal are 'full', the diagonal one is partial with the causal mask_mod."""
    from torch.nn.attention.flex_attention import BlockMask

    G = HQ // HKV
    sel = bidx.repeat_interleave(G, dim=1).long()  # [B, HQ, nqb, nsel]
    valid = sel >= 0
    big = 1 << 30
    qb = torch.arange(sel.shape[2], device=sel.device)[None, None, :, None]
    diag = valid & (sel == qb) if causal else torch.zeros_like(valid)
    full = valid & ~diag

    nkb = triton.cdiv(Skv, BS)

    def pack(m):  # kv_indices must have one column per KV block
        idx = torch.where(m, sel, big).sort(-1).values
        idx = torch.where(idx == big, 0, idx).to(torch.int32)
        if idx.shape[-1] < nkb:
            idx = torch.nn.functional.pad(idx, (0, nkb - idx.shape[-1]))
        return m.sum(-1).to(torch.int32), idx[..., :nkb].contiguous()

    kv_num, kv_idx = pack(diag)
    full_num, full_idx = pack(full)
    # mask_mod repeats the selection (eager flex applies only mask_mod; compiled flex calls it on partial blocks).
    table = torch.zeros(*bidx.shape[:3], nkb + 1, dtype=torch.bool, device=bidx.device)
    table.scatter_(-1, torch.where(bidx < 0, nkb, bidx).long(), True)

    def mask_mod(b, h, q, k):
        ok = table[b, h // G, q // BS, k // BS]
        return (ok & (q >= k)) if causal else ok

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BS, mask_mod=mask_mod,
                                    seq_lengths=(Sq, Skv))


_flex_opts = {}


def run_flex(q, k, v, bm):
    """Compiled flex_attention; kernel options chosen once per shape (so timed calls never recompile)."""
    fx = flex()
    key = (tuple(q.shape), tuple(k.shape))
    if key not in _flex_opts:
        try:
            fx(q, k, v, block_mask=bm, enable_gqa=True)
            _flex_opts[key] = None
        except Exception:  # noqa: BLE001
            _flex_opts[key] = {"BLOCK_M": 64, "BLOCK_N": 64}
    opts = _flex_opts[key]
    if opts is None:
        return fx(q, k, v, block_mask=bm, enable_gqa=True)
    return fx(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=opts)


def bench_decode(res, B, Skv, copy_bw, do_flex, valid=None):
    name = f"decode B={B} Skv={Skv // 1024}K" + (f" valid={valid // 1024}K (static cache, bool mask)" if valid else "")
    print("==", name, flush=True)
    q, k, v = qkv(B, 1, Skv)
    mask = None
    if valid is not None:
        mask = torch.zeros(B, 1, 1, Skv, dtype=torch.bool, device="cuda")
        mask[..., :valid] = True
    row = {"case": name, "B": B, "Skv": Skv, "valid": valid or Skv}
    n_tok = valid or Skv
    bytes_dense = B * HKV * n_tok * D * 2 * 2
    bytes_sparse = B * HKV * NSEL * BS * D * 2 * 2
    kv = (k[:, :, :n_tok], v[:, :, :n_tok]) if valid else (k, v)
    row["sdpa_dense_us"] = med(lambda: F.scaled_dot_product_attention(q, *kv, enable_gqa=True))
    row["sdpa_dense_graph_us"] = med(lambda: F.scaled_dot_product_attention(q, *kv, enable_gqa=True), graph=True)
    prod = lambda: decode_topk_attention(
        q, k, v, mask, is_causal=False, scale=None, block_size=BS, n_select=NSEL, sink_blocks=SINK, local_blocks=LOCAL,
    )  # noqa: E731
    out, bidx = prod()
    ref = F.scaled_dot_product_attention(q, *kv, enable_gqa=True)
    row["producer_rel_err_vs_sdpa"] = rel(out, ref)
    row["producer_us"] = med(prod)
    row["producer_graph_us"] = med(prod, graph=True)
    row["producer_bw_frac"] = bytes_dense / (row["producer_graph_us"] * 1e-6) / copy_bw
    cons = lambda: decode_sparse_attention(
        q, k, v, bidx, mask, is_causal=False, scale=None, block_size=BS, min_seq_len=0,
    )  # noqa: E731
    row["consumer_rel_err_vs_gather"] = rel(cons(), gather_sdpa(q, k, v, bidx))
    row["consumer_us"] = med(cons)
    row["consumer_graph_us"] = med(cons, graph=True)
    row["consumer_bw_frac"] = bytes_sparse / (row["consumer_graph_us"] * 1e-6) / copy_bw
    row["gather_sdpa_us"] = med(lambda: gather_sdpa(q, k, v, bidx))
    row["gather_sdpa_graph_us"] = med(lambda: gather_sdpa(q, k, v, bidx), graph=True)
    if do_flex and valid is None:
        try:
            bm = flex_block_mask(bidx, 1, Skv, False)
            fn = lambda: run_flex(q, k, v, bm)  # noqa: E731
            row["flex_rel_err_vs_consumer"] = rel(fn(), cons())
            row["flex_kernel_options"] = str(_flex_opts.get((tuple(q.shape), tuple(k.shape))))
            row["flex_us"] = med(fn)
            row["flex_graph_us"] = med(fn, graph=True)
        except Exception as e:  # noqa: BLE001
            row["flex_error"] = repr(e)[:300]
    row["producer_vs_sdpa"] = row["producer_us"] / row["sdpa_dense_us"]
    row["producer_graph_vs_sdpa_graph"] = row["producer_graph_us"] / row["sdpa_dense_graph_us"]
    row["consumer_speedup_vs_sdpa"] = row["sdpa_dense_us"] / row["consumer_us"]
    row["consumer_graph_speedup_vs_sdpa_graph"] = row["sdpa_dense_graph_us"] / row["consumer_graph_us"]
    print(json.dumps(row), flush=True)
    res.append(row)
    del q, k, v, kv
    torch.cuda.empty_cache()


def interleaved(fns, rounds, rep):
    """{name: [one do_bench median per round]}, the functions taking turns within each round: the H100's speed
    drifts by several percent between runs, so ratios are taken within a round."""
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(med(fn, rep=rep))
    return out


def isolated(fns, iters, sleep_cycles=2_000_000, calls=1):
    """{name: [µs per call]}: each function timed (CUDA events) as the last of ``calls`` back-to-back calls, after an
    L2 flush and a GPU sleep of ``sleep_cycles`` (which also covers the host's launch work), the functions taking
    turns. With calls=1 this is how a single prefill sees the GPU, with the clock boost of an idle card."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    out = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            flush.zero_()
            torch.cuda._sleep(sleep_cycles)
            for _ in range(calls):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
            b.synchronize()
            out[name].append(1e3 * a.elapsed_time(b))
    return out


def kernel_times(fn, calls=3):
    """{kernel name: mean device µs per call} of fn, from torch.profiler."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.self_device_time_total / calls for e in prof.key_averages() if e.self_device_time_total > 0}


def bench_prefill(res, B, S, do_flex, rep=100, rounds=7):
    name = f"prefill B={B} S={S // 1024}K causal"
    print("==", name, flush=True)
    q, k, v = qkv(B, S, S)
    row = {"case": name, "B": B, "Sq": S, "Skv": S}
    flops_dense = 4 * B * HQ * D * S * S / 2
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    prod = lambda: prefill_topk_attention(
        q, k, v, None, is_causal=True, scale=None, block_size=BS, n_select=NSEL, sink_blocks=SINK, local_blocks=LOCAL,
    )  # noqa: E731
    out, bidx = prod()
    row["producer_rel_err_vs_sdpa"] = rel(out, sdpa())
    cons = lambda: prefill_sparse_attention(
        q, k, v, bidx, None, is_causal=True, scale=None, block_size=BS, min_seq_len=0,
    )  # noqa: E731
    ts = interleaved({"sdpa_causal_us": sdpa, "producer_us": prod, "consumer_us": cons}, rounds, rep)
    row["rounds_us"] = ts
    for key, t in ts.items():
        row[key] = statistics.median(t)
    row["producer_vs_sdpa"] = statistics.median(p / d for p, d in zip(ts["producer_us"], ts["sdpa_causal_us"]))
    row["consumer_speedup_vs_sdpa"] = statistics.median(d / c for c, d in zip(ts["consumer_us"],
                                                                             ts["sdpa_causal_us"]))
    if S == 32768:
        iso = isolated({"sdpa": sdpa, "producer": prod, "consumer": cons}, 15)
        row["isolated_us"] = {key: statistics.median(t) for key, t in iso.items()}
        row["isolated_producer_vs_sdpa"] = statistics.median(p / d for p, d in zip(iso["producer"], iso["sdpa"]))
        row["isolated_consumer_speedup_vs_sdpa"] = statistics.median(d / c for c, d in zip(iso["consumer"],
                                                                                          iso["sdpa"]))
        row["producer_kernels_us"] = kernel_times(prod)
    import hylra_compile.kernels.prefill as P

    hp = P._launch_cfg("dense_x", HQ // HKV, BS, D)[0]
    row["producer_launches"] = triton.cdiv(triton.cdiv(S, BS) * B * HQ // hp, P.x_chunk(triton.cdiv(S, BS), hp, BS))
    fa = lambda: _prefill_attn(q, k, v, None, True, None, BS, None, 0)  # noqa: E731
    row["producer_pass1_fa_us"] = med(fa, rep=rep)
    row["dense_fa_tflops"] = flops_dense / (row["producer_pass1_fa_us"] * 1e-6) / 1e12
    row["sdpa_tflops"] = flops_dense / (row["sdpa_causal_us"] * 1e-6) / 1e12
    n_keys = (bidx >= 0).sum().item() * BS  # approx keys visited (diagonal blocks counted whole)
    row["consumer_tflops"] = 4 * HQ // HKV * BS * n_keys * D / (row["consumer_us"] * 1e-6) / 1e12
    if do_flex:
        try:
            bm = flex_block_mask(bidx, S, S, True)
            fn = lambda: run_flex(q, k, v, bm)  # noqa: E731
            row["flex_rel_err_vs_consumer"] = rel(fn(), cons())
            row["flex_kernel_options"] = str(_flex_opts.get((tuple(q.shape), tuple(k.shape))))
            row["flex_us"] = med(fn, rep=rep)
        except Exception as e:  # noqa: BLE001
            row["flex_error"] = repr(e)[:300]
    print(json.dumps(row), flush=True)
    res.append(row)
    del q, k, v
    torch.cuda.empty_cache()


def sweep(res, prefill_only=False):
    """Launch-config sweep for the defaults (decode splits, prefill warps/stages)."""
    out = {}
    if prefill_only:
        return sweep_prefill(out, res)
    for B, Skv in [(1, 32768), (8, 32768)]:
        q, k, v = qkv(B, 1, Skv)
        _, bidx = decode_topk_attention(
            q, k, v, None, is_causal=False, scale=None, block_size=BS, n_select=NSEL, sink_blocks=SINK,
            local_blocks=LOCAL,
        )
        for sp in [8, 16, 32, 64, 128]:
            for nw, ns in [(4, 3), (4, 4), (8, 3)]:
                t = med(lambda: _decode(q, k, v, None, False, None, BS, None, NSEL, SINK, LOCAL, 0, splits=sp,
                                        num_warps=nw, num_stages=ns), graph=True)
                out[f"decode_producer B={B} Skv={Skv} splits={sp} nw={nw} ns={ns}"] = t
        for sp in [2, 4, 8, 16, 32]:
            for nw, ns in [(4, 3), (4, 4), (2, 3)]:
                t = med(lambda: _decode(q, k, v, None, False, None, BS, bidx, 0, 0, 0, 0, splits=sp, num_warps=nw,
                                        num_stages=ns), graph=True)
                out[f"decode_consumer B={B} Skv={Skv} splits={sp} nw={nw} ns={ns}"] = t
        del q, k, v
    return sweep_prefill(out, res)


def sweep_prefill(out, res, S=32768):
    """Prefill launch configs (HP heads per program, num_warps, num_stages) for the three FA passes."""
    q, k, v = qkv(1, S, S)
    _, bidx = prefill_topk_attention(
        q, k, v, None, is_causal=True, scale=None, block_size=BS, n_select=NSEL, sink_blocks=SINK, local_blocks=LOCAL,
    )
    # Timings only: the 16-warp sparse builds gave wrong rows in one GPU test case (block 32, float mask; see
    # kernels/prefill.py TUNED), so a faster 16-warp consumer here is no candidate without that test passing.
    configs = [(4, 8, 3), (4, 8, 4), (4, 16, 2), (4, 16, 3), (2, 8, 3), (2, 4, 3)]
    for cfg in configs:
        tag = "hp={} nw={} ns={}".format(*cfg)
        runs = {"dense": (None, False), "dense_x": (None, True), "sparse": (bidx, False)}
        for kind, (idx, imp) in runs.items():
            try:
                out[f"prefill_{kind} S={S} {tag}"] = med(
                    lambda: _prefill_attn(q, k, v, None, True, None, BS, idx, 0, importance=imp, cfg=cfg),
                    rep=100)
            except Exception as e:  # noqa: BLE001 (a config can exceed shared memory)
                out[f"prefill_{kind} S={S} {tag} error"] = repr(e)[:100]
    for key, t in sorted(out.items()):
        print(f"sweep {key}: {t}", flush=True)
    res.append({"case": "sweep", **out})


def profile_prefill(S=32768):
    """Per-kernel device times (µs per call) of the prefill producer, via torch.profiler."""
    q, k, v = qkv(1, S, S)
    times = kernel_times(lambda: prefill_topk_attention(
        q, k, v, None, is_causal=True, scale=None, block_size=BS, n_select=NSEL, sink_blocks=SINK, local_blocks=LOCAL,
    ))
    print(f"== profile producer S={S}: {json.dumps(times)}", flush=True)


def targets(res):
    """The issue's speed targets, judged on this run's rows (decode on the CUDA-graph numbers)."""
    by = {r["case"]: r for r in res}
    rows = []

    def check(name, case, value, ok, fmt):
        if case in by:
            rows.append(f"| {name} | {fmt.format(value(by[case]))} | {'yes' if ok(value(by[case])) else 'no'} |")

    for n in ("32K", "128K"):
        check(f"decode consumer B=1 Skv={n} <= 8 us", f"decode B=1 Skv={n}", lambda r: r["consumer_graph_us"],
              lambda x: x <= 8, "{:.1f} us")
    for n in ("8K", "32K", "128K"):
        check(f"decode consumer B=8 Skv={n} >= 70% of copy bandwidth", f"decode B=8 Skv={n}",
              lambda r: 100 * r["consumer_bw_frac"], lambda x: x >= 70, "{:.0f}%")
    for b in (1, 8):
        for n in ("32K", "128K"):
            check(f"decode producer B={b} Skv={n} <= 1.15x SDPA", f"decode B={b} Skv={n}",
                  lambda r: r["producer_graph_vs_sdpa_graph"], lambda x: x <= 1.15, "{:.3f}x")
    check("prefill consumer S=32K >= 6x faster than SDPA causal", "prefill B=1 S=32K causal",
          lambda r: r["consumer_speedup_vs_sdpa"], lambda x: x >= 6, "{:.2f}x")
    check("prefill producer S=32K <= 1.25x SDPA causal", "prefill B=1 S=32K causal",
          lambda r: r["producer_vs_sdpa"], lambda x: x <= 1.25, "{:.2f}x")
    static, plain = by.get("decode B=1 Skv=128K valid=20K (static cache, bool mask)"), by.get("decode B=1 Skv=20K")
    if static and plain:
        for op in ("producer", "consumer"):
            ratio = static[f"{op}_graph_us"] / plain[f"{op}_graph_us"]
            rows.append(f"| {op}: 128K static cache holding 20K costs what a 20K cache costs | "
                        f"{static[f'{op}_graph_us']:.1f} vs {plain[f'{op}_graph_us']:.1f} us ({ratio:.2f}x) | "
                        f"{'yes' if ratio <= 1.15 else 'no'} (within 15%) |")
    if not rows:
        return []
    return ["", "## Targets (this run)", "", "| target | measured | met? |", "|---|---|---|"] + rows


def write(res, meta, outdir):
    tag = meta["device"].replace(" ", "_")
    base = os.path.join(outdir, f"kernels-{tag}")
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "results": res}, f, indent=1)
    lines = [f"# HyLRA kernel benchmark — {meta['device']} — {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}; Llama-3-8B attention (32 q heads, 8 KV heads, d=128, "
             f"bf16), block {BS}, top_k {TOPK} ({NSEL} blocks). Median µs; 'graph' = under a CUDA graph; prefill "
             f"SDPA / producer / consumer: median of interleaved rounds (do_bench each), ratios the median of "
             f"per-round ratios. "
             f"Copy bandwidth {meta['copy_bw_TBps']:.2f} TB/s.", ""]
    dec = [r for r in res if r["case"].startswith("decode")]
    if dec:
        lines += ["## Decode", "",
                  "| case | SDPA | SDPA graph | producer | producer graph | prod/SDPA (graph) | prod BW | consumer | "
                  "consumer graph | cons BW | gather+SDPA (graph) | Flex (graph) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in dec:
            fl = f"{r['flex_us']:.1f} ({r['flex_graph_us']:.1f})" if "flex_us" in r else r.get("flex_error", "-")[:40]
            lines.append(
                f"| {r['case']} | {r['sdpa_dense_us']:.1f} | {r['sdpa_dense_graph_us']:.1f} | {r['producer_us']:.1f} | "
                f"{r['producer_graph_us']:.1f} | {r['producer_vs_sdpa']:.2f} ({r['producer_graph_vs_sdpa_graph']:.2f}) | "
                f"{100 * r['producer_bw_frac']:.0f}% | {r['consumer_us']:.1f} | {r['consumer_graph_us']:.1f} | "
                f"{100 * r['consumer_bw_frac']:.0f}% | {r['gather_sdpa_us']:.1f} ({r['gather_sdpa_graph_us']:.1f}) | {fl} |")
    pre = [r for r in res if r["case"].startswith("prefill")]
    if pre:
        lines += ["", "## Prefill (causal)", "",
                  "| case | SDPA causal | producer | prod/SDPA | producer launches | FA alone | consumer | "
                  "SDPA/consumer | Flex | TFLOP/s SDPA / our FA / consumer |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in pre:
            fl = f"{r['flex_us']:.0f}" if "flex_us" in r else r.get("flex_error", "-")[:40]
            lines.append(
                f"| {r['case']} | {r['sdpa_causal_us']:.0f} | {r['producer_us']:.0f} | {r['producer_vs_sdpa']:.2f} | "
                f"{r.get('producer_launches', '-')} | "
                f"{r['producer_pass1_fa_us']:.0f} | {r['consumer_us']:.0f} | {r['consumer_speedup_vs_sdpa']:.2f}x | {fl} | "
                f"{r['sdpa_tflops']:.0f} / {r['dense_fa_tflops']:.0f} / {r['consumer_tflops']:.0f} |")
    iso = [r for r in pre if "isolated_us" in r]
    if iso:
        lines += ["", "## Prefill, isolated calls", "",
                  "Each call timed alone after an idle GPU (15 calls each, taking turns; medians). An idle H100 boosts "
                  "its clock, which helps SDPA more than our kernels; the targets are judged on the do_bench numbers "
                  "above.", "", "| case | SDPA | producer | prod/SDPA | consumer | SDPA/consumer | producer kernels |",
                  "|---|---|---|---|---|---|---|"]
        for r in iso:
            i = r["isolated_us"]
            kern = ", ".join(f"{k} {t:.0f}" for k, t in r["producer_kernels_us"].items())
            lines.append(f"| {r['case']} | {i['sdpa']:.0f} | {i['producer']:.0f} | "
                         f"{r['isolated_producer_vs_sdpa']:.2f} | {i['consumer']:.0f} | "
                         f"{r['isolated_consumer_speedup_vs_sdpa']:.2f}x | {kern} |")
    lines += targets(res)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(15, 5))
        for ax, rows, keys in [
            (axes[0], dec, ["sdpa_dense_graph_us", "producer_graph_us", "consumer_graph_us", "gather_sdpa_graph_us",
                            "flex_graph_us"]),
            (axes[1], pre, ["sdpa_causal_us", "producer_us", "consumer_us", "flex_us"]),
        ]:
            w = 0.8 / len(keys)
            for i, key in enumerate(keys):
                ax.bar([j + i * w for j in range(len(rows))], [r.get(key, float("nan")) for r in rows], w, label=key)
            ax.set_xticks([j + 0.4 - w / 2 for j in range(len(rows))])
            ax.set_xticklabels([r["case"].replace(" (static cache, bool mask)", "\nstatic") for r in rows],
                               rotation=30, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("median µs")
            ax.legend(fontsize=7)
        axes[0].set_title("decode (CUDA graph)")
        axes[1].set_title("prefill (causal)")
        fig.suptitle(f"HyLRA kernels — {meta['device']} — {meta['date']}")
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=110)
    except Exception:  # noqa: BLE001
        traceback.print_exc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-only", action="store_true")
    ap.add_argument("--sweep-prefill-only", action="store_true")
    ap.add_argument("--profile-prefill", action="store_true")
    ap.add_argument("--prefill-only", action="store_true", help="only the prefill cases (a repeat of their timings)")
    ap.add_argument("--prefill-cases", default="1x8192,1x32768,8x8192,1x131072", help="prefill cases, BxS,...")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    meta = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "triton": triton.__version__}
    meta["copy_bw_TBps"] = copy_bandwidth() / 1e12
    print(meta, flush=True)
    res = []
    t0 = time.time()
    if args.profile_prefill:
        profile_prefill()
        return
    if args.sweep_prefill_only:
        sweep(res, prefill_only=True)
        write(res, meta, args.out)
        return
    if args.sweep or args.sweep_only:
        sweep(res)
        write(res, meta, args.out)
        if args.sweep_only:
            return
    do_flex = not args.no_flex
    lengths = [8192, 32768] if args.quick or args.prefill_only else [8192, 32768, 131072]
    for B in () if args.prefill_only else (1, 8):
        for Skv in lengths:
            try:
                bench_decode(res, B, Skv, meta["copy_bw_TBps"] * 1e12, do_flex)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
            write(res, meta, args.out)
    # A static cache of 128K holding 20K tokens, and a plain 20K cache for comparison.
    for Skv, valid in [] if args.prefill_only else [(131072, 20480), (20480, None)]:
        try:
            bench_decode(res, 1, Skv, meta["copy_bw_TBps"] * 1e12, False, valid=valid)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    write(res, meta, args.out)
    cases = [tuple(int(n) for n in case.split("x")) for case in args.prefill_cases.split(",") if case]
    for B, S in cases if not args.quick else [case for case in cases if case[1] <= 32768]:
        try:
            bench_prefill(res, B, S, do_flex and S <= 32768, rep=100 if S <= 32768 else 3,
                          rounds=7 if S <= 32768 else 1)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        write(res, meta, args.out)
    print(f"total {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
