"""Whole-model speed: a Llama-3-8B-shaped model (random bf16 weights) under eager, Inductor and the hylra backend.

    python benchmarks/bench_whole_model.py --mode prefill --layers 32 --context 32768 --variants eager,inductor,full
    python benchmarks/bench_whole_model.py --mode prefill-static ...      # prefill into a StaticCache
    python benchmarks/bench_whole_model.py --mode decode ...              # one decode step, replayed as a CUDA graph
    python benchmarks/bench_whole_model.py --table benchmarks/results     # JSON rows -> Markdown

Variants: ``eager`` (HF SDPA: flash with ``is_causal`` when no mask is needed), ``inductor``
(``torch.compile``; for decode with its CUDA graphs, as ``mode="reduce-overhead"``), and the hylra backend with
``full`` (``Policy.full``: every layer dense, through ``hylra::attention``), ``5of32`` / ``8of32`` (that many layers
dense as producers, ``Policy.every(7)`` / ``Policy.every(4)`` on 32 layers; the others consume). Each run appends
one row per variant (device, date, mode, context, layers, median ms) to ``whole-model-<device>.json`` under
``--out``; ``--table`` writes the Markdown table with each row's ratio to the mode's best dense baseline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import StaticCache

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import SLACK, build_model, code_version, fill_cache, snapshot, time_decode  # noqa: E402

from hylra_compile import HylraBackend, Policy  # noqa: E402
from hylra_compile.models import cache_argument  # noqa: E402

POLICIES = {"full": lambda layers: Policy.full(layers), "5of32": lambda layers: Policy.every(7, layers),
            "8of32": lambda layers: Policy.every(4, layers)}
BASELINES = {"prefill": "eager", "prefill-static": "eager", "decode": "inductor"}


def compiled(model, variant: str, mode: str, top_k: int):
    torch._dynamo.reset()
    if variant == "eager":
        return model, None
    if variant == "inductor":
        return torch.compile(model, backend="inductor"), None
    # The plain method, as in the committed results (selection="refine", the default, is bench_e2e's -refine rows).
    backend = HylraBackend(policy=POLICIES[variant](model.config.num_hidden_layers), top_k=top_k, block_size=64,
                           selection="reuse")
    return torch.compile(model, backend=backend), backend


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


@torch.no_grad()
def run(args, variant: str, model) -> dict:
    device = next(model.parameters()).device
    fn_model, backend = compiled(model, variant, args.mode, args.top_k)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.context), device=device)
    row = {"variant": variant}
    if args.mode in ("prefill", "prefill-static"):
        cache = StaticCache(config=model.config, max_cache_len=args.context) if args.mode == "prefill-static" else None
        positions = torch.arange(args.context, device=device)
        cache_kwargs = {cache_argument(model): cache}  # named once, outside the timed calls

        def step():
            if cache is None:
                return fn_model(ids, use_cache=False, logits_to_keep=1)
            cache.reset()  # the cache counts what it holds: empty it (a memset, ~1 ms of a 32K prefill)
            return fn_model(ids, **cache_kwargs, cache_position=positions, logits_to_keep=1)

        start = time.perf_counter()
        step()
        synchronize()
        row["first_call_s"] = time.perf_counter() - start
        times = time_ms(step, 1, args.iters)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
            name = f"profile-{args.mode}-{args.layers}x{args.context}-{variant}.txt"
            (args.out / name).write_text(table + "\n")
    else:
        cache = fill_cache(model, args.context, device, cache_len=args.cache_len)
        restore = snapshot(cache)
        token = ids[:, :1]
        position = torch.tensor([args.context], device=device)
        cache_kwargs = {cache_argument(model): cache}  # named once, outside the timed calls
        launched, graphed, _ = time_decode(
            lambda: fn_model(token, **cache_kwargs, cache_position=position).logits, restore, 3, args.iters, device)
        times = [graphed / 1e3] if isinstance(graphed, float) else []
        row["launched_ms"] = launched / 1e3
        row["graph_error"] = None if isinstance(graphed, float) else graphed
    row["ms"] = statistics.median(times) if times else None
    row["times_ms"] = times
    if backend is not None:
        row["sites"] = [report.counts() for report in backend.reports]
    return row


def table(folder: Path) -> None:
    for path in sorted(folder.glob("whole-model-*.json")):
        rows = json.loads(path.read_text())
        lines = [f"# Whole-model speed ({rows[0]['device']}, {rows[-1]['date']})", "",
                 "Ratios are to the best dense baseline of the same run (eager SDPA for prefill, Inductor with CUDA "
                 "graphs for decode); lower is faster.", "",
                 "| code | mode | layers | context | cache slots | batch | variant | ms | ratio |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            base = next((r for r in rows if r["run"] == row["run"] and r["variant"] == BASELINES[row["mode"]]), None)
            ratio = f"{row['ms'] / base['ms']:.2f}" if base and base["ms"] and row["ms"] else ""
            ms = f"{row['ms']:.1f}" if row["ms"] else row.get("graph_error", "")
            lines.append(f"| {row.get('code', '')} | {row['mode']} | {row['layers']} | {row['context']} | "
                         f"{row.get('cache_len') or ''} | {row['batch']} | "
                         f"{row['variant']} | {ms} | {ratio} |")
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(path.with_suffix(".md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(BASELINES), default="prefill")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cache-len", type=int, default=None,
                        help="decode: static cache slots (default context + 256); more than the context leaves the "
                        "rest empty, to show the cost tracks the filled length")
    parser.add_argument("--variants", default="eager,inductor,full,5of32,8of32")
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--small", action="store_true", help="tiny widths (a CPU smoke run)")
    parser.add_argument("--profile", action="store_true", help="also write a torch.profiler table per variant")
    parser.add_argument("--table", type=Path, default=None, help="only write the Markdown of the JSON rows there")
    args = parser.parse_args()
    if args.table is not None:
        return table(args.table)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - {"eager", "inductor", *POLICIES})
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: eager, inductor, {', '.join(POLICIES)}")
    cuda = torch.cuda.is_available()
    model = build_model(args.layers, max(args.cache_len or 0, args.context + SLACK), torch.device("cuda" if cuda else "cpu"),
                        torch.bfloat16 if cuda else torch.float32, small=args.small)
    run_id = datetime.datetime.now().isoformat(timespec="seconds")
    code = code_version()
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "code": code[:80], "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "run": run_id, "mode": args.mode, "layers": args.layers,
            "context": args.context, "batch": args.batch, "top_k": args.top_k, "cache_len": args.cache_len}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"whole-model-{meta['device'].replace(' ', '_')}.json"
    for variant in variants:
        row = {**meta, **run(args, variant, model)}
        print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)
        rows = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(rows + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
