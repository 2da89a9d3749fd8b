"""Golden rewritten graphs of tiny HF models (refresh with EXPECTTEST_ACCEPT=1 after an intended change)."""

from __future__ import annotations

import operator

import torch
from expecttest import TestCase
from torch._dynamo.testing import normalize_gm

from hylra_compile import HylraBackend, Policy
from hylra_compile.passes.find_attention import MATMUL_TARGETS, SDPA_TARGETS, SOFTMAX_TARGETS
from tests.tiny_models import decode_step, padded_batch, prefill_logits, tiny_model

HYLRA_OPS = (torch.ops.hylra.topk_attention.default, torch.ops.hylra.sparse_attention.default)
SHOWN = (*HYLRA_OPS, *SDPA_TARGETS, *SOFTMAX_TARGETS, *MATMUL_TARGETS)


def attention_nodes(gm: torch.fx.GraphModule) -> str:
    """The attention part of a graph: hylra ops and their outputs, remaining SDPA/softmax/matmul, cache writes."""
    lines = []
    for node in gm.graph.nodes:
        shown = node.target in SHOWN or node.target in ("softmax", "expand", "index_copy_")
        shown |= node.target is operator.getitem and getattr(node.args[0], "target", None) in HYLRA_OPS
        if shown:
            lines.append(node.format_node())
    return "\n".join(lines)


