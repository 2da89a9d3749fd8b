"""``hylra`` command line: ``hylra profile`` (model + calibration data -> policy JSON) and ``hylra inspect``.

Also runs as ``python -m hylra_compile.cli``. Nothing is downloaded: ``--model`` is a local checkpoint directory
or a config JSON (random weights, seeded by ``--seed``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .policy import Policy

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
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hylra", description="HyLRA offline profiler and policy tools")
    commands = parser.add_subparsers(dest="command", required=True)

    prof = commands.add_parser("profile", help="profile a model on calibration data and write an optimal policy")
    prof.add_argument("--model", required=True, help="local checkpoint directory, or a config JSON (random weights)")
    prof.add_argument("--data", required=True, nargs="+", metavar="FILE",
                      help="text files (need the checkpoint's tokenizer) or token-id files (.pt integer tensor, .npy)")
    prof.add_argument("--seq-len", required=True, type=_positive_int,
                      help="tokens per calibration sample; longer sequences are cut into windows of this length")
    prof.add_argument("--top-k", required=True, type=_positive_int, help="tokens kept per query block")
    prof.add_argument("--block-size", required=True, type=_positive_int, help="tokens per KV / query block")
    prof.add_argument("--sink-blocks", type=int, default=1, help="blocks always kept at the start (default 1)")
    prof.add_argument("--local-blocks", type=int, default=2, help="blocks always kept at the end (default 2)")
    prof.add_argument("--theta", type=_unit_interval, help="least similarity for reuse, in [0, 1]")
    prof.add_argument("--max-rnmse", type=float, help="layers with a larger sensitivity run dense")
    prof.add_argument("--budget", type=_positive_int, help="exactly this many dense layers (theta is then ignored)")
    prof.add_argument("--decode-steps", type=int, default=0,
                      help="greedy decode steps measured after each prefill (default 0: prefill only)")
    prof.add_argument("--head-map", action="store_true", help="also record the cross-head overlap in --profile-out")
    prof.add_argument("--out", required=True, help="policy JSON to write")
    prof.add_argument("--profile-out", help="also save the profile (.json or .safetensors)")
    prof.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    prof.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                      help="model dtype (default: bfloat16 on CUDA, float32 otherwise)")
    prof.add_argument("--seed", type=int, default=0, help="seed of the random weights of a config-only model")
    prof.add_argument("--no-progress", action="store_true", help="no progress bar")

    insp = commands.add_parser("inspect", help="print a policy's layer table and draw its figures")
    insp.add_argument("policy", help="policy JSON")
    insp.add_argument("--out-dir", help="where to write similarity.png and policy.png (default: the policy's folder)")
    insp.add_argument("--model", help="also check that the policy fits this checkpoint directory or config JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "profile":
            return _profile(args)
        return _inspect(args)
    except ValueError as err:
        parser.exit(2, f"hylra {args.command}: error: {err}\n")


# -- model and data ---------------------------------------------------------------------------------------------
def load_config(path: str):
    """The transformers config of a checkpoint directory or of a config JSON file."""
    from transformers import AutoConfig

    location = Path(path)
    if location.is_dir():
        return AutoConfig.from_pretrained(location, local_files_only=True)
    if location.is_file() and location.suffix == ".json":
        data = json.loads(location.read_text())
        if "model_type" not in data:
            raise ValueError(f"config {path!r} has no 'model_type'; cannot tell which model it describes")
        return AutoConfig.for_model(data.pop("model_type"), **data)
    raise ValueError(f"--model {path!r} is neither a checkpoint directory nor a config .json file")


def load_model(path: str, device: str, dtype: torch.dtype, seed: int) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer or None). A config JSON gives random weights and no tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config(path)
    if Path(path).is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
    else:
        torch.manual_seed(seed)
        with torch.device(device):  # initialise on the target device: an 8B model would take minutes on the CPU
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        tokenizer = None
    return model.to(device).eval(), tokenizer


def load_data(paths: Sequence[str], tokenizer: Any) -> list[Any]:
    """One item per file: an integer array for .pt / .npy files, the text for any other file."""
    items = []
    for name in paths:
        path = Path(name)
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
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model, tokenizer = load_model(args.model, args.device, getattr(torch, dtype_name), args.seed)
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
        head_map=args.head_map,
        decode_steps=args.decode_steps,
        description=f"{', '.join(Path(name).name for name in args.data)} (seq_len {args.seq_len})",
        progress=not args.no_progress,
    )
    if args.profile_out:
        prof.save(args.profile_out)
    policy = optimize(prof, theta=args.theta, max_rnmse=args.max_rnmse, budget=args.budget)
    policy.save(args.out)
    print(format_policy_table(policy))
    print(f"wrote {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .plots import plot_policy, plot_similarity

    policy = Policy.load(args.policy)
    if args.model:
        config = load_config(args.model)
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
    """One row per layer: mode, source, similarity to the source (consumers), sensitivity (when profiled)."""
    similarity = policy.provenance.get("similarity")
    sensitivity = policy.provenance.get("sensitivity")
    rows = [f"{'layer':>5}  {'mode':<8}  {'source':>6}  {'similarity':>10}  {'sensitivity':>11}"]
    for layer, (mode, source) in enumerate(zip(policy.modes, policy.sources)):
        sim = f"{similarity[source][layer]:.4f}" if similarity is not None and source is not None else "-"
        sens = f"{sensitivity[layer]:.4f}" if sensitivity is not None else "-"
        rows.append(f"{layer:>5}  {mode:<8}  {'-' if source is None else source:>6}  {sim:>10}  {sens:>11}")
    dense = sum(mode != "consumer" for mode in policy.modes)
    rows.append(f"{policy.num_layers} layers, {dense} dense, {policy.num_layers - dense} consumers; "
                f"num_kv_heads={policy.num_kv_heads}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
