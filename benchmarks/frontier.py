"""The speed–accuracy frontier: each setting's accuracy on a real model at its longest context, beside the speed of
the same setting on the 32-layer 8B-shaped model (H100, ``bench_e2e.py``).

    python benchmarks/frontier.py accuracy --model qwen2.5-coder-0.5b --length 32768 --top-k 2048 \\
        --group mechanisms --device cuda
    python benchmarks/frontier.py table                       # frontier-accuracy-*.json + e2e-*.json -> frontier.md

``accuracy`` runs :func:`hylra_compile.evaluate` (dense and every setting of a group on the same inputs: retrieval
prompts of ``--tasks`` on filler and prose haystacks, ``--samples`` per task and haystack at as many depths; KL on
``--windows`` held-out windows of ``builtin:prose`` and ``builtin:code``) and writes
``frontier-accuracy-<model>-<length>-<top_k>-<group>.{json,md,png}``. A group is a list of settings at ``D`` dense
layers (``--dense-layers``, default a quarter of the model's layers):

* ``mechanisms``: Jump-n (n = ceil(layers / D)) with each consumer selection -- ``reuse`` (the producer's blocks,
  plain HyLRA), ``refine`` (the top of the producer's 4 x top_k candidates by the consumer's own attention mass) and
  ``oracle`` (the consumer's own top-k of all blocks: dense -> oracle is what top-k at this budget costs, oracle ->
  reuse what reuse costs) -- and the profiled ``budget:D`` policy with reuse and refine;
* ``refinement``: the profiled ``budget:D`` policy with reuse, with refine from 4 and from 8 x top_k candidates
  (``c8``), and with reuse at 4 x top_k (``4x top_k``: attending every key the refinement reads to choose); and
  ``budget:Dr refine``, the budget policy of a profile of what refine keeps (``profile(candidates=4)``);
* ``blocks``: the profiled ``budget:D`` policy, oracle and refine, at blocks of 64, 32 (``b32``) and 16 (``b16``)
  keys, the same ``top_k`` and the same sink and local tokens: what finer selection is worth at a token budget;
  and refine at 32 and 16 from producers selecting in blocks of 64 (``p64``: ``producer_block_size=64``);
* ``window``: the profiled ``budget:D`` policy with refine at several sink and local sizes (``sinkS localL``, in
  blocks of 64, inside the same ``top_k``): what the forced first and last blocks are worth;
* ``phases``: Jump-n (reuse) sparse only in the prompt's prefill, and only in decode;
* ``attribution``: Jump-n (reuse) with one consumer at a time made dense (``every:n +dense L``): which layers carry
  the loss (``--attribution-prompts`` of the prompts, spread over tasks, haystacks and depths).

``--producer-block-size P`` has every setting's producers select in blocks of ``P`` for consumers refining in
``--block-size`` (refine settings only; files named ``-pP``): any group's mechanism with coarse producers.

The profiled policies are calibrated on the first window of each text and one retrieval prompt of another seed
(captured-mass similarity); the evaluated windows are the texts' last ones.

Cost, Qwen2.5-Coder-0.5B at 32K on an H100: about 1 s per prompt and setting (a prefill and up to 12 eager decode
steps), so the default 24 prompts per task and haystack (96 of two tasks) take ~100 s per setting, dense included,
after ~1-2 minutes of loading and profiling: a 10-minute device job holds dense and about three settings. The
prompts run in an order whose every prefix samples each task, haystack and depth (:func:`tasks.spread_order`), and
the files are saved once a minute as well as at the end, so a job cut off by its time limit keeps a fair sample,
marked "cut short" with its count of prompts (stderr says how far it got and, stopped by SIGTERM, where it was).
Each run keeps its profiles and dense's answers under ``--cache`` (by model and device kind) for the next run on
the machine, which then spends its time on the settings (``--no-cache``: afresh).

``table`` joins every accuracy file but the attribution's (a diagnosis, read in its own file) with the speed of the
same dense-layer share and ``top_k`` from the committed ``e2e-*.json`` rows (the latest row of the nearest
``<D>of32`` variant; ratios to the latest ``eager`` row at the same context: time to first token, and decode
ms/token to Hugging Face's compiled decode, the ``inductor`` row).
Settings whose mechanism the speed rows do not cover say so. It writes ``frontier.md`` and ``frontier.png``, the
Pareto front (no other setting of the same model, length and top_k has lower KL, at least as many retrieval hits
and at least its speed) marked.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import functools
import hashlib
import json
import math
import re
import signal
import sys
import time
from pathlib import Path

from hylra_compile import Policy, Profile, allocate_top_k, optimize, profile
from hylra_compile.corpora import builtin_text
from hylra_compile.files import check_writable_folder, write_atomic
from hylra_compile.evaluate import DENSE, Evaluation, Setting, evaluate, same_within_intervals, task_of, wilson_interval
from hylra_compile.models import load_config, load_model
from hylra_compile.options import DEFAULT_CANDIDATES, HylraOptions, forced_blocks
from hylra_compile.plots import SETTING_TERMS
from hylra_compile.profiler import full_windows
from hylra_compile.tasks import make_prompts, spread_order

GROUPS = ("mechanisms", "refinement", "blocks", "window", "phases", "attribution")
RESULTS = Path(__file__).parent / "results"
# A run saves what it has measured this often (seconds): a device job cut off by its time limit keeps it.
CHECKPOINT_SECONDS = 60
ANSWER_TOKENS = 12  # max_new_tokens of each retrieval answer


def _jump(num_layers: int, dense: int) -> int:
    """The n of Jump-n with ``dense`` producers in ``num_layers`` layers (``ceil(layers / n) == dense``)."""
    return min(range(1, num_layers + 1), key=lambda n: (abs(math.ceil(num_layers / n) - dense), n))


def settings_of(group: str, num_layers: int, dense: int, get_profile, only=None, top_k: int = 2048,
                block_size: int = 64) -> dict[str, Setting]:
    """The settings of ``group`` (those named in ``only``, when given; the profile runs only if one needs it), at
    ``block_size`` with 64 sink and 128 local tokens (what :func:`accuracy` runs)."""
    forced = sum(forced_blocks(block_size).values())
    n = _jump(num_layers, dense)
    jump = Policy.every(n, num_layers)
    dense = math.ceil(num_layers / n)  # the budget policies match Jump-n's count
    if group == "mechanisms":
        names = [f"every:{n}", f"every:{n} refine", f"every:{n} oracle", f"budget:{dense}", f"budget:{dense} refine"]
        names = [name for name in names if not only or name in only]
        budget = optimize(get_profile(), budget=dense) if any(name.startswith("budget") for name in names) else None
        return {name: Setting(budget if name.startswith("budget") else jump,
                              {"selection": name.split()[1]} if " " in name else {}) for name in names}
    if group == "refinement":
        options = {f"budget:{dense}": {}, f"budget:{dense} refine": {"selection": "refine"},
                   f"budget:{dense} refine c2": {"selection": "refine", "candidates": 2},
                   f"budget:{dense} refine c8": {"selection": "refine", "candidates": 8},
                   f"budget:{dense} 4x top_k": {"top_k": 4 * top_k},
                   # A prompt's candidates narrowed by mean keys before their keys are scored (decode: keys).
                   f"budget:{dense} refine pf2": {"selection": "refine", "prefilter": 2},
                   f"budget:{dense} refine c8 pf4": {"selection": "refine", "candidates": 8, "prefilter": 4}}
        names = [name for name in options if not only or name in only]
        budget = optimize(get_profile(), budget=dense) if names else None
        settings = {name: Setting(budget, options[name]) for name in names}
        refine_profiled = f"budget:{dense}r refine"  # the budget policy of a profile of what refine keeps
        if not only or refine_profiled in only:
            settings[refine_profiled] = Setting(optimize(get_profile(candidates=4), budget=dense),
                                                {"selection": "refine"})
        # Budgets by need: each consumer's own top_k from its sensitivity, the total fixed (refine chooses them).
        if not only or f"budget:{dense} refine by need" in only:
            settings[f"budget:{dense} refine by need"] = Setting(
                allocate_top_k(optimize(get_profile(), budget=dense), get_profile(), top_k=top_k,
                               block_size=block_size, min_blocks=forced), {"selection": "refine"})
        # Budgets by need per KV head: each consumer KV head's own top_k from its sensitivity, the total fixed.
        for suffix, extra in (("", {}), (" pf2", {"prefilter": 2})):  # and with the mean-key pre-filter
            if not only or f"budget:{dense} refine by head need{suffix}" in only:
                settings[f"budget:{dense} refine by head need{suffix}"] = Setting(
                    allocate_top_k(optimize(get_profile(), budget=dense), get_profile(), top_k=top_k,
                                   block_size=block_size, per_head=True, min_blocks=forced),
                    {"selection": "refine", **extra})
        # Head-mapped reuse (Kascade): each consumer KV head reads the producer KV head holding most of its mass.
        if not only or f"budget:{dense} heads" in only:
            settings[f"budget:{dense} heads"] = Setting(optimize(get_profile(), budget=dense, map_heads=True))
        if not only or f"budget:{dense}r refine heads" in only:
            settings[f"budget:{dense}r refine heads"] = Setting(
                optimize(get_profile(candidates=4), budget=dense, map_heads=True), {"selection": "refine"})
        return settings
    if group == "blocks":  # granularity at the same token budget: top_k, sink and local tokens kept as at block 64
        options = {}
        for size in (64, 32, 16):
            tokens = {} if size == 64 else {"block_size": size, **forced_blocks(size), "producer_block_size": size}
            suffix = "" if size == 64 else f" b{size}"
            options[f"budget:{dense} oracle{suffix}"] = {"selection": "oracle", **tokens}
            options[f"budget:{dense} refine{suffix}"] = {"selection": "refine", **tokens}
            if size != 64:  # producers selecting in blocks of 64, consumers refining in blocks of this size
                options[f"budget:{dense} refine{suffix} p64"] = {"selection": "refine", **tokens,
                                                                 "producer_block_size": 64}
        names = [name for name in options if not only or name in only]
        budget = optimize(get_profile(), budget=dense) if names else None
        return {name: Setting(budget, options[name]) for name in names}
    if group == "window":  # the forced blocks' worth: sink and local tokens inside the same top_k, refine
        options = {f"budget:{dense} refine sink{sink} local{local}": {"selection": "refine", "sink_blocks": sink,
                                                                     "local_blocks": local}
                   for sink, local in ((1, 2), (0, 2), (1, 0), (1, 4), (2, 8), (4, 4))}
        names = [name for name in options if not only or name in only]
        budget = optimize(get_profile(), budget=dense) if names else None
        return {name: Setting(budget, options[name]) for name in names}
    if group == "phases":
        return {f"every:{n} prefill only": Setting(jump, phases=("prefill",)),
                f"every:{n} decode only": Setting(jump, phases=("decode",))}
    if group == "attribution":
        settings = {f"every:{n}": Setting(jump)}
        for layer, mode in enumerate(jump.modes):
            if mode == "consumer":
                modes = list(jump.modes)
                modes[layer] = "full"
                settings[f"every:{n} +dense {layer}"] = Setting(Policy(modes, [s if m == "consumer" else None
                                                                               for m, s in zip(modes, jump.sources)]))
        return settings
    raise ValueError(f"unknown group {group!r}; valid groups are {list(GROUPS)}")


def with_producer_blocks(settings: dict[str, Setting], size: int | None) -> dict[str, Setting]:
    """``settings`` with producers selecting in blocks of ``size`` (``--producer-block-size``; None: as they are),
    which only refining consumers can take: any other setting is refused, by name."""
    if size is None:
        return settings
    others = [name for name, s in settings.items() if s.options.get("selection") != "refine"]
    if others:
        raise SystemExit(f"--producer-block-size {size} needs selection='refine'; these settings have another: "
                         f"{others} (choose refine settings with --only)")
    return {name: dataclasses.replace(s, options={**s.options, "producer_block_size": size})
            for name, s in settings.items()}


def check_settings(only: list[str] | None, groups: list[str], num_layers: int, num_kv_heads: int, dense: int,
                   selection: dict, producer_block_size: int | None = None) -> None:
    """Refuse, before the model loads, ``--only`` names that no setting of ``groups`` has and settings whose options
    the backend would refuse (names and options do not depend on the profile, so a uniform stand-in gives them).
    ``selection``: the run's options, which each setting's own options update; ``producer_block_size``: as
    :func:`with_producer_blocks`."""
    import numpy as np

    try:
        HylraOptions(**selection)
    except ValueError as error:
        raise SystemExit(f"frontier.py accuracy: {error}") from None
    stand_in = Profile(np.zeros((num_layers, num_layers)), np.ones(num_layers),
                       head_overlap=np.ones((num_layers, num_layers, num_kv_heads, num_kv_heads)),
                       head_sensitivity=np.ones((num_layers, num_kv_heads)), metadata={"num_kv_heads": num_kv_heads})
    settings = {name: setting for group in dict.fromkeys(groups)
                for name, setting in settings_of(group, num_layers, dense, lambda candidates=1: stand_in,
                                                 top_k=selection["top_k"], block_size=selection["block_size"]).items()}
    unknown = [name for name in only or () if name not in settings]
    if unknown:
        raise SystemExit(f"--only {unknown}: no such setting in group(s) {list(dict.fromkeys(groups))} of this "
                         f"model ({num_layers} layers, {dense} dense); valid: {list(settings)}")
    asked = {name: setting for name, setting in settings.items() if not only or name in only}
    for name, setting in with_producer_blocks(asked, producer_block_size).items():
        try:
            HylraOptions(policy=setting.policy, **{**selection, **setting.options})
        except ValueError as error:
            raise SystemExit(f"setting {name!r}: {error}") from None


def accuracy(args: argparse.Namespace) -> None:
    import torch

    config = load_config(args.model)
    num_layers = config.num_hidden_layers
    dense = args.dense_layers or max(1, num_layers // 4)
    # Settings name what they change from the plain method (reuse).
    # 64 sink and 128 local tokens at every block size (1 and 2 blocks of 64), as the blocks group keeps them.
    # Producers select in the consumers' blocks unless a setting or --producer-block-size says otherwise.
    selection = {"top_k": args.top_k, "block_size": args.block_size, **forced_blocks(args.block_size),
                 "producer_block_size": args.block_size,
                 "min_seq_len": args.length // 8, "selection": "reuse"}
    producer_block_size = args.producer_block_size
    check_settings(args.only, args.group, num_layers, config.num_key_value_heads, dense, selection,
                   producer_block_size)
    cache = None if args.no_cache else Cache(args.cache, args.model, args.device)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device,
                                  dtype=torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    print(f"frontier: {args.model} loaded in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    texts = [full_windows([builtin_text(name)], block_size=64, seq_len=args.length, tokenizer=tokenizer)
             for name in ("builtin:prose", "builtin:code")]
    windows = [w for whole in texts for w in whole[-args.windows:]] if args.windows else []

    # Profiled in the producers' blocks: the grain the policy's producers select in.
    grain = producer_block_size or args.block_size
    profiled = {"top_k": args.top_k, "block_size": grain, **forced_blocks(grain)}

    @functools.cache
    def get_profile(candidates: int = 1):
        description = "first windows of builtin:prose and builtin:code, one passkey prompt (seed 1000)"
        path = cache and cache.profile_path(args.length, candidates, **profiled)
        if path and path.is_file():
            cached = Profile.load(path)
            if cached.metadata.get("calibration") == description:
                print(f"frontier: profile from {path}", file=sys.stderr, flush=True)
                return cached
        retrieval = make_prompts(["passkey"], tokenizer, [args.length], 1, seed=1000, haystacks=("prose",))[0]
        calibration = [texts[0][0], texts[1][0], tokenizer(retrieval.text, add_special_tokens=False)["input_ids"]]
        started = time.perf_counter()
        measured = profile(model, calibration, similarity="mass", candidates=candidates, head_map=True,
                           progress=not args.no_progress, description=description, **profiled)
        print(f"frontier: profile ({candidates} candidate(s) per block) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
        if path:
            measured.save(path)
        return measured

    tasks = args.tasks.split(",")
    # In an order whose every prefix is a fair sample: a run cut short (a device job's time limit) keeps its checkpoint.
    prompts = spread_order(make_prompts(tasks, tokenizer, [args.length], args.samples, seed=0,
                                        haystacks=("filler", "prose")))
    chosen = {group: with_producer_blocks(
        {name: setting for name, setting in settings_of(group, num_layers, dense, get_profile, args.only,
                                                        args.top_k, args.block_size).items()
         if not args.only or name in args.only}, producer_block_size) for group in dict.fromkeys(args.group)}
    # The groups that share the prompts run as one evaluation (dense once); attribution, on fewer prompts, alone.
    runs = [[group for group in chosen if group != "attribution"], [g for g in chosen if g == "attribution"]]
    for groups in filter(None, runs):
        start = time.perf_counter()
        union: dict[str, Setting] = {}
        for group in groups:
            for name, setting in chosen[group].items():
                if union.setdefault(name, setting) != setting:
                    raise ValueError(f"setting {name!r} means two things in groups {groups}")
        run_prompts = (prompts if groups != ["attribution"] else
                       prompts[:: max(1, len(prompts) // args.attribution_prompts)])
        saved_at = [start]

        def save(evaluation: Evaluation, final: bool = False) -> None:
            """Each group's file, from the evaluation so far: at the end, and at most once a minute before it."""
            now = time.perf_counter()
            if not final and now - saved_at[0] < CHECKPOINT_SECONDS:
                return
            saved_at[0] = now
            seconds = round(now - start)
            print(f"frontier {'+'.join(groups)}: {evaluation.metadata['prompts']} of "
                  f"{evaluation.metadata['prompts_planned']} prompts after {seconds} s", file=sys.stderr, flush=True)
            if cache:
                cache.keep_dense_answers(evaluation[DENSE].answers, run_prompts, max_new_tokens=ANSWER_TOKENS)
            for group in groups:
                part = Evaluation([r for r in evaluation.results if r.name == DENSE or r.name in chosen[group]],
                                  {**evaluation.metadata, "experiment": f"frontier {group}", "seconds": seconds,
                                   "evaluated_with": groups})
                # Files named by the run's block sizes (the blocks group sets its settings' own inside).
                size = ("" if args.block_size == 64 else f"-b{args.block_size}") + (
                    f"-p{producer_block_size}" if producer_block_size else "")
                part.save(args.out, stem=f"frontier-accuracy-{args.model}-{args.length}-{args.top_k}-{group}{size}")
                if final:
                    print(part.to_markdown(), flush=True)

        evaluation = evaluate(model, union, tokenizer=tokenizer, prompts=run_prompts, windows=windows,
                              max_new_tokens=ANSWER_TOKENS, progress=not args.no_progress,
                              dense_answers=cache and cache.dense_answers(run_prompts, max_new_tokens=ANSWER_TOKENS),
                              metadata={"model": args.model,
                                        "text": "builtin:prose and builtin:code (last windows)",
                                        "command": "python benchmarks/frontier.py " + " ".join(sys.argv[2:])},
                              checkpoint=save, **selection)
        save(evaluation, final=True)


