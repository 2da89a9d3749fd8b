"""Offline profiler: per-layer top-k block sets of a Hugging Face model on calibration data.

:func:`profile` runs the model with every attention call routed through Hugging Face's ``AttentionInterface`` to
``hylra::topk_attention`` (the producer op, so importance and selection are exactly the producer's) and measures:

* ``similarity[i, j]`` (i < j): |S_i ∩ S_j| / |S_j|, where S_l is the set of KV blocks layer l selects for one
  (sample, KV head h, query block r); averaged over query blocks and samples per KV head, then over KV heads
  (``similarity_min`` keeps the minimum over KV heads instead). Only query blocks with more candidate blocks than
  ``n_select`` count: below that every layer selects every candidate, the overlap is 1 by construction and says
  nothing about reuse. Each forward pass counts: the prefill of every sample and, with ``decode_steps``, each
  greedy decode step after it (one query block of one query, over the cached keys).
* ``sensitivity[l]``: RNMSE of layer l's attention output when it attends only to its own top-k blocks,
  sqrt(Σ‖o_sparse − o_dense‖² / Σ‖o_dense‖²) pooled over samples; ``head_sensitivity[l, h]`` the same over the
  query heads of KV head h (what budgets by KV head are sized by). o_sparse comes from ``hylra::sparse_attention``
  with ``min_seq_len=0``: with the backend's run-time default every short calibration query would attend densely
  and every layer would look insensitive.
* with ``similarity="mass"``, ``similarity[i, j]`` is instead the share of layer j's own top-k attention mass that
  S_i captures: Σ_{c ∈ S_i} m_j(c) / Σ_{c ∈ S_j} m_j(c) (at most 1), where m_j(c) is layer j's softmax mass on block
  c (the producer's importance); it weights the few blocks that carry most of the attention instead of counting
  blocks. With ``candidates`` = c > 1 (what ``selection="refine"`` runs) S_i is layer i's top c·k blocks and the
  numerator the mass of the k of them that hold most of m_j: the share a refining consumer keeps. The producer
  then runs as its reference implementation, which returns the importance (on CUDA that is slower than the
  kernel).
* optionally ``head_overlap[i, j, g, h]``: the same similarity (overlap or mass) between KV head g of layer i and
  KV head h of layer j, whose argmax over g is :attr:`Profile.head_map`.

The model's own forward stays dense (each layer returns the producer's dense output), so every layer is measured
on the dense model's activations. The ops stream over query blocks; no Sq × Skv matrix is materialised.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .files import write_atomic
from .layers import governed_layers
from .lowering import reference
from .models import cache_argument
from .options import HylraOptions
from .routing import AttentionCall, routed_attention

SIMILARITIES = ("overlap", "mass")
PROFILE_FORMAT = "hylra-profile"
PROFILE_VERSION = 1


class Profile:
    """What the optimiser and the plots need: an L × L similarity matrix and L sensitivities, plus metadata.

    ``similarity`` [L, L]: entry (i, j) for i < j is the reuse similarity of consumer j on producer i, in [0, 1];
    entries on and below the diagonal are meaningless and stored as 0. ``sensitivity`` [L]: finite, >= 0.
    ``similarity_min`` [L, L] (optional): per-KV-head minimum of the similarity. ``head_sensitivity`` [L, H]
    (optional): the sensitivity of each KV head's query heads. ``head_overlap`` [L, L, H, H]
    (optional): overlap of producer head g of layer i with consumer head h of layer j. ``metadata``: how the
    profile was made (top_k, block_size, calibration, model, num_kv_heads, ...), JSON-serialisable; its
    ``governed_layers`` are the layers a policy governs at that top_k (:attr:`governed_layers`).

    Build it from arrays (``Profile(similarity=M, sensitivity=s)``) or with :func:`profile`.
    """

    def __init__(
        self,
        similarity: Any,
        sensitivity: Any,
        *,
        similarity_min: Any = None,
        head_overlap: Any = None,
        head_sensitivity: Any = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.similarity = _upper_triangle(np.asarray(similarity, dtype=np.float64), "similarity")
        num_layers = self.similarity.shape[0]
        self.sensitivity = np.asarray(sensitivity, dtype=np.float64)
        if self.sensitivity.shape != (num_layers,):
            raise ValueError(
                f"sensitivity must have shape ({num_layers},) to match similarity, got {self.sensitivity.shape}"
            )
        if not np.all(np.isfinite(self.sensitivity)) or np.any(self.sensitivity < 0):
            raise ValueError("sensitivity values must be finite and >= 0")
        self.similarity_min = None
        if similarity_min is not None:
            self.similarity_min = _upper_triangle(np.asarray(similarity_min, dtype=np.float64), "similarity_min")
            if self.similarity_min.shape != self.similarity.shape:
                raise ValueError(
                    f"similarity_min must have shape {self.similarity.shape}, got {self.similarity_min.shape}"
                )
        self.head_sensitivity = None
        if head_sensitivity is not None:
            self.head_sensitivity = np.asarray(head_sensitivity, dtype=np.float64)
            if self.head_sensitivity.ndim != 2 or self.head_sensitivity.shape[0] != num_layers:
                raise ValueError(f"head_sensitivity must have shape ({num_layers}, H), got "
                                 f"{self.head_sensitivity.shape}")
            if not np.all(np.isfinite(self.head_sensitivity)) or np.any(self.head_sensitivity < 0):
                raise ValueError("head_sensitivity values must be finite and >= 0")
        self.head_overlap = None
        if head_overlap is not None:
            self.head_overlap = np.asarray(head_overlap, dtype=np.float64)
            if self.head_overlap.ndim != 4 or self.head_overlap.shape[:2] != (num_layers, num_layers):
                raise ValueError(
                    f"head_overlap must have shape ({num_layers}, {num_layers}, H, H), got {self.head_overlap.shape}"
                )
        self.metadata = dict(metadata or {})
        governed = self.metadata.get("governed_layers")
        if governed is not None and not (
                isinstance(governed, list) and governed and governed == sorted(set(governed))
                and all(isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer < num_layers
                        for layer in governed)):
            raise ValueError(f"metadata governed_layers must be a non-empty increasing list of layer indices in "
                             f"0..{num_layers - 1}, got {governed!r}")

    @property
    def num_layers(self) -> int:
        return self.similarity.shape[0]

    @property
    def governed_layers(self) -> list[int]:
        """The layers a policy governs: all but the sliding-window layers the backend leaves as written at the
        profile's top_k (a hybrid model's; :func:`hylra_compile.layers.governed_layers`). Every layer when the
        metadata does not say (a profile built from arrays)."""
        governed = self.metadata.get("governed_layers")
        return list(range(self.num_layers)) if governed is None else list(governed)

    @property
    def num_kv_heads(self) -> int | None:
        return self.metadata.get("num_kv_heads")

    @property
    def head_map(self) -> np.ndarray | None:
        """[L, L, H] int: for consumer layer j, KV head h, the KV head of producer layer i with the largest overlap."""
        return None if self.head_overlap is None else self.head_overlap.argmax(axis=2)

    # -- persistence --------------------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"similarity": self.similarity, "sensitivity": self.sensitivity}
        if self.similarity_min is not None:
            arrays["similarity_min"] = self.similarity_min
        if self.head_overlap is not None:
            arrays["head_overlap"] = self.head_overlap
        if self.head_sensitivity is not None:
            arrays["head_sensitivity"] = self.head_sensitivity
        return arrays

    def save(self, path: str | Path) -> None:
        """Write ``.json`` (matrices as nested lists) or ``.safetensors`` (matrices as float64 tensors, metadata in
        the header)."""
        path = profile_path(path)
        header = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "metadata": self.metadata}
        if path.suffix == ".safetensors":
            from safetensors.numpy import save

            write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in self._arrays().items()},
                                    metadata={"hylra": json.dumps(header)}))
        else:
            data = {**header, **{k: v.tolist() for k, v in self._arrays().items()}}
            write_atomic(path, json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        path = profile_path(path)
        if not path.is_file():
            raise ValueError(f"profile file {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(str(path), framework="numpy") as f:
                header = json.loads((f.metadata() or {}).get("hylra", "{}"))
            arrays = load_file(str(path))
        else:
            header = arrays = json.loads(path.read_text())
        if header.get("format") != PROFILE_FORMAT or header.get("version") != PROFILE_VERSION:
            raise ValueError(f"{str(path)!r} is not a hylra profile (version {PROFILE_VERSION})")
        return cls(
            arrays["similarity"],
            arrays["sensitivity"],
            similarity_min=arrays.get("similarity_min"),
            head_overlap=arrays.get("head_overlap"),
            head_sensitivity=arrays.get("head_sensitivity"),
            metadata=header.get("metadata"),
        )

    def __repr__(self) -> str:
        return f"Profile(num_layers={self.num_layers}, num_kv_heads={self.num_kv_heads})"


def profile_path(path: str | Path) -> Path:
    """``path`` as a profile file name (``.json`` or ``.safetensors``), or a clear error."""
    path = Path(path)
    if path.suffix not in (".json", ".safetensors"):
        raise ValueError(f"profile file {str(path)!r}: unknown extension; valid ones are '.json' and '.safetensors'")
    return path


def _upper_triangle(matrix: np.ndarray, name: str) -> np.ndarray:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{name} must be a square L × L matrix with L >= 1, got shape {matrix.shape}")
    upper = np.triu(matrix, k=1)
    above = matrix[np.triu_indices(matrix.shape[0], k=1)]
    if not np.all(np.isfinite(above)) or np.any(above < 0) or np.any(above > 1):
        raise ValueError(f"{name} entries above the diagonal must lie in [0, 1]")
    return upper


# -- calibration ------------------------------------------------------------------------------------------------
def calibration_samples(
    calibration: Iterable[Tensor | np.ndarray | Sequence[int] | str],
    *,
    block_size: int,
    seq_len: int | None = None,
    tokenizer: Any = None,
) -> list[Tensor]:
    """Turn calibration data into 1-d int64 token tensors, one per forward pass.

    Each item is a string (tokenised with ``tokenizer``), a 1-d sequence of token ids, or a 2-d [N, S] array
    (N sequences). A sequence longer than ``seq_len`` is cut into consecutive windows of ``seq_len`` tokens and the
    shorter tail is dropped; a sequence no longer than ``seq_len`` is one sample. Every sample must hold at least
    one block of ``block_size`` tokens.
    """
    if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
        raise ValueError(f"seq_len must be a positive int or None, got {seq_len!r}")
    if isinstance(calibration, (str, Tensor, np.ndarray)):
        calibration = [calibration]
    sequences: list[Tensor] = []
    for item in calibration:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError("text calibration data needs a tokenizer; pass tokenizer= or token ids instead")
            item = tokenizer(item, return_tensors="pt", add_special_tokens=True)["input_ids"][0]
        tokens = torch.as_tensor(np.asarray(item) if not isinstance(item, Tensor) else item)
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
        if tokens.dim() not in (1, 2):
            raise ValueError(f"token ids must be 1-d [S] or 2-d [N, S], got shape {tuple(tokens.shape)}")
        sequences.extend(tokens.reshape(-1, tokens.shape[-1]).to(torch.int64))
    if not sequences:
        raise ValueError("calibration data is empty: give at least one sequence of token ids or one text")
    samples = []
    for number, tokens in enumerate(sequences):
        if tokens.numel() < block_size:
            raise ValueError(
                f"calibration sequence {number} has {tokens.numel()} tokens, fewer than one block of {block_size}"
            )
        if seq_len is None or tokens.numel() <= seq_len:
            samples.append(tokens)
        else:
            samples.extend(tokens[start : start + seq_len] for start in range(0, tokens.numel() - seq_len + 1, seq_len))
    return samples


def full_windows(data, *, seq_len: int, block_size: int, tokenizer: Any = None) -> list[Tensor]:
    """The windows of exactly ``seq_len`` tokens that :func:`calibration_samples` cuts ``data`` into (a shorter
    sequence, or the tail of one, is left out): held-out text of one length for perplexity and KL."""
    samples = calibration_samples(data, block_size=block_size, seq_len=seq_len, tokenizer=tokenizer)
    return [window for window in samples if window.numel() == seq_len]


# -- capture ----------------------------------------------------------------------------------------------------
def _membership(block_idx: Tensor, n_kb: int) -> Tensor:
    """[..., n_kb + 1] bool: block c selected by each row of ``block_idx`` (its -1 padding lands in the cleared
    column n_kb, so it never counts as a hit)."""
    index = torch.where(block_idx < 0, n_kb, block_idx).long()
    member = torch.zeros(*block_idx.shape[:-1], n_kb + 1, dtype=torch.bool, device=block_idx.device)
    member.scatter_(-1, index, True)[..., n_kb] = False
    return member


class _Recorder:
    """Accumulates, over the samples, the similarity and sensitivity sums the attention function reports."""

    def __init__(self, options: HylraOptions, head_map: bool, mass: bool, progress, candidates: int = 1):
        self.block_size, self.sink_blocks, self.local_blocks = options.block_size, options.sink_blocks, options.local_blocks
        self.n_select = options.n_select
        self.candidates = candidates  # a producer's selection is candidates x n_select blocks (refine)
        self.head_map, self.mass = head_map, mass
        self.progress = progress
        # layer -> (block_idx, nontrivial query blocks, block importance or None, its selection as a producer) of
        # the forward pass under way
        self.layers: dict[int, tuple[Tensor, Tensor, Tensor | None, Tensor]] = {}
        self.num_kv_heads: int | None = None
        self.error_sq: dict[int, Tensor] = {}  # layer -> [H] float64, summed over each KV head's query heads
        self.dense_sq: dict[int, Tensor] = {}
        self.overlap_sum: dict[tuple[int, int], Tensor] = {}  # (i, j) -> [H] or [H, H] float64
        self.blocks_counted: dict[int, Tensor] = {}  # j -> [H] number of nontrivial query blocks

    def attention(self, call: AttentionCall) -> Tensor:
        """Stands in for SDPA: the dense output [B, Hq, S, D] from the producer op, plus records."""
        layer, query, key, value, mask, is_causal = call.layer, call.query, call.key, call.value, call.mask, call.is_causal
        scaling = call.scale
        if layer in self.layers:
            raise ValueError(f"layer {layer} ran attention twice in one forward pass; cannot tell its sites apart")
        if self.num_kv_heads is None:
            self.num_kv_heads = key.shape[1]
        elif key.shape[1] != self.num_kv_heads:
            raise ValueError(f"layer {layer} has {key.shape[1]} KV heads, other layers {self.num_kv_heads}; "
                             "similarity between layers needs the same number of KV heads")
        bs = self.block_size
        importance = None
        if self.mass:  # the producer's own definition, whose importance the op does not return
            dense, importance, candidate = reference.attention_with_importance(
                query, key, value, mask, is_causal, scaling, bs)
            block_idx = reference.select_blocks(importance, candidate, self.n_select, self.sink_blocks,
                                                self.local_blocks)
            produced = block_idx if self.candidates == 1 else reference.select_blocks(
                importance, candidate, self.n_select * self.candidates, self.sink_blocks, self.local_blocks)
        else:
            dense, block_idx = torch.ops.hylra.topk_attention(
                query, key, value, mask, is_causal=is_causal, scale=scaling, block_size=bs, n_select=self.n_select,
                sink_blocks=self.sink_blocks, local_blocks=self.local_blocks,
            )
            produced = block_idx
        sparse = torch.ops.hylra.sparse_attention(
            query, key, value, block_idx, mask, is_causal=is_causal, scale=scaling, block_size=bs, min_seq_len=0
        )
        # fp32 differences (a 32K-token fp64 copy of the output would cost GBs), fp64 sums per KV head.
        dense32 = dense.float()

        def per_kv_head(t: Tensor) -> Tensor:
            return t.square().unflatten(1, (key.shape[1], -1)).sum((0, 2, 3, 4), dtype=torch.float64).cpu()

        self.error_sq[layer] = self.error_sq.get(layer, 0) + per_kv_head(sparse.float() - dense32)
        self.dense_sq[layer] = self.dense_sq.get(layer, 0) + per_kv_head(dense32)
        counts = reference.candidate_counts(query, key, mask, is_causal, bs)
        nontrivial = (counts > self.n_select).expand(block_idx.shape[:3])
        self.layers[layer] = (block_idx, nontrivial, importance, produced)
        if self.progress is not None:
            self.progress.update(1)
        return dense

    def finish_forward(self) -> None:
        """Fold the block sets of the forward pass just run into the overlap sums."""
        layers = sorted(self.layers)
        if layers != list(range(len(layers))):
            raise ValueError(f"attention ran for layers {layers}; expected every layer 0..L-1 exactly once")
        # membership[l][b, h, r, c]: layer l as a producer selected KV block c for query block r (_membership).
        n_kb = max(int(self.layers[layer][3].max().item()) for layer in layers) + 1
        membership, index = {}, {}
        for layer in layers:
            block_idx = self.layers[layer][0]
            index[layer] = torch.where(block_idx < 0, n_kb, block_idx).long()
            membership[layer] = _membership(self.layers[layer][3], n_kb)  # as a producer: its candidates
        for j in layers:
            block_idx, nontrivial, importance, _ = self.layers[j]
            size = (block_idx >= 0).sum(-1).clamp(min=1).to(torch.float64)  # |S_j| per (b, h, r)
            if self.mass:
                mass = importance[..., :n_kb].to(torch.float64)
                own_mass = (mass * _membership(block_idx, n_kb)[..., :n_kb]).sum(-1).clamp(min=1e-300)
            weight = nontrivial.to(torch.float64)
            counted = weight.sum((0, 2))
            self.blocks_counted[j] = self.blocks_counted.get(j, 0) + counted
            for i in range(j):
                if self.mass:
                    # Per (b, h, r), or with a head map per (b, g, h, r): producer head g against consumer head h.
                    consumer = (lambda t: t[:, None]) if self.head_map else (lambda t: t)
                    produced = membership[i][:, :, None, ..., :n_kb] if self.head_map else membership[i][..., :n_kb]
                    in_candidates = consumer(mass) * produced
                    kept = min(self.n_select, n_kb)  # a refining consumer keeps the n_select that hold most
                    captured = (in_candidates if self.candidates == 1
                                else in_candidates.topk(kept, dim=-1).values).sum(-1)
                    share = (captured / consumer(own_mass)).clamp(max=1.0)
                    overlap = (share * consumer(weight)).sum((0, -1))  # [H_i, H_j] or [H]
                elif self.head_map:
                    # [B, H_i, H_j, R, n_sel]: every producer head against every consumer head.
                    B, H, R, n_sel = index[j].shape
                    hits = membership[i][:, :, None].expand(B, H, H, R, n_kb + 1).gather(
                        -1, index[j][:, None].expand(B, H, H, R, n_sel)
                    ).sum(-1)
                    overlap = (hits / size[:, None] * weight[:, None]).sum((0, 3))  # [H_i, H_j]
                else:
                    hits = membership[i].gather(-1, index[j]).sum(-1)
                    overlap = (hits / size * weight).sum((0, 2))  # [H]
                self.overlap_sum[(i, j)] = self.overlap_sum.get((i, j), 0) + overlap
        self.layers.clear()

    def gather_tensor_parallel(self, tp_size: int) -> None:
        """Under tensor parallelism each rank saw its own KV heads (rank r: heads [r * H / tp, (r + 1) * H / tp),
        Hugging Face's column sharding): concatenate the per-head sums over the ranks in rank order and add the
        output errors, so every rank holds what one device would have recorded."""
        import torch.distributed as dist

        def heads(t: Tensor) -> Tensor:
            t = torch.as_tensor(t, dtype=torch.float64)
            parts = [torch.empty_like(t) for _ in range(tp_size)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts, dim=-1)

        self.blocks_counted = {j: heads(counted) for j, counted in sorted(self.blocks_counted.items())}
        self.overlap_sum = {pair: heads(total) for pair, total in sorted(self.overlap_sum.items())}
        self.error_sq = {layer: heads(total) for layer, total in sorted(self.error_sq.items())}
        self.dense_sq = {layer: heads(total) for layer, total in sorted(self.dense_sq.items())}
        self.num_kv_heads *= tp_size

    def result(self, metadata: dict[str, Any]) -> Profile:
        num_layers = len(self.dense_sq)
        H = self.num_kv_heads
        counted = torch.stack([torch.as_tensor(self.blocks_counted[j]) for j in range(num_layers)]).cpu()
        starved = [j for j in range(1, num_layers) if (counted[j] == 0).any()]
        if starved:
            raise ValueError(
                f"layer(s) {starved}: no calibration query block had more than n_select={self.n_select} candidate "
                "blocks, so they selected every block and their similarity is undefined; use longer sequences or a "
                "smaller top_k"
            )
        per_head = np.zeros((num_layers, num_layers, H))
        head_overlap = np.zeros((num_layers, num_layers, H, H)) if self.head_map else None
        for (i, j), total in self.overlap_sum.items():
            total = total.cpu().to(torch.float64)
            if self.head_map:
                head_overlap[i, j] = (total / counted[j][None, :]).numpy()
                total = total.diagonal()
            per_head[i, j] = (total / counted[j]).numpy()
        error_sq = torch.stack([self.error_sq[layer] for layer in range(num_layers)]).numpy()
        dense_sq = torch.stack([self.dense_sq[layer] for layer in range(num_layers)]).numpy()

        def rnmse(error: np.ndarray, dense: np.ndarray) -> np.ndarray:
            return np.sqrt(np.divide(error, dense, out=np.zeros_like(error), where=dense > 0))

        return Profile(
            np.clip(per_head.mean(-1), 0.0, 1.0),
            rnmse(error_sq.sum(-1), dense_sq.sum(-1)),
            similarity_min=np.clip(per_head.min(-1), 0.0, 1.0),
            head_overlap=None if head_overlap is None else np.clip(head_overlap, 0.0, 1.0),
            head_sensitivity=rnmse(error_sq, dense_sq),
            metadata={**metadata, "num_layers": num_layers, "num_kv_heads": H},
        )


# -- entry point ------------------------------------------------------------------------------------------------
def profile(
    model: torch.nn.Module,
    calibration: Iterable[Tensor | np.ndarray | Sequence[int] | str],
    *,
    top_k: int,
    block_size: int,
    sink_blocks: int | None = None,
    local_blocks: int | None = None,
    seq_len: int | None = None,
    tokenizer: Any = None,
    head_map: bool = False,
    similarity: str = "overlap",
    candidates: int = 1,
    decode_steps: int = 0,
    description: str | None = None,
    progress: bool = True,
) -> Profile:
    """Profile ``model`` (a transformers ``PreTrainedModel``) on ``calibration``; see the module docstring.

    Each sample (see :func:`calibration_samples` for ``seq_len`` and ``tokenizer``) runs as one prefill forward
    pass of batch 1 under ``torch.no_grad``, on the model's device. ``top_k``, ``block_size``, ``sink_blocks`` and
    ``local_blocks`` mean what the backend options of the same names mean (None: as many blocks as the
    options' default tokens), so profile in the blocks the compiled producers select in (``producer_block_size``).
    ``head_map=True`` also records the cross-head similarity (costs H² gathers per layer pair).
    ``similarity``: ``"overlap"`` (block-set overlap) or ``"mass"`` (captured attention mass), see the module
    docstring. ``candidates``: the multiple of ``top_k`` a producer selects, as the backend option of that name
    under ``selection="refine"`` (the similarity is then what a refining consumer keeps; needs ``"mass"``).
    ``decode_steps``: greedy decode steps run after each prefill (with the model's KV cache), each measured too.
    ``description`` names the calibration data in the profile's metadata. A tqdm bar counts attention calls.
    Every layer is measured; the metadata's ``governed_layers`` leaves out the sliding-window layers whose window is
    no longer than ``top_k`` (the backend leaves them as written), so the optimiser places no producer or consumer
    there.
    """
    from tqdm.auto import tqdm
    from transformers import PreTrainedModel

    # The same validation (and n_select) as the backend's options of these names.
    options = HylraOptions(top_k=top_k, block_size=block_size, sink_blocks=sink_blocks, local_blocks=local_blocks)
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"cannot profile {type(model).__name__}: a model with no attention through transformers' "
                         "AttentionInterface (profile needs a transformers PreTrainedModel)")
    samples = calibration_samples(calibration, block_size=block_size, seq_len=seq_len, tokenizer=tokenizer)
    vocab_size = model.get_input_embeddings().num_embeddings
    for number, tokens in enumerate(samples):
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"calibration sample {number} holds token ids outside the model's vocabulary "
                             f"[0, {vocab_size}): min {int(tokens.min())}, max {int(tokens.max())}")
    config = model.config
    expected_layers = getattr(config, "num_hidden_layers", None)
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; valid ones are {list(SIMILARITIES)}")
    if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    if candidates > 1 and similarity != "mass":
        raise ValueError(f"candidates={candidates} measures what a refining consumer keeps of its producer's "
                         "candidates by its own attention mass; it needs similarity='mass'")
    if not isinstance(decode_steps, int) or isinstance(decode_steps, bool) or decode_steps < 0:
        raise ValueError(f"decode_steps must be an int >= 0, got {decode_steps!r}")
    forward_passes = len(samples) * (1 + decode_steps)
    bar = tqdm(total=forward_passes * expected_layers if expected_layers else None, desc="hylra profile",
               unit="layer", disable=not progress)
    tp_size = getattr(model, "tp_size", None) or 1  # Hugging Face's tensor-parallel degree (tp_plan)
    if tp_size > 1 and head_map:
        raise ValueError("head_map=True compares every pair of heads, which tensor parallelism keeps on different "
                         "ranks; profile the head map on one device")
    recorder = _Recorder(options, head_map, similarity == "mass", bar, candidates)
    device = next(model.parameters()).device
    forward_kwargs = {"use_cache": decode_steps > 0}
    cache_name = cache_argument(model)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        # Only the last position's logits are read (the next decode token); [S, vocab] would dwarf attention.
        forward_kwargs["logits_to_keep"] = 1
    try:
        with routed_attention(model, recorder.attention), torch.no_grad():
            for tokens in samples:
                output = model(input_ids=tokens[None].to(device), **forward_kwargs)
                if not recorder.layers:
                    raise ValueError(f"model {type(model).__name__} ran no attention through transformers' "
                                     "AttentionInterface: a model with no attention cannot be profiled")
                recorder.finish_forward()
                for _ in range(decode_steps):
                    next_token = output.logits[:, -1:].argmax(-1)
                    cache = {cache_name: getattr(output, cache_name)}
                    output = model(input_ids=next_token, **cache, **forward_kwargs)
                    recorder.finish_forward()
    finally:
        bar.close()
    metadata = {
        "top_k": top_k,
        "block_size": block_size,
        "n_select": options.n_select,
        "sink_blocks": options.sink_blocks,
        "local_blocks": options.local_blocks,
        "num_samples": len(samples),
        "num_tokens": int(sum(t.numel() for t in samples)),
        "seq_len": seq_len,
        "decode_steps": decode_steps,
        "similarity": similarity,
        "candidates": candidates,
        "calibration": description or f"{len(samples)} sequence(s)",
        "model": getattr(config, "_name_or_path", "") or getattr(config, "model_type", type(model).__name__),
        "governed_layers": governed_layers(config, len(recorder.dense_sq), top_k),
    }
    if tp_size > 1:
        recorder.gather_tensor_parallel(tp_size)
    return recorder.result(metadata)
