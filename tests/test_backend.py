"""End to end through torch.compile on CPU: numerics against eager / independent attention, reports, dumps, errors."""

from __future__ import annotations

import operator
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from hylra_compile import HylraBackend, Policy
from hylra_compile.models import cache_argument
from tests.independent import IndependentHylra
from tests.numerics import rel_err
from tests.passes.models import TinyStack, X
from tests.tiny_models import at_toy_sizes, decode_step, padded_batch, prefill_logits, tiny_model

BLOCK = 8


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()


def compile_model(model, **options):
    options = {"top_k": 24, "block_size": BLOCK, "min_seq_len": 0, "inductor": False, **options}
    backend = HylraBackend(**at_toy_sizes(**options))
    return torch.compile(model, backend=backend, fullgraph=True), backend


@pytest.mark.slow
def test_policy_full_through_inductor_matches_eager():
    model = tiny_model("llama", "sdpa", num_layers=2)
    compiled, backend = compile_model(model, policy=Policy.full(2), inductor=True)
    ids, mask = padded_batch(20)
    assert rel_err(prefill_logits(compiled, ids, mask), prefill_logits(model, ids, mask)) < 1e-5
    assert [s.reason for s in backend.reports[0].sites] == ["policy: full"] * 2


@pytest.mark.slow
def test_rewritten_graph_through_inductor_decode():
    model = tiny_model("qwen3", "eager", num_layers=2)
    compiled, backend = compile_model(model, policy=Policy.every(2, 2), top_k=64, inductor=True)
    ids, mask = padded_batch(20)
    assert rel_err(decode_step(model, compiled, ids, mask), decode_step(model, model, ids, mask)) < 1e-5
    assert backend.reports[0].counts() == {"producer": 1, "consumer": 1, "dense": 0}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_top_k_covering_sequence_equals_dense(attn, phase):
    model = tiny_model("llama", attn, num_layers=3)
    compiled, backend = compile_model(model, policy=Policy.every(2, 3), top_k=64)
    ids, mask = padded_batch(40 if phase == "prefill" else 20, pads=(0, 5, 11))
    if phase == "prefill":
        out, ref = prefill_logits(compiled, ids, mask), prefill_logits(model, ids, mask)
        # HF eager spreads a fully padded query's attention uniformly; the ops (like SDPA's spec) give zeros.
        out, ref = out[:, 11:], ref[:, 11:]
    else:
        out, ref = decode_step(model, compiled, ids, mask), decode_step(model, model, ids, mask)
    assert rel_err(out, ref) < 1e-5
    assert [s.action for s in backend.reports[0].sites] == ["producer", "consumer", "dense"]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_small_top_k_equals_independent_attention(family, phase):
    policy = Policy.from_modes(["producer", "consumer", "full", "producer", "consumer"])
    model = tiny_model(family, "sdpa", num_layers=5)
    min_seq_len = 12 if phase == "prefill" else 0  # prefill: early queries dense, later ones sparse
    compiled, backend = compile_model(model, policy=policy, top_k=3 * BLOCK, min_seq_len=min_seq_len)
    reference = IndependentHylra(policy, n_select=3, sink=1, local=2, min_seq_len=min_seq_len)
    independent = tiny_model(family, reference.name, num_layers=5)
    ids, mask = padded_batch(41 if phase == "prefill" else 30)
    if phase == "prefill":
        out, ref = prefill_logits(compiled, ids, mask), prefill_logits(independent, ids, mask)
    else:
        out = decode_step(model, compiled, ids, mask)
        ref = decode_step(model, independent, ids, mask)
    dense = prefill_logits(model, ids, mask) if phase == "prefill" else decode_step(model, model, ids, mask)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, dense) > 1e-3  # the sparsity is real
    assert [s.action for s in backend.reports[0].sites] == ["producer", "consumer", "dense", "producer", "consumer"]


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_top_k_far_past_the_keys_selects_the_blocks_there_are(phase):
    """top_k=1e12 sized each selection by top_k (13 TB); a static KV length caps it at its blocks, so the compile
    runs at once and equals dense."""
    model = tiny_model("llama", "sdpa", num_layers=2)
    compiled, backend = compile_model(model, policy=Policy.every(2, 2), top_k=10**12)
    ids, mask = padded_batch(40 if phase == "prefill" else 20)
    with pytest.warns(UserWarning, match="keeps every block of the traced keys"):
        if phase == "prefill":
            out, ref = prefill_logits(compiled, ids, mask)[:, 5:], prefill_logits(model, ids, mask)[:, 5:]
        else:  # the static cache holds 48 keys
            out, ref = decode_step(model, compiled, ids, mask), decode_step(model, model, ids, mask)
    assert rel_err(out, ref) < 1e-5
    (producer,) = hylra_nodes(backend.graphs[0], "topk_attention")
    assert producer.kwargs["n_select"] == (40 if phase == "prefill" else 48) // BLOCK


