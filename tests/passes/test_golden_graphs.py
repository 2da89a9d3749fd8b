"""Golden rewritten graphs (refresh with EXPECTTEST_ACCEPT=1 after an intended change).

One full graph of a small attention model these tests own (stable across transformers releases), and for the
Hugging Face families a normalised view of the attention ops only: one expectation per (SDPA/eager,
prefill/decode), shared by every family, plus the counters.
"""

from __future__ import annotations

import operator

import pytest
import torch
from torch._dynamo.testing import normalize_gm
from torch._dynamo.utils import counters

from hylra_compile import HylraBackend, Policy
from hylra_compile.passes.patterns import example_value, is_call
from tests.passes.models import TinyStack
from tests.tiny_models import CONFIGS, at_toy_sizes, decode_step, padded_batch, prefill_logits, tiny_model

# A test dependency; the GPU machine lacks it, and these CPU tests must not stop its `pytest -m cuda` collection.
TestCase = pytest.importorskip("expecttest").TestCase

HYLRA_OPS = {torch.ops.hylra.topk_attention.default: "topk_attention",
             torch.ops.hylra.sparse_attention.default: "sparse_attention",
             torch.ops.hylra.attention.default: "attention",
             torch.ops.hylra.refine_blocks.default: "refine_blocks",
             torch.ops.hylra.map_heads.default: "map_heads",
             torch.ops.hylra.expand_blocks.default: "expand_blocks",
             torch.ops.hylra.mask_blocks.default: "mask_blocks",
             torch.ops.hylra.shared_mask.default: "shared_mask"}
_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.bool: "b8", torch.int32: "i32", torch.int8: "i8"}


def attention_ops(gm: torch.fx.GraphModule) -> str:
    """The attention ops of a graph, one line each, with tensor operands as ``%n dtype[shape]`` (n numbers
    distinct nodes in order of first use, so a node shared by several ops shows the same n), and ``block_idx``,
    ``block_mask`` and the stored mask as the op they come from. Attention left in the graph is listed too, by its
    SDPA or softmax (not every matmul: transformers 5.17 computes rotary angles with one)."""
    ids: dict[torch.fx.Node, int] = {}
    producers: dict[torch.fx.Node, str] = {}

    def show(value) -> str:
        if not isinstance(value, torch.fx.Node):
            return f"{value:.4f}" if isinstance(value, float) else repr(value)
        if value in producers:
            return producers[value]
        number = ids.setdefault(value, len(ids))
        fake = example_value(value)
        return f"%{number} {_DTYPES.get(fake.dtype, fake.dtype)}{list(fake.shape)}"

    lines = []
    for node in gm.graph.nodes:
        if node.target in HYLRA_OPS:
            name = f"{HYLRA_OPS[node.target]}#{sum(line.startswith(HYLRA_OPS[node.target] + '#') for line in lines)}"
            lines.append(f"{name}({', '.join(f'{k}={show(v)}' for k, v in node.kwargs.items())})")
            if HYLRA_OPS[node.target] in ("mask_blocks", "shared_mask", "refine_blocks", "map_heads", "expand_blocks"):
                producers[node] = name
            for user in node.users:
                if user.target is operator.getitem and user.args[1] == 1:
                    producers[user] = f"{name}.block_idx"
        elif is_call(node, "sdpa") or is_call(node, "softmax"):
            lines.append(f"left: {node.format_node()}")
    return "\n".join(lines)


def attention_counters() -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(counters["hylra"].items()))


def rewritten(model: torch.nn.Module, **options) -> torch.fx.GraphModule:
    """The one graph the hylra backend (without Inductor) rewrites for ``model`` on a [1, 16, 8] input."""
    backend = HylraBackend(**at_toy_sizes(inductor=False, **options))
    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(torch.randn(1, 16, 8))
    (gm,) = backend.graphs
    return gm


