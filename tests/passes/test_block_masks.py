"""Phase 3 on Hugging Face graphs: one stored copy and one block mask per materialised mask, the block mask equal to
a brute-force classification of that mask, both feeding every attention op; compiled outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.utils import run_and_get_code
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from hylra_compile import HylraBackend, Policy
from tests.lowering.test_ops import brute_force_blocks
from tests.numerics import rel_err
from tests.tiny_models import at_toy_sizes, padded_batch, prefill_logits, tiny_config, tiny_model


class MaskBlocksCalls(TorchDispatchMode):
    """Records (mask, block mask) of every hylra::mask_blocks call while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.hylra.mask_blocks.default:
            self.calls.append(((kwargs or {}).get("mask", args[0] if args else None), out))
        return out


def sliding_mistral():
    config = tiny_config("mistral")
    config.sliding_window = 10
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("model_kind", ["llama_padded", "llama_unpadded", "mistral_sliding"])
def test_block_mask_of_hf_masks_is_the_brute_force_one(model_kind):
    model = sliding_mistral() if model_kind == "mistral_sliding" else tiny_model("llama", "sdpa", num_layers=2)
    ids, mask = padded_batch(20, pads=(0, 5) if model_kind != "llama_unpadded" else (0, 0))
    # top_k covers every block, and "full" layers run the dense op: outputs must equal eager SDPA's.
    backend = HylraBackend(**at_toy_sizes(policy=Policy.from_modes(["producer", "consumer"]), top_k=24, block_size=4,
                           local_blocks=1, min_seq_len=0, inductor=False))
    recorded = MaskBlocksCalls()

    def recording(gm, example_inputs):  # runs the rewritten graph with the recorder on
        run = backend(gm, example_inputs)

        def recorded_run(*args):
            with recorded:
                return run(*args)

        return recorded_run

    got = prefill_logits(torch.compile(model, backend=recording, fullgraph=True), ids, mask)
    want = prefill_logits(model, ids, mask)
    valid = mask.bool()  # padding positions differ by definition (zeros vs HF's uniform spread)
    assert rel_err(got[valid], want[valid]) < 1e-5
    (gm,) = backend.graphs
    assert gm.code.count("hylra.mask_blocks.default") == 1
    (hf_mask, block_mask), = recorded.calls
    assert hf_mask.shape == (2, 1, 20, 20)
    assert torch.equal(block_mask, brute_force_blocks(hf_mask, 4))
    first, full_first, full_end, end = block_mask[1].unbind(-1)  # the row with 5 padding tokens (when padded)
    assert bool((end <= torch.arange(1, 6)).all())  # nothing above the diagonal (padding rows: nothing at all)
    assert bool((full_end > full_first).any())  # some blocks run with no mask reads
    assert bool((first > 0).any()) == (model_kind != "llama_unpadded")  # padding / the window cut the start


@pytest.mark.slow
def test_inductor_stores_the_mask_once():
    """Hugging Face's causal mask is an ``expand`` of an expression; Inductor computed it into one buffer per op
    that took it (33 at once in a 32-layer model, 16 GiB each at 128K tokens). Through ``hylra::shared_mask`` it
    computes one, which the op copies once for all four layers here."""
    model = tiny_model("llama", "sdpa", num_layers=4)
    backend = HylraBackend(**at_toy_sizes(policy=Policy.every(2, 4), top_k=32, block_size=8, min_seq_len=0))
    ids = torch.randint(0, 64, (1, 64))
    with torch.no_grad():
        (logits,), code = run_and_get_code(lambda: (torch.compile(model, backend=backend)(ids, use_cache=False).logits,))
    assert "\n".join(code).count("empty_strided_cpu((1, 1, 64, 64)") == 1
    assert backend.reports[0].counts() == {"producer": 2, "consumer": 2, "dense": 0}
    assert rel_err(logits, prefill_logits(model, ids, torch.ones_like(ids))) < 0.5  # sparse, but the same model
