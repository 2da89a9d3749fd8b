"""Host cost of launching the hylra ops from Python (what a decode step pays without CUDA graphs).

    python benchmarks/bench_launch.py --out benchmarks/results

Decode shapes of Llama-3-8B (batch 1, 32 query / 8 KV heads, head_dim 128, bf16), a static cache of ``--context``
keys with HF's bool mask row. For each op, the host time per call (µs, ``--calls`` calls queued without a sync, so
the GPU never holds the host back) at three depths of the stack:

* ``op``: ``torch.ops.hylra.<op>(...)``, through the dispatcher (what an Inductor graph calls);
* ``dispatch``: the registered CUDA kernel (argument checks, fallback test, kernel wrapper);
* ``kernel``: the kernel wrapper alone (scratch allocation, Triton launches);

beside the device time of one call replayed in a CUDA graph, and SDPA's host time for scale. Also writes a
cProfile table of the ``op`` calls. Rows go to ``launch-<device>.json`` / ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import code_version  # noqa: E402

from hylra_compile import kernels  # noqa: E402
from hylra_compile.lowering import dispatch  # noqa: E402


def host_us(fn, calls: int) -> float:
    """Median over 5 rounds of the host time per call of ``calls`` queued calls."""
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return sorted(rounds)[2]


def graph_us(fn) -> float:
    """Median device µs of ``fn`` replayed in a CUDA graph."""
    return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="8192,32768")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    device = torch.device("cuda")
    B, Hq, Hkv, D, bs, n_select = 1, 32, 8, 128, 64, 32
    code = code_version()
    meta = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "code": code[:80]}
    rows, profiles = [], []
    for context in map(int, args.contexts.split(",")):
        q = torch.randn(B, Hq, 1, D, device=device, dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, context, D, device=device, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        mask = torch.ones(B, 1, 1, context, device=device, dtype=torch.bool)
        settings = dict(is_causal=False, scale=None, block_size=bs)
        selection = dict(n_select=n_select, sink_blocks=1, local_blocks=2)
        _, block_idx = torch.ops.hylra.topk_attention(q, k, v, mask, **settings, **selection)
        calls = {
            "topk_attention": (
                lambda: torch.ops.hylra.topk_attention(q, k, v, mask, **settings, **selection),
                lambda: dispatch.topk_attention_triton(q, k, v, mask, **settings, **selection),
                lambda: kernels.decode_topk_attention(q, k, v, mask, **settings, **selection)),
            "sparse_attention": (
                lambda: torch.ops.hylra.sparse_attention(q, k, v, block_idx, mask, **settings, min_seq_len=4096),
                lambda: dispatch.sparse_attention_triton(q, k, v, block_idx, mask, **settings, min_seq_len=4096),
                lambda: kernels.decode_sparse_attention(q, k, v, block_idx, mask, **settings, min_seq_len=4096)),
            "attention": (
                lambda: torch.ops.hylra.attention(q, k, v, mask, **settings),
                lambda: dispatch.attention_triton(q, k, v, mask, **settings),
                lambda: kernels.decode_attention(q, k, v, mask, **settings)),
        }
        for name, (op, dispatched, kernel) in calls.items():
            row = {**meta, "context": context, "op": name, "op_us": host_us(op, args.calls),
                   "dispatch_us": host_us(dispatched, args.calls), "kernel_us": host_us(kernel, args.calls),
                   "graph_us": graph_us(op)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.calls):
                op()
            profiler.disable()
            torch.cuda.synchronize()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
            profiles.append(f"## {name}, context {context}, {args.calls} calls\n\n```\n{text.getvalue()}```\n")
        sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # noqa: E731
        rows.append({**meta, "context": context, "op": "sdpa (enable_gqa, bool mask)",
                     "op_us": host_us(sdpa, args.calls), "graph_us": graph_us(sdpa)})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"launch-{meta['device'].replace(' ', '_')}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"# Host cost per op call ({meta['device']}, {meta['date']}, torch {meta['torch']}, code {meta['code']})",
             "", "Decode shapes of Llama-3-8B, batch 1, bf16. Host µs per call launched from Python at three depths "
             "of the stack; device µs of the call replayed in a CUDA graph.", "",
             "| op | context | op µs | dispatch µs | kernel µs | graph replay µs |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[key]:.1f}" if key in row else "" for key in ("op_us", "dispatch_us", "kernel_us", "graph_us")]
        lines.append(f"| {row['op']} | {row['context']} | " + " | ".join(cells) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + "\n".join(profiles))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
