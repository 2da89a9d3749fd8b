"""HyLRA written straight from its definition as a Hugging Face attention function, sharing no code with hylra."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hylra_compile import Policy


class IndependentHylra:
    """HyLRA written straight from the definition, as a Hugging Face attention function (no hylra code).

    Producers attend densely and pick, per (batch, KV head, query block), the first ``sink`` and last ``local``
    blocks holding an allowed key plus the blocks of largest softmax mass (summed over the head group and the
    block's queries), ties to the lower index. Consumers attend to the allowed keys in their producer's blocks;
    a query with fewer than ``min_seq_len`` allowed keys attends densely. With ``candidates`` (refinement) a
    producer picks ``candidates`` times ``n_select`` blocks, and a consumer picks ``n_select`` of them by the same
    rule from its own softmax over the allowed keys of those blocks, then attends to its own pick. A consumer with a
    head map (``policy.heads[layer]``) takes, for its KV head h, what its producer picked for KV head
    ``heads[h]``; one with its own budget (``policy.top_k[layer]`` tokens, or a list of them: KV head h's
    ``top_k[layer][h]``) picks that many tokens' blocks. With
    ``producer_block`` (a multiple of ``block``, refinement only) producers pick in blocks (and query blocks) of that
    many tokens, as many as hold ``n_select * block`` tokens (rounded up) times ``candidates``, their forced sink and
    local blocks holding at least ``sink`` and ``local`` blocks' tokens; a consumer picks among the blocks of
    ``block`` tokens inside its producer's blocks, for its own query block.
    """

    name = "hylra_test_independent"

    def __init__(self, policy: Policy, n_select: int, sink: int, local: int, min_seq_len: int, block: int = 8,
                 candidates: int | None = None, producer_block: int | None = None):
        self.block, self.candidates, self.producer_block = block, candidates, producer_block or block
        self.policy, self.n_select, self.sink, self.local, self.min_seq_len = policy, n_select, sink, local, min_seq_len
        self.selected: dict[int, dict[tuple[int, int, int], set[int]]] = {}
        AttentionInterface.register(self.name, self)
        AttentionMaskInterface.register(self.name, sdpa_mask)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        B, Hq, Sq, _ = query.shape
        Hkv, Skv = key.shape[1], key.shape[2]
        G = Hq // Hkv
        if attention_mask is None:
            allowed = torch.ones(Sq, Skv, dtype=torch.bool).tril(Skv - Sq).expand(B, 1, Sq, Skv)
        else:
            allowed = attention_mask.expand(B, 1, Sq, Skv)
        keep = allowed.expand(B, Hq, Sq, Skv).clone()
        layer, mode = module.layer_idx, self.policy.modes[module.layer_idx]
        if mode == "consumer":
            chosen = self.selected[self.policy.sources[layer]]
            f = self.producer_block // self.block
            if f > 1:  # the producer's blocks as this layer's: fine query block r reads coarse block r // f
                chosen = {(b, h, r): {c * f + j for c in chosen[b, h, r // f] for j in range(f)}
                          for b, h, r in {(b, h, r) for b, h, rc in chosen for r in range(rc * f, rc * f + f)}}
            heads = self.policy.heads[layer]
            if heads is not None:
                chosen = {(b, h, r): chosen[b, heads[h], r] for b, h, r in chosen}
            if self.candidates is not None:
                budget = self.policy.top_k[layer]
                own = (self.n_select if budget is None else [-(-b // self.block) for b in budget]
                       if isinstance(budget, list) else -(-budget // self.block))
                chosen = self._refine(query, key, allowed, chosen, scaling, G, own)
            for b in range(B):
                for h in range(Hq):
                    for i in range(Sq):
                        if allowed[b, 0, i].sum() < self.min_seq_len:
                            continue
                        blocks = chosen[(b, h // G, i // self.block)]
                        keep[b, h, i] &= torch.tensor([j // self.block in blocks for j in range(Skv)])
        k, v = key.repeat_interleave(G, 1), value.repeat_interleave(G, 1)
        scores = (query.double() @ k.double().transpose(2, 3)) * scaling
        probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
        if mode == "producer":
            pb = self.producer_block
            n = -(-self.n_select * self.block // pb) * (self.candidates or 1)
            self.selected[layer] = self._select(probs, allowed, G, n, pb, -(-self.sink * self.block // pb),
                                                -(-self.local * self.block // pb))
        out = (probs @ v.double()).to(query.dtype)
        return out.transpose(1, 2).contiguous(), None

    def _refine(self, query, key, allowed, offered, scaling, G, n_select):
        """The consumer's own pick among the producer's ``offered`` blocks."""
        B, Hq, Sq, Skv = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
        in_offered = torch.zeros(B, Hq // G, Sq, Skv, dtype=torch.bool)
        for (b, h, r), blocks in offered.items():
            for c in blocks:
                in_offered[b, h, r * self.block : (r + 1) * self.block, c * self.block : (c + 1) * self.block] = True
        own = allowed & in_offered  # [B, Hkv, Sq, Skv]
        scores = (query.double() @ key.repeat_interleave(G, 1).double().transpose(2, 3)) * scaling
        keep = own.repeat_interleave(G, 1)
        probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
        return self._select(probs, own, G, n_select)

    def _select(self, probs, allowed, G, n_select, block=None, sink=None, local=None):
        """Per (b, KV head, query block): forced sink / local blocks among those with an allowed key (``allowed``
        [B, 1 or Hkv, Sq, Skv]), then the blocks of most mass, ``n_select`` in all (or ``n_select[h]`` for KV head
        h); blocks of ``block`` tokens and ``sink`` / ``local`` forced ones (by default the consumers')."""
        B, Hq, Sq, Skv = probs.shape
        block = block or self.block
        sink, local = (self.sink if sink is None else sink), (self.local if local is None else local)
        chosen = {}
        for b in range(B):
            for h in range(Hq // G):
                for r in range(-(-Sq // block)):
                    rows = slice(r * block, (r + 1) * block)
                    candidates, mass = [], {}
                    for c in range(-(-Skv // block)):
                        cols = slice(c * block, (c + 1) * block)
                        if allowed[b, h if allowed.shape[1] > 1 else 0, rows, cols].any():
                            candidates.append(c)
                            mass[c] = probs[b, h * G : (h + 1) * G, rows, cols].sum().item()
                    forced = set(candidates[:sink]) | set(candidates[len(candidates) - local :])
                    rest = sorted((c for c in candidates if c not in forced), key=lambda c: (-mass[c], c))
                    count = n_select[h] if isinstance(n_select, list) else n_select
                    chosen[(b, h, r)] = forced | set(rest[: count - len(forced)])
        return chosen
