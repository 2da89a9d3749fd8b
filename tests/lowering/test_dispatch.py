"""Which inputs the CUDA dispatch gives the Triton kernels (the rest run the reference, with a warning)."""

from __future__ import annotations

import types

import pytest
import torch

from hylra_compile.lowering.dispatch import device_ints, unsupported_reason


def cuda_like(B, H, S, D, dtype=torch.bfloat16):
    """What unsupported_reason reads of a tensor (device, dtype, shape), without a GPU."""
    return types.SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype, shape=(B, H, S, D))


@pytest.mark.parametrize("keys, block_size, reason", [
    (131072 + 32, 16, None),  # a 128K cache at block 16 and the generated tokens: 8194 blocks
    (16384 * 16, 16, None),
    (16384 * 16 + 1, 16, "a selection among 16385 KV blocks of 16 keys, more than 16384 (a larger block_size"),
    (16384 * 16 + 1, 64, None),
    (4096, 8, "block_size 8 (16, 32, 64 or 128 only)"),
])
def test_kv_blocks_and_block_sizes_a_producer_takes(keys, block_size, reason):
    q, k = cuda_like(1, 32, 1, 128), cuda_like(1, 8, keys, 128)
    got = unsupported_reason(q, k, k, None, block_size, selects_from_every_block=True)
    assert got == reason if reason is None else got.startswith(reason)


def test_consumers_take_any_number_of_kv_blocks():
    """Consumers, the refinement and dense layers read listed blocks (or every block in turn): no cap, so blocks
    of 16 reach a 1M-key cache where producers select in blocks of 64."""
    q, k = cuda_like(1, 32, 1, 128), cuda_like(1, 8, 1 << 20, 128)
    assert unsupported_reason(q, k, k, None, 16) is None
    assert unsupported_reason(q, k, k, None, 64, selects_from_every_block=True) is None


def test_other_inputs_name_their_reason():
    k = cuda_like(1, 8, 4096, 128)
    assert unsupported_reason(cuda_like(1, 32, 1, 128, torch.float32), k, k, None, 64) == (
        "dtype torch.float32 (bf16/fp16 only)")
    assert unsupported_reason(cuda_like(1, 32, 1, 96), cuda_like(1, 8, 4096, 96), cuda_like(1, 8, 4096, 96), None,
                              64) == "head_dim 96 / value dim 96 (64 or 128 only)"
    cpu = torch.zeros(1, 32, 1, 128)
    assert unsupported_reason(cpu, cpu, cpu, None, 64) == "device cpu"


def test_per_head_counts_reach_the_device_once():
    """refine_blocks' head_n_select becomes one int32 tensor per (counts, device), equal to the counts, reused by
    every later call (a decode step copies nothing from the host)."""
    first = device_ints([16, 48, 32], torch.device("cpu"))
    assert first.dtype == torch.int32 and first.tolist() == [16, 48, 32]
    assert device_ints((16, 48, 32), torch.device("cpu")) is first
    assert device_ints([16, 48], torch.device("cpu")).tolist() == [16, 48]
