"""End-to-end decode benchmark: a Llama-3-8B-shaped model (fewer layers, random weights) compiled with Inductor
dense vs the hylra backend, one decode step over a StaticCache holding a long context.

    python benchmarks/bench_model.py --layers 8 --context 32768 --out benchmarks/results

Reports per decode step: median latency (CUDA events after warm-up) of `backend="inductor"` and of
`HylraBackend(policy=Policy.every(4))`, launched from Python and replayed as a CUDA graph, the speedups, and how
far the hylra logits are from the dense ones (relative error, top-1 agreement) — on random weights, whose attention
is diffuse (the worst case for top-k).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, StaticCache

from hylra_compile import HylraBackend, Policy
from hylra_compile.models import cache_argument


def copy_bandwidth() -> float:
    """Bytes per second a 1 GiB device-to-device copy moves (read + write), median of triton's do_bench."""
    from triton.testing import do_bench

    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = do_bench(lambda: b.copy_(a), warmup=5, rep=200, return_mode="median") * 1e-3
    return 2 * n / t


def code_version() -> str:
    """``<short hash>: <subject>`` of the code measured: ``$HYLRA_CODE`` when set (a copy of the working tree on
    another machine may carry a stale .git), else this checkout's HEAD."""
    code = os.environ.get("HYLRA_CODE") or subprocess.run(
        ["git", "log", "-1", "--format=%h: %s"], capture_output=True, text=True).stdout.strip()
    return code[:80]


# Cache slots past the context: every timed decode step appends one token (warm-up + iterations < SLACK).
SLACK = 256


def build_model(layers: int, context: int, device, dtype, small: bool):
    size = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=32)
    if not small:  # Llama-3-8B attention and MLP shapes
        size = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
    config = LlamaConfig(
        vocab_size=32000, num_hidden_layers=layers, max_position_embeddings=context + SLACK, rope_theta=500000.0, **size
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialise the weights where they live (8B parameters take minutes on a CPU)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).eval()


@torch.no_grad()
def fill_cache(model, context: int, device, chunk: int = 8192, cache_len: int | None = None):
    """A StaticCache of ``cache_len`` slots (default: ``context`` + SLACK) holding ``context`` random tokens."""
    cache = StaticCache(config=model.config, max_cache_len=max(cache_len or 0, context + SLACK))
    ids = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    cache_kwargs = {cache_argument(model): cache}
    for start in range(0, context, chunk):
        end = min(context, start + chunk)
        model(ids[:, start:end], **cache_kwargs, cache_position=torch.arange(start, end, device=device))
    return cache


def snapshot(cache):
    """A function restoring the state of the cache's layers (a decode step writes one slot and bumps a length
    counter, a tensor or an int depending on the transformers version), so both compiled models see one cache."""
    saved = [
        (layer, name, value.clone() if isinstance(value, torch.Tensor) else value)
        for layer in cache.layers
        for name, value in vars(layer).items()
        if isinstance(value, (torch.Tensor, int))
    ]

    def restore():
        for layer, name, value in saved:
            if isinstance(value, torch.Tensor):
                getattr(layer, name).copy_(value)
            else:
                setattr(layer, name, value)

    return restore


def median_us(step, iters: int) -> float:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def time_decode(fn, restore, warmup: int, iters: int, device) -> tuple[float, float | str, torch.Tensor]:
    """(median µs of a decode step launched from Python, the same replayed as one CUDA graph (or why the capture
    failed), logits of the first step from the restored cache). Launching from Python is CPU-bound for a small
    batch; the graph replay is the device time."""
    restore()
    first = fn()
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return float("nan"), float("nan"), first
    eager = median_us(fn, iters)
    restore()
    try:
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        restore()
        with torch.cuda.graph(graph):
            fn()
        graphed = median_us(graph.replay, iters)
    except Exception as e:  # noqa: BLE001 (reported, not fatal)
        graphed = f"capture failed: {e!r}"[:300]
    restore()
    return eager, graphed, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--every", type=int, default=4, help="Policy.every(n): one producer per n layers")
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--small", action="store_true", help="tiny widths (CPU smoke run)")
    parser.add_argument("--iters", type=int, default=50, help=f"timed decode steps (< {SLACK} - 4)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args.layers, args.context, device, dtype, args.small)
    cache = fill_cache(model, args.context, device)
    restore = snapshot(cache)
    step_ids = torch.randint(0, model.config.vocab_size, (1, 1), device=device)
    position = torch.tensor([args.context], device=device)
    cache_kwargs = {cache_argument(model): cache}  # named once, outside the timed calls

    def runner(compiled):
        return lambda: compiled(step_ids, **cache_kwargs, cache_position=position).logits.float()

    # The plain method, as in the committed results (selection="refine", the default, is bench_e2e's -refine rows).
    hylra = HylraBackend(policy=Policy.every(args.every, args.layers), top_k=args.top_k, block_size=64,
                         selection="reuse")
    dense_us, dense_graph_us, dense_logits = time_decode(
        runner(torch.compile(model, backend="inductor")), restore, 3, args.iters, device
    )
    torch._dynamo.reset()
    hylra_us, hylra_graph_us, hylra_logits = time_decode(
        runner(torch.compile(model, backend=hylra)), restore, 3, args.iters, device
    )
    graphed = isinstance(dense_graph_us, float) and isinstance(hylra_graph_us, float)
    report = hylra.reports[-1]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "model": f"Llama-3-8B shapes, {args.layers} layers, random weights" if not args.small else "tiny",
        "context": args.context,
        "policy": f"Policy.every({args.every})",
        "top_k": args.top_k,
        "sites": report.counts(),
        "dense_decode_us": dense_us,
        "hylra_decode_us": hylra_us,
        "speedup": dense_us / hylra_us,
        "dense_decode_graph_us": dense_graph_us,
        "hylra_decode_graph_us": hylra_graph_us,
        "graph_speedup": dense_graph_us / hylra_graph_us if graphed else None,
        "logits_rel_err": ((hylra_logits - dense_logits).norm() / dense_logits.norm()).item(),
        "top1_agreement": (hylra_logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item(),
    }
    print(report)
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = result["device"].replace(" ", "-")
        (args.out / f"model-decode-{name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
