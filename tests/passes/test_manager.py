"""The pass manager (numbered dumps, structured-trace artifacts, counters) and the ``backend="hylra"`` entry."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch._dynamo.utils import counters
from torch._logging._internal import trace_log

import hylra_compile
from hylra_compile import HylraBackend, HylraOptions, Policy
from hylra_compile.layers import layer_of_path, module_layers
from hylra_compile.routing import routed_attention
from tests.passes.models import COVERING, BrokenStack, TinyStack, X
from tests.tiny_models import at_toy_sizes, padded_batch, prefill_logits, tiny_model


class Artifacts(logging.Handler):
    """Collects the names of the structured-trace artifacts emitted while installed."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        artifact = getattr(record, "metadata", {}).get("artifact")
        if artifact and artifact["name"].startswith("hylra_"):
            self.names.append(artifact["name"])


def test_every_phase_is_dumped_numbered_traced_and_counted(tmp_path):
    backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 2), dump_dir=str(tmp_path), **COVERING))
    artifacts = Artifacts()
    trace_log.addHandler(artifacts)
    try:
        with torch.no_grad():
            torch.compile(TinyStack(), backend=backend)(X)
    finally:
        trace_log.removeHandler(artifacts)
    files = ["00-input.py", "01-find_attention.md", "02-decide.md", "03-block_masks.md", "04-rewrite.py", "report.md"]
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == sorted(files + ["edges.dot"])
    assert artifacts.names == [f"hylra_{folder.name}_{file}" for file in files]
    find = (folder / "01-find_attention.md").read_text()
    assert "| 0 | sdpa | out | 1x2x12x4 | 1x1x12x4 | 1x1x12x4 |  | True |  |  |" in find
    assert "| 1 | consumer | sparse_attention | 0 |  |  |" in (folder / "02-decide.md").read_text()
    assert "hylra" not in (folder / "00-input.py").read_text()
    assert "block_idx = getitem" in (folder / "04-rewrite.py").read_text()
    assert dict(counters["hylra"]) == {
        "sdpa_matched": 2, "producer_sites": 1, "consumer_sites": 1, "rewritten": 2
    }


def test_string_backend_parses_options_once_per_compile_and_keeps_reports(tmp_path, monkeypatch):
    path = tmp_path / "policy.json"
    Policy.every(2, 4).save(path)
    parsed = []
    original = HylraOptions.parse
    monkeypatch.setattr(HylraOptions, "parse", lambda options: parsed.append(options) or original(options))
    compiled = torch.compile(BrokenStack(), backend="hylra", options={"policy": str(path), **COVERING})
    with torch.no_grad():
        compiled(X)  # two graphs (a graph break), one parse
    assert len(parsed) == 1
    reports = hylra_compile.reports()
    assert [[(s.layer, s.action) for s in r.sites] for r in reports] == [
        [(0, "producer"), (1, "consumer")], [(2, "producer"), (3, "consumer")]
    ]
    torch.compile(TinyStack(), backend="hylra", options={"policy": Policy.every(2, 2), **COVERING})(X)
    assert len(parsed) == 2 and len(hylra_compile.reports()) == 3


def test_backend_modes():
    """torch.compile passes a mode on only without options: "reduce-overhead" means CUDA graphs (skipped on the CPU),
    an autotuning mode is refused with the valid ones, and so is CUDA graphs without Inductor; a deep copy (Hugging
    Face's CompileConfig makes one) is the backend itself."""
    with torch.no_grad():
        torch.compile(TinyStack(), backend="hylra", mode="reduce-overhead")(X)
        backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 2), **{**COVERING, "inductor": True}))
        torch.compile(TinyStack(), backend=copy.deepcopy(backend), mode="reduce-overhead")(X)
        assert [s.action for s in backend.reports[0].sites] == ["producer", "consumer"]
        with pytest.raises(Exception, match="replays graphs as CUDA graphs, which needs the hylra option inductor"):
            torch.compile(TinyStack(), backend=HylraBackend(**at_toy_sizes(**COVERING)), mode="reduce-overhead")(X)
        with pytest.raises(Exception, match=r"mode None, 'default' or 'reduce-overhead'.*got 'max-autotune'"):
            torch.compile(TinyStack(), backend="hylra", mode="max-autotune")(X)


def test_backend_and_profiler_number_layers_alike():
    assert [layer_of_path(p) for p in ("model.layers.3.self_attn", "L['self'].model.layers[12].attn", "lm_head")] == [
        3, 12, None]
    model = tiny_model("llama", "sdpa", num_layers=3)
    routed = []
    with routed_attention(model, lambda call: routed.append(call.layer) or torch.nn.functional.
                          scaled_dot_product_attention(call.query, call.key, call.value, attn_mask=call.mask,
                                                       is_causal=call.is_causal, scale=call.scale, enable_gqa=True)):
        prefill_logits(model, *padded_batch(20))
    backend = HylraBackend(**at_toy_sizes(policy=Policy.full(3), **COVERING))
    prefill_logits(torch.compile(model, backend=backend), *padded_batch(20))
    assert routed == [site.layer for site in backend.reports[0].sites] == [0, 1, 2]
    # One attention module shared by two layers: its calls cannot be told apart, and the profiler says so.
    model.model.layers[2].self_attn = model.model.layers[1].self_attn
    assert id(model.model.layers[1].self_attn) not in module_layers(model)
    with pytest.raises(ValueError, match="no layer number in its module path, or is shared by several layers"):
        with routed_attention(model, lambda call: call.query):
            prefill_logits(model, *padded_batch(20))