class Cache:
    """What one frontier run can hand the next on the same machine (a device machine keeps its files while warm):
    the profile of each selection, and dense's answers to each prompt (~1 s a prompt at 32K), under ``folder``,
    by model and device kind."""

    def __init__(self, folder: Path, model: str, device: str):
        self.folder = Path(folder).expanduser()
        check_writable_folder(self.folder, "--cache")  # made, and refused before the model loads if it cannot be
        self.tag = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(model).stem)}-{device.split(':')[0]}"

    def profile_path(self, length: int, candidates: int, top_k: int, block_size: int, sink_blocks: int,
                     local_blocks: int) -> Path:
        return self.folder / (f"profile-{self.tag}-{length}-{top_k}-b{block_size}-s{sink_blocks}-l{local_blocks}"
                              f"-c{candidates}.safetensors")

    @property
    def _answers_path(self) -> Path:
        return self.folder / f"dense-answers-{self.tag}.json"

    @staticmethod
    def _key(prompt, max_new_tokens: int) -> str:
        return f"{prompt.name}|{hashlib.sha1(prompt.text.encode()).hexdigest()[:16]}|{max_new_tokens}"

    def dense_answers(self, prompts, max_new_tokens: int) -> dict[str, str]:
        """prompt name -> dense's answer, for the prompts an earlier run answered (the same text and length)."""
        known = json.loads(self._answers_path.read_text()) if self._answers_path.is_file() else {}
        answers = {p.name: known[self._key(p, max_new_tokens)] for p in prompts
                   if self._key(p, max_new_tokens) in known}
        if answers:
            print(f"frontier: dense answers to {len(answers)} of {len(prompts)} prompts from {self._answers_path}",
                  file=sys.stderr, flush=True)
        return answers

    def keep_dense_answers(self, answers: dict[str, str], prompts, max_new_tokens: int) -> None:
        known = json.loads(self._answers_path.read_text()) if self._answers_path.is_file() else {}
        known.update({self._key(p, max_new_tokens): answers[p.name] for p in prompts if p.name in answers})
        write_atomic(self._answers_path, json.dumps(known, indent=0) + "\n")


