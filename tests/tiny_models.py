"""Tiny random-weight Hugging Face models and a helper to run one prefill or one static-cache decode step."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartModel,
    BertConfig,
    BertModel,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    StaticCache,
    T5Config,
    T5Model,
)

from hylra_compile import HylraOptions
from hylra_compile.models import cache_argument

VOCAB = 64
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
)
CONFIGS = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "mistral": MistralConfig,
}


def tiny_config(family: str = "llama", num_layers: int = 2):
    extra = {"sliding_window": None} if family == "mistral" else {}
    return CONFIGS[family](num_hidden_layers=num_layers, **_COMMON, **extra)


def tiny_model(family: str = "llama", attn: str = "sdpa", num_layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, num_layers), attn_implementation=attn).eval()


def tiny_bert(attn: str = "sdpa", num_layers: int = 2, seed: int = 0):
    """A bidirectional encoder: every query attends every (unpadded) key."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                        num_hidden_layers=num_layers, max_position_embeddings=256)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation(attn)
    return model


def tiny_encoder_decoder(family: str, encoder_layers: int = 2, decoder_layers: int = 2, seed: int = 0):
    """A T5 or BART encoder-decoder: a bidirectional encoder, and decoder blocks of causal self-attention and
    cross-attention (T5 numbers them as sub-layers of each block: ``decoder.block.N.layer.M``)."""
    torch.manual_seed(seed)
    if family == "t5":
        config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=encoder_layers,
                          num_decoder_layers=decoder_layers, decoder_start_token_id=0)
        return T5Model(config).eval()
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=256)
    return BartModel(config).eval()


def padded_batch(seq_len: int, pads: tuple[int, ...] = (0, 5), seed: int = 1):
    """Token ids [len(pads), seq_len] and an attention mask with ``pads[b]`` left-padding tokens in row b."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(pads), seq_len), generator=generator)
    mask = torch.ones(len(pads), seq_len, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return ids, mask


@torch.no_grad()
def prefill_logits(model, ids, mask):
    return model(ids, attention_mask=mask, use_cache=False).logits


@torch.no_grad()
def decode_step(model, compiled, ids, mask, max_cache_len: int = 48):
    """Fill a StaticCache with ``ids`` eagerly, then run one decode token through ``compiled``; returns its logits."""
    cache = {cache_argument(model): StaticCache(config=model.config, max_cache_len=max_cache_len)}
    model(ids, attention_mask=mask, **cache, use_cache=True)
    step_ids = ids[:, -1:]
    step_mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
    position = torch.tensor([ids.shape[1]])
    return compiled(step_ids, attention_mask=step_mask, **cache, cache_position=position).logits


def at_toy_sizes(**options) -> dict:
    """Backend options for the toy models' tens of keys: one sink and two local blocks, producers in the
    consumers' blocks, where ``options`` leave them out (the defaults keep 64 sink and 128 local tokens and
    producers in blocks of 64, more than a toy holds)."""
    block = options.get("block_size", HylraOptions.block_size)
    return {"sink_blocks": 1, "local_blocks": 2, "producer_block_size": block, **options}
