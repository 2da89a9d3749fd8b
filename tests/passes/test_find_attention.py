"""Phase 1 on its own: every spelling of attention a traced model can use is found, and whatever is not taken
is reported with its reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hylra_compile import HylraBackend
from hylra_compile.passes import find_attention
from tests.passes.models import dynamo_graph
from tests.tiny_models import at_toy_sizes

B, HQ, HKV, S, D = 1, 4, 2, 16, 8


def qkv(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, HQ, S, D, generator=g), torch.randn(B, HKV, S, D, generator=g), torch.randn(
        B, HKV, S, D, generator=g)


def repeat_kv(x):
    return x[:, :, None, :, :].expand(B, HKV, HQ // HKV, S, D).reshape(B, HQ, S, D)


CAUSAL = torch.full((S, S), float("-inf")).triu(1)  # an additive causal mask, as HF's eager path adds one

SPELLINGS = {
    "operator @, transpose(-1, -2), torch.softmax": lambda q, k, v: torch.softmax(
        (q @ repeat_kv(k).transpose(-1, -2)) * 0.3, dim=-1) @ repeat_kv(v),
    "methods .matmul, .mT, / d, .softmax": lambda q, k, v: ((q.matmul(repeat_kv(k).mT) / 2.0).softmax(-1)).matmul(
        repeat_kv(v)),
    "torch.matmul, permute varargs, F.softmax dtype": lambda q, k, v: torch.matmul(F.softmax(
        torch.matmul(q, repeat_kv(k).permute(0, 1, 3, 2)) * 0.3, dim=-1, dtype=torch.float32), repeat_kv(v)),
    "swapaxes, keyword softmax, .to": lambda q, k, v: torch.matmul(torch.softmax(
        input=torch.matmul(q, repeat_kv(k).swapaxes(2, 3)) * 0.3, dim=-1).to(q.dtype), repeat_kv(v)),
    "transpose by keyword, permute tuple": lambda q, k, v: torch.matmul(torch.softmax(
        torch.matmul(q, repeat_kv(k).transpose(dim0=2, dim1=3)) * 0.3, -1), repeat_kv(v)) + 0 * torch.matmul(
        torch.softmax(torch.matmul(q, repeat_kv(k).permute((0, 1, 3, 2))) * 0.3, -1), repeat_kv(v)),
    "+ causal mask, float32 softmax, .to": lambda q, k, v: torch.matmul(F.softmax(
        torch.matmul(q, repeat_kv(k).transpose(2, 3)) * 0.3 + CAUSAL, dim=-1, dtype=torch.float32).to(q.dtype),
        repeat_kv(v)),
    "sdpa by keyword": lambda q, k, v: F.scaled_dot_product_attention(
        query=q, key=repeat_kv(k), value=repeat_kv(v), is_causal=True, scale=0.3),
    "sdpa enable_gqa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=0.3),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_is_found_on_the_native_kv_heads(spelling):
    fn = SPELLINGS[spelling]
    matches = find_attention(dynamo_graph(fn, *qkv()))
    assert matches, "not found"
    assert all(m.problem is None and m.notes == ("layer number from graph order (no module path)",) for m in matches)
    for match in matches:
        assert (match.k.name, match.v.name) == ("l_k_", "l_v_")  # repeat_kv looked through
        assert match.scale == pytest.approx(0.5 if "/ d" in spelling else 0.3)
        assert match.shape("k") == (B, HKV, S, D)


def test_a_call_whose_queries_see_later_keys_is_bidirectional():
    """No mask and no is_causal: every query sees every key (a bidirectional encoder). A causal mask or is_causal
    makes it causal, and so does a single query (a decode step sees every key it has)."""
    bidirectional = {spelling: {m.bidirectional for m in find_attention(dynamo_graph(fn, *qkv()))}
                     for spelling, fn in SPELLINGS.items()}
    causal = {"+ causal mask, float32 softmax, .to", "sdpa by keyword"}
    assert bidirectional == {spelling: {spelling not in causal} for spelling in SPELLINGS}
    q, k, v = qkv()
    (decode,) = find_attention(dynamo_graph(SPELLINGS["sdpa enable_gqa"], q[:, :, -1:], k, v))
    assert not decode.bidirectional


@pytest.mark.parametrize("spelling", ["+ causal mask, float32 softmax, .to", "sdpa by keyword"])
def test_spellings_rewrite_to_the_same_numbers(spelling):
    """Two stacked calls as producer and consumer with every block selected: the compiled result is dense's."""
    fn = SPELLINGS[spelling]

    def stacked(q, k, v):
        return fn(fn(q, k, v), k, v)

    backend = HylraBackend(**at_toy_sizes(policy=["producer", "consumer"], top_k=S, block_size=4, local_blocks=1,
                                          min_seq_len=0,
                           inductor=False))
    q, k, v = qkv()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(stacked, backend=backend)(q, k, v), stacked(q, k, v))
    assert [s.action for s in backend.reports[0].sites] == ["producer", "consumer"]


def test_a_head_repeat_not_looked_through_is_noted():
    def interleaved(q, k, v):
        return F.scaled_dot_product_attention(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1))

    (match,) = find_attention(dynamo_graph(interleaved, *qkv()))
    assert match.problem is None and match.shape("k") == (B, HQ, S, D)
    assert any("key (repeat_interleave) repeats its heads in a way not looked through" in n for n in match.notes)
    assert any(n.startswith("value (repeat_interleave_1) repeats") for n in match.notes)


def test_what_is_not_taken_says_why():
    q, k, v = qkv()
    bias_q, bias_k = torch.randn(B, HQ, S, D), torch.randn(B, HQ, S, D)

    def learned_bias(q, k, v, bias_q, bias_k):  # a bias that is itself a matmul: cannot tell it from the scores
        scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * 0.3 + torch.matmul(bias_q, bias_k.transpose(2, 3))
        return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))

    (match,) = find_attention(dynamo_graph(learned_bias, q, k, v, bias_q, bias_k))
    assert "cannot tell the scores from the mask" in match.problem

    def batched_3d(q, k, v):
        return torch.bmm(torch.softmax(torch.bmm(q[0], k[0].transpose(1, 2)), -1), v[0])

    (match,) = find_attention(dynamo_graph(batched_3d, q, q, q))
    assert "is not kᵀ" in match.problem

    def sdpa_dropout(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, enable_gqa=True)

    (match,) = find_attention(dynamo_graph(sdpa_dropout, q, k, v))
    assert match.problem == "dropout_p=0.1 > 0 (training-mode attention is left dense)"


def test_matches_are_immutable():
    (match,) = find_attention(dynamo_graph(SPELLINGS["sdpa enable_gqa"], *qkv()))
    with pytest.raises(AttributeError):
        match.layer = 3