def test_a_selection_never_falls_below_sink_and_local_blocks():
    """Keys fewer than sink_blocks + local_blocks blocks: the cap stays at the forced blocks (the ops refuse fewer)."""
    model = tiny_model("llama", "sdpa", num_layers=2)
    compiled, backend = compile_model(model, policy=Policy.every(2, 2), top_k=10**6, local_blocks=3)
    with pytest.warns(UserWarning, match="keeps every block of the traced keys"):
        prefill_logits(compiled, *padded_batch(12, pads=(0,)))
    (producer,) = hylra_nodes(backend.graphs[0], "topk_attention")
    assert producer.kwargs["n_select"] == 4


def test_report_table_and_dumps(tmp_path):
    model = tiny_model("mistral", "eager", num_layers=4)
    compiled, backend = compile_model(model, policy=Policy.every(2, 4), dump_dir=str(tmp_path))
    prefill_logits(compiled, *padded_batch(20))
    report = backend.reports[0]
    assert [(s.layer, s.kind, s.action, s.source) for s in report.sites] == [
        (0, "eager", "producer", None),
        (1, "eager", "consumer", 0),
        (2, "eager", "producer", None),
        (3, "eager", "consumer", 2),
    ]
    assert str(report).splitlines()[0] == (f"hylra report for {report.name}: 2 producer, 2 consumer, 0 dense "
                                           "(consumers select by refine)")
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "00-input.py", "01-find_attention.md", "02-decide.md", "03-block_masks.md", "04-rewrite.py", "edges.dot", "report.md"
    ]
    assert "hylra.topk_attention" in (folder / "04-rewrite.py").read_text()
    assert "hylra" not in (folder / "00-input.py").read_text()
    assert "layer0 -> layer1" in (folder / "edges.dot").read_text()
    assert "| 1 | eager | consumer | sparse_attention | 0 |" in (folder / "report.md").read_text()


def test_no_policy_and_producer_without_consumer_run_dense():
    model = tiny_model("llama", "sdpa", num_layers=2)
    compiled, backend = compile_model(model)
    prefill_logits(compiled, *padded_batch(20))
    assert [s.reason for s in backend.reports[0].sites] == ["no policy given"] * 2
    torch._dynamo.reset()
    compiled, backend = compile_model(model, policy=["producer", "full"])
    prefill_logits(compiled, *padded_batch(20))
    first, second = backend.reports[0].sites
    assert first.reason == "policy: producer, but no layer of this graph consumes it (runs as full)"
    # Both run dense on the native KV heads (hylra::attention), sharing one block mask of HF's materialised mask.
    assert (first.op, second.op) == ("attention", "attention")
    code = backend.graphs[0].code
    assert code.count("hylra.attention.default") == 2 and code.count("hylra.mask_blocks.default") == 1
    assert "scaled_dot_product_attention" not in code


@pytest.mark.parametrize("policy_layers", [1, 8])
def test_a_policy_for_another_layer_count_is_refused(policy_layers):
    """A policy longer than the model used to compile silently (its first entries applied): the model's config
    gives its layer count, and the first graph refuses a policy of another length, naming both."""
    model = tiny_model("llama", "sdpa", num_layers=2)
    compiled, _ = compile_model(model, policy=Policy.full(policy_layers))
    with pytest.raises(Exception, match=f"the policy has {policy_layers} layers but the model has 2 attention layers"):
        prefill_logits(compiled, *padded_batch(20))