class GoldenGraphTest(TestCase):
    def setUp(self):
        torch._dynamo.reset()

    def rewrite(self, family: str, attn: str, phase: str) -> torch.fx.GraphModule:
        model = tiny_model(family, attn, num_layers=2)
        backend = HylraBackend(policy=Policy.every(2, 2), top_k=24, block_size=8, min_seq_len=0, inductor=False)
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        ids, mask = padded_batch(20)
        if phase == "prefill":
            prefill_logits(compiled, ids, mask)
        else:
            decode_step(model, compiled, ids, mask)
        (gm,) = backend.graphs
        self.assertEqual([(s.action, s.source) for s in backend.reports[0].sites], [("producer", None), ("consumer", 0)])
        return gm

    def check(self, family: str, attn: str, phase: str) -> str:
        return attention_nodes(self.rewrite(family, attn, phase))

    def test_llama_sdpa_prefill_full_graph(self):
        gm = self.rewrite("llama", "sdpa", "prefill")
        self.assertExpectedInline(normalize_gm(gm.print_readable(False)), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_args_0_: "i64[2, 20]", L_self_modules_model_modules_embed_tokens_parameters_weight_: "f32[64, 32]", L_kwargs_attention_mask_: "i64[2, 20]", L_self_modules_model_modules_rotary_emb_buffers_inv_freq_: "f32[4]", L_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_: "f32[32]", L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_: "f32[32, 32]", L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_k_proj_parameters_weight_: "f32[16, 32]", L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_v_proj_parameters_weight_: "f32[16, 32]", L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_: "f32[32, 32]", L_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_: "f32[32]", L_self_modules_model_modules_layers_modules_0_modules_mlp_modules_gate_proj_parameters_weight_: "f32[64, 32]", L_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_: "f32[64, 32]", L_self_modules_model_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_: "f32[32, 64]", L_self_modules_model_modules_layers_modules_1_modules_input_layernorm_parameters_weight_: "f32[32]", L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_q_proj_parameters_weight_: "f32[32, 32]", L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_k_proj_parameters_weight_: "f32[16, 32]", L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_v_proj_parameters_weight_: "f32[16, 32]", L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_: "f32[32, 32]", L_self_modules_model_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_: "f32[32]", L_self_modules_model_modules_layers_modules_1_modules_mlp_modules_gate_proj_parameters_weight_: "f32[64, 32]", L_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_: "f32[64, 32]", L_self_modules_model_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_: "f32[32, 64]", L_self_modules_model_modules_norm_parameters_weight_: "f32[32]", L_self_modules_lm_head_parameters_weight_: "f32[64, 32]"):
        l_args_0_ = L_args_0_
        l_self_modules_model_modules_embed_tokens_parameters_weight_ = L_self_modules_model_modules_embed_tokens_parameters_weight_
        l_kwargs_attention_mask_ = L_kwargs_attention_mask_
        l_self_modules_model_modules_rotary_emb_buffers_inv_freq_ = L_self_modules_model_modules_rotary_emb_buffers_inv_freq_
        l_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_k_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_k_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_v_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_v_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_gate_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_mlp_modules_gate_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_input_layernorm_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_input_layernorm_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_q_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_q_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_k_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_k_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_v_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_v_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_gate_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_mlp_modules_gate_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_
        l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_ = L_self_modules_model_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_
        l_self_modules_model_modules_norm_parameters_weight_ = L_self_modules_model_modules_norm_parameters_weight_
        l_self_modules_lm_head_parameters_weight_ = L_self_modules_lm_head_parameters_weight_

        inputs_embeds: "f32[2, 20, 32]" = torch.nn.functional.embedding(l_args_0_, l_self_modules_model_modules_embed_tokens_parameters_weight_, None, None, 2.0, False, False);  l_args_0_ = l_self_modules_model_modules_embed_tokens_parameters_weight_ = None

        arange: "i64[20]" = torch.arange(20, device = device(type='cpu'))
        position_ids: "i64[20]" = arange + 0;  arange = None

        position_ids_1: "i64[1, 20]" = position_ids.unsqueeze(0);  position_ids = None

        attention_mask: "b8[2, 20]" = l_kwargs_attention_mask_.to(device = device(type='cpu'), dtype = torch.bool);  l_kwargs_attention_mask_ = None

        batch_arange: "i64[2]" = torch.arange(2, device = device(type='cpu'))

        head_arange: "i64[1]" = torch.arange(1, device = device(type='cpu'));  head_arange = None

        arange_3: "i64[20]" = torch.arange(20, device = device(type='cpu'))
        q_arange: "i64[20]" = arange_3 + 0;  arange_3 = None

        arange_4: "i64[20]" = torch.arange(20, device = device(type='cpu'))
        kv_arange: "i64[20]" = arange_4 + 0;  arange_4 = None

        batch_indices: "i64[2, 1, 1, 1]" = batch_arange[(slice(None, None, None), None, None, None)];  batch_arange = None

        q_indices: "i64[1, 1, 20, 1]" = q_arange[(None, None, slice(None, None, None), None)];  q_arange = None

        kv_indices: "i64[1, 1, 1, 20]" = kv_arange[(None, None, None, slice(None, None, None))];  kv_arange = None

        result: "b8[]" = q_indices.new_ones((), dtype = torch.bool)

        le: "b8[1, 1, 20, 20]" = kv_indices <= q_indices;  q_indices = None

        to_1: "b8[1, 1, 20, 20]" = le.to(device(type='cpu'));  le = None
        result_1: "b8[1, 1, 20, 20]" = result & to_1;  result = to_1 = None

        getitem_4: "b8[2, 1, 1, 20]" = attention_mask[(batch_indices, kv_indices)];  attention_mask = batch_indices = kv_indices = None

        to_2: "b8[2, 1, 1, 20]" = getitem_4.to(device(type='cpu'));  getitem_4 = None
        result_2: "b8[2, 1, 20, 20]" = result_1 & to_2;  result_1 = to_2 = None

        attention_mask_1: "b8[2, 1, 20, 20]" = result_2.expand(2, -1, 20, 20);  result_2 = None

        getitem_5: "i64[1, 20, 1]" = position_ids_1[(Ellipsis, None)];  position_ids_1 = None
        float_1: "f32[1, 20, 1]" = getitem_5.float();  getitem_5 = None
        to_3: "f32[4]" = l_self_modules_model_modules_rotary_emb_buffers_inv_freq_.to(device = device(type='cpu'), dtype = torch.float32);  l_self_modules_model_modules_rotary_emb_buffers_inv_freq_ = None
        freqs: "f32[1, 20, 4]" = float_1 * to_3;  float_1 = to_3 = None

        emb: "f32[1, 20, 8]" = torch.cat((freqs, freqs), dim = -1);  freqs = None

        cos: "f32[1, 20, 8]" = emb.cos()
        cos_1: "f32[1, 20, 8]" = cos * 1.0;  cos = None

        sin: "f32[1, 20, 8]" = emb.sin();  emb = None
        sin_1: "f32[1, 20, 8]" = sin * 1.0;  sin = None

        cos_2: "f32[1, 20, 8]" = cos_1.to(dtype = torch.float32);  cos_1 = None
        sin_2: "f32[1, 20, 8]" = sin_1.to(dtype = torch.float32);  sin_1 = None

        _log_api_usage_once = torch._C._log_api_usage_once('python.nn_module');  _log_api_usage_once = None

        hidden_states: "f32[2, 20, 32]" = inputs_embeds.to(torch.float32)

        pow_1: "f32[2, 20, 32]" = hidden_states.pow(2)
        variance: "f32[2, 20, 1]" = pow_1.mean(-1, keepdim = True);  pow_1 = None

        add_3: "f32[2, 20, 1]" = variance + 1e-06;  variance = None
        rsqrt: "f32[2, 20, 1]" = torch.rsqrt(add_3);  add_3 = None
        hidden_states_1: "f32[2, 20, 32]" = hidden_states * rsqrt;  hidden_states = rsqrt = None

        to_7: "f32[2, 20, 32]" = hidden_states_1.to(torch.float32);  hidden_states_1 = None
        hidden_states_2: "f32[2, 20, 32]" = l_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_ * to_7;  l_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_ = to_7 = None

        linear: "f32[2, 20, 32]" = torch._C._nn.linear(hidden_states_2, l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_, None);  l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_ = None
        view: "f32[2, 20, 4, 8]" = linear.view((2, 20, -1, 8));  linear = None
        query_states: "f32[2, 4, 20, 8]" = view.transpose(1, 2);  view = None

        linear_1: "f32[2, 20, 16]" = torch._C._nn.linear(hidden_states_2, l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_k_proj_parameters_weight_, None);  l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_k_proj_parameters_weight_ = None
        view_1: "f32[2, 20, 2, 8]" = linear_1.view((2, 20, -1, 8));  linear_1 = None
        key_states: "f32[2, 2, 20, 8]" = view_1.transpose(1, 2);  view_1 = None

        linear_2: "f32[2, 20, 16]" = torch._C._nn.linear(hidden_states_2, l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_v_proj_parameters_weight_, None);  hidden_states_2 = l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_v_proj_parameters_weight_ = None
        view_2: "f32[2, 20, 2, 8]" = linear_2.view((2, 20, -1, 8));  linear_2 = None
        value_states: "f32[2, 2, 20, 8]" = view_2.transpose(1, 2);  view_2 = None

        cos_3: "f32[1, 1, 20, 8]" = cos_2.unsqueeze(1)

        sin_3: "f32[1, 1, 20, 8]" = sin_2.unsqueeze(1)

        mul_5: "f32[2, 4, 20, 8]" = query_states * cos_3

        x1: "f32[2, 4, 20, 4]" = query_states[(Ellipsis, slice(None, 4, None))]

        x2: "f32[2, 4, 20, 4]" = query_states[(Ellipsis, slice(4, None, None))];  query_states = None

        neg: "f32[2, 4, 20, 4]" = -x2;  x2 = None
        cat_1: "f32[2, 4, 20, 8]" = torch.cat((neg, x1), dim = -1);  neg = x1 = None

        mul_6: "f32[2, 4, 20, 8]" = cat_1 * sin_3;  cat_1 = None
        q_embed: "f32[2, 4, 20, 8]" = mul_5 + mul_6;  mul_5 = mul_6 = None

        mul_7: "f32[2, 2, 20, 8]" = key_states * cos_3;  cos_3 = None

        x1_1: "f32[2, 2, 20, 4]" = key_states[(Ellipsis, slice(None, 4, None))]

        x2_1: "f32[2, 2, 20, 4]" = key_states[(Ellipsis, slice(4, None, None))];  key_states = None

        neg_1: "f32[2, 2, 20, 4]" = -x2_1;  x2_1 = None
        cat_2: "f32[2, 2, 20, 8]" = torch.cat((neg_1, x1_1), dim = -1);  neg_1 = x1_1 = None

        mul_8: "f32[2, 2, 20, 8]" = cat_2 * sin_3;  cat_2 = sin_3 = None
        k_embed: "f32[2, 2, 20, 8]" = mul_7 + mul_8;  mul_7 = mul_8 = None

        topk_attention_default = torch.ops.hylra.topk_attention.default(q_embed, k_embed, value_states, attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0);  q_embed = k_embed = value_states = None
        getitem_19: "f32[2, 4, 20, 8]" = topk_attention_default[0]
        getitem_20: "i32[2, 2, 3, 3]" = topk_attention_default[1];  topk_attention_default = None

        attn_output_1: "f32[2, 4, 20, 8]" = getitem_19.reshape(2, -1, 20, 8);  getitem_19 = None

        transpose_3: "f32[2, 20, 4, 8]" = attn_output_1.transpose(1, 2);  attn_output_1 = None
        attn_output_2: "f32[2, 20, 4, 8]" = transpose_3.contiguous();  transpose_3 = None

        reshape_3: "f32[2, 20, 32]" = attn_output_2.reshape(2, 20, -1);  attn_output_2 = None
        attn_output_3: "f32[2, 20, 32]" = reshape_3.contiguous();  reshape_3 = None

        attn_output_4: "f32[2, 20, 32]" = torch._C._nn.linear(attn_output_3, l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_, None);  attn_output_3 = l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_ = None

        hidden_states_5: "f32[2, 20, 32]" = inputs_embeds + attn_output_4;  inputs_embeds = attn_output_4 = None

        hidden_states_6: "f32[2, 20, 32]" = hidden_states_5.to(torch.float32)

        pow_2: "f32[2, 20, 32]" = hidden_states_6.pow(2)
        variance_1: "f32[2, 20, 1]" = pow_2.mean(-1, keepdim = True);  pow_2 = None

        add_7: "f32[2, 20, 1]" = variance_1 + 1e-06;  variance_1 = None
        rsqrt_1: "f32[2, 20, 1]" = torch.rsqrt(add_7);  add_7 = None
        hidden_states_7: "f32[2, 20, 32]" = hidden_states_6 * rsqrt_1;  hidden_states_6 = rsqrt_1 = None

        to_9: "f32[2, 20, 32]" = hidden_states_7.to(torch.float32);  hidden_states_7 = None
        hidden_states_8: "f32[2, 20, 32]" = l_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_ * to_9;  l_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_ = to_9 = None

        linear_4: "f32[2, 20, 64]" = torch._C._nn.linear(hidden_states_8, l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_gate_proj_parameters_weight_, None);  l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_gate_proj_parameters_weight_ = None

        silu: "f32[2, 20, 64]" = torch.nn.functional.silu(linear_4);  linear_4 = None

        linear_5: "f32[2, 20, 64]" = torch._C._nn.linear(hidden_states_8, l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_, None);  hidden_states_8 = l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_ = None
        mul_11: "f32[2, 20, 64]" = silu * linear_5;  silu = linear_5 = None
        down_proj: "f32[2, 20, 32]" = torch._C._nn.linear(mul_11, l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_, None);  mul_11 = l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_ = None

        hidden_states_9: "f32[2, 20, 32]" = hidden_states_5 + down_proj;  hidden_states_5 = down_proj = None

        hidden_states_10: "f32[2, 20, 32]" = hidden_states_9.to(torch.float32)

        pow_3: "f32[2, 20, 32]" = hidden_states_10.pow(2)
        variance_2: "f32[2, 20, 1]" = pow_3.mean(-1, keepdim = True);  pow_3 = None

        add_9: "f32[2, 20, 1]" = variance_2 + 1e-06;  variance_2 = None
        rsqrt_2: "f32[2, 20, 1]" = torch.rsqrt(add_9);  add_9 = None
        hidden_states_11: "f32[2, 20, 32]" = hidden_states_10 * rsqrt_2;  hidden_states_10 = rsqrt_2 = None

        to_11: "f32[2, 20, 32]" = hidden_states_11.to(torch.float32);  hidden_states_11 = None
        hidden_states_12: "f32[2, 20, 32]" = l_self_modules_model_modules_layers_modules_1_modules_input_layernorm_parameters_weight_ * to_11;  l_self_modules_model_modules_layers_modules_1_modules_input_layernorm_parameters_weight_ = to_11 = None

        linear_7: "f32[2, 20, 32]" = torch._C._nn.linear(hidden_states_12, l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_q_proj_parameters_weight_, None);  l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_q_proj_parameters_weight_ = None
        view_3: "f32[2, 20, 4, 8]" = linear_7.view((2, 20, -1, 8));  linear_7 = None
        query_states_1: "f32[2, 4, 20, 8]" = view_3.transpose(1, 2);  view_3 = None

        linear_8: "f32[2, 20, 16]" = torch._C._nn.linear(hidden_states_12, l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_k_proj_parameters_weight_, None);  l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_k_proj_parameters_weight_ = None
        view_4: "f32[2, 20, 2, 8]" = linear_8.view((2, 20, -1, 8));  linear_8 = None
        key_states_1: "f32[2, 2, 20, 8]" = view_4.transpose(1, 2);  view_4 = None

        linear_9: "f32[2, 20, 16]" = torch._C._nn.linear(hidden_states_12, l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_v_proj_parameters_weight_, None);  hidden_states_12 = l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_v_proj_parameters_weight_ = None
        view_5: "f32[2, 20, 2, 8]" = linear_9.view((2, 20, -1, 8));  linear_9 = None
        value_states_1: "f32[2, 2, 20, 8]" = view_5.transpose(1, 2);  view_5 = None

        cos_4: "f32[1, 1, 20, 8]" = cos_2.unsqueeze(1);  cos_2 = None

        sin_4: "f32[1, 1, 20, 8]" = sin_2.unsqueeze(1);  sin_2 = None

        mul_14: "f32[2, 4, 20, 8]" = query_states_1 * cos_4

        x1_2: "f32[2, 4, 20, 4]" = query_states_1[(Ellipsis, slice(None, 4, None))]

        x2_2: "f32[2, 4, 20, 4]" = query_states_1[(Ellipsis, slice(4, None, None))];  query_states_1 = None

        neg_2: "f32[2, 4, 20, 4]" = -x2_2;  x2_2 = None
        cat_3: "f32[2, 4, 20, 8]" = torch.cat((neg_2, x1_2), dim = -1);  neg_2 = x1_2 = None

        mul_15: "f32[2, 4, 20, 8]" = cat_3 * sin_4;  cat_3 = None
        q_embed_1: "f32[2, 4, 20, 8]" = mul_14 + mul_15;  mul_14 = mul_15 = None

        mul_16: "f32[2, 2, 20, 8]" = key_states_1 * cos_4;  cos_4 = None

        x1_3: "f32[2, 2, 20, 4]" = key_states_1[(Ellipsis, slice(None, 4, None))]

        x2_3: "f32[2, 2, 20, 4]" = key_states_1[(Ellipsis, slice(4, None, None))];  key_states_1 = None

        neg_3: "f32[2, 2, 20, 4]" = -x2_3;  x2_3 = None
        cat_4: "f32[2, 2, 20, 8]" = torch.cat((neg_3, x1_3), dim = -1);  neg_3 = x1_3 = None

        mul_17: "f32[2, 2, 20, 8]" = cat_4 * sin_4;  cat_4 = sin_4 = None
        k_embed_1: "f32[2, 2, 20, 8]" = mul_16 + mul_17;  mul_16 = mul_17 = None

        sparse_attention_default: "f32[2, 4, 20, 8]" = torch.ops.hylra.sparse_attention.default(q_embed_1, k_embed_1, value_states_1, getitem_20, attention_mask_1, False, 0.3535533905932738, 8, 0);  q_embed_1 = k_embed_1 = value_states_1 = getitem_20 = attention_mask_1 = None

        attn_output_6: "f32[2, 4, 20, 8]" = sparse_attention_default.reshape(2, -1, 20, 8);  sparse_attention_default = None

        transpose_7: "f32[2, 20, 4, 8]" = attn_output_6.transpose(1, 2);  attn_output_6 = None
        attn_output_7: "f32[2, 20, 4, 8]" = transpose_7.contiguous();  transpose_7 = None

        reshape_7: "f32[2, 20, 32]" = attn_output_7.reshape(2, 20, -1);  attn_output_7 = None
        attn_output_8: "f32[2, 20, 32]" = reshape_7.contiguous();  reshape_7 = None

        attn_output_9: "f32[2, 20, 32]" = torch._C._nn.linear(attn_output_8, l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_, None);  attn_output_8 = l_self_modules_model_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_ = None

        hidden_states_15: "f32[2, 20, 32]" = hidden_states_9 + attn_output_9;  hidden_states_9 = attn_output_9 = None

        hidden_states_16: "f32[2, 20, 32]" = hidden_states_15.to(torch.float32)

        pow_4: "f32[2, 20, 32]" = hidden_states_16.pow(2)
        variance_3: "f32[2, 20, 1]" = pow_4.mean(-1, keepdim = True);  pow_4 = None

        add_13: "f32[2, 20, 1]" = variance_3 + 1e-06;  variance_3 = None
        rsqrt_3: "f32[2, 20, 1]" = torch.rsqrt(add_13);  add_13 = None
        hidden_states_17: "f32[2, 20, 32]" = hidden_states_16 * rsqrt_3;  hidden_states_16 = rsqrt_3 = None

        to_13: "f32[2, 20, 32]" = hidden_states_17.to(torch.float32);  hidden_states_17 = None
        hidden_states_18: "f32[2, 20, 32]" = l_self_modules_model_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_ * to_13;  l_self_modules_model_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_ = to_13 = None

        linear_11: "f32[2, 20, 64]" = torch._C._nn.linear(hidden_states_18, l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_gate_proj_parameters_weight_, None);  l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_gate_proj_parameters_weight_ = None

        silu_1: "f32[2, 20, 64]" = torch.nn.functional.silu(linear_11);  linear_11 = None

        linear_12: "f32[2, 20, 64]" = torch._C._nn.linear(hidden_states_18, l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_, None);  hidden_states_18 = l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_ = None
        mul_20: "f32[2, 20, 64]" = silu_1 * linear_12;  silu_1 = linear_12 = None
        down_proj_1: "f32[2, 20, 32]" = torch._C._nn.linear(mul_20, l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_, None);  mul_20 = l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_ = None

        hidden_states_19: "f32[2, 20, 32]" = hidden_states_15 + down_proj_1;  hidden_states_15 = down_proj_1 = None

        hidden_states_20: "f32[2, 20, 32]" = hidden_states_19.to(torch.float32);  hidden_states_19 = None

        pow_5: "f32[2, 20, 32]" = hidden_states_20.pow(2)
        variance_4: "f32[2, 20, 1]" = pow_5.mean(-1, keepdim = True);  pow_5 = None

        add_15: "f32[2, 20, 1]" = variance_4 + 1e-06;  variance_4 = None
        rsqrt_4: "f32[2, 20, 1]" = torch.rsqrt(add_15);  add_15 = None
        hidden_states_21: "f32[2, 20, 32]" = hidden_states_20 * rsqrt_4;  hidden_states_20 = rsqrt_4 = None

        to_15: "f32[2, 20, 32]" = hidden_states_21.to(torch.float32);  hidden_states_21 = None
        hidden_states_22: "f32[2, 20, 32]" = l_self_modules_model_modules_norm_parameters_weight_ * to_15;  l_self_modules_model_modules_norm_parameters_weight_ = to_15 = None

        hidden_states_23: "f32[2, 20, 32]" = hidden_states_22[(slice(None, None, None), slice(0, None, None), slice(None, None, None))];  hidden_states_22 = None

        logits: "f32[2, 20, 64]" = torch._C._nn.linear(hidden_states_23, l_self_modules_lm_head_parameters_weight_, None);  hidden_states_23 = l_self_modules_lm_head_parameters_weight_ = None
        return (logits,)
