"""The end-to-end benchmark of record: time to first token and decode ms/token through ``generate()``.

    python benchmarks/bench_e2e.py --context 32768 --batch 1 --variants eager,inductor,full,5of32,8of32 --floors
    python benchmarks/bench_e2e.py --context 131072 --variants 5of32 --at-512 --floors
    python benchmarks/bench_e2e.py --table benchmarks/results      # JSON rows -> Markdown + plot

A Llama-3-8B-shaped model (random bf16 weights, ``--layers`` layers), a prompt of ``--context`` random tokens per
row, greedy decoding of ``--new-tokens`` tokens (``min_new_tokens`` too, so no row stops early) into a
``StaticCache`` of exactly prompt + new tokens, passed to ``generate()`` (:class:`StaticCaches`: one per length,
reset and reused by each call of the row, as generate() reuses its own; left to itself, generate() sizes a static
cache to the longest of all its calls on the model so far, so a 512-token row after a 128K one would decode in a
128K cache). Rows, all through ``model.generate(..., cache=StaticCache(...))``:

* ``eager``: no compile (``disable_compile=True``);
* ``inductor``: Hugging Face's own compile, ``CompileConfig()`` (Inductor, ``mode="reduce-overhead"``; it compiles
  the decode step only, the prefill runs eagerly);
* ``inductor-graphs``: the dense model through :func:`hylra_compile.compile_for_generate` without a policy (the
  attention sites stay as written): Inductor for prefill and decode, decode replayed as CUDA graphs;
* ``full`` / ``5of32`` / ``8of32``: :func:`hylra_compile.compile_for_generate` with ``Policy.full`` /
  ``Policy.every(7)`` / ``Policy.every(4)`` (that many of 32 layers dense; consumers reuse their producer's
  blocks, ``selection="reuse"``), prefill and decode rewritten, decode replayed as CUDA graphs; ``5of32-refine`` / ``8of32-refine`` the same with ``selection="refine"`` (producers
  emit 4 x ``top_k`` candidates, each consumer keeps its own ``top_k`` of them).

A logits processor stamps the time (after a synchronize) at each new token's logits: time to first token is the
first stamp, decode ms/token the median of the intervals between stamps (each a whole step of ``generate()``:
forward, sampling, stopping criteria), over ``--repeats`` calls of ``1 + n`` tokens; ``first_decode_step_ms`` is
the median of the calls' first intervals. (``(T(1 + n) - T(1)) / n`` of
two calls, used before, carries the difference of two prefills: at 128K a 1% change of a 6 s prefill is 2 ms per
token over 32 tokens.) Each variant runs once untimed first (compiles). On CUDA, each decode step's ``forward`` of
the ``compile_for_generate`` rows is also timed (``decode_forward_ms``: from the call to the end of its device
work; ``decode_forward_host_ms``: host time inside the call), and ``allocator_during_runs`` counts the CUDA
allocator's retries and device allocations / frees over the timed runs. ``--block-size 64,16`` (and ``--top-k
2048,8192``) runs each hylra variant at each block size (and top_k) in this one process (with
``--producer-block-size 64``, the -refine variants' producers select in blocks of 64 at the finer sizes): settings
compare within a run, not across runs.

``--at-512`` adds, to each ``compile_for_generate`` row of a context longer than 512, its own decode at a
512-token prompt (``decode_ms_at_512``) within the same compilation, its calls taking turns with the context's
(context, 512, context, 512, ...): the two share one process state and one compiled model, where rows of separate
compilations drift apart by up to ~1 ms of host time per token; ``decode_ratio_at_512`` is the median over the
rounds of each round's ratio. ``--short-in-long`` adds the same 512-token prompt decoded in the context's own
static cache (``decode_ms_short_in_long``, ``decode_ratio_short_in_long``): a server's short request in a cache
sized for its longest. ``--mixed TOKENS`` (batch > 1) adds the batch with its first row whole and the others
left-padded to their last ``TOKENS`` tokens (``decode_ms_mixed``): each row's cost should track its own length. ``--host-profile`` adds cProfile tables of decode steps inside generate() (at the
context and, with ``--at-512``, at 512 tokens; the steady state and the first step after the prefill) and the
functions whose host time differs most between the two. ``--profile`` (last) adds torch.profiler tables of decode
steps and of the prefill. ``--floors`` adds two rows: ``floor-512``, the ``full`` row's decode with a 512-token
prompt (what everything but attention costs on this stack, through ``generate()`` with CUDA graphs), and
``bytes-floor``, the weights plus the dense KV cache read once per token at the measured copy bandwidth. Rows are
appended to ``e2e-<device>.json`` under ``--out``; ``--table`` writes the Markdown (ratios to the run's Inductor
row) and a plot of ms/token against context. At long contexts set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``
(a reused 128K cache otherwise runs out of memory from fragmentation); each row records the setting.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import functools
import gc
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList, StaticCache

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import build_model, code_version, copy_bandwidth  # noqa: E402

import hylra_compile  # noqa: E402
from hylra_compile import Policy  # noqa: E402
from hylra_compile.generate import initialise_static_cache  # noqa: E402
from hylra_compile.models import cache_argument  # noqa: E402
from hylra_compile.options import DEFAULT_CANDIDATES  # noqa: E402

POLICIES = {"full": Policy.full, "5of32": lambda layers: Policy.every(7, layers),
            "8of32": lambda layers: Policy.every(4, layers)}
# "<policy>-refine": consumers keep the top_k of their producer's 4 x top_k candidates by their own attention mass.
REFINED = {f"{name}-refine": name for name in ("5of32", "8of32")}  # the others reuse their producer's blocks
BASELINES = ("eager", "inductor", "inductor-graphs")  # no hylra selection
VARIANTS = (*BASELINES, *POLICIES, *REFINED)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _AtEachToken(LogitsProcessor):
    """Calls ``hook()`` when each new token's logits are ready (after a synchronize), inside generate()."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, input_ids, scores):
        synchronize()
        self.hook()
        return scores


