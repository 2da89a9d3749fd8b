"""The paper's accuracy experiments on a real trained model (SmolLM2-135M-Instruct), CPU, reference ops.

    python benchmarks/accuracy.py {theta,transfer,block,topk,window,all} [--length 2048] [--share 4]

``top_k`` is ``length / share`` tokens per query block (default a quarter of the context).

* ``theta``: DP policies at θ in 0.6 … 0.95 (and at θ = 0.9 with ``max_rnmse`` keeping the most sensitive
  layers full) against Jump-n and budget policies with the same number of full-attention layers (the claim: at
  equal full-layer counts DP is at least as accurate as Jump-n).
* ``transfer``: DP (θ = 0.9) profiled on prose, on code and on retrieval prompts, each evaluated on prose,
  retrieval and code (the paper's open question 1).
* ``block``: Jump-3 at block 32 / 64 / 128 with the same token budget (open question 3).
* ``topk``: Jump-3 and Jump-5 at top_k = length/8, /4, /2.
* ``window``: Jump-3 with more of the fixed budget on sink and local blocks.
* ``sensitive``: budget policies that keep the 1 or 3 most sensitive layers (profiled RNMSE of a layer on its own
  top-k) full, against the same budgets without and Jump-n.
* ``recommended``: block 32 with the 3 most sensitive layers full (run with ``--length 4096``).
* ``similarity``: DP and budget policies from the block-overlap similarity against the same from the
  captured-mass similarity (``profile(similarity="mass")``), and Jump-n, at equal full-layer counts.

Every run is :func:`hylra_compile.evaluate` (dense and the policies on the same inputs); each experiment writes
``accuracy-<name>.{json,md,png}`` under ``--out``. Calibration windows come from the start of a text, held-out
windows from its end; retrieval calibration prompts use other seeds than the evaluated ones.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from hylra_compile import Policy, optimize, profile
from hylra_compile.corpora import builtin_text
from hylra_compile.evaluate import evaluate
from hylra_compile.models import load_model
from hylra_compile.profiler import full_windows
from hylra_compile.tasks import make_prompts

MODEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to fp32)"


def windows(tokenizer, name: str, length: int, count: int, held_out: bool):
    whole = full_windows([builtin_text(name)], block_size=64, seq_len=length, tokenizer=tokenizer)
    return whole[-count:] if held_out else whole[:count]


class Setup:
    def __init__(self, length: int, samples: int, share: int, progress: bool):
        self.model, self.tokenizer = load_model("smollm2")
        self.length, self.samples, self.progress = length, samples, progress
        self.num_layers = self.model.config.num_hidden_layers
        self.prompts = make_prompts(["passkey", "multikey"], self.tokenizer, [length], samples, seed=0)
        self.prose = windows(self.tokenizer, "builtin:prose", length, 1, held_out=True)
        self.share = share
        # These experiments (results of record) measure the plain method: consumers reuse their producer's blocks.
        self.selection = {"top_k": length // share, "block_size": 64, "sink_blocks": 1, "local_blocks": 2,
                          "min_seq_len": length // 4, "selection": "reuse"}

    def profile(self, source: str, similarity: str = "overlap", **selection):
        """Profile on 2 calibration windows of a built-in text, or on retrieval prompts of other seeds."""
        sel = {**self.selection, **selection}
        if source == "retrieval":
            prompts = make_prompts(["passkey", "multikey"], self.tokenizer, [self.length], 1, seed=1000)
            data = [self.tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
        else:
            data = windows(self.tokenizer, source, self.length, 2, held_out=False)
        return profile(self.model, data, top_k=sel["top_k"], block_size=sel["block_size"],
                       sink_blocks=sel["sink_blocks"], local_blocks=sel["local_blocks"], similarity=similarity,
                       description=source, progress=self.progress)

    def evaluate(self, policies, prompts=None, texts=None, **selection):
        sel = {**self.selection, **selection}
        return evaluate(self.model, policies, tokenizer=self.tokenizer,
                        prompts=self.prompts if prompts is None else prompts,
                        windows=self.prose if texts is None else texts,
                        metadata={"model": MODEL, "text": "builtin:code" if texts else "builtin:prose (last window)"},
                        progress=self.progress, **sel)


def _save(evaluation, out: Path, name: str, extra: dict | None = None) -> None:
    evaluation.metadata.update({"command": f"python benchmarks/accuracy.py {' '.join(sys.argv[1:])}", **(extra or {})})
    evaluation.save(out, stem=f"accuracy-{name}")
    print(evaluation.to_markdown(), flush=True)


def theta(setup: Setup, out: Path) -> None:
    prof = setup.profile("builtin:prose")
    policies: dict[str, Policy] = {}
    sensitive = float(sorted(prof.sensitivity)[-max(1, setup.num_layers // 10)])  # the top tenth stays full
    candidates = [(f"dp:{th}", optimize(prof, theta=th)) for th in (0.6, 0.7, 0.8, 0.9, 0.95)]
    candidates.append((f"dp:0.9 max_rnmse {sensitive:.3f}", optimize(prof, theta=0.9, max_rnmse=sensitive * 0.999)))
    for name, dp in candidates:
        full = sum(m != "consumer" for m in dp.modes)
        policies[name] = dp
        if full < setup.num_layers:
            policies[f"budget:{full}"] = optimize(prof, budget=full)
            n = min(range(1, setup.num_layers + 1), key=lambda n: (abs(math.ceil(setup.num_layers / n) - full), n))
            policies[f"every:{n}"] = Policy.every(n, setup.num_layers)
    extra = {"experiment": "theta sweep", "calibration": prof.metadata["calibration"],
             "similarity": prof.similarity.tolist(), "sensitivity": prof.sensitivity.tolist()}
    _save(setup.evaluate(policies), out, f"theta-share{setup.share}", extra)


def transfer(setup: Setup, out: Path) -> None:
    policies = {f"dp:0.9 from {source}": optimize(setup.profile(source), theta=0.9)
                for source in ("builtin:prose", "builtin:code", "retrieval")}
    code = windows(setup.tokenizer, "builtin:code", setup.length, 1, held_out=True)
    _save(setup.evaluate(policies), out, "transfer-prose+retrieval", {"experiment": "transfer, evaluated on prose"})
    _save(setup.evaluate(policies, prompts=[], texts=code), out, "transfer-code",
          {"experiment": "transfer, evaluated on code"})


def block(setup: Setup, out: Path) -> None:
    for block_size in (32, 64, 128):
        policies = {f"every:3 block {block_size}": Policy.every(3, setup.num_layers)}
        _save(setup.evaluate(policies, block_size=block_size), out, f"block-{block_size}",
              {"experiment": f"block size {block_size} at top_k {setup.selection['top_k']}"})


def topk(setup: Setup, out: Path) -> None:
    for share in (8, 4, 2):
        top_k = setup.length // share
        policies = {f"every:{n} top_k {top_k}": Policy.every(n, setup.num_layers) for n in (3, 5)}
        _save(setup.evaluate(policies, top_k=top_k), out, f"topk-{top_k}",
              {"experiment": f"top_k {top_k} (1/{share} of the context)"})


def window(setup: Setup, out: Path) -> None:
    for sink, local in ((1, 2), (1, 6), (4, 4)):
        policies = {f"every:3 sink {sink} local {local}": Policy.every(3, setup.num_layers)}
        _save(setup.evaluate(policies, sink_blocks=sink, local_blocks=local), out, f"window-sink{sink}-local{local}",
              {"experiment": f"sink {sink} and local {local} blocks inside top_k {setup.selection['top_k']}"})


def similarity(setup: Setup, out: Path) -> None:
    """The same DP and budget policies from block-overlap and from captured-mass similarity, against Jump-n."""
    profiles = {measure: setup.profile("builtin:prose", similarity=measure) for measure in ("overlap", "mass")}
    policies: dict[str, Policy] = {}
    for full in (6, 10):
        n = math.ceil(setup.num_layers / full)
        policies[f"every:{n}"] = Policy.every(n, setup.num_layers)
        for measure, prof in profiles.items():
            policies[f"budget:{full} {measure}"] = optimize(prof, budget=full)
    for measure, prof in profiles.items():
        policies[f"dp:0.9 {measure}"] = optimize(prof, theta=0.9)
    extra = {"experiment": "similarity measure: block overlap vs captured attention mass",
             **{f"similarity_{m}": p.similarity.tolist() for m, p in profiles.items()}}
    _save(setup.evaluate(policies), out, f"similarity-share{setup.share}", extra)


def sensitive(setup: Setup, out: Path) -> None:
    """Budget policies that keep the m most sensitive layers full (``max_rnmse`` just below the m-th largest
    sensitivity), against the same budgets without, and Jump-n."""
    prof = setup.profile("builtin:prose")
    ranked = sorted(prof.sensitivity, reverse=True)
    policies: dict[str, Policy] = {}
    for m, budgets in ((1, (3, 6)), (3, (4, 6, 10))):
        threshold = float(ranked[m - 1]) * 0.999
        for full in budgets:
            policies[f"budget:{full} max_rnmse {threshold:.3f} (top {m} full)"] = optimize(
                prof, budget=full, max_rnmse=threshold)
    for full in (3, 6, 10):
        policies[f"budget:{full}"] = optimize(prof, budget=full)
        policies[f"every:{math.ceil(setup.num_layers / full)}"] = Policy.every(math.ceil(setup.num_layers / full),
                                                                            setup.num_layers)
    extra = {"experiment": "keeping the most sensitive layers full", "sensitivity": prof.sensitivity.tolist()}
    _save(setup.evaluate(policies), out, f"sensitive-share{setup.share}", extra)


def recommended(setup: Setup, out: Path) -> None:
    """The settings the other experiments support (block 32, the 3 most sensitive layers full), with Jump-n and a
    plain budget policy beside them."""
    prof = setup.profile("builtin:prose", block_size=32)
    threshold = float(sorted(prof.sensitivity, reverse=True)[2]) * 0.999
    policies = {"every:5": Policy.every(5, setup.num_layers), "every:3": Policy.every(3, setup.num_layers),
                "budget:6": optimize(prof, budget=6),
                f"budget:6 max_rnmse {threshold:.3f} (top 3 full)": optimize(prof, budget=6, max_rnmse=threshold)}
    extra = {"experiment": "recommended settings", "sensitivity": prof.sensitivity.tolist()}
    _save(setup.evaluate(policies, block_size=32), out, f"recommended-{setup.length}", extra)


EXPERIMENTS = {"topk": topk, "block": block, "window": window, "transfer": transfer, "theta": theta,
               "similarity": similarity, "sensitive": sensitive, "recommended": recommended}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--length", type=int, default=2048, help="prompt and text-window length (default 2048)")
    parser.add_argument("--samples", type=int, default=2, help="prompts per task (default 2)")
    parser.add_argument("--share", type=int, default=4, help="top_k = length / share (default 4)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    setup = Setup(args.length, args.samples, args.share, not args.no_progress)
    for name in [e for e in EXPERIMENTS if e != "recommended"] if args.experiment == "all" else [args.experiment]:
        start = time.perf_counter()
        EXPERIMENTS[name](setup, Path(args.out))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
