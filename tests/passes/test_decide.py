"""Phase 2 on its own and across graph breaks: the policy applies by layer index, graph by graph."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from hylra_compile import HylraBackend, Policy
from hylra_compile.passes import decide, find_attention
from tests.passes.models import COVERING, BrokenStack, LoopBrokenStack, TinyAttention, TinyStack, X, dynamo_graph
from tests.tiny_models import at_toy_sizes, padded_batch, tiny_bert, tiny_encoder_decoder, tiny_model


def compile_broken(policy: Policy, model=None):
    model = model or BrokenStack()
    backend = HylraBackend(**at_toy_sizes(policy=policy, **COVERING))
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(X), model(X))
    return backend


def test_each_graph_takes_the_policy_entries_of_its_layers():
    backend = compile_broken(Policy.every(2, 4))
    assert [[(s.layer, s.action, s.source) for s in r.sites] for r in backend.reports] == [
        [(0, "producer", None), (1, "consumer", 0)],
        [(2, "producer", None), (3, "consumer", 2)],
    ]


def test_a_consumer_whose_producer_is_in_another_graph_stays_dense():
    backend = compile_broken(Policy.from_modes(["producer", "consumer", "consumer", "consumer"]))
    second = backend.reports[1]
    assert [s.action for s in second.sites] == ["dense", "dense"]
    assert second.sites[0].reason == (
        "policy: consumer of 0, but layer 0 is not in this graph (a graph break splits them)"
    )
    assert counters["hylra"]["dense.source_in_other_graph"] == 2
    # They still run on the native KV heads, through the dense op.
    assert [s.op for s in second.sites] == ["attention", "attention"]
    assert counters["hylra"]["rewritten"] == 4


GRAPH_BREAK_WARNING = "a graph break inside the layer loop"


def test_a_layer_compiled_on_its_own_is_numbered_by_its_name_in_the_model():
    """A graph break inside the layer loop: Dynamo compiles the layer's forward as its own frame, whose module paths
    hold no number (its attention runs in the frame's own module, not even in the paths); the layer comes from the
    module's qualified name in the model on the call stack. Dynamo runs that graph for every layer (one code, no
    guard tells them apart): it reports the layer it was compiled for, dense, and the compile warns."""
    with pytest.warns(UserWarning, match=GRAPH_BREAK_WARNING):
        backend = compile_broken(Policy.every(2, 4), LoopBrokenStack(4))
    (site,) = [site for report in backend.reports for site in report.sites]
    assert (site.layer, site.action) == (0, "dense")
    assert site.reason == "policy: producer, but no layer of this graph consumes it (runs as full)"
    assert site.notes[-1].startswith("layer number from the module's name in the model")


def test_a_graph_break_in_a_layer_hook_keeps_the_layer_numbers():
    """A Llama whose layer 2 has a forward pre-hook that breaks the graph: every layer compiles on its own (every
    site was dense with 'no layer number'). The layers keep their numbers, so the policy applies where it can: its
    full layer is full, and a consumer reports its producer in another graph; the output is the model's."""
    model = tiny_model("llama", "sdpa", num_layers=4)
    model.model.layers[2].register_forward_pre_hook(lambda module, args: torch._dynamo.graph_break())
    ids, mask = padded_batch(20)
    backend = HylraBackend(**at_toy_sizes(policy=Policy.from_modes(["producer", "consumer", "full", "producer"]),
                                          top_k=8,
                           block_size=8, local_blocks=0, min_seq_len=0, inductor=False))
    with torch.no_grad(), pytest.warns(UserWarning, match=GRAPH_BREAK_WARNING):
        torch.testing.assert_close(torch.compile(model, backend=backend)(ids, attention_mask=mask).logits,
                                   model(ids, attention_mask=mask).logits)
    sites = [site for report in backend.reports for site in report.sites]
    assert [(site.layer, site.reason) for site in sites] == [
        (0, "policy: producer, but no layer of this graph consumes it (runs as full)"),
        (1, "policy: consumer of 0, but layer 0 is not in this graph (a graph break splits them)"),
        (2, "policy: full"),
        (3, "policy: producer, but no layer of this graph consumes it (runs as full)"),
    ]


