"""hylra_compile.evaluate: the eager policy runner computes what the compiled backend computes, the metrics are
exact on a tiny model, errors are clear, and on the real SmolLM2 a policy with 1/5 full layers keeps dense's
answers."""

from __future__ import annotations

import math

import pytest
import torch

from hylra_compile import HylraBackend, Policy
from hylra_compile.evaluate import DENSE, PolicyAttention, evaluate
from hylra_compile.options import HylraOptions
from hylra_compile.routing import routed_attention
from tests.numerics import rel_err
from tests.tiny_models import VOCAB, tiny_model

SEQ, BLOCK, TOP_K = 128, 8, 40
SELECTION = {"top_k": TOP_K, "block_size": BLOCK, "min_seq_len": 16}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_layers=4)


@pytest.fixture(scope="module")
def windows():
    return list(torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1)))


def test_policy_runner_equals_compiled_backend(model, windows):
    """What `evaluate` measures is what `torch.compile(backend="hylra")` runs: same ops, same arguments."""
    torch._dynamo.reset()
    policy = Policy.from_modes(["producer", "consumer", "full", "consumer"])
    compiled = torch.compile(model, backend=HylraBackend(policy=policy, inductor=False, **SELECTION), fullgraph=True)
    ids = torch.stack(windows)
    with torch.no_grad():
        want = compiled(ids, use_cache=False).logits
        with routed_attention(model, PolicyAttention(policy, HylraOptions(**SELECTION))):
            got = model(ids, use_cache=False).logits
        dense = model(ids, use_cache=False).logits
    assert rel_err(got, want) < 1e-5
    assert rel_err(got, dense) > 1e-3  # the policy does change the output: the comparison is not vacuous


def test_metrics_on_tiny_model(model, windows):
    policies = {"every:2": Policy.every(2, 4), "full": Policy.full(4)}
    result = evaluate(model, policies, windows=windows, progress=False, **SELECTION)
    dense, jump, full = (result[name] for name in (DENSE, "every:2", "full"))
    assert [r.full_layers for r in result.results] == [4, 2, 4]
    scored = 2 * (SEQ - SELECTION["min_seq_len"])  # positions 15..126 predict tokens 16..127, per window
    assert dense.positions == jump.positions == scored
    # Dense perplexity from the model's own loss over the same positions.
    with torch.no_grad():
        logits = model(torch.stack(windows), use_cache=False).logits[:, 15:-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.stack(windows)[:, 16:].reshape(-1))
    assert dense.perplexity == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert dense.mean_kl == pytest.approx(0.0, abs=1e-9) and full.mean_kl == pytest.approx(0.0, abs=1e-7)
    assert max(full.rnmse) < 1e-5 and jump.mean_kl > 0 and jump.rnmse[0] < 1e-5 and jump.rnmse[1] > 1e-3
    table = result.to_markdown()
    assert "| every:2 | 2 / 4 |" in table and "KL(dense ‖ policy)" in table
    assert set(result.to_json()["results"][1]) >= {"perplexity", "kl", "rnmse", "retrieval_correct", "policy"}


def test_evaluate_errors(model, windows):
    with pytest.raises(ValueError, match="'dense' is the name of the dense baseline"):
        evaluate(model, {DENSE: Policy.full(4)}, windows=windows, progress=False, **SELECTION)
    with pytest.raises(ValueError, match="the policy has 3 layers but the model has 4 attention layers"):
        evaluate(model, {"p": Policy.every(2, 3)}, windows=windows, progress=False, **SELECTION)
    with pytest.raises(ValueError, match="not a hylra_compile.Policy"):
        evaluate(model, {"p": ["full"] * 4}, windows=windows, progress=False, **SELECTION)
    with pytest.raises(ValueError, match="no position with min_seq_len=200"):
        evaluate(model, {}, windows=windows, progress=False, **{**SELECTION, "min_seq_len": 200})
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        evaluate(model, {}, prompts=[object()], progress=False, **SELECTION)


# -- the real model --------------------------------------------------------------------------------------------
REAL = {"top_k": 256, "block_size": 64, "min_seq_len": 256}  # a quarter of a 1K context per query block


def test_smollm2_one_fifth_full_layers_keeps_dense_answers():
    """SmolLM2-135M-Instruct, Jump-5 (6 of 30 layers full), 4 seeded pass-key prompts of 1K tokens and one held-out
    1K window of prose. Measured on this CPU (2026-11-24): dense answers 4/4 and Jump-5 keeps all four; KL(dense ‖
    Jump-5) 0.077 nats/token and perplexity +10% on the window (the loss at 1/4 of the context, see README
    "Accuracy"). The bound 0.12 leaves ~50% for float differences across CPUs and torch versions while still
    failing a broken selection (Jump-5 at top_k 192 measured 0.17, random blocks far more)."""
    from hylra_compile.corpora import builtin_text
    from hylra_compile.profiler import calibration_samples
    from hylra_compile.tasks import make_prompts
    from tests.smollm2 import smollm2

    model, tokenizer = smollm2()
    prompts = make_prompts(["passkey"], tokenizer, [1024], samples=4, seed=0)
    window = calibration_samples([builtin_text("builtin:prose")], block_size=64, seq_len=1024,
                                 tokenizer=tokenizer)[-2]
    result = evaluate(model, {"every:5": Policy.every(5, 30)}, tokenizer=tokenizer, prompts=prompts,
                      windows=[window], progress=False, **REAL)
    dense, jump = result[DENSE], result["every:5"]
    assert dense.accuracy() == (4, 4)
    assert jump.answers == dense.answers
    assert 0 < jump.mean_kl < 0.12
    assert jump.full_layers == 6
