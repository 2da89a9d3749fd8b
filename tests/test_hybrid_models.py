"""Models that mix sliding-window and global layers: a consumer reuses only a producer with the same mask.

A sliding-window producer never selects the keys a global consumer may see beyond the window (and a global producer
spends its budget on keys a window consumer cannot see), so such a pairing is left dense with the reason
(``mask_mismatch``); pairings of the same mask kind are rewritten. A sliding-window layer whose window is no longer
than ``top_k`` is left as written (``sliding_window``): the policy governs the global layers. Metamorphic check on
every hybrid family this transformers ships that runs through SDPA or the eager path: with ``top_k`` past the
sequence every policy equals dense.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM

from hylra_compile import HylraBackend, Policy, optimize, profile
from hylra_compile.cli import format_policy_table
from hylra_compile.options import DEFAULT_CANDIDATES
from tests.independent import IndependentHylra
from tests.numerics import rel_err
from tests.tiny_models import at_toy_sizes

BLOCK = 8
# family -> (config overrides, attention implementation)
FAMILIES = {
    "gemma2": (dict(attn_logit_softcapping=None, final_logit_softcapping=None), "eager"),
    "gemma3_text": ({}, "sdpa"),
    "cohere2": ({}, "sdpa"),
    "qwen2": (dict(use_sliding_window=True), "sdpa"),
    "qwen3": (dict(use_sliding_window=True), "sdpa"),
    "exaone4": ({}, "sdpa"),
    "olmo3": ({}, "sdpa"),
    "ministral": ({}, "sdpa"),
}
# Layers 0 and 2 slide, 1 and 3 are global: consumers 2 and 3 each reuse the producer of their own kind.
SAME_KIND = Policy(["producer", "producer", "consumer", "consumer"], [None, None, 0, 1])
# Jump-2 over the global layers only: 1 produces, 3 reuses it, the sliding layers are full.
GLOBAL_ONLY = Policy.every(2, 4, layers=[1, 3])
# With the sliding layers left as written, whichever policy: global layer 1 produces for global layer 3.
GLOBAL_PAIR = [(0, "dense", None), (1, "producer", None), (2, "dense", None), (3, "consumer", 1)]


def hybrid_model(family: str, attn: str | None = None, window: int = 24, num_layers: int = 4):
    """Even layers slide over ``window`` keys, odd layers are global."""
    overrides, default_attn = FAMILIES[family]
    try:
        config = AutoConfig.for_model(
            family, vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_hidden_layers=num_layers,
            layer_types=["sliding_attention", "full_attention"] * (num_layers // 2), sliding_window=window,
            max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides)
    except (KeyError, ValueError) as err:
        pytest.skip(f"transformers has no {family} config here: {err}")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn or default_attn).eval()


def compiled_logits(model, ids, policy, top_k):
    torch._dynamo.reset()
    backend = HylraBackend(**at_toy_sizes(policy=policy, top_k=top_k, block_size=BLOCK, min_seq_len=0, inductor=False))
    with torch.no_grad():
        return torch.compile(model, backend=backend)(ids).logits, backend


def sites(backend):
    return [(s.layer, s.action, s.source) for s in backend.reports[0].sites]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_top_k_past_the_sequence_equals_dense_for_any_policy(family):
    """top_k covers the window: the sliding layers are left as written whatever the policy says. Jump-2's global
    consumers then have no producer (it slides) and stay dense, with a warning naming the fix; the same-kind and
    global-only policies make global layer 3 reuse global layer 1. Every one equals dense."""
    model = hybrid_model(family)
    ids = torch.randint(3, 64, (1, 70))
    with torch.no_grad():
        dense = model(ids).logits
    counters.clear()
    with pytest.warns(UserWarning, match=r"give the policy the global layers \(Policy.every\(n, L, layers="):
        out, backend = compiled_logits(model, ids, Policy.every(2, 4), top_k=512)
    assert rel_err(out, dense) < 1e-5
    assert [s.action for s in backend.reports[0].sites] == ["dense"] * 4
    assert counters["hylra"]["dense.sliding_window"] == 2 and counters["hylra"]["dense.source_unusable"] == 2
    for policy in (SAME_KIND, GLOBAL_ONLY):
        out, backend = compiled_logits(model, ids, policy, top_k=512)
        assert rel_err(out, dense) < 1e-5
        assert sites(backend) == GLOBAL_PAIR


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "cohere2"])
def test_sliding_layers_within_top_k_are_left_as_written(family):
    """A window of exactly top_k keys: the sliding layers run the model's own attention (no hylra op), and the
    global-only policy's consumer attends sparsely over its global producer's blocks, as HyLRA written independently
    does with the sliding layers full."""
    model = hybrid_model(family)
    reference = IndependentHylra(GLOBAL_ONLY, n_select=3, sink=1, local=1, min_seq_len=0, block=BLOCK,
                                candidates=DEFAULT_CANDIDATES)  # the backend's default selection, refine
    independent = hybrid_model(family, attn=reference.name)
    ids = torch.randint(3, 64, (1, 75))
    torch._dynamo.reset()
    counters.clear()
    backend = HylraBackend(**at_toy_sizes(policy=GLOBAL_ONLY, top_k=3 * BLOCK, block_size=BLOCK, sink_blocks=1,
                                          local_blocks=1,
                           min_seq_len=0, inductor=False))
    with torch.no_grad():
        out = torch.compile(model, backend=backend)(ids).logits
        ref, dense = independent(ids).logits, model(ids).logits
    assert sites(backend) == GLOBAL_PAIR
    sliding = [backend.reports[0].sites[layer] for layer in (0, 2)]
    assert [(s.op, s.reason) for s in sliding] == [
        (None, "sliding window of 24 keys, no longer than top_k=24: sparsity gains nothing")] * 2
    assert counters["hylra"]["dense.sliding_window"] == 2 and counters["hylra"]["rewritten"] == 2
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, dense) > 1e-3  # the global consumer's sparsity is real


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "cohere2"])
def test_a_window_longer_than_top_k_keeps_the_policy(family):
    """A window of 32 keys and top_k=24: the sliding layers are governed by the policy as before, so jump-2's global
    consumers stay dense for their sliding producers' masks, with a reason naming both."""
    model = hybrid_model(family, window=32)
    counters.clear()
    _, backend = compiled_logits(model, torch.randint(3, 64, (1, 70)), Policy.every(2, 4), top_k=24)
    assert sites(backend) == [(0, "dense", None), (1, "dense", None), (2, "dense", None), (3, "dense", None)]
    assert counters["hylra"]["dense.mask_mismatch"] == 2 and counters["hylra"]["dense.sliding_window"] == 0
    reason = backend.reports[0].sites[1].reason
    assert reason.startswith("policy: consumer of 0, but its keys (")
    assert "differ from layer 0's (mask " in reason and "another mask kind or window" in reason