class GoldenGraphTest(TestCase):
    def test_own_model_full_graph(self):
        torch.manual_seed(0)
        model = TinyStack()
        backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 2), top_k=12, block_size=4, local_blocks=1, min_seq_len=0,
                               selection="reuse", inductor=False))
        x = torch.randn(1, 12, 8)
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend=backend, fullgraph=True)(x), model(x))
        (gm,) = backend.graphs
        self.assertExpectedInline(normalize_gm(gm.print_readable(False)), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_x_: "f32[1, 12, 8]", L_self_modules_layers_modules_0_modules_q_proj_parameters_weight_: "f32[8, 8]", L_self_modules_layers_modules_0_modules_kv_proj_parameters_weight_: "f32[8, 8]", L_self_modules_layers_modules_0_modules_o_proj_parameters_weight_: "f32[8, 8]", L_self_modules_layers_modules_1_modules_q_proj_parameters_weight_: "f32[8, 8]", L_self_modules_layers_modules_1_modules_kv_proj_parameters_weight_: "f32[8, 8]", L_self_modules_layers_modules_1_modules_o_proj_parameters_weight_: "f32[8, 8]"):
        l_x_ = L_x_
        l_self_modules_layers_modules_0_modules_q_proj_parameters_weight_ = L_self_modules_layers_modules_0_modules_q_proj_parameters_weight_
        l_self_modules_layers_modules_0_modules_kv_proj_parameters_weight_ = L_self_modules_layers_modules_0_modules_kv_proj_parameters_weight_
        l_self_modules_layers_modules_0_modules_o_proj_parameters_weight_ = L_self_modules_layers_modules_0_modules_o_proj_parameters_weight_
        l_self_modules_layers_modules_1_modules_q_proj_parameters_weight_ = L_self_modules_layers_modules_1_modules_q_proj_parameters_weight_
        l_self_modules_layers_modules_1_modules_kv_proj_parameters_weight_ = L_self_modules_layers_modules_1_modules_kv_proj_parameters_weight_
        l_self_modules_layers_modules_1_modules_o_proj_parameters_weight_ = L_self_modules_layers_modules_1_modules_o_proj_parameters_weight_

        linear: "f32[1, 12, 8]" = torch._C._nn.linear(l_x_, l_self_modules_layers_modules_0_modules_q_proj_parameters_weight_, None);  l_self_modules_layers_modules_0_modules_q_proj_parameters_weight_ = None
        view: "f32[1, 12, 2, 4]" = linear.view(1, 12, 2, 4);  linear = None
        q: "f32[1, 2, 12, 4]" = view.transpose(1, 2);  view = None

        linear_1: "f32[1, 12, 8]" = torch._C._nn.linear(l_x_, l_self_modules_layers_modules_0_modules_kv_proj_parameters_weight_, None);  l_self_modules_layers_modules_0_modules_kv_proj_parameters_weight_ = None
        view_1: "f32[1, 12, 2, 4]" = linear_1.view(1, 12, 2, 4);  linear_1 = None
        transpose_1: "f32[1, 2, 12, 4]" = view_1.transpose(1, 2);  view_1 = None
        chunk = transpose_1.chunk(2, dim = 1);  transpose_1 = None
        k: "f32[1, 1, 12, 4]" = chunk[0]
        v: "f32[1, 1, 12, 4]" = chunk[1];  chunk = None

        topk_attention_default = torch.ops.hylra.topk_attention.default(q = q, k = k, v = v, mask = None, block_mask = None, is_causal = True, scale = None, block_size = 4, n_select = 3, sink_blocks = 1, local_blocks = 1);  q = k = v = None
        getitem_8: "f32[1, 2, 12, 4]" = topk_attention_default[0]
        getitem_9: "i32[1, 1, 3, 3]" = topk_attention_default[1];  topk_attention_default = None

        transpose_2: "f32[1, 12, 2, 4]" = getitem_8.transpose(1, 2);  getitem_8 = None
        reshape_2: "f32[1, 12, 8]" = transpose_2.reshape(1, 12, -1);  transpose_2 = None
        linear_2: "f32[1, 12, 8]" = torch._C._nn.linear(reshape_2, l_self_modules_layers_modules_0_modules_o_proj_parameters_weight_, None);  reshape_2 = l_self_modules_layers_modules_0_modules_o_proj_parameters_weight_ = None
        x: "f32[1, 12, 8]" = l_x_ + linear_2;  l_x_ = linear_2 = None

        linear_3: "f32[1, 12, 8]" = torch._C._nn.linear(x, l_self_modules_layers_modules_1_modules_q_proj_parameters_weight_, None);  l_self_modules_layers_modules_1_modules_q_proj_parameters_weight_ = None
        view_2: "f32[1, 12, 2, 4]" = linear_3.view(1, 12, 2, 4);  linear_3 = None
        q_1: "f32[1, 2, 12, 4]" = view_2.transpose(1, 2);  view_2 = None

        linear_4: "f32[1, 12, 8]" = torch._C._nn.linear(x, l_self_modules_layers_modules_1_modules_kv_proj_parameters_weight_, None);  l_self_modules_layers_modules_1_modules_kv_proj_parameters_weight_ = None
        view_3: "f32[1, 12, 2, 4]" = linear_4.view(1, 12, 2, 4);  linear_4 = None
        transpose_4: "f32[1, 2, 12, 4]" = view_3.transpose(1, 2);  view_3 = None
        chunk_1 = transpose_4.chunk(2, dim = 1);  transpose_4 = None
        k_2: "f32[1, 1, 12, 4]" = chunk_1[0]
        v_2: "f32[1, 1, 12, 4]" = chunk_1[1];  chunk_1 = None

        sparse_attention_default: "f32[1, 2, 12, 4]" = torch.ops.hylra.sparse_attention.default(q = q_1, k = k_2, v = v_2, mask = None, block_mask = None, block_idx = getitem_9, is_causal = True, scale = None, block_size = 4, min_seq_len = 0);  q_1 = k_2 = v_2 = getitem_9 = None

        transpose_5: "f32[1, 12, 2, 4]" = sparse_attention_default.transpose(1, 2);  sparse_attention_default = None
        reshape_5: "f32[1, 12, 8]" = transpose_5.reshape(1, 12, -1);  transpose_5 = None
        linear_5: "f32[1, 12, 8]" = torch._C._nn.linear(reshape_5, l_self_modules_layers_modules_1_modules_o_proj_parameters_weight_, None);  reshape_5 = l_self_modules_layers_modules_1_modules_o_proj_parameters_weight_ = None
        x_1: "f32[1, 12, 8]" = x + linear_5;  x = linear_5 = None
        return (x_1,)