def test_a_model_without_a_layer_count_takes_a_policy_by_its_graph_layers():
    """No config, so no count to check: a longer policy applies to the layers the graph holds."""
    compiled, backend = compile_model(TinyStack(2), policy=Policy.every(2, 8), top_k=8, block_size=4, local_blocks=1)
    with torch.no_grad():
        compiled(X)
    assert [s.action for s in backend.reports[0].sites] == ["producer", "consumer"]


def test_a_policy_for_other_kv_heads_is_refused():
    model = tiny_model("llama", "sdpa", num_layers=2)
    compiled, _ = compile_model(model, policy=Policy.every(2, 2, num_kv_heads=8))
    with pytest.raises(Exception, match="made for a model with 8 KV heads, this graph has 2"):
        prefill_logits(compiled, *padded_batch(20))


def test_graph_without_attention_is_unchanged():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    compiled, backend = compile_model(mlp, policy=Policy.every(2, 4))
    x = torch.randn(3, 8)
    torch.testing.assert_close(compiled(x), mlp(x))
    assert backend.reports[0].sites == ()
    assert "no attention found" in str(backend.reports[0])


class TwoAttentions(torch.nn.Module):
    """Two SDPA calls; the second one's KV comes from ``memory`` (its own length) unless ``shared``."""

    def forward(self, q, k, v, memory, dropout_p: float = 0.0):
        first = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        second = F.scaled_dot_product_attention(first, memory, memory, dropout_p=dropout_p, is_causal=True)
        return second


def test_consumer_with_other_shapes_stays_dense():
    q = torch.randn(1, 2, 16, 8)
    k = torch.randn(1, 2, 16, 8)
    memory = torch.randn(1, 2, 24, 8)
    module = TwoAttentions()
    compiled, backend = compile_model(module, policy=["producer", "consumer"], top_k=24)
    torch.testing.assert_close(compiled(q, k, k, memory), module(q, k, k, memory))
    consumer = backend.reports[0].sites[1]
    assert consumer.action == "dense"
    assert consumer.reason == "policy: consumer of 0, but KV length 24 differs from 16 of layer 0"


def test_symbolic_shapes_shared_symbol_is_rewritten():
    module = TwoAttentions()
    compiled, backend = compile_model(module, policy=["producer", "consumer"], top_k=1024, block_size=4)
    for length in (16, 20):  # the second length recompiles with a symbolic sequence length
        q, k = torch.randn(1, 2, length, 8), torch.randn(1, 2, length, 8)
        torch._dynamo.mark_dynamic(q, 2)
        torch._dynamo.mark_dynamic(k, 2)
        torch.testing.assert_close(compiled(q, k, k, k), module(q, k, k, k))
    last = backend.reports[-1]
    assert [s.action for s in last.sites] == ["producer", "consumer"]
    placeholders = backend.graphs[-1].graph.find_nodes(op="placeholder")
    assert any(isinstance(node.meta["example_value"], torch.SymInt) for node in placeholders)


def test_sizes_equal_only_when_traced_are_guarded_on():
    """Keys and memory of separately symbolic lengths (no duck sizing), equal when traced: the consumer is rewritten
    under a guard on their equality; called with a longer memory, Dynamo recompiles and that graph keeps it dense
    (and its producer, which nothing consumes, runs as full)."""
    module = TwoAttentions()
    compiled, backend = compile_model(module, policy=["producer", "consumer"], top_k=1024, block_size=4)
    with torch.fx.experimental._config.patch(use_duck_shape=False):
        for memory_length in (16, 24):
            q, k, memory = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, memory_length, 8)
            for tensor in (q, k, memory):
                torch._dynamo.mark_dynamic(tensor, 2)
            torch.testing.assert_close(compiled(q, k, k, memory), module(q, k, k, memory))
    assert [[s.action for s in report.sites] for report in backend.reports] == [
        ["producer", "consumer"], ["dense", "dense"]]
    assert backend.reports[1].sites[1].reason.startswith("policy: consumer of 0, but KV length s")