@pytest.mark.parametrize("family", ["gemma3_text", "qwen2"])
def test_same_kind_pairs_equal_independent_hylra(family):
    """A top_k below the window, on a sequence longer than it: the sliding consumer reuses the sliding producer's
    blocks, the global one the global producer's, as HyLRA written independently does."""
    model = hybrid_model(family, window=32)
    reference = IndependentHylra(SAME_KIND, n_select=3, sink=1, local=1, min_seq_len=0, block=BLOCK,
                                candidates=DEFAULT_CANDIDATES)
    independent = hybrid_model(family, attn=reference.name, window=32)
    ids = torch.randint(3, 64, (1, 75))
    torch._dynamo.reset()
    backend = HylraBackend(**at_toy_sizes(policy=SAME_KIND, top_k=3 * BLOCK, block_size=BLOCK, sink_blocks=1,
                                          local_blocks=1,
                           min_seq_len=0, inductor=False))
    with torch.no_grad():
        out = torch.compile(model, backend=backend)(ids).logits
        ref, dense = independent(ids).logits, model(ids).logits
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, dense) > 1e-3  # the sparsity is real


@pytest.mark.parametrize("family, overrides, reason", [
    ("gpt_oss", dict(num_local_experts=2, num_experts_per_tok=1), "attention sinks (extra logits concatenated"),
    ("gemma2", dict(attn_logit_softcapping=50.0, final_logit_softcapping=None), "logit softcapping (tanh of the scores"),
])
def test_unsupported_variants_are_named(family, overrides, reason):
    """A site the ops cannot compute stays dense with its real cause (GPT-OSS's sinks were called softcapping)."""
    try:
        config = AutoConfig.for_model(
            family, vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_hidden_layers=2, layer_types=["full_attention"] * 2, sliding_window=48,
            max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides)
    except (KeyError, ValueError) as err:
        pytest.skip(f"transformers has no {family} config here: {err}")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    _, backend = compiled_logits(model, torch.randint(3, 64, (1, 40)), Policy.every(2, 2), top_k=24)
    assert [s.action for s in backend.reports[0].sites] == ["dense", "dense"]
    assert all(s.reason.startswith(reason) for s in backend.reports[0].sites)


@pytest.mark.parametrize("family", ["gemma3_text", "cohere2"])
def test_profiled_budget_governs_the_global_layers(family):
    """Windows of top_k keys: the profile governs the global layers, so each budget places its full-attention
    layers, producers and consumers among them (the sliding layers are full and outside the budget), and the
    compiled model's global consumers attend sparsely to their global producer."""
    model = hybrid_model(family, num_layers=6)
    tokens = torch.randint(3, 64, (2, 96), generator=torch.Generator().manual_seed(1))
    prof = profile(model, tokens, top_k=3 * BLOCK, block_size=BLOCK, sink_blocks=1, local_blocks=2, progress=False)
    glob, sliding = [1, 3, 5], [0, 2, 4]
    assert prof.governed_layers == glob
    for budget in (1, 2):
        policy = optimize(prof, budget=budget)
        assert [policy.modes[layer] for layer in sliding] == ["full"] * 3
        assert sum(policy.modes[layer] != "consumer" for layer in glob) == budget
        assert "consumer" in policy.modes and {s for s in policy.sources if s is not None} <= set(glob)
        assert policy.provenance["governed_layers"] == glob and policy.provenance["num_dense_layers"] == budget
    with pytest.raises(ValueError, match=r"budget must be an int in \[1, 3\] \(dense layers among the 3 layers "
                                         r"the policy governs, \[1, 3, 5\]"):
        optimize(prof, budget=4)
    policy = optimize(prof, budget=1)
    assert policy.modes == ["full", "producer", "full", "consumer", "full", "consumer"]
    assert "governs layers [1, 3, 5]; layers [0, 2, 4] slide over a window no longer than top_k=24" in (
        format_policy_table(policy))
    counters.clear()
    _, backend = compiled_logits(model, tokens[:1], policy, top_k=3 * BLOCK)
    assert sites(backend) == [(0, "dense", None), (1, "producer", None), (2, "dense", None), (3, "consumer", 1),
                              (4, "dense", None), (5, "consumer", 1)]
    assert counters["hylra"]["dense.sliding_window"] == 3 and counters["hylra"]["dense.source_unusable"] == 0
