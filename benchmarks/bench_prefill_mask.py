"""What a materialised mask costs the prefill kernels: a static cache's bool mask against no mask.

    python benchmarks/bench_prefill_mask.py --context 32768

Llama-3-8B attention (32 query heads, 8 KV heads, d=128, bf16), block 64, top_k 2048 (32 blocks). A prompt of
``--context`` tokens into a static cache of ``context + 33`` slots, as ``generate()`` prefills one: the mask is
``[1, 1, S, S + 33]`` bool (causal, the unfilled tail masked). "stored mask": as the compiled graph passes it, the
copy ``hylra::shared_mask`` makes (rows padded to 128 bytes, so tiles load 16 bytes at a time) with its block
structure (``reference.mask_blocks``); "mask": Hugging Face's own rows (S + 33 bytes: byte loads), with or without
the block structure; "mask_blocks" is the torch reference, "(Triton)" the op's CUDA kernel; against the same
attention with no mask (``is_causal``, keys cut to the prompt). Consumers run on the producer's selection at the
backend's default ``min_seq_len`` (4096: a query with fewer allowed keys attends all of them). Median ms by
``triton.testing.do_bench``; one row per run appended to ``prefill-mask-<device>.json`` under ``--out``, with
device, date and code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import code_version  # noqa: E402

from hylra_compile.kernels.prefill import prefill_sparse_attention, prefill_topk_attention  # noqa: E402
from hylra_compile.lowering.reference import mask_blocks, shared_mask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--min-seq-len", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    S, bs, device = args.context, 64, "cuda"
    L = S + 33
    torch.manual_seed(0)
    q = torch.randn(1, 32, S, 128, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, L, 128, device=device, dtype=torch.bfloat16) for _ in range(2))
    mask = (torch.arange(L, device=device)[None, :] <= torch.arange(S, device=device)[:, None])[None, None]
    block_mask = mask_blocks(mask, block_size=bs)
    stored = shared_mask(mask)
    prompt_k, prompt_v = k[:, :, :S], v[:, :, :S]
    producer = dict(scale=None, block_size=bs, n_select=32, sink_blocks=1, local_blocks=2)
    consumer = dict(scale=None, block_size=bs, min_seq_len=args.min_seq_len)
    _, selection = prefill_topk_attention(q, k, v, mask, block_mask, is_causal=False, **producer)
    _, causal_selection = prefill_topk_attention(q, prompt_k, prompt_v, None, None, is_causal=True, **producer)
    cases = {
        "shared_mask": lambda: shared_mask(mask),
        "mask_blocks": lambda: mask_blocks(mask, block_size=bs),
        "mask_blocks (Triton), stored mask": lambda: torch.ops.hylra.mask_blocks(stored, block_size=bs),
        "producer, stored mask + block structure": lambda: prefill_topk_attention(q, k, v, stored, block_mask,
                                                                                  is_causal=False, **producer),
        "producer, mask + block structure": lambda: prefill_topk_attention(q, k, v, mask, block_mask,
                                                                           is_causal=False, **producer),
        "producer, no mask (causal)": lambda: prefill_topk_attention(q, prompt_k, prompt_v, None, None,
                                                                     is_causal=True, **producer),
        "consumer, stored mask + block structure": lambda: prefill_sparse_attention(
            q, k, v, selection, stored, block_mask, is_causal=False, **consumer),
        "consumer, mask + block structure": lambda: prefill_sparse_attention(q, k, v, selection, mask, block_mask,
                                                                             is_causal=False, **consumer),
        "consumer, no mask (causal)": lambda: prefill_sparse_attention(q, prompt_k, prompt_v, causal_selection, None,
                                                                       None, is_causal=True, **consumer),
    }
    if S <= 32768:  # ~0.5 s a call at 32K, growing as S^2
        cases["consumer, mask without block structure"] = lambda: prefill_sparse_attention(
            q, k, v, selection, mask, None, is_causal=False, **consumer)
    row = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "code": code_version(), "context": S, "min_seq_len": args.min_seq_len,
           "ms": {}}
    for name, fn in cases.items():
        row["ms"][name] = do_bench(fn, warmup=2, rep=300)
        print(f"{name}: {row['ms'][name]:.2f} ms", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"prefill-mask-{row['device'].replace(' ', '_')}.json"
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