""")

    def test_llama_sdpa_prefill(self):
        self.assertExpectedInline(self.check("llama", "sdpa", "prefill"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_1, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_llama_sdpa_decode(self):
        self.assertExpectedInline(self.check("llama", "sdpa", "decode"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_llama_eager_prefill(self):
        self.assertExpectedInline(self.check("llama", "eager", "prefill"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_2, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_llama_eager_decode(self):
        self.assertExpectedInline(self.check("llama", "eager", "decode"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_2), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen2_sdpa_prefill(self):
        self.assertExpectedInline(self.check("qwen2", "sdpa", "prefill"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_1, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen2_sdpa_decode(self):
        self.assertExpectedInline(self.check("qwen2", "sdpa", "decode"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen2_eager_prefill(self):
        self.assertExpectedInline(self.check("qwen2", "eager", "prefill"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_2, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen2_eager_decode(self):
        self.assertExpectedInline(self.check("qwen2", "eager", "decode"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_2), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen3_sdpa_prefill(self):
        self.assertExpectedInline(self.check("qwen3", "sdpa", "prefill"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_1, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen3_sdpa_decode(self):
        self.assertExpectedInline(self.check("qwen3", "sdpa", "decode"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen3_eager_prefill(self):
        self.assertExpectedInline(self.check("qwen3", "eager", "prefill"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_2, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_qwen3_eager_decode(self):
        self.assertExpectedInline(self.check("qwen3", "eager", "decode"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_2), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_mistral_sdpa_prefill(self):
        self.assertExpectedInline(self.check("mistral", "sdpa", "prefill"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_1, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_mistral_sdpa_decode(self):
        self.assertExpectedInline(self.check("mistral", "sdpa", "decode"), """\