class StaticCaches:
    """One ``StaticCache`` per (batch, length), reset and reused by each call, as generate() reuses its own
    (``cache_implementation="static"``). A decode graph replayed as a CUDA graph has the cache's addresses recorded
    in it: a fresh cache per call moves them, and the graph is recorded again at the call's first decode step
    (140 ms at 128K on the H100, 2026-11-24). Each cache is allocated before its first call, as generate() does for
    a compiled chunked prefill: allocated inside a compiled graph its tensors would get no static address.
    ``fresh=True``: a new cache for every call instead (how this benchmark ran up to 4d6270e)."""

    def __init__(self, model, fresh: bool = False):
        self.model = model
        self.fresh = fresh
        self.caches: dict[tuple[int, int], StaticCache] = {}

    def get(self, batch: int, length: int) -> StaticCache:
        cache = None if self.fresh else self.caches.get((batch, length))
        if cache is None:
            cache = self.caches[batch, length] = StaticCache(config=self.model.config, max_cache_len=length)
            initialise_static_cache(self.model, cache, batch_size=batch)
        else:
            cache.reset()
        return cache


class Prompt(NamedTuple):
    """A batch of prompts: token ids, the static cache's length (None: the prompt plus the new tokens) and the
    attention mask (None: every token; zeros on the left for a row shorter than the batch, as generate() pads)."""

    ids: torch.Tensor
    cache_len: int | None = None
    attention_mask: torch.Tensor | None = None


def generate(model, ids, new_tokens: int, settings: dict, at_each_token, caches: StaticCaches,
             cache_len: int | None = None, attention_mask: torch.Tensor | None = None) -> None:
    """Greedy ``generate()`` of exactly ``new_tokens`` tokens into ``caches``' static cache of ``cache_len`` slots
    (default: the prompt plus ``new_tokens``), calling ``at_each_token()`` when each token's logits are ready."""
    cache = caches.get(ids.shape[0], cache_len or ids.shape[1] + new_tokens)
    model.generate(ids, attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, **{cache_argument(model): cache},
                   logits_processor=LogitsProcessorList([_AtEachToken(at_each_token)]), **settings)


def release_garbage() -> None:
    """Free earlier calls' garbage outside the timing. (Not the allocator's cached blocks: after an empty_cache each
    128K prefill allocates ~48 GiB afresh; a run that did so took 6.8 s to the first token where others took 5.2.)"""
    gc.collect()


def timed_generate(model, prompt: Prompt, new_tokens: int, settings: dict, caches: StaticCaches,
                   warm_up: bool = False) -> list[float]:
    """Seconds from the call to each new token's logits (generate() synchronises at every token anyway).
    ``warm_up``: an untimed first call (it compiles or records a decode graph)."""
    stamps = []
    release_garbage()
    synchronize()
    start = time.perf_counter()
    generate(model, prompt.ids, new_tokens, settings, lambda: stamps.append(time.perf_counter()), caches,
             prompt.cache_len, prompt.attention_mask)
    return [] if warm_up else [stamp - start for stamp in stamps]


