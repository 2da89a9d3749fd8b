"""Kernel time against block size at an equal token budget, beside SDPA (the dense layers' price).

Llama-3-8B attention shapes (bench_kernels.py), bf16, batch 1, top_k 2048 tokens (block 16: 128 blocks, 32: 64, 64:
32, 128: 16) and the options' sink and local blocks (64 and 128 tokens, rounded up to whole blocks): prefill (causal,
do_bench medians) and decode (the last query over the whole cache, under a CUDA graph) of the producer, the
refinement (its own top_k among 4x top_k candidates; in prefill also with ``prefilter=2``, the candidates first
narrowed to 2x top_k by mean keys, through the op's dispatch), the consumer and the dense op, and SDPA's causal
prefill and decode (whichever backend torch picks). The accuracy half is `frontier.py accuracy --group blocks`.

    python benchmarks/bench_block_size.py --length 32768 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

import hylra_compile  # noqa: F401  (registers the ops)

sys.path.insert(0, os.path.dirname(__file__))
from bench_kernels import TOPK, med, qkv  # noqa: E402

from hylra_compile.kernels import (  # noqa: E402
    decode_attention,
    decode_refine_blocks,
    decode_sparse_attention,
    decode_topk_attention,
    prefill_attention,
    prefill_refine_blocks,
    prefill_sparse_attention,
    prefill_topk_attention,
)
from hylra_compile.options import forced_blocks  # noqa: E402

F = torch.nn.functional
CANDIDATES = 4
OPS = ("producer", "refine", "refine_pf2", "consumer", "dense")  # refine_pf2: prefill only


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--block-sizes", default="16,32,64,128")
    args = parser.parse_args()
    S, rows = args.length, []
    q, k, v = qkv(1, S, S)
    qd = q[:, :, -1:].contiguous()
    sdpa_prefill = med(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    sdpa_decode = med(lambda: F.scaled_dot_product_attention(qd, k, v, enable_gqa=True), graph=True)
    for bs in (int(size) for size in args.block_sizes.split(",")):
        n_select = TOPK // bs
        blocks = dict(scale=None, block_size=bs)
        selection = dict(blocks, n_select=n_select, **forced_blocks(bs))
        wide = dict(selection, n_select=CANDIDATES * n_select)
        ops = {}
        for phase, qs, causal, graph in (("prefill", q, True, False), ("decode", qd, False, True)):
            produce, refine, consume, dense = ((prefill_topk_attention, prefill_refine_blocks, prefill_sparse_attention,
                                                prefill_attention) if phase == "prefill" else
                                               (decode_topk_attention, decode_refine_blocks, decode_sparse_attention,
                                                decode_attention))
            _, idx = produce(qs, k, v, None, is_causal=causal, **selection)
            _, candidates = produce(qs, k, v, None, is_causal=causal, **wide)
            calls = {
                "producer": lambda: produce(qs, k, v, None, is_causal=causal, **selection),
                "refine": lambda: refine(qs, k, candidates, None, is_causal=causal, **selection),
                "consumer": lambda: consume(qs, k, v, idx, None, is_causal=causal, **blocks, min_seq_len=0),
                "dense": lambda: dense(qs, k, v, None, is_causal=causal, **blocks),
            }
            if phase == "prefill":
                calls["refine_pf2"] = lambda: torch.ops.hylra.refine_blocks(qs, k, candidates, None,
                                                                            is_causal=causal, **selection, prefilter=2)
            for op, call in calls.items():
                ops[f"{phase}_{op}_us"] = med(call, graph=graph)
        row = {"block_size": bs, "n_select": n_select, **ops}
        rows.append(row)
        print(row, flush=True)
    meta = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "length": S, "top_k": TOPK, "sdpa_prefill_causal_us": sdpa_prefill,
            "sdpa_decode_us": sdpa_decode}
    stem = os.path.join(args.out, f"block-size-{S // 1024}k-{meta['device'].replace(' ', '_')}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    columns = [(phase, op) for phase in ("prefill", "decode") for op in OPS if f"{phase}_{op}_us" in rows[0]]
    lines = [f"# Kernel time against block size, top_k {TOPK} tokens, {S // 1024}K tokens, B=1 "
             f"({meta['device']}, {meta['date']}, torch {meta['torch']})", "",
             f"SDPA: prefill causal {sdpa_prefill:.0f} µs, decode {sdpa_decode:.1f} µs (CUDA graph). Sink 64 and local "
             f"128 tokens (whole blocks) at every size; refine keeps top_k of {CANDIDATES}x top_k candidates "
             "(refine_pf2 first narrows them to 2x top_k by block mean keys); dense / SDPA in brackets.", "",
             "| block | n_select | " + " | ".join(f"{phase} {op} µs" for phase, op in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for phase, op in columns:
            t, sdpa = r[f"{phase}_{op}_us"], sdpa_prefill if phase == "prefill" else sdpa_decode
            cell = f"{t:.0f}" if phase == "prefill" else f"{t:.1f}"
            cells.append(cell + (f" ({t / sdpa:.2f}×)" if op == "dense" else ""))
        lines.append(f"| {r['block_size']} | {r['n_select']} | " + " | ".join(cells) + " |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