def test_dropout_softcapping_and_escaping_probabilities_are_reported_dense():
    q = torch.randn(1, 2, 16, 8)
    module = TwoAttentions()
    compiled, backend = compile_model(module, policy=["producer", "consumer"])
    compiled(q, q, q, q, 0.5)
    assert backend.reports[0].sites[1].reason == "dropout_p=0.5 > 0 (training-mode attention is left dense)"

    def softcapped(q, k, v):
        scores = torch.tanh(torch.matmul(q, k.transpose(2, 3)) / 30.0) * 30.0
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    torch._dynamo.reset()
    compiled, backend = compile_model(softcapped, policy=["full"])
    compiled(q, q, q)
    assert backend.reports[0].sites[0].reason.startswith("logit softcapping (tanh of the scores before the softmax)")

    def returns_probs(q, k, v):
        probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * 0.3, dim=-1)
        return torch.matmul(probs, v), probs

    torch._dynamo.reset()
    compiled, backend = compile_model(returns_probs, policy=["producer"])
    compiled(q, q, q)
    assert "softmax probabilities" in backend.reports[0].sites[0].reason


def test_backend_name_works_without_import(tmp_path):
    script = textwrap.dedent(
        """
        import sys, torch
        import torch.nn.functional as F
        def f(q):
            return F.scaled_dot_product_attention(q, q, q, is_causal=True)
        out = torch.compile(f, backend="hylra", options={"policy": ["full"], "inductor": False, "dump_dir": sys.argv[1]})(
            torch.randn(1, 2, 8, 4))
        print("hylra_compile" in sys.modules, out.shape)
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True torch.Size([1, 2, 8, 4])"
    assert (next(tmp_path.iterdir()) / "report.md").is_file()


def test_look_alikes_of_hf_patterns_are_not_rewritten():
    """A sequence repeat shaped like repeat_kv, a bool tensor added to scores, and grad-requiring inputs."""
    q = torch.randn(1, 2, 16, 8)

    def sequence_repeat(q, k):
        first = F.scaled_dot_product_attention(q, k, k, is_causal=True)
        doubled = k[:, :, None].expand(1, 2, 2, 16, 8).reshape(1, 2, 32, 8)
        return F.scaled_dot_product_attention(first, doubled, doubled, is_causal=True)

    compiled, backend = compile_model(sequence_repeat, policy=["producer", "consumer"], top_k=1024, block_size=4)
    torch.testing.assert_close(compiled(q, q), sequence_repeat(q, q))
    assert "KV length 32 differs from 16" in backend.reports[0].sites[1].reason

    def bool_bias(q, k, flags):
        scores = torch.matmul(q, k.transpose(2, 3)) * 0.3 + flags
        return torch.matmul(torch.softmax(scores, dim=-1), k)

    torch._dynamo.reset()
    compiled, backend = compile_model(bool_bias, policy=["full"])
    flags = torch.rand(1, 1, 16, 16) > 0.5
    torch.testing.assert_close(compiled(q, q, flags), bool_bias(q, q, flags))
    assert "is not a floating-point tensor" in backend.reports[0].sites[0].reason

    torch._dynamo.reset()
    compiled, backend = compile_model(TwoAttentions(), policy=["producer", "consumer"])
    compiled(q.requires_grad_(), q, q, q)
    assert all("inference-only" in site.reason for site in backend.reports[0].sites)


@pytest.mark.cuda
def test_cudagraphs_option_decode_cuda():
    """cudagraphs=True: Inductor replays the rewritten static-cache decode step as CUDA graphs (no skip: the hylra
    kernels are graph safe) and gives the logits of the same backend launched from Python."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM, LlamaConfig, StaticCache

    config = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, num_hidden_layers=2, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(0, 64, (1, 300), device="cuda")

    @torch.no_grad()
    def decode(cudagraphs):
        torch._dynamo.reset()
        counters.clear()
        cache = {cache_argument(model): StaticCache(config=config, max_cache_len=320)}
        model(ids, **cache, cache_position=torch.arange(300, device="cuda"))
        backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 2), top_k=256, block_size=64, min_seq_len=0,
                               cudagraphs=cudagraphs))
        compiled = torch.compile(model, backend=backend)
        token, logits = ids[:, -1:], []
        for step in range(4):  # graph trees warm up, record, then replay
            out = compiled(token, **cache, cache_position=torch.tensor([300 + step], device="cuda"))
            logits.append(out.logits.float().clone())
            token = out.logits[:, -1:].argmax(-1)
        assert backend.reports[0].counts() == {"producer": 1, "consumer": 1, "dense": 0}
        return torch.cat(logits), dict(counters["inductor"])

    from torch._inductor.cudagraph_trees import get_container

    graphed, graph_counters = decode(True)
    assert graph_counters.get("cudagraph_skips", 0) == 0, graph_counters
    assert get_container(torch.cuda.current_device()).tree_manager.roots, "no CUDA graph was recorded"
    launched, _ = decode(False)
    assert rel_err(graphed, launched) < 1e-3