class TwiceAttention(TinyAttention):
    """Attends causally twice in one layer (a non-causal second call, like a decoder layer's cross-attention, would
    leave the layer's policy entry to the first)."""

    def forward(self, x):
        x = super().forward(x)
        B, S, _ = x.shape
        q = x.view(B, S, 2, 4).transpose(1, 2)
        return x + F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(B, S, -1)


def test_a_layer_with_two_attention_calls_stays_dense():
    model = TinyStack()
    model.layers[1] = TwiceAttention()
    matches = find_attention(dynamo_graph(model, X))
    assert [m.layer for m in matches] == [0, 1, 1]
    decisions = decide(matches, Policy.every(2, 2))
    assert [d.action for d in decisions] == ["dense", "dense", "dense"]
    assert decisions[1].reason == (
        "layer 1 makes 2 attention calls in this graph; one policy entry per layer cannot tell them apart"
    )
    assert decisions[0].dense_cause == "unconsumed_producer"


def test_decide_is_a_function_of_matches_and_policy():
    matches = find_attention(dynamo_graph(TinyStack(3), X))
    assert [d.dense_cause for d in decide(matches, None)] == ["no_policy"] * 3
    decisions = decide(matches, Policy.from_modes(["producer", "full", "consumer"]))
    assert [(d.action, d.source, d.dense_cause) for d in decisions] == [
        ("producer", None, None), ("dense", None, "policy_full"), ("consumer", 0, None)
    ]
    with pytest.raises(ValueError, match=r"attention at layer\(s\) \[2\] but the policy lists 2 layers"):
        decide(matches, Policy.every(2, 2))


@pytest.mark.parametrize("tp, rank, heads, expected, crosses", [
    (1, 0, [1, 0], (1, 0), False),
    (1, 0, [0, 1], None, False),  # the identity map: equal heads, no map_heads op
    (2, 1, [1, 1], None, False),  # rank 1 holds head 1 and reads head 1
    (2, 0, [1, 1], None, True),   # rank 0 holds head 0 but would read rank 1's head
])
def test_a_head_map_in_the_graphs_own_heads(monkeypatch, tp, rank, heads, expected, crosses):
    """A consumer's head map, taken in the graph's head numbering under tensor parallelism (each rank holds its
    contiguous share of the KV heads); a map reading another rank's heads pairs equal heads and says why."""
    decide_module = importlib.import_module("hylra_compile.passes.decide")  # the package exports the function
    monkeypatch.setattr(decide_module, "tensor_parallel_rank", lambda: (tp, rank))
    matches = find_attention(dynamo_graph(TinyStack(2, heads=4 // tp, kv_heads=2 // tp, head_dim=8 * tp // 4), X))
    policy = Policy(["producer", "consumer"], [None, 0], num_kv_heads=2, heads=[None, heads])
    if crosses:
        with pytest.warns(UserWarning, match=r"layer 1: its head map \[1, 1\] reads KV heads of another"):
            consumer = decide(matches, policy)[1]
        assert consumer.reason.endswith("(this rank holds heads 0..0); equal heads paired")
    else:
        consumer = decide(matches, policy)[1]
        assert consumer.reason is None
    assert (consumer.action, consumer.source, consumer.heads) == ("consumer", 0, expected)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_non_causal_attention_stays_dense(attn, padded):
    """A bidirectional encoder: its queries see the keys after them, where the selection's local blocks (the last
    candidates) would be the sequence's end, not the query's neighbours. Unpadded, BERT's SDPA call has no mask and
    is_causal=False; padded, its mask is a padding mask only the module's own is_causal=False tells apart."""
    model = tiny_bert(attn)
    ids, mask = padded_batch(40)
    kwargs = {"attention_mask": mask} if padded else {}
    backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 2), top_k=8, block_size=8, local_blocks=0,
                                          min_seq_len=0,
                           inductor=False))
    with torch.no_grad(), pytest.warns(UserWarning, match="non-causal attention"):
        out = torch.compile(model, backend=backend)(ids, **kwargs).last_hidden_state
        torch.testing.assert_close(out, model(ids, **kwargs).last_hidden_state)
    sites = [site for report in backend.reports for site in report.sites]
    assert len(sites) == 2 and all(s.action == "dense" and s.reason.startswith("non-causal attention") for s in sites)
    assert counters["hylra"]["dense.non_causal"] == 2


