"""hylra_compile quickstart: compile a small random-weight Llama with the hylra backend on CPU.

Layers 0 and 2 run full attention and emit their top-k KV blocks; layers 1 and 3 attend only to those blocks.
Prints the rewrite report, compares the logits with the dense model, and writes debug dumps to ./hylra-dumps.
"""

import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import hylra_compile

NUM_LAYERS, SEQ_LEN = 4, 512
config = LlamaConfig(
    vocab_size=1000,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=SEQ_LEN,
)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()

backend = hylra_compile.HylraBackend(
    policy=hylra_compile.Policy.every(2, num_layers=NUM_LAYERS),
    top_k=256,  # tokens kept per query block: 16 blocks of 16 of the 32 (the default block size), 4 at the
    # start and 8 at the end always among them; consumers choose among their producer's blocks of 64
    min_seq_len=64,  # queries seeing fewer keys than this stay dense
    dump_dir="hylra-dumps",
)
compiled = torch.compile(model, backend=backend)

input_ids = torch.randint(0, config.vocab_size, (1, SEQ_LEN))
start = time.perf_counter()
with torch.no_grad():
    logits = compiled(input_ids, use_cache=False).logits
    dense = model(input_ids, use_cache=False).logits
print(f"compiled and ran in {time.perf_counter() - start:.1f} s\n")
print(backend.reports[0])
rel = ((logits - dense).norm() / dense.norm()).item()
agree = (logits.argmax(-1) == dense.argmax(-1)).float().mean().item()
# Random weights spread attention evenly, the worst case for top-k; trained models concentrate it.
print(f"\nlogits vs dense: relative error {rel:.3e}, top-1 agreement {agree:.1%}")
print(f"dumps: hylra-dumps/{backend.reports[0].name}/ (00-input.py ... 04-rewrite.py, report.md, edges.dot)")
