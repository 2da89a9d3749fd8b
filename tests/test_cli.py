"""The ``hylra`` command line end to end on a tiny config-only model, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hylra_compile import Policy
from hylra_compile.cli import build_parser, main

CONFIG = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    tokens = torch.randint(0, 64, (2, 160), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")
    np.save(tmp_path / "tokens.npy", tokens[0, :128].numpy())
    return tmp_path


# A toy's tens of tokens: one sink and two local blocks of 8 (the defaults keep 64 and 128 tokens).
TOY_BLOCKS = ("--sink-blocks", "1", "--local-blocks", "2")


def profile_args(files, *extra, data=("tokens.pt",)):
    return [
        "profile", "--model", str(files / "config.json"), "--data", *[str(files / name) for name in data],
        "--seq-len", "128", "--top-k", "40", "--block-size", "8", *TOY_BLOCKS, "--out", str(files / "policy.json"),
        "--no-progress", *extra,
    ]


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_profile_then_inspect(files, capsys):
    assert main(profile_args(files, "--theta", "0.0", "--profile-out", str(files / "profile.safetensors"),
                             data=("tokens.pt", "tokens.npy"))) == 0
    policy = Policy.load(files / "policy.json")
    assert policy.num_layers == 3 and policy.num_kv_heads == 2
    assert policy.modes == ["producer", "consumer", "consumer"]  # theta 0 admits every reuse
    assert policy.provenance["theta"] == 0.0 and policy.provenance["top_k"] == 40
    assert "tokens.pt, tokens.npy" in policy.provenance["calibration"]
    assert len(policy.provenance["similarity"]) == 3 and len(policy.provenance["sensitivity"]) == 3
    assert (files / "profile.safetensors").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "consumer" in printed and "3 layers: 1 full-attention (0 dense, 1 producer), 2 consumer" in printed

    assert main(["inspect", str(files / "policy.json"), "--out-dir", str(files / "figures"),
                 "--model", str(files / "config.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["layer", "mode", "source", "similarity", "sensitivity"]
    for name in ("similarity.png", "policy.png"):
        data = (files / "figures" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_checkpoint_directory_with_text_data(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_models import VOCAB, tiny_model

    words = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(tmp_path)
    tiny_model(num_layers=2).save_pretrained(tmp_path)
    (tmp_path / "text.txt").write_text(" ".join(f"w{i % 50}" for i in range(300)))  # 300 tokens: 2 windows
    assert main(["profile", "--model", str(tmp_path), "--data", str(tmp_path / "text.txt"), "--seq-len", "128",
                 "--top-k", "40", "--block-size", "8", *TOY_BLOCKS, "--theta", "0.0", "--out",
                 str(tmp_path / "policy.json"),
                 "--no-progress"]) == 0
    policy = Policy.load(tmp_path / "policy.json")
    assert policy.modes == ["producer", "consumer"] and policy.num_kv_heads == 2


def test_budget_mode(files):
    assert main(profile_args(files, "--budget", "2", "--decode-steps", "1")) == 0
    assert sum(mode != "consumer" for mode in Policy.load(files / "policy.json").modes) == 2


def test_map_heads_writes_the_head_map_into_the_policy(files, capsys):
    assert main(profile_args(files, "--theta", "0.0", "--similarity", "mass", "--map-heads")) == 0
    policy = Policy.load(files / "policy.json")
    assert policy.provenance["map_heads"] is True
    assert all((heads is None) == (mode != "consumer") and (heads is None or len(heads) == 2)
               for mode, heads in zip(policy.modes, policy.heads))
    assert policy.heads == policy.provenance["head_map"]


def test_inspect_a_baseline_policy_without_profile(files, capsys):
    Policy.every(2, 3).save(files / "jump2.json")
    assert main(["inspect", str(files / "jump2.json")]) == 0
    assert "no similarity.png" in capsys.readouterr().out
    assert (files / "policy.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("theta", ["1.5", "-0.2", "abc"])
def test_theta_outside_unit_interval(files, capsys, theta):
    assert "--theta" in run_error(profile_args(files, "--theta", theta), capsys)


def test_empty_data(files, capsys):
    torch.save(torch.zeros(0, dtype=torch.long), files / "empty.pt")
    assert "is empty" in run_error(profile_args(files, "--theta", "0.5", data=("empty.pt",)), capsys)


def test_sequence_shorter_than_one_block(files, capsys):
    torch.save(torch.arange(5), files / "short.pt")
    assert "fewer than one block of 8" in run_error(profile_args(files, "--theta", "0.5", data=("short.pt",)), capsys)


def test_text_needs_a_checkpoint_tokenizer(files, capsys):
    (files / "text.txt").write_text("hello world")
    assert "token-id files" in run_error(profile_args(files, "--theta", "0.5", data=("text.txt",)), capsys)


def test_model_with_no_attention(files, capsys):
    mamba = {"model_type": "mamba", "vocab_size": 64, "hidden_size": 16, "state_size": 4, "num_hidden_layers": 2}
    (files / "config.json").write_text(json.dumps(mamba))
    assert "no attention" in run_error(profile_args(files, "--theta", "0.5"), capsys)


def test_policy_for_another_model(files, capsys):
    Policy.every(2, 4, num_kv_heads=2).save(files / "other.json")
    err = run_error(["inspect", str(files / "other.json"), "--model", str(files / "config.json")], capsys)
    assert "is for another model" in err and "4 layers" in err


def test_python_dash_m(files):
    result = subprocess.run([sys.executable, "-m", "hylra_compile.cli", "inspect", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--out-dir" in result.stdout


# -- hylra eval --------------------------------------------------------------------------------------------------
def eval_args(files, *extra):
    return ["eval", "--model", str(files / "config.json"), "--text", str(files / "tokens.pt"), "--seq-len", "64",
            "--windows", "1", "--calibration-windows", "1", "--tasks", "none", "--top-k", "24", "--block-size", "8",
            *TOY_BLOCKS, "--producer-block-size", "8", "--min-seq-len", "16", "--out-dir", str(files / "eval"), "--no-progress", *extra]


def test_eval_config_only_model(files, capsys):
    assert main(eval_args(files, "--policy", "every:2", "--policy", "dp:0.5", "--policy", "budget:2")) == 0
    out = capsys.readouterr().out
    assert "| dense | 3 / 3 |" in out and "| every:2 | 2 / 3 |" in out and "| budget:2 | 2 / 3 |" in out
    data = json.loads((files / "eval" / "eval.json").read_text())
    assert [r["name"] for r in data["results"]] == ["dense", "every:2", "dp:0.5", "budget:2"]
    assert data["metadata"]["calibration"].endswith("(first 1 window(s) of 64)")
    assert data["metadata"]["similarity"] == "overlap"
    assert main(eval_args(files, "--policy", "budget:2", "--similarity", "mass", "--keep-sensitive", "1")) == 0
    data = json.loads((files / "eval" / "eval.json").read_text())
    assert data["metadata"]["similarity"] == "mass"
    # the profile measured the selection evaluated: what a refining consumer keeps of 4 x top_k candidates
    assert data["results"][1]["policy"]["provenance"]["candidates"] == 4
    assert data["results"][1]["policy"]["provenance"]["keep_sensitive"] == 1
    assert (files / "eval" / "eval.png").read_bytes().startswith(PNG_MAGIC)
    assert (files / "eval" / "eval.md").read_text() in capsys.readouterr().out  # the table it printed


@pytest.mark.parametrize("extra, message", [
    (["--policy", "jump:3"], "valid forms are every:N, budget:N, dp:THETA, full"),
    (["--policy", "dp:1.5"], "--policy dp:1.5: theta must be a number in [0, 1]"),
    (["--tasks", "needle"], "unknown task(s) ['needle']; valid tasks are"),
    (["--tasks", "passkey", "--policy", "every:2"], "has no tokenizer, so it cannot read retrieval prompts"),
    (["--windows", "5", "--calibration-windows", "2", "--policy", "dp:0.8"], "calibration and held-out windows overlap"),
    (["--lengths", "4k"], "--lengths must be comma-separated integers"),
])
def test_eval_errors(files, capsys, extra, message):
    assert message in run_error(eval_args(files, *extra), capsys)


def test_model_errors(files, capsys):
    args = eval_args(files)
    args[args.index("--model") + 1] = str(files / "missing.gguf")
    err = run_error(args, capsys)
    assert "GGUF file" in err and "does not exist" in err
    Policy.full(3).save(files / "policy.json")
    err = run_error(["inspect", str(files / "policy.json"), "--model", str(files / "tokens.pt")], capsys)
    assert ("is neither a checkpoint directory, a config .json file, a .gguf file nor a named model "
            "(qwen2.5-coder-0.5b, smollm2)") in err


def test_eval_gguf_model_end_to_end(tmp_path, capsys):
    """The real SmolLM2 through --model DIR --gguf-file NAME, one short pass-key prompt and one prose window."""
    from tests.smollm2 import smollm2

    smollm2()  # skips when the package is missing
    from hylra_compile.models import smollm2_gguf

    gguf = smollm2_gguf()
    assert main(["eval", "--model", str(gguf.parent), "--gguf-file", gguf.name, "--tasks", "passkey",
                 "--lengths", "512", "--samples", "1", "--windows", "1", "--seq-len", "512", "--min-seq-len", "128",
                 "--top-k", "256", "--policy", "every:5", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| dense | 30 / 30 |" in out and "| every:5 | 6 / 30 |" in out and "passkey (dense 1/1 [21–100%])" in out
    assert "passkey.prose (dense " in out  # --haystacks defaults to filler,prose
    assert json.loads((tmp_path / "eval.json").read_text())["metadata"]["model"].endswith(f"({gguf.name})")


@pytest.fixture
def no_model_load(monkeypatch):
    """Every load_model call the CLI makes is recorded, and raises (the early checks must come before it)."""
    calls = []

    def load_model(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr("hylra_compile.cli.load_model", load_model)
    return calls


def test_eval_defaults():
    args = build_parser().parse_args(["eval", "--model", "m.json"])
    assert (args.samples, args.haystacks, args.selection, args.candidates) == (24, "filler,prose", "refine", 4)


@pytest.mark.parametrize("extra, message", [
    (["--policy", "every:x"], "--policy every:x: 'x' is not an integer"),
    (["--policy", "every:0"], "--policy every:0: N must be >= 1"),
    (["--policy", "every:"], "--policy 'every:': valid forms are every:N, budget:N, dp:THETA, full, or a policy .json"),
    (["--policy", "foo"], "--policy 'foo': valid forms are every:N"),
    (["--policy", "budget:0"], "--policy budget:0: the model has 3 layers; N must lie in [1, 3]"),
    (["--policy", "budget:999"], "--policy budget:999: the model has 3 layers; N must lie in [1, 3]"),
    (["--policy", "every:2", "--policy", "dp:2"], "--policy dp:2: "),
    (["--policy", "dp:x"], "--policy dp:x: 'x' is not a number"),
    (["--tasks", "passkey"], "--policy budget:6: the model has 3 layers"),  # a default policy
    (["--policy", "every:2", "--top-k", "64"], "--top-k 64: top_k=64 keeps all 8 blocks of 8 tokens of the longest "
                                               "input (64 tokens)"),
    (["--policy", "every:2", "--tasks", "passkey", "--lengths", "32,48", "--windows", "0", "--top-k", "48"],
     "--top-k 48: top_k=48 keeps all 6 blocks of 8 tokens of the longest input (48 tokens)"),
    (["--policy", "every:2", "--min-seq-len", "100"], "no query of inputs of at most 64 tokens has min_seq_len=100 keys"),
    (["--policy", "every:2", "--windows", "0"], "--tasks none with --windows 0 leaves nothing to evaluate"),
    (["--policy", "every:2", "--haystacks", "filler,novel"],
     "--haystacks: 'filler,novel' is not a comma-separated list of ['filler', 'prose']"),
    (["--policy", "every:2", "--haystacks", ","], "--haystacks: ',' is not a comma-separated list"),
    (["--policy", "every:2", "--tasks", "passkey", "--samples", "0"],
     "--samples 0 asks for no retrieval prompt: pass --tasks none instead"),
    (["--policy", "every:2", "--selection", "best"], "argument --selection: invalid choice: 'best'"),
    (["--policy", "every:2", "--candidates", "0"], "argument --candidates: 0 is not a positive integer"),
    (["--policy", "every:2", "--prefilter", "-1"], "argument --prefilter: -1 is negative"),
    (["--policy", "every:2", "--producer-block-size", "12"], "producer_block_size must be a multiple of block_size=8"),
    (["--policy", "every:2", "--producer-block-size", "16", "--selection", "reuse"],
     "producer_block_size=16 needs selection='refine'"),
])
def test_eval_refuses_before_the_model_loads(files, capsys, no_model_load, extra, message):
    """Bad policy specs (for this model's 3 layers), a top_k or min_seq_len that cannot be sparse on the longest
    input, nothing to evaluate, bad haystacks, no samples and bad selection flags exit with code 2 and the reason,
    and the model is never loaded."""
    assert message in run_error(eval_args(files, *extra), capsys)
    assert no_model_load == []


def test_eval_refuses_policy_files_before_the_model_loads(files, capsys, no_model_load):
    """A missing, malformed or other-model policy JSON, or one whose per-layer top_k the selection cannot read, is
    named before the model loads; a good one reaches it."""
    (files / "broken.json").write_text("{modes: [")
    Policy.every(2, 4).save(files / "four.json")
    Policy.every(2, 3).save(files / "three.json")
    Policy(["producer", "consumer", "consumer"], [None, 0, 0], top_k=[None, 64, None]).save(files / "budgets.json")
    for name, message in [("missing.json", "does not exist"), ("broken.json", "is not valid JSON"),
                          ("four.json", "the policy has 4 layers but the model has 3")]:
        err = run_error(eval_args(files, "--policy", str(files / name)), capsys)
        assert f"--policy {files / name}" in err and message in err
    err = run_error(eval_args(files, "--policy", str(files / "budgets.json"), "--selection", "reuse"), capsys)
    assert "own top_k, which needs selection='refine' or 'oracle'" in err
    assert no_model_load == []
    with pytest.raises(RuntimeError, match="the model was loaded"):
        main(eval_args(files, "--policy", str(files / "three.json"), "--haystacks", "prose"))
    assert len(no_model_load) == 1


def test_eval_selection_reaches_the_evaluation(files, capsys):
    """--selection is the evaluation's (metadata) and changes the numbers (top_k 32: one block beyond the sink and
    local ones to choose)."""
    results = {}
    for selection in ("reuse", "oracle"):
        assert main(eval_args(files, "--policy", "every:2", "--top-k", "32", "--selection", selection, "--out-dir",
                              str(files / selection))) == 0
        results[selection] = json.loads((files / selection / "eval.json").read_text())
    assert [results[s]["metadata"]["selection"] for s in results] == ["reuse", "oracle"]
    assert results["reuse"]["results"][1]["kl"] != results["oracle"]["results"][1]["kl"]


def test_eval_candidates_reach_the_evaluation(files):
    """--selection refine --candidates 2 evaluates with 2 candidates per kept block; --producer-block-size and
    --prefilter reach it too."""
    assert main(eval_args(files, "--policy", "every:2", "--selection", "refine", "--candidates", "2")) == 0
    metadata = json.loads((files / "eval" / "eval.json").read_text())["metadata"]
    assert (metadata["selection"], metadata["candidates"]) == ("refine", 2)
    assert main(eval_args(files, "--policy", "every:2", "--selection", "refine", "--producer-block-size", "16")) == 0
    metadata = json.loads((files / "eval" / "eval.json").read_text())["metadata"]
    assert metadata["producer_block_size"] == 16
    assert main(eval_args(files, "--policy", "every:2", "--selection", "refine", "--prefilter", "2",
                          "--candidates", "4")) == 0
    metadata = json.loads((files / "eval" / "eval.json").read_text())["metadata"]
    assert metadata["prefilter"] == 2


def test_eval_profiles_in_the_producers_blocks(files, monkeypatch):
    """A budget: policy is profiled in the blocks producers select in, with the sink and local tokens the options
    keep (one sink and two local blocks of 8 are one and one of 16)."""
    import hylra_compile.profiler

    profiled = []
    real = hylra_compile.profiler.profile
    monkeypatch.setattr(hylra_compile.profiler, "profile", lambda *a, **kw: profiled.append(kw) or real(*a, **kw))
    assert main(eval_args(files, "--policy", "budget:2", "--producer-block-size", "16")) == 0
    assert [(kw["block_size"], kw["sink_blocks"], kw["local_blocks"]) for kw in profiled] == [(16, 1, 1)]


def test_profile_refuses_to_replace_a_file_that_is_not_a_policy(files, capsys, no_model_load):
    """--out naming a file that is not a policy (the model's own config here) is refused before the model loads;
    --force replaces it; an unwritable --profile-out folder is refused before the model loads too."""
    config = files / "config.json"
    before = config.read_text()
    argv = profile_args(files, "--budget", "2")
    argv[argv.index("--out") + 1] = str(config)
    assert "exists and is not an earlier output of this kind" in run_error(argv, capsys)
    assert config.read_text() == before and no_model_load == []
    blocked = files / "a-file"
    blocked.write_text("x")
    message = run_error(profile_args(files, "--budget", "2", "--profile-out", str(blocked / "p.json")), capsys)
    assert "cannot be written" in message and no_model_load == []
    assert "unknown extension" in run_error(profile_args(files, "--budget", "2", "--profile-out", "p.txt"), capsys)
    with pytest.raises(RuntimeError, match="the model was loaded"):
        main([*argv, "--force"])


def test_profile_replaces_its_own_earlier_policy(files):
    assert main(profile_args(files, "--budget", "2")) == 0
    assert main(profile_args(files, "--budget", "1")) == 0
    assert Policy.load(files / "policy.json").modes.count("consumer") == 2


def test_eval_refuses_an_unwritable_out_dir_before_the_model_loads(files, capsys, no_model_load):
    (files / "a-file").write_text("x")
    argv = eval_args(files, "--policy", "every:2")
    argv[argv.index("--out-dir") + 1] = str(files / "a-file" / "eval")
    assert "--out-dir" in run_error(argv, capsys) and no_model_load == []


@pytest.mark.parametrize("command", ["profile", "eval", "inspect"])
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "example" in out and f"hylra {command} " in out.split("example")[-1]


def test_missing_model_is_named_missing(files, capsys):
    message = run_error(eval_args(files, "--policy", "every:2")[:2] + ["nowhere/model"] +
                        eval_args(files, "--policy", "every:2")[3:], capsys)
    assert "model 'nowhere/model' does not exist" in message


def test_no_progress_also_quiets_transformers(files, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(hf_logging, "_tqdm_active", True)
    assert main(eval_args(files, "--policy", "every:2")) == 0
    assert not hf_logging.is_progress_bar_enabled()


def test_profile_refuses_missing_data_before_the_model_loads(files, capsys, no_model_load):
    message = run_error(profile_args(files, "--budget", "2", data=("tokens.pt", "missing.txt")), capsys)
    assert "missing.txt" in message and "do not exist" in message and no_model_load == []


@pytest.mark.parametrize("extra, message", [
    (["--budget", "9"], "--budget 9: the model has 3 layers"),
    (["--budget", "2", "--keep-sensitive", "7"], "--keep-sensitive 7: it must lie in [0, 3]"),
    (["--budget", "2", "--candidates", "4"], "--candidates 4 measures what a refining consumer keeps by its own "
                                             "attention mass: give --similarity mass"),
])
def test_profile_checks_counts_against_the_model_before_it_loads(files, capsys, no_model_load, extra, message):
    assert message in run_error(profile_args(files, *extra), capsys) and no_model_load == []


def test_a_budget_counts_the_governed_layers():
    """On a hybrid model whose sliding layers slide within top_k, budget:N counts the layers the policy governs."""
    from hylra_compile.cli import check_policy_spec

    check_policy_spec("budget:3", 6, governed=3)
    with pytest.raises(ValueError, match=r"budget:4: the model has 6 layers, of which the policy governs 3 .*\[1, 3\]"):
        check_policy_spec("budget:4", 6, governed=3)
