"""Tensor parallel on the CPU: two gloo processes load a tiny Llama with Hugging Face's ``tp_plan="auto"`` and
compile it with the same ``torch.compile(model, backend=HylraBackend(**at_toy_sizes(...)))`` line as on one device."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from hylra_compile import HylraBackend, Policy, profile
from tests.numerics import rel_err
from tests.tiny_models import at_toy_sizes, tiny_model

WORLD = 2
OPTIONS = dict(top_k=24, block_size=8, min_seq_len=0, inductor=False)  # 3 of 5 blocks: consumers are sparse


def token_ids():
    return torch.arange(40)[None] * 7 % 64


def compiled_logits(model, policy_path):
    backend = HylraBackend(**at_toy_sizes(policy=str(policy_path), **OPTIONS))
    with torch.no_grad():
        logits = torch.compile(model, backend=backend)(token_ids(), use_cache=False).logits
    (gm,) = backend.graphs
    op = next(n for n in gm.graph.nodes if n.target is torch.ops.hylra.topk_attention.default)
    return logits, [(s.layer, s.action) for s in backend.reports[0].sites], op.kwargs["k"].meta["example_value"].shape


def tiny_profile(model):
    return profile(model, [token_ids()[0], token_ids()[0].flip(0)], top_k=24, block_size=8, sink_blocks=1,
                   local_blocks=2, progress=False)


def tp_plan_auto() -> dict:
    """``from_pretrained`` arguments for Hugging Face's automatic tensor-parallel plan (``tp_plan=`` before
    transformers 5.18, ``distributed_config=`` since)."""
    try:
        from transformers import DistributedConfig
    except ImportError:
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto")}


def _rank(rank, port, checkpoint, policy_path, results):
    """One rank: the compiled logits with ``policy_path``, or (policy_path None) the profile's matrices."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa", **tp_plan_auto()).eval()
        if policy_path is None:
            prof = tiny_profile(model)
            results.put((rank, prof.similarity, prof.head_sensitivity, prof.num_kv_heads))
        else:
            logits, sites, k_shape = compiled_logits(model, policy_path)
            results.put((rank, logits.numpy(), sites, tuple(k_shape)))  # plain data: the process exits right after
    except Exception as err:  # noqa: BLE001 (reported to the test process)
        results.put((rank, repr(err), None, None))
    finally:
        dist.destroy_process_group()


def run_tensor_parallel(checkpoint, policy_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, port, checkpoint, policy_path, results))
                 for rank in range(WORLD)]
    for process in processes:
        process.start()
    outputs = dict((rank, rest) for rank, *rest in (results.get(timeout=300) for _ in processes))
    for process in processes:
        process.join(timeout=60)
    return outputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", "sdpa", num_layers=2).save_pretrained(folder)
    return folder


def test_tensor_parallel_equals_one_device(checkpoint, tmp_path):
    """Each rank rewrites its own heads (1 of the 2 KV heads: the indices never cross ranks), with a policy saved
    for the whole model, and gives the single-device logits."""
    policy_path = tmp_path / "policy.json"
    Policy.every(2, 2, num_kv_heads=2).save(policy_path)
    single = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    want, sites, k_shape = compiled_logits(single, policy_path)
    assert sites == [(0, "producer"), (1, "consumer")] and k_shape[1] == 2
    for rank, (logits, rank_sites, rank_k_shape) in run_tensor_parallel(checkpoint, policy_path).items():
        assert not isinstance(logits, str), f"rank {rank}: {logits}"
        assert rank_sites == sites and rank_k_shape[1] == 1
        assert rel_err(torch.from_numpy(logits), want) < 1e-5


def test_profile_under_tensor_parallel_equals_one_device(checkpoint):
    """Each rank profiles its own heads; the per-head sums are gathered, so every rank returns the one-device
    profile."""
    single = tiny_profile(AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa").eval())
    for rank, (similarity, head_sensitivity, kv_heads) in run_tensor_parallel(checkpoint, None).items():
        assert not isinstance(similarity, str), f"rank {rank}: {similarity}"
        assert kv_heads == single.num_kv_heads == 2
        assert abs(similarity - single.similarity).max() < 1e-6
        assert abs(head_sensitivity - single.head_sensitivity).max() < 1e-6  # each head where one device has it


def test_tp_size_that_does_not_split_the_policy_heads_is_an_error(checkpoint, tmp_path):
    policy_path = tmp_path / "policy.json"
    Policy.every(2, 2, num_kv_heads=3).save(policy_path)
    for rank, (error, _, _) in run_tensor_parallel(checkpoint, policy_path).items():
        assert "3 KV heads do not split evenly over 2 tensor-parallel ranks" in error, f"rank {rank}: {error}"