def allocator_counts() -> dict:
    """The CUDA caching allocator's counts of retries (a failed allocation that freed the cache and tried again,
    with a device synchronisation) and of device allocations and frees: calls into the driver that a step's host
    time would show, more likely near a full device. Empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats()
    return {name: stats.get(name, 0) for name in ("num_alloc_retries", "num_device_alloc", "num_device_free")}


def allocator_counts_since(before: dict) -> dict:
    """:func:`allocator_counts` now minus ``before``."""
    return {name: count - before[name] for name, count in allocator_counts().items()}


def hylra_settings(variant: str, block_size: int, top_k: int, producer_block_size: int | None,
                   prefilter: int = 0) -> dict:
    """The selection settings a row records: a hylra variant's top_k and block_size, its producers' block size
    (``--producer-block-size`` for a -refine variant whose blocks are finer, else None) and a -refine variant's
    pre-filter (``--prefilter``, else None); None for the baselines."""
    if variant in BASELINES:
        return {"top_k": None, "block_size": None, "producer_block_size": None, "prefilter": None}
    coarse = variant in REFINED and producer_block_size and producer_block_size > block_size
    return {"top_k": top_k, "block_size": block_size, "producer_block_size": producer_block_size if coarse else None,
            "prefilter": prefilter if variant in REFINED else None}


def decode_intervals_ms(runs: list[list[float]]) -> list[float]:
    return [(later - earlier) * 1e3 for run in runs for earlier, later in zip(run, run[1:])]


@torch.no_grad()
def measure(model, variant: str, context: int, batch: int, args, block_size: int = 64, top_k: int = 2048,
            prefilter: int = 0) -> dict:
    """One row: time to first token (s) and decode ms/token of ``variant`` at this context and batch (a hylra
    variant keeping ``top_k`` tokens in blocks of ``block_size``; a -refine one with producers in
    ``--producer-block-size`` blocks where those are larger and a ``prefilter``)."""
    torch._dynamo.reset()
    compilation, settings = None, {}
    row = hylra_settings(variant, block_size, top_k, args.producer_block_size, prefilter)  # what it compiles with
    if variant == "eager":
        settings = {"disable_compile": True}
    elif variant == "inductor":
        settings = {"compile_config": CompileConfig()}
    elif variant == "inductor-graphs":
        compilation = hylra_compile.compile_for_generate(model)
    else:
        policy = POLICIES[REFINED.get(variant, variant)](model.config.num_hidden_layers)
        # Sink and local blocks left to the options: 64 and 128 tokens at every block size (as the frontier keeps
        # them). None in a row: producers in the variant's own blocks (the options' default would coarsen a refine's).
        compiled_with = {**row, "prefilter": row["prefilter"] or 0,
                         "producer_block_size": row["producer_block_size"] or block_size}
        compilation = hylra_compile.compile_for_generate(
            model, policy=policy, **compiled_with, selection="refine" if variant in REFINED else "reuse")
    counters["inductor"].clear()
    if args.prefill_chunk:
        settings["prefill_chunk_size"] = args.prefill_chunk
    new_tokens = 1 + args.new_tokens
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=model.device)
    prompts = {"context": Prompt(ids)}
    if compilation is not None and context > 512:
        if args.at_512:
            prompts["at_512"] = Prompt(ids[:, :512])
        if args.short_in_long:
            prompts["short_in_long"] = Prompt(ids[:, :512], context + new_tokens)
    if args.mixed and batch > 1 and compilation is not None:
        mask = torch.ones_like(ids)
        mask[1:, :context - args.mixed] = 0  # row 0 the whole context, the others its last args.mixed tokens
        prompts["mixed"] = Prompt(ids, None, mask)
        settings["pad_token_id"] = 0
        row["mixed_tokens"] = args.mixed
    caches, timer = StaticCaches(model, fresh=args.fresh_caches), None
    try:
        start = time.perf_counter()
        timed_generate(model, prompts["context"], new_tokens, settings, caches, warm_up=True)  # compiles
        first_run_s = time.perf_counter() - start
        for label in [label for label in prompts if label != "context"]:
            try:
                timed_generate(model, prompts[label], new_tokens, settings, caches, warm_up=True)
            except torch.OutOfMemoryError as error:
                row[f"{label}_error"] = f"out of memory: {error}"[:300]
                del prompts[label]
        if compilation is not None and torch.cuda.is_available():
            timer = DecodeForwardTimer(model)
        counts_before = allocator_counts()
        runs = {label: [] for label in prompts}
        for _ in range(args.repeats):  # the prompts take turns, so a drift of the host's speed reaches both
            for label, prompt in prompts.items():
                if timer is not None:
                    timer.label = label
                runs[label].append(timed_generate(model, prompt, new_tokens, settings, caches))
        allocator_during_runs = allocator_counts_since(counts_before)
        steps_ms = decode_intervals_ms(runs["context"])
        row.update({"variant": variant, "context": context, "batch": batch,
                    "ttft_s": statistics.median(run[0] for run in runs["context"]),
                    "decode_ms": statistics.median(steps_ms), "first_run_s": first_run_s,
                    "first_decode_step_ms": statistics.median(decode_intervals_ms([run[:2]])[0]
                                                              for run in runs["context"]),
                    "ttft_runs_s": [run[0] for run in runs["context"]], "decode_steps_ms": steps_ms,
                    "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
                    "allocator_during_runs": allocator_during_runs})
        if timer is not None:
            row.update(timer.medians("context"))
        for label in ("at_512", "short_in_long", "mixed"):
            if label in prompts:
                row.update(_short_prompt(runs, timer, label))
        if compilation is not None:
            row["graphs"] = {r.name: r.counts() for r in compilation.reports()}
        # The optional parts below come after the row's own measurements, and their failures do not lose it.
        if args.host_profile and compilation is not None:
            _host_profiles(model, prompts, new_tokens, settings, caches,
                           args.out / f"host-profile-e2e-{variant}-{batch}x{context}.txt")
        if args.profile:
            try:
                for part, steps in (("", min(8, args.new_tokens)), ("prefill-", 0)):
                    profile_generate(model, ids, settings,
                                     args.out / f"profile-e2e-{part}{variant}-{batch}x{context}.txt", steps, caches,
                                     cache_len=context + new_tokens)
            except torch.OutOfMemoryError as error:
                row["profile_error"] = f"out of memory: {error}"[:300]
    finally:
        if timer is not None:
            timer.remove()
        if compilation is not None:
            compilation.restore()
    return row


def _short_prompt(runs: dict[str, list[list[float]]], timer, label: str) -> dict:
    """The decode of the prompts ``label`` (``at_512``: 512 tokens in their own cache; ``short_in_long``: in the
    context's; ``mixed``: the batch with all rows but the first shortened) from its calls, which took turns with
    the context's, and the median over the rounds of each round's ratio of the two (context / ``label``)."""
    steps_ms = decode_intervals_ms(runs[label])
    ratios = [statistics.median(decode_intervals_ms([long])) / statistics.median(decode_intervals_ms([short]))
              for long, short in zip(runs["context"], runs[label])]
    rounds_key = "decode_ratio_rounds" if label == "at_512" else f"decode_ratio_rounds_{label}"
    result = {f"decode_ms_{label}": statistics.median(steps_ms), f"decode_{label}_steps_ms": steps_ms,
              f"decode_ratio_{label}": statistics.median(ratios), rounds_key: ratios}
    if timer is not None:
        result.update({f"{key}_{label}": value for key, value in timer.medians(label).items()})
    return result


def _host_profiles(model, prompts: dict, new_tokens: int, settings: dict, caches: StaticCaches, path: Path) -> None:
    """cProfile tables of decode steps inside generate() at each prompt (the context's, and with ``--at-512`` the
    512-token one): the steady state (up to 16 steps after the first three) and the first decode step after the
    prefill alone, in the timed runs' cache length (the decode graph has static shapes)."""
    profiles = {}
    for when, skip, count in (("steady", 3, min(16, new_tokens - 4)), ("first step", 0, 1)):
        for prompt in prompts.values():
            cache_len = prompt.cache_len or prompt.ids.shape[1] + new_tokens
            profiles[f"{prompt.ids.shape[1]} tokens in {cache_len} slots, {when}"] = host_profile(
                model, prompt.ids, settings, caches, cache_len, skip, count)
    write_host_profiles(path, profiles)


class DecodeForwardTimer:
    """While installed on a model prepared by ``compile_for_generate``, records for each decode step's ``forward``
    (one new token) the host seconds inside the call (Dynamo's guards, the CUDA-graph replay's launch) and CUDA
    events around it, under the current ``label``. generate() synchronises before each step, so the events'
    interval runs from the call to the end of its device work (``decode_forward_ms``); the rest of a token's
    interval is generate()'s own work (sampling, stopping criteria, the next step's inputs and mask)."""

    def __init__(self, model):
        self.model = model
        self.routed_forward = model.forward
        self.label = "context"
        self.records: dict[str, list[tuple]] = {}  # label -> [(host s, start event, end event)]

        @functools.wraps(self.routed_forward)  # generate() inspects forward's signature
        def timed_forward(*args, **kwargs):
            tokens = kwargs.get("input_ids", args[0] if args else None)
            if tokens is None or tokens.shape[1] != 1:
                return self.routed_forward(*args, **kwargs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_s = time.perf_counter()
            start.record()
            output = self.routed_forward(*args, **kwargs)
            end.record()
            self.records.setdefault(self.label, []).append((time.perf_counter() - start_s, start, end))
            return output

        model.forward = timed_forward

    def remove(self) -> None:
        self.model.forward = self.routed_forward

    def medians(self, label: str) -> dict:
        """Median host ms inside the call and ms from the call to the end of its device work, under ``label``."""
        records = self.records.get(label, [])
        if not records:
            return {}
        return {"decode_forward_host_ms": statistics.median(host * 1e3 for host, _, _ in records),
                "decode_forward_ms": statistics.median(begin.elapsed_time(end) for _, begin, end in records)}


def profile_generate(model, ids, settings: dict, path: Path, steps: int, caches: StaticCaches,
                     cache_len: int) -> None:
    """A torch.profiler table (by device time, then by host time) of part of a generate() call: ``steps`` decode
    steps from the first token's logits on, or with ``steps=0`` the prompt's prefill up to the first token's logits
    (time to first token). ``cache_len``: the timed runs' cache length, so the graphs are the ones they ran (a
    static-shape decode graph recompiles for another). (Profiling slows the host side, CUDA-graph launches most.)"""
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    running, tokens = [], []

    def at_each_token():
        tokens.append(None)
        if len(tokens) == 1 and running:  # the prefill's end
            profiler.stop()
            running.clear()
        elif len(tokens) == 1:  # the decode steps' start
            profiler.start()
            running.append(True)

    release_garbage()
    if steps == 0:
        profiler.start()
        running.append(True)
    try:
        generate(model, ids, 1 + steps, settings, at_each_token, caches, cache_len)
        synchronize()
    finally:
        if running:
            profiler.stop()
    averages = profiler.key_averages()
    part = f"{steps} decode steps" if steps else f"the prefill of {ids.shape[1]} tokens"
    path.write_text(f"{part} inside generate(), by device time\n"
                    + averages.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
                    + "\nby host time\n"
                    + averages.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70) + "\n")


def host_profile(model, ids, settings: dict, caches: StaticCaches, cache_len: int, skip: int, steps: int) -> dict:
    """Python's cProfile (every Python function and builtin, CUDA calls included) over decode steps ``skip`` to
    ``skip + steps - 1`` (0-based) inside generate(), with their wall time and the CUDA allocator's counts over
    them. Returns ``{"stats": pstats.Stats, "step_ms": [...], "allocator": {...}}``."""
    profiler = cProfile.Profile()
    stamps, counts = [], {}

    def at_each_token():
        stamps.append(time.perf_counter())
        if len(stamps) == skip + 1:
            counts.update(allocator_counts())
            profiler.enable()
        elif len(stamps) == skip + steps + 1:
            profiler.disable()

    release_garbage()
    generate(model, ids, 1 + skip + steps, settings, at_each_token, caches, cache_len)
    profiler.disable()
    return {"stats": pstats.Stats(profiler), "step_ms": decode_intervals_ms([stamps[skip:]]),
            "allocator": allocator_counts_since(counts)}


def _per_step_us(stats: pstats.Stats, steps: int) -> dict[str, tuple[float, float, float]]:
    """{function: (own µs, cumulative µs, calls) per step}."""
    return {pstats.func_std_string(function): (own / steps * 1e6, cumulative / steps * 1e6, calls / steps)
            for function, (_, calls, own, cumulative, _) in stats.stats.items()}


def write_host_profiles(path: Path, profiles: dict[str, dict]) -> None:
    """Each profile's (:func:`host_profile`) top functions by own and by cumulative time per step, then the functions
    whose own time per step differs most between the first two profiles (which host work grows with the context)."""
    tables = {label: _per_step_us(profile["stats"], len(profile["step_ms"])) for label, profile in profiles.items()}
    lines = []
    for label, table in tables.items():
        profile = profiles[label]
        lines += [f"== {label}: step ms {[round(ms, 2) for ms in profile['step_ms']]}, "
                  f"allocator {profile['allocator']}"]
        for key, title in ((0, "own"), (1, "cumulative")):
            lines.append(f"-- by {title} µs per step (own, cumulative, calls)")
            for name, (own, cumulative, calls) in sorted(table.items(), key=lambda item: -item[1][key])[:30]:
                lines.append(f"{own:10.1f} {cumulative:10.1f} {calls:8.1f}  {name}")
    if len(tables) >= 2:
        (first, a), (second, b) = list(tables.items())[:2]
        lines.append(f"== own µs per step, {first} minus {second} (largest differences)")
        differences = {name: a.get(name, (0, 0, 0))[0] - b.get(name, (0, 0, 0))[0] for name in a.keys() | b.keys()}
        for name, difference in sorted(differences.items(), key=lambda item: -abs(item[1]))[:30]:
            lines.append(f"{difference:10.1f}  {name}")
    path.write_text("\n".join(lines) + "\n")


def bytes_floor(model, context: int, batch: int) -> dict:
    """Weights + dense KV cache bytes read once per token, at the copy bandwidth measured here (read + write)."""
    bandwidth = copy_bandwidth()
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * batch * config.num_key_value_heads * context * head_dim * model.dtype.itemsize
    return {"variant": "bytes-floor", "context": context, "batch": batch, "decode_ms": (weights + kv) / bandwidth * 1e3,
            "copy_bandwidth_GBps": bandwidth / 1e9, "weight_bytes": weights, "kv_bytes": kv}


def table(folder: Path) -> None:
    for path in sorted(folder.glob("e2e-*.json")):
        rows = json.loads(path.read_text())
        lines = [f"# generate() end to end ({rows[0]['device']}, {rows[-1]['date']})", "",
                 f"{rows[0]['model']}; static cache, greedy, {rows[0]['new_tokens']} new tokens. Ratios within one "
                 "run, context and batch: time to first token to the `eager` row, decode to the `inductor` row (HF "
                 "`CompileConfig()`) and to the run's `floor-512` (the `full` row's decode with a 512-token prompt); "
                 "`bytes-floor` is the weights + dense KV bytes at the measured copy bandwidth.", "",
                 "`decode at 512`: the same compilation's decode at a 512-token prompt, its calls taking turns with "
                 "the row's (up to 4d6270e: measured after them); `decode / at 512` the median of the rounds' ratios. "
                 "`first step`: the first decode step's interval (up to 4d6270e each call had a fresh static cache, "
                 "whose first decode step recorded the CUDA graph again). `512 in context cache`: the same "
                 "compilation's decode of a 512-token prompt in the row's own static cache (a short request in a "
                 "cache sized for a long one), with the median of the rounds' ratios to it. `mixed`: the same "
                 "compilation's decode of the batch with every row but the first left-padded to a short prompt "
                 "(`--mixed`), and the ratio to it. `forward ms (host)`: of a decode step, the "
                 "model's forward from its call to the end of its device work, and the host time inside the call; the "
                 "rest of the token's interval is generate()'s own work.", "",
                 "| code | batch | context | variant | TTFT s | TTFT / eager | decode ms/token | decode / inductor | "
                 "decode / floor-512 | decode at 512 (same compilation) | decode / at 512 | 512 in context cache | "
                 "decode / 512 in context cache | mixed | decode / mixed | first step ms | forward ms (host) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def same(row, variant, context=True):
            return next((r for r in rows if r["run"] == row["run"] and r["variant"] == variant and r["batch"] ==
                         row["batch"] and (not context or r["context"] == row["context"])), {})

        def ratio(row, base, key):
            return f"{row[key] / base[key]:.2f}" if row.get(key) and base.get(key) else ""

        notes = []
        for row in rows:
            if row.get("note"):
                notes.append(f"{row['code'][:7]} {row['variant']}: {row['note']}.")
            ttft = f"{row['ttft_s']:.2f}" if row.get("ttft_s") else ""
            decode = f"{row['decode_ms']:.2f}" if row.get("decode_ms") else row.get("error", "")[:70]
            forward = (f"{row['decode_forward_ms']:.2f} ({row['decode_forward_host_ms']:.2f})"
                       if "decode_forward_ms" in row else "")
            at_512 = f"{row['decode_ms_at_512']:.2f}" if row.get("decode_ms_at_512") else ""
            at_512_ratio = (f"{row['decode_ratio_at_512']:.3f}" if "decode_ratio_at_512" in row
                            else ratio(row, {"decode_ms": row.get("decode_ms_at_512")}, "decode_ms"))
            in_long = f"{row['decode_ms_short_in_long']:.2f}" if row.get("decode_ms_short_in_long") else ""
            in_long_ratio = f"{row['decode_ratio_short_in_long']:.3f}" if "decode_ratio_short_in_long" in row else ""
            mixed = (f"{row['decode_ms_mixed']:.2f} ({row['mixed_tokens']})" if row.get("decode_ms_mixed")
                     else "")
            mixed_ratio = f"{row['decode_ratio_mixed']:.3f}" if "decode_ratio_mixed" in row else ""
            first_step = f"{row['first_decode_step_ms']:.1f}" if "first_decode_step_ms" in row else ""
            hylra = not row["variant"].startswith(("eager", "inductor"))
            variant = row["variant"] + (f" (block {row['block_size']})" if row.get("block_size", 64) != 64 and hylra
                                        else "")
            if row.get("producer_block_size") and row["variant"].endswith("-refine"):
                variant += f" (producers {row['producer_block_size']})"
            if row.get("prefilter") and row["variant"].endswith("-refine"):
                variant += f" (prefilter {row['prefilter']})"
            if hylra and row.get("top_k", 2048) not in (None, 2048):
                variant += f" (top_k {row['top_k']})"
            lines.append(f"| {row['code'][:7]} | {row['batch']} | {row['context']} | {variant} | {ttft} | "
                         f"{ratio(row, same(row, 'eager'), 'ttft_s')} | {decode} | "
                         f"{ratio(row, same(row, 'inductor'), 'decode_ms')} | "
                         f"{ratio(row, same(row, 'floor-512', context=False), 'decode_ms')} | {at_512} | "
                         f"{at_512_ratio} | {in_long} | {in_long_ratio} | {mixed} | {mixed_ratio} | {first_step} | "
                         f"{forward} |")
        if notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in dict.fromkeys(notes)]
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(path.with_suffix(".md").read_text())
        _plot(rows, path.with_suffix(".png"))


def _plot(rows: list[dict], path: Path) -> None:
    """ms/token against context, a line per variant through its latest row at each context; rows marked
    ``diagnostic`` (runs made to locate a cost, e.g. under a profiler) stay in the table only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for axis, batch in zip(axes, (1, 8)):
        lines: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            if (row["batch"] == batch and row.get("decode_ms") and not row["variant"].startswith("floor")
                    and not row.get("diagnostic")):
                lines.setdefault(row["variant"], []).append((row["context"], row["decode_ms"]))
        for variant, points in sorted(lines.items()):
            points = sorted(dict(points).items())  # the latest row per context
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=variant,
                      linestyle="--" if variant == "bytes-floor" else "-")
        floors = [row["decode_ms"] for row in rows if row["batch"] == batch and row["variant"] == "floor-512"]
        if floors:
            axis.axhline(floors[-1], color="gray", linestyle=":", label="floor-512 (full, 512-token prompt)")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("context (tokens)")
        axis.set_ylabel("decode ms/token")
        axis.set_title(f"batch {batch}")
        axis.legend(fontsize=7)
    figure.suptitle(f"generate() decode, {rows[0]['device']}, {rows[-1]['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _where(error: BaseException) -> list[str]:
    """The innermost frames of ``error``'s traceback (file:line function), to tell which allocation failed."""
    import traceback

    return [f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
            for frame in traceback.extract_tb(error.__traceback__)[-6:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--floors", action="store_true", help="also the floor-512 and bytes-floor rows")
    parser.add_argument("--at-512", action="store_true", help="also each compile_for_generate row's own decode at a "
                        "512-token prompt, measured right after the context's runs (decode_ms_at_512)")
    parser.add_argument("--short-in-long", action="store_true", help="also each compile_for_generate row's decode "
                        "of a 512-token prompt in the context's static cache (decode_ms_short_in_long)")
    parser.add_argument("--mixed", type=int, default=0, metavar="TOKENS", help="with --batch > 1: also each "
                        "compile_for_generate row's decode of the batch with every row but the first left-padded to "
                        "its last TOKENS tokens (decode_ms_mixed)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top-k", default="2048", help="top_k of the hylra variants, or several (2048,8192: each "
                        "variant at each, in this process)")
    parser.add_argument("--block-size", default="64", help="block_size of the hylra variants, or several (64,16: "
                        "each variant at each, in this process; sink and local blocks keep 64 and 128 tokens)")
    parser.add_argument("--producer-block-size", type=int, default=None, help="producer_block_size of the -refine "
                        "variants at finer block sizes (producers select in these blocks, consumers refine in "
                        "--block-size ones)")
    parser.add_argument("--prefilter", default="0", help="the -refine variants' prefilter (0: none), or several "
                        "(0,2: each in this run)")
    parser.add_argument("--prefill-chunk", type=int, default=None, help="prefill_chunk_size for every variant")
    parser.add_argument("--small", action="store_true", help="tiny widths (a CPU smoke run)")
    parser.add_argument("--profile", action="store_true", help="also torch.profiler tables of 8 decode steps (at "
                        "most --new-tokens) and of the prefill inside generate() per variant, last "
                        "(profile-e2e-[prefill-]<variant>-<batch>x<context>.txt)")
    parser.add_argument("--host-profile", action="store_true", help="also cProfile tables of decode steps inside "
                        "generate() for each compile_for_generate row, at the context and with --at-512 at 512 "
                        "tokens, and the functions whose host time differs most (host-profile-e2e-<variant>-"
                        "<batch>x<context>.txt)")
    parser.add_argument("--fresh-caches", action="store_true", help="a new StaticCache for every generate() call "
                        "(its first decode step records the CUDA graph again) instead of one per length, reset")
    parser.add_argument("--run", default=None, help="run label grouping rows for ratios (several calls on one "
                        "machine, one after the other); default: this call's start time")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--table", type=Path, default=None, help="only write the Markdown and plot of the JSON rows")
    args = parser.parse_args()
    if args.table is not None:
        return table(args.table)
    variants = args.variants.split(",") if args.variants else []
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    try:
        block_sizes = [int(size) for size in args.block_size.split(",")]
        top_ks = [int(top_k) for top_k in args.top_k.split(",")]
    except ValueError:
        parser.error(f"--block-size {args.block_size!r} / --top-k {args.top_k!r}: one number or several, "
                     "comma-separated (e.g. 64,16)")
    try:
        prefilters = [int(n) for n in args.prefilter.split(",")]
    except ValueError:
        parser.error(f"--prefilter {args.prefilter!r}: one number or several, comma-separated (e.g. 0,2)")
    if prefilters != [0] and not set(variants) & set(REFINED):
        parser.error(f"--prefilter applies to the -refine variants ({', '.join(REFINED)}), and none is asked for")
    if args.producer_block_size and not set(variants) & set(REFINED):
        parser.error(f"--producer-block-size applies to the -refine variants ({', '.join(REFINED)}), and none is "
                     "asked for")
    cuda = torch.cuda.is_available()
    model = build_model(args.layers, args.context + args.new_tokens + 1, torch.device("cuda" if cuda else "cpu"),
                        torch.bfloat16 if cuda else torch.float32, small=args.small)
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = None
    code = code_version()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    meta = {"device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "code": code, "run": args.run or datetime.datetime.now().isoformat(timespec="seconds"),
            "model": f"Llama-3-8B shapes, {args.layers} layers, random bf16 weights" if not args.small else "tiny",
            "new_tokens": args.new_tokens,
            "candidates": DEFAULT_CANDIDATES, "prefill_chunk": args.prefill_chunk,
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", os.environ.get("PYTORCH_ALLOC_CONF"))}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"e2e-{device.replace(' ', '_')}.json"
    jobs = [(variant, args.context, size, top_k, prefilter) for variant in variants
            for size in ([64] if variant in BASELINES else block_sizes)
            for top_k in ([top_ks[0]] if variant in BASELINES else top_ks)
            for prefilter in (prefilters if variant in REFINED else [0])]
    if args.floors:
        jobs.append(("floor-512", 512, 64, top_ks[0], 0))
    for variant, context, size, top_k, prefilter in jobs:
        try:
            if variant == "floor-512":
                row = {**measure(model, "full", context, args.batch, args), "variant": "floor-512"}
            else:
                row = measure(model, variant, context, args.batch, args, size, top_k, prefilter)
        except torch.OutOfMemoryError as error:
            row = {"variant": variant, "context": context, "batch": args.batch,
                   **hylra_settings(variant, size, top_k, args.producer_block_size, prefilter),
                   "error": f"out of memory: {error}"[:300], "where": _where(error)}
        if cuda:
            torch.cuda.empty_cache()
        rows = [{**meta, **row}]
        if variant == "floor-512" and cuda:
            rows.append({**meta, **bytes_floor(model, args.context, args.batch)})
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if not k.endswith(("_runs_s", "_steps_ms"))}), flush=True)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