# -- table -------------------------------------------------------------------------------------------------------
def speed_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("e2e-*.json")):
        rows += [r for r in json.loads(path.read_text()) if not r.get("diagnostic") and "error" not in r]
    return rows


def speed_of(rows: list[dict], dense_share: float, top_k: int, selection: str, block_size: int = 64,
             candidates: int = DEFAULT_CANDIDATES, producer_block_size: int | None = None,
             prefilter: int = 0) -> dict | None:
    """The speed of a setting with ``dense_share`` of its layers dense: the latest batch-1 rows of the nearest
    ``<D>of32`` variant (``<D>of32-refine`` under ``selection="refine"``) at 32K and 128K with the same ``top_k``,
    ``block_size`` (and ``candidates``, ``producer_block_size``, ``prefilter`` under refine), as ratios to
    the ``eager`` (time to first token) and ``inductor`` (decode) rows of the same device and context, from the
    same run where it has them. None for a selection the speed rows do not run (``oracle``). Rows from before
    bench_e2e recorded them ran block 64, 4 candidates and no pre-filter."""
    suffix = {"reuse": "", "refine": "-refine"}.get(selection)
    if suffix is None:
        return None
    pattern = r"(\d+)of32" + re.escape(suffix)
    # The hylra rows of this block size (and candidate count); the eager and inductor baselines have neither.
    rows = [r for r in rows if not re.fullmatch(r"\d+of32.*", r["variant"]) or (
        r.get("block_size", 64) == block_size
        and (selection != "refine" or (r.get("candidates", DEFAULT_CANDIDATES) == candidates
                                       and r.get("producer_block_size") == producer_block_size
                                       and (r.get("prefilter") or 0) == prefilter)))]
    variants = {int(m.group(1)): m.group(0) for r in rows if (m := re.fullmatch(pattern, r["variant"]))}
    if not variants:
        return None
    dense = min(variants, key=lambda d: abs(d / 32 - dense_share))
    speed = {"variant": variants[dense]}
    for context, name in ((32768, "32K"), (131072, "128K")):
        def matching(variant: str, like: dict | None = None) -> list[dict]:
            return [r for r in rows if r["variant"] == variant and r["context"] == context and r["batch"] == 1
                    and r.get("top_k") in (None, top_k) and (like is None or r["device"] == like["device"])]

        def latest(variant: str, like: dict) -> dict | None:
            found = matching(variant, like)
            return ([r for r in found if r.get("run") == like.get("run")] or found or [None])[-1]

        # The latest row with a baseline on its device (a device with no eager or inductor rows gives no ratios).
        found = matching(variants[dense])
        row = ([r for r in found if latest("eager", r) or latest("inductor", r)] or found or [None])[-1]
        if row is None:
            continue
        eager, compiled = latest("eager", row), latest("inductor", row)
        speed[f"decode_ms_{name}"] = row["decode_ms"]
        speed[f"ttft_s_{name}"] = row["ttft_s"]
        if eager:
            speed[f"ttft_ratio_{name}"] = row["ttft_s"] / eager["ttft_s"]
        if compiled:
            speed[f"decode_speedup_{name}"] = compiled["decode_ms"] / row["decode_ms"]
        speed[f"date_{name}"] = row["date"]
        speed[f"device_{name}"] = row["device"]
    return speed if len(speed) > 1 else None


