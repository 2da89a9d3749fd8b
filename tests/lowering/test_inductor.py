"""The hand-off to Inductor: its graph cache is keyed by the ops' definition."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache

import hylra_compile  # noqa: F401  (registers the ops)
from hylra_compile.lowering import inductor


def _compile_and_run(mask):
    def graph(mask):
        return torch.ops.hylra.mask_blocks(torch.ops.hylra.shared_mask(mask.tril()), block_size=8)

    torch._dynamo.reset()
    return torch.compile(graph, backend=inductor.compile_with_inductor)(mask)


def test_graph_cache_is_keyed_by_the_ops(monkeypatch):
    """The same graph hits the cache, and misses it once the ops' source changes: a cached graph asserts the
    output layout the ops' fake kernels gave when it was compiled."""
    mask = torch.ones(1, 1, 20, 20, dtype=torch.bool)
    with fresh_cache(), torch._inductor.config.patch(fx_graph_cache=True):
        counters.clear()
        _compile_and_run(mask)
        _compile_and_run(mask)
        assert (counters["inductor"]["fxgraph_cache_miss"], counters["inductor"]["fxgraph_cache_hit"]) == (1, 1)
        monkeypatch.setattr(inductor, "ops_cache_key", lambda: "changed ops")
        _compile_and_run(mask)
        assert counters["inductor"]["fxgraph_cache_miss"] == 2