def hylra_nodes(gm, name):
    return list(gm.graph.find_nodes(op="call_function", target=getattr(torch.ops.hylra, name).default))


def test_refine_selection_feeds_each_consumer_through_refine_blocks():
    """selection="refine": each consumer's sparse_attention takes the block_idx of a refine_blocks over its own q, k
    and mask whose candidate_idx is its producer's block_idx, the producer selecting `candidates` times top_k."""
    model = tiny_model("llama", "sdpa", num_layers=4)
    compiled, backend = compile_model(model, policy=Policy.every(2, 4), selection="refine", candidates=3)
    prefill_logits(compiled, *padded_batch(80))  # 10 KV blocks: room for the producer's 9
    (gm,) = backend.graphs
    producers, refines, consumers = (hylra_nodes(gm, name) for name in ("topk_attention", "refine_blocks",
                                                                        "sparse_attention"))
    assert (len(producers), len(refines), len(consumers)) == (2, 2, 2)
    assert backend.reports[0].counts() == {"producer": 2, "consumer": 2, "dense": 0}
    assert str(backend.reports[0]).splitlines()[0].endswith("2 producer, 2 consumer, 0 dense (consumers select by "
                                                              "refine)")
    for producer, refine, consumer in zip(producers, refines, consumers):
        assert producer.kwargs["n_select"] == 9 and refine.kwargs["n_select"] == 3
        candidates = refine.kwargs["candidate_idx"]
        assert candidates.target is operator.getitem and candidates.args == (producer, 1)
        assert consumer.kwargs["block_idx"] is refine
        assert all(refine.kwargs[name] is consumer.kwargs[name] for name in ("q", "k", "mask"))
        assert refine.kwargs["is_causal"] == consumer.kwargs["is_causal"]
        assert refine.kwargs["scale"] == consumer.kwargs["scale"]
        assert (refine.kwargs["sink_blocks"], refine.kwargs["local_blocks"], refine.kwargs["block_size"]) == (1, 2, 8)


def test_oracle_selection_gives_each_consumer_its_own_topk():
    """selection="oracle": each consumer has a topk_attention of its own (top_k, not widened) over its q, k, v and
    mask, whose block_idx (getitem 1) feeds its sparse_attention; no refine_blocks."""
    model = tiny_model("llama", "sdpa", num_layers=4)
    compiled, backend = compile_model(model, policy=Policy.every(2, 4), selection="oracle")
    prefill_logits(compiled, *padded_batch(40))
    (gm,) = backend.graphs
    consumers = hylra_nodes(gm, "sparse_attention")
    assert len(hylra_nodes(gm, "topk_attention")) == 4 and len(consumers) == 2 and not hylra_nodes(gm, "refine_blocks")
    for consumer in consumers:
        block_idx = consumer.kwargs["block_idx"]
        assert block_idx.target is operator.getitem and block_idx.args[1] == 1
        own = block_idx.args[0]
        assert own.target is torch.ops.hylra.topk_attention.default and own.kwargs["n_select"] == 3
        assert all(own.kwargs[name] is consumer.kwargs[name] for name in ("q", "k", "v", "mask"))
        assert [user.args[1] for user in own.users] == [1]