def frontier_rows(folder: Path) -> list[dict]:
    speed = speed_rows(folder)
    rows = []
    for path in sorted(folder.glob("frontier-accuracy-*.json")):
        data = json.loads(path.read_text())
        m, results = data["metadata"], data["results"]
        if m.get("experiment") == "frontier attribution":  # one layer dense at a time: a diagnosis, not a setting
            continue
        dense = next(r for r in results if r["name"] == DENSE)
        for r in results:
            if r["name"] == DENSE:
                continue
            options = {**{k: m[k] for k in ("top_k", "block_size", "sink_blocks", "local_blocks", "selection",
                                            "candidates") if k in m},
                       **r["options"]}
            if options.get("producer_block_size") == options["block_size"]:
                options["producer_block_size"] = None  # producers in the consumers' blocks: the plain rows
            tasks = {t: (v["correct"], v["total"]) for t, v in r["retrieval"].items()}
            dense_tasks = {t: (v["correct"], v["total"]) for t, v in dense["retrieval"].items()}
            rows.append({
                "model": m["model"], "length": m["lengths"][0] if m["lengths"] else m["seq_len"],
                "device": m["device"], "date": m["date"], "experiment": m.get("experiment"),
                "setting": r["name"] + (f" p{coarse}" if (coarse := options.get("producer_block_size"))
                                        and f"p{coarse}" not in r["name"].split() else ""),
                "dense_layers": r["full_layers"], "num_layers": m["num_layers"], **options,
                "cut_short": m.get("prompts", 0) < m.get("prompts_planned", 0),
                "phases": r.get("phases", ["prefill", "decode"]), "kl": r["kl"],
                "perplexity_change": r["perplexity"] / dense["perplexity"] - 1 if dense["perplexity"] else None,
                "retrieval": tasks, "dense_retrieval": dense_tasks,
                "retrieval_as_dense": all(same_within_intervals(tasks[t], dense_tasks[t]) for t in tasks),
                "speed": speed_of(speed, r["full_layers"] / m["num_layers"], options["top_k"], options["selection"],
                                  options["block_size"], options.get("candidates", DEFAULT_CANDIDATES),
                                  options.get("producer_block_size"), options.get("prefilter", 0))
                if r.get("phases", ["prefill", "decode"]) == ["prefill", "decode"] else None,
            })
    for row in rows:
        row["pareto"] = row["speed"] is not None and not any(_dominates(other, row) for other in rows)
    return rows


