"""hylra_compile on a real trained model, end to end on the CPU (about 3 minutes): SmolLM2-135M-Instruct.

1. Profile the model on a 4K-token window of English prose that ships with Python (``builtin:prose``).
2. Choose a policy with the optimiser: 6 of 30 layers dense, the 3 most sensitive among them; draw it.
3. ``torch.compile(model, backend="hylra", options=...)``: the attention sites become producer / consumer ops.
4. Ask a question hidden in a 4K-token prompt (multi-key retrieval with distractors), answered dense (the plain
   model) and through the compiled model; print both answers, the report and KL(dense ‖ hylra) over the prompt.

Writes ``hylra-demo/``: the policy (JSON + figures) and the rewritten graphs (``dumps/``).
"""

import time
from pathlib import Path

import torch

import hylra_compile
from hylra_compile.corpora import builtin_text
from hylra_compile.evaluate import greedy_answer, kl_divergence
from hylra_compile.models import load_model
from hylra_compile.plots import plot_policy, plot_similarity
from hylra_compile.profiler import calibration_samples
from hylra_compile.tasks import make_prompt, score

OUT = Path("hylra-demo")
# Half of the 4K context per query block: on this model a quarter already costs several percent of perplexity
# (README, "Where it stands"). The other options are the backend's defaults: consumers refine blocks of 16 among
# the candidates their producers select in blocks of 64.
MIN_SEQ_LEN, PROMPT_TOKENS, DENSE_LAYERS, KEEP_SENSITIVE = 1024, 4096, 6, 3
OPTIONS = hylra_compile.HylraOptions(top_k=2048, min_seq_len=MIN_SEQ_LEN)

start = time.perf_counter()
model, tokenizer = load_model("smollm2")
L = model.config.num_hidden_layers
print(f"SmolLM2-135M-Instruct: {L} layers, loaded in {time.perf_counter() - start:.0f} s")

# 1-2. Profile on prose (the question below is another kind of text) and optimise.
calibration = calibration_samples([builtin_text("builtin:prose")], block_size=64, seq_len=PROMPT_TOKENS,
                                  tokenizer=tokenizer)[:1]
# Profiled in the blocks the producers select in (the policy decides which layers produce).
producers = OPTIONS.producer_settings()
profile = hylra_compile.profile(model, calibration, top_k=OPTIONS.top_k, block_size=producers["block_size"],
                                sink_blocks=producers["sink_blocks"], local_blocks=producers["local_blocks"],
                                description=f"builtin:prose, {PROMPT_TOKENS} tokens")
policy = hylra_compile.optimize(profile, budget=DENSE_LAYERS, keep_sensitive=KEEP_SENSITIVE)
OUT.mkdir(exist_ok=True)
policy.save(OUT / "policy.json")
plot_policy(policy, OUT / "policy.png")
plot_similarity(profile.similarity, policy, OUT / "similarity.png")
full = sum(mode != "consumer" for mode in policy.modes)
sensitive = sorted(range(L), key=lambda layer: -profile.sensitivity[layer])[:KEEP_SENSITIVE]
print(f"policy: {policy} (P producer, c consumer, F dense: {full} of {L} full-attention layers; most sensitive "
      f"layers {sorted(sensitive)})")

# 3. Compile. inductor=False: on the CPU the ops run their reference code either way, and Inductor's C++ compile
# of a 30-layer graph would take most of the demo's time.
backend = hylra_compile.HylraBackend(policy=policy, top_k=OPTIONS.top_k, min_seq_len=MIN_SEQ_LEN, inductor=False,
                                     dump_dir=str(OUT / "dumps"))
compiled = torch.compile(model, backend=backend)

# 4. The question, dense and compiled.
prompt = make_prompt("multikey", tokenizer, PROMPT_TOKENS, depth=0.3, seed=7)
question = prompt.text[prompt.text.rindex("What is"):].split("?")[0] + "?"
print(f"\nprompt: {PROMPT_TOKENS} tokens of filler with 4 magic numbers; question: {question!r}")
scored = PROMPT_TOKENS - MIN_SEQ_LEN  # positions where consumers attend sparsely
with torch.no_grad():
    tick = time.perf_counter()
    dense_answer, dense_logits = greedy_answer(model, tokenizer, prompt.text, 32, prompt_logits=scored)
    dense_time, tick = time.perf_counter() - tick, time.perf_counter()
    hylra_answer, hylra_logits = greedy_answer(compiled, tokenizer, prompt.text, 32, prompt_logits=scored)
    hylra_time = time.perf_counter() - tick
kl = kl_divergence(torch.log_softmax(dense_logits.float(), -1), torch.log_softmax(hylra_logits.float(), -1))
agree = (dense_logits.argmax(-1) == hylra_logits.argmax(-1)).float().mean()

# Dynamo compiles the prompt's prefill, the first decode step, and once the cache length changes a decode graph with
# a dynamic length: three graphs, each rewritten the same way.
print(f"\n{len(backend.reports)} graphs (the prompt's prefill, the first decode step, the later decode steps with a "
      f"dynamic cache length); the prefill's report, then the others' totals:\n{backend.reports[0]}")
print(*(str(report).splitlines()[0] for report in backend.reports[1:]), sep="\n", end="\n\n")
print(f"expected answer: {prompt.answer} (distractors {', '.join(prompt.distractors)})")
print(f"dense : {dense_answer!r} -> {'correct' if score(prompt.answer, dense_answer) else 'wrong'} ({dense_time:.0f} s)")
print(f"hylra : {hylra_answer!r} -> {'correct' if score(prompt.answer, hylra_answer) else 'wrong'} "
      f"({hylra_time:.0f} s, compiles included)")
print(f"over the prompt's last {scored} positions: KL(dense ‖ hylra) {kl.mean():.4f} nats/token (max {kl.max():.3f}), "
      f"next-token argmax agrees at {agree:.1%}")
print(f"\nwrote {OUT}/policy.json, policy.png, similarity.png and {OUT}/dumps/ "
      f"({time.perf_counter() - start:.0f} s in all)")
print("accuracy over many prompts and texts: hylra eval --model smollm2 (README, 'Measuring accuracy')")
