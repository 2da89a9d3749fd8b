"""Kernel time against block size at an equal token budget (the paper's open question 3, speed half).

Llama-3-8B attention shapes (bench_kernels.py), bf16, top_k 2048 tokens at every block size (block 32: 64 blocks,
64: 32, 128: 16), 32K tokens, batch 1: prefill producer and consumer (do_bench medians), decode producer and
consumer (under a CUDA graph). The accuracy half is benchmarks/accuracy.py's ``block`` experiment.

    python benchmarks/bench_block_size.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_kernels import LOCAL, SINK, TOPK, med, qkv  # noqa: E402

from hylra_compile.kernels import (  # noqa: E402
    decode_sparse_attention,
    decode_topk_attention,
    prefill_sparse_attention,
    prefill_topk_attention,
)

F = torch.nn.functional


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--length", type=int, default=32768)
    args = parser.parse_args()
    S, rows = args.length, []
    q, k, v = qkv(1, S, S)
    qd = q[:, :, -1:].contiguous()
    sdpa_prefill = med(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    sdpa_decode = med(lambda: F.scaled_dot_product_attention(qd, k, v, enable_gqa=True), graph=True)
    for bs in (32, 64, 128):
        n_select = TOPK // bs
        _, prefill_idx = prefill_topk_attention(
            q, k, v, None, is_causal=True, scale=None, block_size=bs, n_select=n_select, sink_blocks=SINK,
            local_blocks=LOCAL,
        )
        _, decode_idx = decode_topk_attention(
            qd, k, v, None, is_causal=False, scale=None, block_size=bs, n_select=n_select, sink_blocks=SINK,
            local_blocks=LOCAL,
        )
        row = {
            "block_size": bs, "n_select": n_select,
            "prefill_producer_us": med(lambda: prefill_topk_attention(
                q, k, v, None, is_causal=True, scale=None, block_size=bs, n_select=n_select, sink_blocks=SINK,
                local_blocks=LOCAL,
            )),
            "prefill_consumer_us": med(lambda: prefill_sparse_attention(
                q, k, v, prefill_idx, None, is_causal=True, scale=None, block_size=bs, min_seq_len=0,
            )),
            "decode_producer_us": med(lambda: decode_topk_attention(
                qd, k, v, None, is_causal=False, scale=None, block_size=bs, n_select=n_select, sink_blocks=SINK,
                local_blocks=LOCAL,
            ), graph=True),
            "decode_consumer_us": med(lambda: decode_sparse_attention(
                qd, k, v, decode_idx, None, is_causal=False, scale=None, block_size=bs, min_seq_len=0,
            ),
                                      graph=True),
        }
        rows.append(row)
        print(row, flush=True)
    meta = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "length": S, "top_k": TOPK, "sdpa_prefill_causal_us": sdpa_prefill,
            "sdpa_decode_us": sdpa_decode}
    stem = os.path.join(args.out, f"block-size-{meta['device'].replace(' ', '_')}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Kernel time against block size, top_k {TOPK} tokens, {S // 1024}K tokens, B=1 "
             f"({meta['device']}, {meta['date']}, torch {meta['torch']})", "",
             f"SDPA: prefill causal {sdpa_prefill:.0f} µs, decode {sdpa_decode:.1f} µs (CUDA graph).", "",
             "| block | n_select | prefill producer µs | prefill consumer µs | decode producer µs | decode consumer µs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['block_size']} | {r['n_select']} | {r['prefill_producer_us']:.0f} | {r['prefill_consumer_us']:.0f}"
              f" | {r['decode_producer_us']:.1f} | {r['decode_consumer_us']:.1f} |" for r in rows]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