def _hits(row: dict) -> int:
    return sum(correct for correct, _ in row["retrieval"].values())


def _dominates(a: dict, b: dict) -> bool:
    """``a`` is as good as ``b`` everywhere and better somewhere (same table; speed measured)."""
    if a is b or a["speed"] is None or _table_of(a) != _table_of(b):
        return False
    key = "decode_speedup_32K"  # every <D>of32 variant has 32K rows; 128K rows only some
    fast_a, fast_b = a["speed"].get(key, 0), b["speed"].get(key, 0)
    as_good = a["kl"] <= b["kl"] and _hits(a) >= _hits(b) and fast_a >= fast_b
    return as_good and (a["kl"] < b["kl"] or _hits(a) > _hits(b) or fast_a > fast_b)


def _cell(accuracy: tuple[int, int], dense: tuple[int, int]) -> str:
    low, high = wilson_interval(*accuracy)
    mark = "" if same_within_intervals(accuracy, dense) else " **↓**" if accuracy[0] / accuracy[1] < dense[0] / dense[1] \
        else " **↑**"
    return f"{accuracy[0]}/{accuracy[1]} [{100 * low:.0f}–{100 * high:.0f}]{mark}"


def table(folder: Path) -> None:
    rows = frontier_rows(folder)
    if not rows:
        raise SystemExit(f"no frontier-accuracy-*.json under {folder}: run `frontier.py accuracy` first")
    lines = ["# The speed–accuracy frontier", "",
             "Accuracy: a real model at its longest context against dense on the same inputs (retrieval exact match "
             "correct/total [Wilson 95% interval, %], **↓** where the interval lies below dense's; KL(dense ‖ "
             "setting) in nats per token on held-out prose and code). Speed: the same dense-layer share and top_k on "
             "the 32-layer Llama-3-8B-shaped model through `generate()` (bench_e2e rows, batch 1): decode speed-up "
             "over Hugging Face's compiled decode and time to first token as a share of eager's. ★ marks the Pareto "
             "front (KL, retrieval hits, 32K decode speed). Generated by `python benchmarks/frontier.py table`.", ""]
    for (model, length, top_k, prompts), group in _grouped(rows).items():
        tasks = sorted({t for r in group for t in r["retrieval"]})
        dense = group[0]["dense_retrieval"]
        first = group[0]
        lines += [f"## {model}, {length} tokens, top_k {top_k} ({100 * top_k / length:.1f}% of the context), "
                  f"{prompts} retrieval prompts", "",
                  f"{first['device']}, {first['date']}; block {first['block_size']}, sink {first['sink_blocks']}, "
                  f"local {first['local_blocks']} (settings name what they change). Dense: "
                  + ", ".join(f"{t} {dense[t][0]}/{dense[t][1]}" for t in tasks) + ".", ""]
        head = ["", "setting", "full-attention layers", "KL", "perplexity", *tasks, "decode speed-up 32K · 128K",
                "TTFT / eager 32K · 128K"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in group:
            s = r["speed"]
            if s is None:
                why = ("a phase diagnostic" if r["phases"] != ["prefill", "decode"] else
                       "a measurement: each consumer runs a dense pass" if r["selection"] == "oracle" else
                       f"no bench_e2e row of a -refine variant at top_k {r['top_k']}, block {r['block_size']}, "
                       f"{r.get('candidates', DEFAULT_CANDIDATES)} candidates"
                       + (f", prefilter {r['prefilter']}" if r.get("prefilter") else "") if r["selection"] == "refine"
                       else f"no bench_e2e row at top_k {r['top_k']}, block {r['block_size']}")
                speed = [f"not measured ({why})", ""]
            else:
                speed = [" · ".join(f"{s[k]:.1f}×" if k in s else "-" for k in ("decode_speedup_32K",
                                                                                 "decode_speedup_128K"))
                         + f" ({s['variant']})",
                         " · ".join(f"{s[k]:.2f}" if k in s else "-" for k in ("ttft_ratio_32K", "ttft_ratio_128K"))]
            ppl = "-" if r["perplexity_change"] is None else f"{100 * r['perplexity_change']:+.1f}%"
            kl = f"{r['kl']:.4f}"
            if "prefill" not in r["phases"]:  # the text windows are prefills, which this setting leaves dense
                kl, ppl = "— (text is prefill)", "—"
            setting = r["setting"] + (" (run cut short)" if r["cut_short"] else "")
            lines.append("| " + " | ".join(["★" if r["pareto"] else "", setting,
                                            f"{r['dense_layers']}/{r['num_layers']}", kl, ppl,
                                            *[_cell(r["retrieval"][t], r["dense_retrieval"][t]) for t in tasks], *speed]) + " |")
        lines.append("")
    (folder / "frontier.md").write_text("\n".join(lines))
    (folder / "frontier.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, folder / "frontier.png")
    print("\n".join(lines))


def _table_of(row: dict) -> tuple:
    """Rows compare within one model, length, top_k and retrieval sample (runs of 6 and of 24 prompts per task
    each get their own table: a cell is judged against the dense run of its own prompts)."""
    return row["model"], row["length"], row["top_k"], sum(total for _, total in row["dense_retrieval"].values())


def _grouped(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in sorted(rows, key=lambda r: -_table_of(r)[3]):  # the largest sample first
        groups.setdefault(_table_of(r), []).append(r)
    return groups


def plot(rows: list[dict], path: Path) -> None:
    """Per model / length / top_k: retrieval exact match (with 95% intervals) against KL, one point per setting
    sparse in both phases (a star on the Pareto front), coloured by selection; the dense retrieval as a band."""
    from hylra_compile.plots import _pyplot

    plt = _pyplot()
    groups = _grouped(rows)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5), squeeze=False)
    colours = {"reuse": "#1f77b4", "refine": "#2ca02c", "oracle": "#7f7f7f"}
    for ax, ((model, length, top_k, _), group) in zip(axes[0], groups.items()):
        dense = group[0]["dense_retrieval"]
        d_hits, d_total = sum(c for c, _ in dense.values()), sum(t for _, t in dense.values())
        low, high = wilson_interval(d_hits, d_total)
        ax.axhspan(100 * low, 100 * high, color="black", alpha=0.08, label=f"dense {d_hits}/{d_total} (95% interval)")
        shown = [r for r in group if r["phases"] == ["prefill", "decode"]]  # phase diagnostics: the table only
        for i, r in enumerate(sorted(shown, key=lambda r: (r["kl"], _hits(r)))):
            hits, total = _hits(r), sum(t for _, t in r["retrieval"].values())
            lo, hi = wilson_interval(hits, total)
            y = 100 * hits / total
            ax.errorbar(r["kl"], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="*" if r["pareto"] else "o",
                        color=colours.get(r["selection"], "#d62728"), capsize=3, markersize=9 if r["pareto"] else 5)
            speed = r["speed"] and r["speed"].get("decode_speedup_32K")
            label = r["setting"] + (f" ({speed:.1f}× decode at 32K, 8B shapes on H100)" if speed else "")
            # Neighbours in KL get labels at staggered heights, so near-equal settings stay readable.
            ax.annotate(label, (r["kl"], y), textcoords="offset points", xytext=(6, 10 - 10 * (i % 3)), fontsize=7)
        for selection, colour in colours.items():
            ax.scatter([], [], color=colour, label=f"selection {selection}")
        ax.scatter([], [], marker="*", color="black", s=60, label="Pareto front (KL, retrieval, speed)")
        ax.set_xlabel("KL(dense ‖ setting), nats/token (held-out prose and code)")
        ax.set_ylabel("retrieval exact match, all tasks (%)")
        ax.set_title(f"{model}, {length} tokens, top_k {top_k}, block {group[0]['block_size']}, "
                     f"{group[0]['dense_layers']}/{group[0]['num_layers']} full-attention layers\n{d_total} prompts per "
                     f"setting ({group[0]['device']}, {group[0]['date']})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.text(0.5, 0.01, SETTING_TERMS, ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    acc = commands.add_parser("accuracy", help="evaluate a group of settings on a real model")
    acc.add_argument("--model", required=True, help="a named model (smollm2, qwen2.5-coder-0.5b) or a GGUF path")
    acc.add_argument("--length", type=int, required=True, help="prompt and text-window length in tokens")
    acc.add_argument("--top-k", type=int, required=True)
    acc.add_argument("--producer-block-size", type=int, default=None,
                     help="producers select in blocks of this size for every setting (refine settings only)")
    acc.add_argument("--block-size", type=int, default=64, help="the settings' block size (default 64; the sink "
                     "and local blocks keep 64 and 128 tokens)")
    acc.add_argument("--group", action="append", choices=GROUPS, required=True, help="repeatable")
    acc.add_argument("--only", action="append", metavar="SETTING", help="run only these settings of the group")
    acc.add_argument("--dense-layers", type=int, default=None, help="D (default: a quarter of the layers)")
    acc.add_argument("--samples", type=int, default=24, help="prompts per task and haystack (default 24)")
    acc.add_argument("--tasks", default="passkey,multikey")
    acc.add_argument("--windows", type=int, default=1, help="held-out windows per text (default 1)")
    acc.add_argument("--attribution-prompts", type=int, default=24, help="prompts of the attribution group")
    acc.add_argument("--device", default="cuda")
    acc.add_argument("--out", type=Path, default=RESULTS)
    acc.add_argument("--no-progress", action="store_true")
    acc.add_argument("--cache", type=Path, default=Path("~/.cache/hylra_compile/frontier"),
                     help="where profiles and dense's answers are kept for the next run on this machine")
    acc.add_argument("--no-cache", action="store_true", help="profile and run dense afresh, keep nothing")
    tab = commands.add_parser("table", help="join the accuracy files with the speed rows")
    tab.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "accuracy":
        # A run its time limit stops (SIGTERM, as `timeout` sends) prints where it was before it ends.
        faulthandler.register(signal.SIGTERM, chain=True)
        accuracy(args)
    else:
        table(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