""")
        self.assertExpectedInline(attention_counters(), """consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2""")

    def test_own_model_refine_selection(self):
        """selection="refine" on the same model: the producer selects candidates (2) times top_k blocks (of the 4
        there are), and the consumer's refine_blocks of its own q, k picks top_k of them for its sparse_attention."""
        torch.manual_seed(0)
        model = TinyStack()
        gm = rewritten(model, policy=Policy.every(2, 2), top_k=8, block_size=4, local_blocks=1, min_seq_len=0,
                       selection="refine", candidates=2)
        self.assertExpectedInline(attention_ops(gm) + "\n" + attention_counters(), """\
topk_attention#0(q=%0 f32[1, 2, 16, 4], k=%1 f32[1, 1, 16, 4], v=%2 f32[1, 1, 16, 4], mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=4, sink_blocks=1, local_blocks=1)
refine_blocks#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], candidate_idx=topk_attention#0.block_idx, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=1)
sparse_attention#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], v=%5 f32[1, 1, 16, 4], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2""")

    def test_own_model_producer_in_coarser_blocks(self):
        """producer_block_size=8 with block_size=4: the producer selects candidates x top_k tokens in blocks of 8
        (both there are), expand_blocks lists them as blocks of 4, and the consumer refines among those."""
        torch.manual_seed(0)
        model = TinyStack()
        gm = rewritten(model, policy=Policy.every(2, 2), top_k=8, block_size=4, local_blocks=1, min_seq_len=0,
                       selection="refine", candidates=2, producer_block_size=8)
        self.assertExpectedInline(attention_ops(gm) + "\n" + attention_counters(), """\
topk_attention#0(q=%0 f32[1, 2, 16, 4], k=%1 f32[1, 1, 16, 4], v=%2 f32[1, 1, 16, 4], mask=None, block_mask=None, is_causal=True, scale=None, block_size=8, n_select=2, sink_blocks=1, local_blocks=1)
expand_blocks#0(q=%0 f32[1, 2, 16, 4], k=%1 f32[1, 1, 16, 4], block_idx=topk_attention#0.block_idx, block_size=4, factor=2)
refine_blocks#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], candidate_idx=expand_blocks#0, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=1)
sparse_attention#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], v=%5 f32[1, 1, 16, 4], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2""")

    def test_own_model_with_the_defaults(self):
        """A policy and top_k=256 on 2048 tokens, the rest left out: the producer selects 4 x 256 tokens in blocks of
        64 (one sink and two local blocks: 64 and 128 tokens), expand_blocks lists them as blocks of 16, and the
        consumer refines 16 blocks of 16 among them (4 sink and 8 local: the same tokens)."""
        torch.manual_seed(0)
        backend = HylraBackend(policy=Policy.every(2, 2), top_k=256, min_seq_len=0, inductor=False)
        with torch.no_grad():
            torch.compile(TinyStack(), backend=backend, fullgraph=True)(torch.randn(1, 2048, 8))
        (gm,) = backend.graphs
        self.assertExpectedInline(attention_ops(gm) + "\n" + attention_counters(), """\
topk_attention#0(q=%0 f32[1, 2, 2048, 4], k=%1 f32[1, 1, 2048, 4], v=%2 f32[1, 1, 2048, 4], mask=None, block_mask=None, is_causal=True, scale=None, block_size=64, n_select=16, sink_blocks=1, local_blocks=2)
expand_blocks#0(q=%0 f32[1, 2, 2048, 4], k=%1 f32[1, 1, 2048, 4], block_idx=topk_attention#0.block_idx, block_size=16, factor=4)
refine_blocks#0(q=%3 f32[1, 2, 2048, 4], k=%4 f32[1, 1, 2048, 4], candidate_idx=expand_blocks#0, mask=None, block_mask=None, is_causal=True, scale=None, block_size=16, n_select=16, sink_blocks=4, local_blocks=8)
sparse_attention#0(q=%3 f32[1, 2, 2048, 4], k=%4 f32[1, 1, 2048, 4], v=%5 f32[1, 1, 2048, 4], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=16, min_seq_len=0)
consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2""")

    def test_own_model_refine_with_a_prefilter(self):
        """prefilter=1 with candidates=2: the consumer's refine_blocks carries prefilter=1 (its prompt narrows the 4
        candidate blocks to 2 by mean keys before scoring keys); nothing else in the graph changes."""
        torch.manual_seed(0)
        model = TinyStack()
        gm = rewritten(model, policy=Policy.every(2, 2), top_k=8, block_size=4, local_blocks=1, min_seq_len=0,
                       selection="refine", candidates=2, prefilter=1)
        self.assertExpectedInline(attention_ops(gm) + "\n" + attention_counters(), """\
topk_attention#0(q=%0 f32[1, 2, 16, 4], k=%1 f32[1, 1, 16, 4], v=%2 f32[1, 1, 16, 4], mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=4, sink_blocks=1, local_blocks=1)
refine_blocks#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], candidate_idx=topk_attention#0.block_idx, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=1, prefilter=1)
sparse_attention#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], v=%5 f32[1, 1, 16, 4], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2""")

    def test_own_model_head_mapped_reuse(self):
        """A policy whose consumer reads its producer's KV heads swapped (two KV heads): map_heads between the
        producer's selection and the consumer's refine (and, under reuse, its sparse_attention)."""
        policy = Policy(["producer", "consumer"], [None, 0], num_kv_heads=2, heads=[None, [1, 0]])
        views = []
        for selection in ("refine", "reuse"):
            torch._dynamo.reset()
            counters.clear()
            torch.manual_seed(0)
            model = TinyStack(heads=4, kv_heads=2, head_dim=2)
            backend = HylraBackend(**at_toy_sizes(policy=policy, top_k=8, block_size=4, local_blocks=1, min_seq_len=0,
                                   selection=selection, candidates=2 if selection == "refine" else 4, inductor=False))
            with torch.no_grad():
                torch.compile(model, backend=backend, fullgraph=True)(torch.randn(1, 16, 8))
            (gm,) = backend.graphs
            views.append(attention_ops(gm) + "\n" + attention_counters())
        self.assertExpectedInline(views[0], """\
topk_attention#0(q=%0 f32[1, 4, 16, 2], k=%1 f32[1, 2, 16, 2], v=%2 f32[1, 2, 16, 2], mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=4, sink_blocks=1, local_blocks=1)
map_heads#0(block_idx=topk_attention#0.block_idx, heads=[1, 0])
refine_blocks#0(q=%3 f32[1, 4, 16, 2], k=%4 f32[1, 2, 16, 2], candidate_idx=map_heads#0, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=1)
sparse_attention#0(q=%3 f32[1, 4, 16, 2], k=%4 f32[1, 2, 16, 2], v=%5 f32[1, 2, 16, 2], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
consumer_sites=1, head_mapped_consumers=1, producer_sites=1, rewritten=2, sdpa_matched=2""")
        self.assertExpectedInline(views[1], """\
topk_attention#0(q=%0 f32[1, 4, 16, 2], k=%1 f32[1, 2, 16, 2], v=%2 f32[1, 2, 16, 2], mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=1)
map_heads#0(block_idx=topk_attention#0.block_idx, heads=[1, 0])
sparse_attention#0(q=%3 f32[1, 4, 16, 2], k=%4 f32[1, 2, 16, 2], v=%5 f32[1, 2, 16, 2], mask=None, block_mask=None, block_idx=map_heads#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
consumer_sites=1, head_mapped_consumers=1, producer_sites=1, rewritten=2, sdpa_matched=2""")

    def test_own_model_per_layer_top_k(self):
        """Consumers with their own budgets (8 and 12 tokens: 2 and 3 blocks of 4) refine to that many blocks among
        the producer's 4 candidates; the producer's selection is the options' (2 x top_k 8)."""
        policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], top_k=[None, 8, 12])
        torch.manual_seed(0)
        model = TinyStack(3)
        gm = rewritten(model, policy=policy, top_k=8, block_size=4, local_blocks=1, min_seq_len=0,
                       selection="refine", candidates=2)
        self.assertExpectedInline(attention_ops(gm), """\
topk_attention#0(q=%0 f32[1, 2, 16, 4], k=%1 f32[1, 1, 16, 4], v=%2 f32[1, 1, 16, 4], mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=4, sink_blocks=1, local_blocks=1)
refine_blocks#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], candidate_idx=topk_attention#0.block_idx, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=1)
sparse_attention#0(q=%3 f32[1, 2, 16, 4], k=%4 f32[1, 1, 16, 4], v=%5 f32[1, 1, 16, 4], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
refine_blocks#1(q=%6 f32[1, 2, 16, 4], k=%7 f32[1, 1, 16, 4], candidate_idx=topk_attention#0.block_idx, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=3, sink_blocks=1, local_blocks=1)
sparse_attention#1(q=%6 f32[1, 2, 16, 4], k=%7 f32[1, 1, 16, 4], v=%8 f32[1, 1, 16, 4], mask=None, block_mask=None, block_idx=refine_blocks#1, is_causal=True, scale=None, block_size=4, min_seq_len=0)""")

    def test_own_model_top_k_per_kv_head(self):
        """A consumer with a budget per KV head (4 and 12 tokens: 1 and 3 blocks of 4): one refine_blocks selecting
        3 blocks per row, KV head 0 keeping 1 of them (its row then -1 padded); a consumer whose heads' budgets
        are equal gets no head list."""
        policy = Policy(["producer", "consumer", "consumer"], [None, 0, 0], num_kv_heads=2,
                        top_k=[None, [4, 12], [8, 8]])
        torch.manual_seed(0)
        model = TinyStack(3, heads=4, kv_heads=2, head_dim=2)
        gm = rewritten(model, policy=policy, top_k=8, block_size=4, sink_blocks=1, local_blocks=0, min_seq_len=0,
                       selection="refine", candidates=2)
        self.assertExpectedInline(attention_ops(gm), """\
topk_attention#0(q=%0 f32[1, 4, 16, 2], k=%1 f32[1, 2, 16, 2], v=%2 f32[1, 2, 16, 2], mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=4, sink_blocks=1, local_blocks=0)
refine_blocks#0(q=%3 f32[1, 4, 16, 2], k=%4 f32[1, 2, 16, 2], candidate_idx=topk_attention#0.block_idx, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=3, sink_blocks=1, local_blocks=0, head_n_select=[1, 3])
sparse_attention#0(q=%3 f32[1, 4, 16, 2], k=%4 f32[1, 2, 16, 2], v=%5 f32[1, 2, 16, 2], mask=None, block_mask=None, block_idx=refine_blocks#0, is_causal=True, scale=None, block_size=4, min_seq_len=0)
refine_blocks#1(q=%6 f32[1, 4, 16, 2], k=%7 f32[1, 2, 16, 2], candidate_idx=topk_attention#0.block_idx, mask=None, block_mask=None, is_causal=True, scale=None, block_size=4, n_select=2, sink_blocks=1, local_blocks=0)
sparse_attention#1(q=%6 f32[1, 4, 16, 2], k=%7 f32[1, 2, 16, 2], v=%8 f32[1, 2, 16, 2], mask=None, block_mask=None, block_idx=refine_blocks#1, is_causal=True, scale=None, block_size=4, min_seq_len=0)""")

    def test_hf_dense_layer_runs_in_its_own_blocks(self):
        """A layer left dense selects nothing, so it runs in blocks of 64 (its kernels' fastest tile) while the
        producer and consumer select in blocks of 8: one block mask per size, each op reading its own."""
        torch._dynamo.reset()
        counters.clear()
        model = tiny_model("llama", "sdpa", num_layers=3)
        policy = Policy(["full", "producer", "consumer"], [None, None, 1])
        backend = HylraBackend(**at_toy_sizes(policy=policy, top_k=24, block_size=8, min_seq_len=0, inductor=False))
        ids, mask = padded_batch(20)
        prefill_logits(torch.compile(model, backend=backend, fullgraph=True), ids, mask)
        (gm,) = backend.graphs
        self.assertExpectedInline(attention_ops(gm) + "\n" + attention_counters(), """\
shared_mask#0(mask=%0 b8[2, 1, 20, 20])
mask_blocks#0(mask=shared_mask#0, block_size=8)
mask_blocks#1(mask=shared_mask#0, block_size=64)
attention#0(q=%1 f32[2, 4, 20, 8], k=%2 f32[2, 2, 20, 8], v=%3 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#1, is_causal=False, scale=0.3536, block_size=64)
topk_attention#0(q=%4 f32[2, 4, 20, 8], k=%5 f32[2, 2, 20, 8], v=%6 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=3, sink_blocks=1, local_blocks=2)
sparse_attention#0(q=%7 f32[2, 4, 20, 8], k=%8 f32[2, 2, 20, 8], v=%9 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#0, block_idx=topk_attention#0.block_idx, is_causal=False, scale=0.3536, block_size=8, min_seq_len=0)
block_masks=2, consumer_sites=1, dense.policy_full=1, dense_sites=1, producer_sites=1, rewritten=3, sdpa_matched=3, shared_masks=1""")

    def hf_views(self, attn: str, phase: str) -> str:
        """The attention-op view of every family's rewritten graph, checked equal across families."""
        views, counts = {}, {}
        for family in CONFIGS:
            torch._dynamo.reset()
            counters.clear()
            model = tiny_model(family, attn, num_layers=2)
            backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 2), top_k=24, block_size=8, min_seq_len=0, inductor=False))
            compiled = torch.compile(model, backend=backend, fullgraph=True)
            ids, mask = padded_batch(20)
            if phase == "prefill":
                prefill_logits(compiled, ids, mask)
            else:
                decode_step(model, compiled, ids, mask)
            (gm,) = backend.graphs
            views[family], counts[family] = attention_ops(gm), attention_counters()
        first = next(iter(CONFIGS))
        for family in CONFIGS:
            self.assertEqual(views[family], views[first], f"{family} differs from {first}")
            self.assertEqual(counts[family], counts[first], f"{family} differs from {first}")
        return views[first] + "\n" + counts[first]

    def test_hf_sdpa_prefill(self):
        self.assertExpectedInline(self.hf_views("sdpa", "prefill"), """\
shared_mask#0(mask=%0 b8[2, 1, 20, 20])
mask_blocks#0(mask=shared_mask#0, block_size=8)
topk_attention#0(q=%1 f32[2, 4, 20, 8], k=%2 f32[2, 2, 20, 8], v=%3 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=3, sink_blocks=1, local_blocks=2)
sparse_attention#0(q=%4 f32[2, 4, 20, 8], k=%5 f32[2, 2, 20, 8], v=%6 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#0, block_idx=topk_attention#0.block_idx, is_causal=False, scale=0.3536, block_size=8, min_seq_len=0)
block_masks=1, consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2, shared_masks=1""")

    def test_hf_sdpa_decode(self):
        self.assertExpectedInline(self.hf_views("sdpa", "decode"), """\
shared_mask#0(mask=%0 b8[2, 1, 1, 48])
mask_blocks#0(mask=shared_mask#0, block_size=8)
topk_attention#0(q=%1 f32[2, 4, 1, 8], k=%2 f32[2, 2, 48, 8], v=%3 f32[2, 2, 48, 8], mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=6, sink_blocks=1, local_blocks=2)
refine_blocks#0(q=%4 f32[2, 4, 1, 8], k=%5 f32[2, 2, 48, 8], candidate_idx=topk_attention#0.block_idx, mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=3, sink_blocks=1, local_blocks=2)
sparse_attention#0(q=%4 f32[2, 4, 1, 8], k=%5 f32[2, 2, 48, 8], v=%6 f32[2, 2, 48, 8], mask=shared_mask#0, block_mask=mask_blocks#0, block_idx=refine_blocks#0, is_causal=False, scale=0.3536, block_size=8, min_seq_len=0)
block_masks=1, consumer_sites=1, producer_sites=1, rewritten=2, sdpa_matched=2, shared_masks=1""")

    def test_hf_eager_prefill(self):
        self.assertExpectedInline(self.hf_views("eager", "prefill"), """\
shared_mask#0(mask=%0 f32[2, 1, 20, 20])
mask_blocks#0(mask=shared_mask#0, block_size=8)
topk_attention#0(q=%1 f32[2, 4, 20, 8], k=%2 f32[2, 2, 20, 8], v=%3 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=3, sink_blocks=1, local_blocks=2)
sparse_attention#0(q=%4 f32[2, 4, 20, 8], k=%5 f32[2, 2, 20, 8], v=%6 f32[2, 2, 20, 8], mask=shared_mask#0, block_mask=mask_blocks#0, block_idx=topk_attention#0.block_idx, is_causal=False, scale=0.3536, block_size=8, min_seq_len=0)
block_masks=1, consumer_sites=1, eager_matched=2, producer_sites=1, rewritten=2, shared_masks=1""")

    def test_hf_eager_decode(self):
        self.assertExpectedInline(self.hf_views("eager", "decode"), """\
shared_mask#0(mask=%0 f32[2, 1, 1, 48])
mask_blocks#0(mask=shared_mask#0, block_size=8)
topk_attention#0(q=%1 f32[2, 4, 1, 8], k=%2 f32[2, 2, 48, 8], v=%3 f32[2, 2, 48, 8], mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=6, sink_blocks=1, local_blocks=2)
refine_blocks#0(q=%4 f32[2, 4, 1, 8], k=%5 f32[2, 2, 48, 8], candidate_idx=topk_attention#0.block_idx, mask=shared_mask#0, block_mask=mask_blocks#0, is_causal=False, scale=0.3536, block_size=8, n_select=3, sink_blocks=1, local_blocks=2)
sparse_attention#0(q=%4 f32[2, 4, 1, 8], k=%5 f32[2, 2, 48, 8], v=%6 f32[2, 2, 48, 8], mask=shared_mask#0, block_mask=mask_blocks#0, block_idx=refine_blocks#0, is_causal=False, scale=0.3536, block_size=8, min_seq_len=0)
block_masks=1, consumer_sites=1, eager_matched=2, producer_sites=1, rewritten=2, shared_masks=1""")
