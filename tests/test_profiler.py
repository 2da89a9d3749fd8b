"""The offline profiler on tiny random models: shapes and ranges, exact against an independent recomputation,
persistence, errors, and the produced policy compiling with the hylra backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import hylra_compile
from hylra_compile import Profile, optimize, profile
from hylra_compile.lowering import reference
from hylra_compile.models import cache_argument
from tests.tiny_models import VOCAB, at_toy_sizes, tiny_config, tiny_model

NUM_LAYERS, SEQ, BLOCK, TOP_K = 4, 128, 8, 40  # 16 query blocks, 5 selected blocks (1 sink, 2 local, 2 chosen)
TOY = dict(sink_blocks=1, local_blocks=2)  # the defaults' 64 and 128 tokens outnumber this toy's selection
SINK, LOCAL = 1, 2


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def llama_profile(model, tokens):
    return profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, head_map=True, progress=False)


def test_profile_shapes_and_ranges(model, llama_profile):
    prof = llama_profile
    assert prof.similarity.shape == (NUM_LAYERS, NUM_LAYERS)
    upper = prof.similarity[np.triu_indices(NUM_LAYERS, 1)]
    assert np.all((upper >= 0) & (upper <= 1)) and np.all(np.tril(prof.similarity) == 0)
    assert np.all(prof.similarity_min <= prof.similarity + 1e-12)
    assert prof.sensitivity.shape == (NUM_LAYERS,) and np.all(np.isfinite(prof.sensitivity))
    assert np.all(prof.sensitivity > 0)  # 5 of 16 blocks cannot reproduce dense attention exactly
    assert prof.num_kv_heads == 2 and prof.metadata["num_layers"] == NUM_LAYERS
    assert prof.metadata["num_samples"] == 2 and prof.metadata["n_select"] == 5
    assert prof.head_map.shape == (NUM_LAYERS, NUM_LAYERS, 2)
    diagonal = np.diagonal(prof.head_overlap, axis1=2, axis2=3)  # [L, L, H]: head h against head h
    assert np.allclose(diagonal.mean(-1), prof.similarity) and np.allclose(diagonal.min(-1), prof.similarity_min)
    assert model.config._attn_implementation == "sdpa"


def capture_attention(model, tokens, decode_steps=0):
    """q, k, v, mask and scale of every layer, one dict per forward pass (the prefill, then greedy decode steps
    with the KV cache), through a plain sdpa wrapper (no hylra code)."""
    passes = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        passes[-1][module.layer_idx] = (query, key, value, attention_mask, kwargs.get("scaling"))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("test_capture", capture)
    AttentionMaskInterface.register("test_capture", sdpa_mask)
    model.set_attn_implementation("test_capture")
    try:
        with torch.no_grad():
            passes.append({})
            output = model(tokens[None], use_cache=decode_steps > 0)
            cache_name = cache_argument(model)
            for _ in range(decode_steps):
                passes.append({})
                cache = {cache_name: getattr(output, cache_name)}
                output = model(output.logits[:, -1:].argmax(-1), **cache, use_cache=True)
    finally:
        model.set_attn_implementation("sdpa")
    return passes


def independent_profile(model, samples, decode_steps=0, mass=False, multiple=1):
    """Similarity and sensitivity from the definitions, with Python sets and explicit loops (``mass``: the captured
    share of the consumer's own top-k mass, from the producer's importance, instead of the block overlap;
    ``multiple``: the producer selects that many times top_k blocks and the consumer keeps the top_k of them that
    hold most of its mass). Returns (similarity, sensitivity, head similarity [L, L, H_i, H_j]: producer head g of
    layer i against consumer head h of layer j, sensitivity per KV head [L, H])."""
    num_layers, n_select = model.config.num_hidden_layers, math.ceil(TOP_K / BLOCK)
    overlaps = {}  # (i, j, g, h) -> list of per-query-block overlaps of producer head g and consumer head h
    error_sq, dense_sq = np.zeros((num_layers, 2)), np.zeros((num_layers, 2))  # per KV head
    for tokens in samples:
        for captured in capture_attention(model, tokens, decode_steps):
            sets = {}
            for layer, (q, k, v, mask, scale) in captured.items():
                num_queries, num_keys = q.shape[2], k.shape[2]
                is_causal = mask is None and num_queries > 1
                common = dict(is_causal=is_causal, scale=scale, block_size=BLOCK)
                dense, block_idx = reference.topk_attention(
                    q, k, v, mask, **common, n_select=n_select, sink_blocks=SINK, local_blocks=LOCAL
                )
                produced = reference.topk_attention(q, k, v, mask, **common, n_select=n_select * multiple,
                                                    sink_blocks=SINK, local_blocks=LOCAL)[1]
                sparse = reference.sparse_attention(q, k, v, block_idx, mask, **common, min_seq_len=0)
                G = q.shape[1] // k.shape[1]
                for h in range(k.shape[1]):
                    heads_h = slice(h * G, (h + 1) * G)
                    error_sq[layer, h] += (sparse[:, heads_h].double() - dense[:, heads_h].double()).square().sum().item()
                    dense_sq[layer, h] += dense[:, heads_h].double().square().sum().item()
                importance = reference.attention_with_importance(q, k, v, mask, is_causal, scale, BLOCK)[1]
                allowed = torch.ones(num_queries, num_keys, dtype=torch.bool)
                allowed = allowed.tril() if is_causal else allowed if mask is None else mask[0, 0]
                for h in range(k.shape[1]):
                    for r in range(math.ceil(num_queries / BLOCK)):
                        rows = allowed[r * BLOCK : (r + 1) * BLOCK]
                        candidates = sum(
                            bool(rows[:, c * BLOCK : (c + 1) * BLOCK].any()) for c in range(math.ceil(num_keys / BLOCK))
                        )
                        chosen = {int(c) for c in block_idx[0, h, r] if c >= 0}
                        offered = {int(c) for c in produced[0, h, r] if c >= 0}
                        sets[layer, h, r] = (chosen, candidates > n_select, importance[0, h, r].tolist(), offered)
            for (j, h, r), (chosen_j, counts, mass_j, _) in sets.items():
                for i, g in ((i, g) for i in range(j) for g in range(2)):
                    if counts and mass:
                        kept = sorted((mass_j[c] for c in sets[i, g, r][3]), reverse=True)[:n_select]
                        captured = sum(kept) / sum(mass_j[c] for c in chosen_j)
                        overlaps.setdefault((i, j, g, h), []).append(min(captured, 1.0))
                    elif counts:
                        overlaps.setdefault((i, j, g, h), []).append(len(sets[i, g, r][0] & chosen_j) / len(chosen_j))
    heads = np.zeros((num_layers, num_layers, 2, 2))
    for i in range(num_layers):
        for j in range(i + 1, num_layers):
            for g in range(2):
                for h in range(2):
                    heads[i, j, g, h] = np.mean(overlaps[i, j, g, h])
    similarity = np.diagonal(heads, axis1=2, axis2=3).mean(-1)
    return similarity, np.sqrt(error_sq.sum(-1) / dense_sq.sum(-1)), heads, np.sqrt(error_sq / dense_sq)


def test_profile_matches_independent_recomputation(model, tokens, llama_profile):
    similarity, sensitivity, heads, head_sensitivity = independent_profile(model, tokens)
    np.testing.assert_allclose(llama_profile.similarity, similarity, atol=1e-12)
    np.testing.assert_allclose(llama_profile.head_overlap, heads, atol=1e-12)
    # The capture runs layers on SDPA's outputs, the profiler on the producer op's: fp32 rounding apart.
    np.testing.assert_allclose(llama_profile.sensitivity, sensitivity, rtol=1e-5)
    np.testing.assert_allclose(llama_profile.head_sensitivity, head_sensitivity, rtol=1e-5)
    assert not np.allclose(head_sensitivity[:, 0], head_sensitivity[:, 1])  # the heads differ


def test_mass_similarity_matches_independent_recomputation(model, tokens, llama_profile):
    prof = profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, similarity="mass", decode_steps=1,
                   head_map=True,
                   progress=False)
    similarity, sensitivity, heads, _ = independent_profile(model, tokens, decode_steps=1, mass=True)
    np.testing.assert_allclose(prof.similarity, similarity, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(prof.head_overlap, heads, rtol=1e-5, atol=1e-9)
    assert prof.metadata["similarity"] == "mass"
    assert not np.allclose(prof.similarity, llama_profile.similarity)  # another measure, not a relabelling
    with pytest.raises(ValueError, match="unknown similarity 'cosine'; valid ones are"):
        profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, similarity="cosine", progress=False)


def test_refine_similarity_matches_independent_recomputation(model, tokens):
    """candidates=2: the share of each consumer's own top-k mass it keeps refining among its producer's 2 x top_k
    blocks; at least what reuse of top_k blocks captures."""
    reuse = profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, similarity="mass", progress=False)
    prof = profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, similarity="mass", candidates=2, head_map=True,
                   progress=False)
    similarity, _, heads, _ = independent_profile(model, tokens, mass=True, multiple=2)
    np.testing.assert_allclose(prof.similarity, similarity, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(prof.head_overlap, heads, rtol=1e-5, atol=1e-9)
    upper = np.triu_indices(NUM_LAYERS, 1)
    assert np.all(prof.similarity[upper] >= reuse.similarity[upper] - 1e-12)
    assert prof.metadata["candidates"] == 2 and np.allclose(prof.sensitivity, reuse.sensitivity)
    with pytest.raises(ValueError, match="candidates=2 measures what a refining consumer keeps.*similarity='mass'"):
        profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, candidates=2, progress=False)
    with pytest.raises(ValueError, match="candidates must be an int >= 1, got 0"):
        profile(model, tokens, top_k=TOP_K, block_size=BLOCK, **TOY, similarity="mass", candidates=0, progress=False)


def test_decode_steps_count_like_query_blocks(model, tokens):
    prof = profile(model, tokens[:1], top_k=TOP_K, block_size=BLOCK, **TOY, decode_steps=3, progress=False)
    assert prof.metadata["decode_steps"] == 3
    similarity, sensitivity, _, _ = independent_profile(model, tokens[:1], decode_steps=3)
    np.testing.assert_allclose(prof.similarity, similarity, atol=1e-12)
    np.testing.assert_allclose(prof.sensitivity, sensitivity, rtol=1e-5)


def test_sliding_window_masks_use_the_ops_mask_rule():
    config = tiny_config("mistral", num_layers=3)
    config.sliding_window = 48  # a real 4-d bool mask: query blocks far from the start have fewer candidates
    torch.manual_seed(0)
    mistral = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    samples = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(5))
    prof = profile(mistral, samples, top_k=TOP_K, block_size=BLOCK, **TOY, progress=False)
    similarity, sensitivity, _, _ = independent_profile(mistral, samples)
    np.testing.assert_allclose(prof.similarity, similarity, atol=1e-12)
    np.testing.assert_allclose(prof.sensitivity, sensitivity, rtol=1e-5)


def test_profile_keeps_the_model_dense_and_restores_attention(model, tokens):
    with torch.no_grad():
        before = model(tokens[:1], use_cache=False).logits
    profile(model, tokens[:1], top_k=TOP_K, block_size=BLOCK, **TOY, progress=False)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(model(tokens[:1], use_cache=False).logits, before)


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_profile_save_and_load(llama_profile, tmp_path, suffix):
    llama_profile.save(tmp_path / f"profile{suffix}")
    loaded = Profile.load(tmp_path / f"profile{suffix}")
    for name in ("similarity", "sensitivity", "similarity_min", "head_overlap", "head_sensitivity"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(llama_profile, name))
    assert loaded.metadata == llama_profile.metadata


def test_profile_from_arrays(tmp_path):
    prof = Profile(similarity=[[1.0, 0.5], [0.3, 1.0]], sensitivity=[0.0, 0.2])
    with pytest.raises(ValueError, match="unknown extension"):
        prof.save(tmp_path / "profile.txt")
    assert prof.similarity.tolist() == [[0.0, 0.5], [0.0, 0.0]]  # only i < j is kept
    assert prof.num_layers == 2 and prof.num_kv_heads is None and prof.head_map is None
    with pytest.raises(ValueError, match="square"):
        Profile(np.zeros((2, 3)), [0, 0])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Profile([[0, 1.5], [0, 0]], [0, 0])
    with pytest.raises(ValueError, match="sensitivity must have shape"):
        Profile(np.zeros((2, 2)), [0.0])
    with pytest.raises(ValueError, match="finite"):
        Profile(np.zeros((2, 2)), [0.0, float("nan")])


@pytest.mark.parametrize(
    "calibration, kwargs, message",
    [
        ([], {}, "calibration data is empty"),
        (torch.zeros(0, SEQ, dtype=torch.long), {}, "calibration data is empty"),
        ([torch.arange(BLOCK - 1)], {}, "fewer than one block of 8"),
        (["some text"], {}, "needs a tokenizer"),
        ([torch.rand(SEQ)], {}, "must be integers"),
        ([torch.arange(SEQ)], {}, r"outside the model's vocabulary \[0, 64\)"),
        ([torch.arange(SEQ)], {"top_k": 16}, "fewer than sink_blocks \\+ local_blocks"),
        ([torch.arange(SEQ)], {"top_k": 0}, "top_k must be a positive int"),
        ([torch.arange(SEQ) % VOCAB], {"decode_steps": -1}, "decode_steps must be an int >= 0"),
        # 24 tokens are 3 blocks, never more than the 5 selected: every layer selects everything.
        ([torch.arange(24)], {}, "similarity is undefined"),
    ],
)
def test_profile_errors(model, calibration, kwargs, message):
    with pytest.raises(ValueError, match=message):
        profile(model, calibration, **{"top_k": TOP_K, "block_size": BLOCK, **TOY, "progress": False, **kwargs})


def test_model_without_attention_is_refused():
    with pytest.raises(ValueError, match="no attention"):
        profile(torch.nn.Linear(4, 4), [torch.arange(SEQ)], top_k=TOP_K, block_size=BLOCK, **TOY, progress=False)


def test_seq_len_cuts_windows(model):
    prof = profile(model, [torch.arange(2 * SEQ + 5) % VOCAB], top_k=TOP_K, block_size=BLOCK, **TOY, seq_len=SEQ,
                   progress=False)
    assert prof.metadata["num_samples"] == 2 and prof.metadata["num_tokens"] == 2 * SEQ


def test_produced_policy_compiles_with_the_hylra_backend(model, tokens, llama_profile):
    theta = float(np.median(llama_profile.similarity[np.triu_indices(NUM_LAYERS, 1)]))
    policy = optimize(llama_profile, theta=theta)
    assert "consumer" in policy.modes
    for j, source in enumerate(policy.sources):
        expected = None if source is None else llama_profile.head_map[source, j].tolist()
        assert policy.provenance["head_map"][j] == expected
    torch._dynamo.reset()
    backend = hylra_compile.HylraBackend(**at_toy_sizes(policy=policy, inductor=False, top_k=TOP_K, block_size=BLOCK,
                                                        **TOY, min_seq_len=0))
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        logits = compiled(tokens[:1], use_cache=False).logits
    assert logits.shape == (1, SEQ, VOCAB) and torch.isfinite(logits).all()
    report = backend.reports[0]
    assert [site.action for site in report.sites] == [
        {"full": "dense", "producer": "producer", "consumer": "consumer"}[mode] for mode in policy.modes
    ]
    assert report.edges() == [(s, j) for j, s in enumerate(policy.sources) if s is not None]


def test_llama_profile_governs_every_layer_and_keeps_its_policies(llama_profile):
    """No sliding layer: the profile governs every layer, and each budget gives the policy it gave before governed
    layers existed (modes, sources and summed similarity, bit for bit)."""
    assert llama_profile.governed_layers == llama_profile.metadata["governed_layers"] == list(range(NUM_LAYERS))
    golden = {1: (["producer", "consumer", "consumer", "consumer"], [None, 0, 0, 0], 2.2),
              2: (["producer", "consumer", "full", "consumer"], [None, 0, None, 0], 1.4954545454545456),
              3: (["producer", "full", "full", "consumer"], [None, None, None, 0], 0.7590909090909091)}
    for budget, expected in golden.items():
        policy = optimize(llama_profile, budget=budget)
        assert (policy.modes, policy.sources, policy.provenance["summed_similarity"]) == expected
