"""Small attention models the pass tests own (their graphs do not change with transformers releases), and a
helper that captures the Dynamo graph of a function."""

from __future__ import annotations

import torch
import torch.nn.functional as F

X = torch.randn(1, 12, 8, generator=torch.Generator().manual_seed(0))  # a TinyStack input: 3 blocks of 4
# top_k covers all 3 blocks of 4: consumers select every block, so outputs equal dense attention.
COVERING = dict(top_k=12, block_size=4, sink_blocks=1, local_blocks=1, producer_block_size=4, min_seq_len=0,
                inductor=False)


class TinyAttention(torch.nn.Module):
    """GQA self-attention written like HF's: projections, repeat_kv (written `x[:, :, None]`) of the KV heads,
    causal SDPA, residual."""

    def __init__(self, dim: int = 8, heads: int = 2, kv_heads: int = 1, head_dim: int = 4):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = torch.nn.Linear(dim, heads * head_dim, bias=False)
        self.kv_proj = torch.nn.Linear(dim, 2 * kv_heads * head_dim, bias=False)
        self.o_proj = torch.nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(x).view(B, S, 2 * self.kv_heads, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        n = self.heads // self.kv_heads
        k = k[:, :, None].expand(B, self.kv_heads, n, S, self.head_dim).reshape(B, self.heads, S, self.head_dim)
        v = v[:, :, None].expand(B, self.kv_heads, n, S, self.head_dim).reshape(B, self.heads, S, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class TinyStack(torch.nn.Module):
    def __init__(self, num_layers: int = 2, **attention):
        super().__init__()
        self.layers = torch.nn.ModuleList(TinyAttention(**attention) for _ in range(num_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class BrokenStack(TinyStack):
    """Four TinyAttention layers with a graph break between layers 1 and 2: Dynamo compiles two graphs, the
    second resuming in this frame, so its layers keep their module paths (``layers[2]``, ``layers[3]``)."""

    def __init__(self):
        super().__init__(num_layers=4)

    def forward(self, x):
        x = self.layers[1](self.layers[0](x))
        torch._dynamo.graph_break()
        return self.layers[3](self.layers[2](x))


class LoopBrokenStack(TinyStack):
    """A graph break inside the layer loop: Dynamo gives up on the loop and compiles a layer's forward as its own
    frame (one graph, run for every layer), whose graph has no layer number in its module paths."""

    def forward(self, x):
        for layer in self.layers:
            torch._dynamo.graph_break()
            x = layer(x)
        return x


def dynamo_graph(fn, *inputs) -> torch.fx.GraphModule:
    """The one graph Dynamo captures from ``fn(*inputs)`` (no grad), before any pass."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(fn, backend=capture, fullgraph=True)(*inputs)
    (gm,) = graphs
    return gm