def compile_encoder_decoder(model, policy: Policy):
    """The sites of ``model`` compiled on 20 input and 24 decoder tokens, its output checked equal to the model's
    (top_k covers every block)."""
    ids, decoder_ids = torch.randint(3, 64, (1, 20)), torch.randint(3, 64, (1, 24))
    backend = HylraBackend(**at_toy_sizes(policy=policy, top_k=24, block_size=4, local_blocks=1, min_seq_len=0,
                                          inductor=False))
    with torch.no_grad():
        out = torch.compile(model, backend=backend)(input_ids=ids, decoder_input_ids=decoder_ids)
        torch.testing.assert_close(out.last_hidden_state,
                                   model(input_ids=ids, decoder_input_ids=decoder_ids).last_hidden_state)
    return [site for report in backend.reports for site in report.sites]


def test_t5_sub_layer_numbers_leave_its_decoder_dense_with_the_reason():
    """T5's paths end in the sub-layer's number (decoder.block.N.layer.0.SelfAttention): every decoder
    self-attention gets number 0, so no policy entry can tell them apart, and the report says why (it said "layer 0
    makes 4 attention calls", counting the encoder's and the cross-attention's). Those are non-causal: dense."""
    sites = compile_encoder_decoder(tiny_encoder_decoder("t5"), Policy.every(2, 2))
    assert len(sites) == 6 and all(site.action == "dense" for site in sites)
    non_causal = [site for site in sites if site.reason.startswith("non-causal attention")]
    shared = [site for site in sites if site not in non_causal]
    assert len(non_causal) == 4 and len(shared) == 2
    # Before torch 2.13 Dynamo breaks the graph in T5Stack.forward (DynamicCache(config=...) deep-copies the config):
    # the decoder stack is then a frame of its own, and its paths start at the stack (L['self'].block.N...).
    assert all(site.reason.replace("L['self'].decoder.", "L['self'].") == (
        "2 modules' attention calls (L['self'].block.0.layer.0.SelfAttention, "
        "L['self'].block.1.layer.0.SelfAttention) share layer number 0, the last number of their module "
        "paths (blocks that number their sub-layers, like T5's block.N.layer.M): one policy entry per layer cannot "
        "tell them apart") for site in shared)


def test_an_encoder_decoder_takes_a_policy_for_its_decoder_layers():
    """BART numbers its decoder layers (decoder.layers.N.self_attn / .encoder_attn): the causal self-attention of
    each takes the policy entry of its layer, while its cross-attention and the encoder stay dense as non-causal. The
    config's num_hidden_layers counts the encoder's layers, so it does not size the policy."""
    sites = compile_encoder_decoder(tiny_encoder_decoder("bart", encoder_layers=2, decoder_layers=3),
                                    Policy.every(2, 3))
    non_causal = [site for site in sites if site.reason and site.reason.startswith("non-causal attention")]
    assert len(non_causal) == 5 and all(site.op is None for site in non_causal)  # left as the model wrote them
    assert [(site.layer, site.action, site.reason) for site in sites if site not in non_causal] == [
        (0, "producer", None), (1, "consumer", None),
        (2, "dense", "policy: producer, but no layer of this graph consumes it (runs as full)")]