%attention_mask_1 : [num_users=2] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %attention_mask_1, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %attention_mask_1, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_mistral_eager_prefill(self):
        self.assertExpectedInline(self.check("mistral", "eager", "prefill"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 20, 20), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %k_embed, %value_states, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %k_embed_1, %value_states_2, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")

    def test_mistral_eager_decode(self):
        self.assertExpectedInline(self.check("mistral", "eager", "decode"), """\
%attention_mask_1 : [num_users=1] = call_method[target=expand](args = (%result_2, 2, -1, 1, 48), kwargs = {})
%index_copy_ : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_keys, 2, %cache_position, %k_embed), kwargs = {})
%index_copy__1 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_0_values, 2, %cache_position, %value_states), kwargs = {})
%topk_attention_default : [num_users=2] = call_function[target=torch.ops.hylra.topk_attention.default](args = (%q_embed, %l_kwargs_past_key_values_layers_0_keys, %l_kwargs_past_key_values_layers_0_values, %mask, False, 0.3535533905932738, 8, 3, 1, 2, 0), kwargs = {})
%getitem_19 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 0), kwargs = {})
%getitem_20 : [num_users=1] = call_function[target=operator.getitem](args = (%topk_attention_default, 1), kwargs = {})
%index_copy__2 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_keys, 2, %cache_position_1, %k_embed_1), kwargs = {})
%index_copy__3 : [num_users=0] = call_method[target=index_copy_](args = (%l_kwargs_past_key_values_layers_1_values, 2, %cache_position_1, %value_states_2), kwargs = {})
%sparse_attention_default : [num_users=1] = call_function[target=torch.ops.hylra.sparse_attention.default](args = (%q_embed_1, %l_kwargs_past_key_values_layers_1_keys, %l_kwargs_past_key_values_layers_1_values, %getitem_20, %mask, False, 0.3535533905932738, 8, 0), kwargs = {})""")