@pytest.mark.parametrize("selection", ["refine", "oracle"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_refine_and_oracle_with_top_k_covering_sequence_equal_dense(selection, phase):
    """With top_k at or past the sequence length every consumer's own selection keeps every block: the compiled
    model equals the model run without the backend (past the fully padded queries, which the ops zero). A refining
    consumer whose top_k covers every candidate takes them as they are (no refine_blocks)."""
    model = tiny_model("llama", "sdpa", num_layers=4)
    top_k = 40 if phase == "prefill" else 48
    compiled, backend = compile_model(model, policy=Policy.every(2, 4), top_k=top_k, selection=selection)
    ids, mask = padded_batch(40 if phase == "prefill" else 20)
    if phase == "prefill":
        out, ref = prefill_logits(compiled, ids, mask)[:, 5:], prefill_logits(model, ids, mask)[:, 5:]
    else:
        out, ref = decode_step(model, compiled, ids, mask), decode_step(model, model, ids, mask)
    assert rel_err(out, ref) < 1e-5
    selections = {"refine": ("refine_blocks", 0), "oracle": ("topk_attention", 4)}[selection]
    assert len(hylra_nodes(backend.graphs[0], selections[0])) == selections[1]


def test_string_backend_parses_a_changed_options_mapping_again():
    """backend="hylra" with the same options dict, changed between compiles: the new values apply."""
    import hylra_compile

    model = tiny_model("llama", "sdpa", num_layers=2)
    ids = torch.randint(0, 64, (1, 40))
    options = {"policy": Policy.every(2, 2), "top_k": 24, "block_size": BLOCK, "min_seq_len": 0, "selection": "reuse",
               "inductor": False}
    hylra_compile.reset_reports()
    for top_k in (24, 32):
        options["top_k"] = top_k
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend="hylra", options=at_toy_sizes(**options))(ids)
    assert [r.sites[0].action for r in hylra_compile.reports()] == ["producer", "producer"]
    graphs = [backend.graphs[-1] for _, _, backend in hylra_compile.backend._string_backends]
    assert [hylra_nodes(gm, "topk_attention")[0].kwargs["n_select"] for gm in graphs] == [3, 4]


@pytest.mark.parametrize("case, message", [
    ("grad", "inputs require grad: run the model under torch.no_grad()"),
    ("dynamic", "not a compile-time constant: compile with static shapes"),
    ("no consumer", "the policy has no consumer layer"),
    ("top_k", "top_k=64 keeps every block of the traced keys (40)"),
    ("min_seq_len", "every query has fewer than min_seq_len=4096 keys (the traced keys: 40)"),
])
def test_a_compile_that_runs_nothing_sparse_warns_with_the_fix(case, message):
    model = tiny_model("llama", "sdpa", num_layers=4)
    ids = torch.randint(0, 64, (1, 40))
    policy = Policy.full(4) if case == "no consumer" else Policy.every(2, 4)
    backend = HylraBackend(**at_toy_sizes(policy=policy, top_k=64 if case == "top_k" else 24, block_size=BLOCK,
                                          inductor=False,
                           min_seq_len=4096 if case == "min_seq_len" else 0))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, dynamic=case == "dynamic")
    with pytest.warns(UserWarning, match="no attention site of .* runs sparse") as record:
        if case == "grad":
            compiled(ids)
        else:
            with torch.no_grad():
                compiled(ids)
    assert any(message in str(w.message) for w in record)


def test_a_sparse_compile_does_not_warn():
    import warnings

    model = tiny_model("llama", "sdpa", num_layers=4)
    compiled, _ = compile_model(model, policy=Policy.every(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with torch.no_grad():
            compiled(torch.randint(0, 64, (1, 40)))
