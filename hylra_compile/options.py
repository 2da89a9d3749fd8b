"""Options of the ``hylra`` backend, parsed into a dataclass (unknown keys raise)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from .policy import Policy

# How a consumer chooses the KV blocks it attends (HylraOptions.selection).
SELECTIONS = ("reuse", "refine", "oracle")
DEFAULT_CANDIDATES = 4
# What the options leave out, in tokens, so that every block_size keeps the same: the sink and local tokens a
# selection always holds, and the block producers select in under refine (consumers refine finer blocks inside
# theirs). Measured on Qwen2.5-Coder-0.5B at 32K, top_k 1/16, 24 prompts per task (benchmarks/results/frontier.md):
# blocks of 16 in producers' blocks of 64 halve KL(dense ‖ policy) against blocks of 64 (0.0092 vs 0.0172), for
# 1.05x the decode time and 1.07x the time to first token at 128K on the 8B-shaped model (H100).
SINK_TOKENS = 64
LOCAL_TOKENS = 128
PRODUCER_BLOCK = 64


def forced_blocks(block_size: int) -> dict[str, int]:
    """``sink_blocks`` and ``local_blocks`` that hold :data:`SINK_TOKENS` and :data:`LOCAL_TOKENS` in blocks of
    ``block_size``: what options left out take."""
    return {"sink_blocks": -(-SINK_TOKENS // block_size), "local_blocks": -(-LOCAL_TOKENS // block_size)}


# The block size of dense layers at any finer block_size: a dense layer emits no selection, and blocks of 16 keys cost
# the dense prefill 1.6x blocks of 64 (benchmarks/results/block-size-32k-*.md, H100; blocks of 32 the producer 1.3x).
DENSE_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class HylraOptions:
    """Everything ``torch.compile(model, backend="hylra", options={...})`` accepts.

    policy: a :class:`Policy`, a path to a policy JSON, or a list of modes; ``None`` runs every site dense.
    top_k: tokens kept per query block by a consumer (rounded up to whole KV blocks). A selection never holds more
        blocks than the keys fill where their number is static; a symbolic one (``dynamic=True``,
        :func:`compile_for_generate`'s prefill) cannot cap it at compile time, and the ops size each selection
        by ``top_k``: keep it within the longest input there.
    block_size: tokens per KV block (and per query block) a consumer selects; 16 by default.
    sink_blocks / local_blocks: blocks always selected at the start / end of the allowed keys; ``None`` (the
        default): :data:`SINK_TOKENS` and :data:`LOCAL_TOKENS` tokens (4 and 8 blocks of 16, 1 and 2 of 64).
    min_seq_len: a query with fewer allowed keys than this attends all of them (decided at run time).
    selection: how a consumer chooses its blocks. ``refine`` (the default): its producer emits ``candidates``
        times as many blocks and the consumer keeps the ``top_k`` of them that hold most of its own attention mass
        (``hylra::refine_blocks``; measured on Qwen2.5-Coder-0.5B at 32K: retrieval kept and KL(dense ‖ policy)
        0.015 where reuse loses retrieval, for 1.06× reuse's decode time). ``reuse``: its producer's blocks (HyLRA,
        the fastest). ``oracle``: the consumer picks its own top
        blocks among all (a dense pass of its own: what top-k at this budget costs without reuse; for measuring).
    candidates: with ``selection="refine"``, the producer's selection is this many times ``top_k``.
    producer_block_size: with ``selection="refine"``, the block size producers select (and emit candidates) in,
        a multiple of ``block_size``; ``None`` (the default): :data:`PRODUCER_BLOCK` where that is a larger
        multiple of ``block_size`` and the selection refines, else ``block_size``. Consumers refine among the blocks of
        ``block_size`` the candidates hold (``hylra::expand_blocks``), so a fine ``block_size`` keeps its accuracy
        while producers, the costliest layers to score, work in coarse blocks. The producers keep the sink and local
        tokens of ``sink_blocks`` and ``local_blocks`` (rounded up to their blocks).
    prefilter: with ``selection="refine"``, a consumer's prompt first narrows its producer's candidates to this
        many times its ``top_k`` by their blocks' mean keys (one vector per block, where scoring keys reads
        ``block_size``), then scores those by their keys; 0 (the default): none. Decode steps score every candidate's
        keys (``hylra::refine_blocks``' ``prefilter``).
    dump_dir: where to write before/after graphs, the report and the edge graph (env ``HYLRA_DUMP_DIR``).
    inductor: hand the rewritten graph to Inductor (``compile_fx``); ``False`` runs it as is.
    cudagraphs: let Inductor replay the compiled graph as CUDA graphs (its ``triton.cudagraphs``, what
        ``mode="reduce-overhead"`` turns on for the inductor backend): a decode step is otherwise bound by the CPU
        cost of launching it. The hylra kernels are CUDA-graph safe. Needs ``inductor=True``.
    """

    policy: Policy | None = None
    top_k: int = 2048
    block_size: int = 16
    sink_blocks: int | None = None
    local_blocks: int | None = None
    min_seq_len: int = 4096
    selection: str = "refine"
    candidates: int = DEFAULT_CANDIDATES
    producer_block_size: int | None = None
    prefilter: int = 0
    dump_dir: str | None = None
    inductor: bool = True
    cudagraphs: bool = False

    @property
    def n_select(self) -> int:
        """Blocks selected per query block: ``ceil(top_k / block_size)``."""
        return -(-self.top_k // self.block_size)

    def selection_settings(self, key_blocks: int | None = None, layer: int | None = None,
                           num_kv_heads: int | None = None, rank: int = 0) -> dict[str, Any]:
        """The keyword arguments of a layer's own top-``top_k`` selection: ``hylra::refine_blocks``, and
        ``hylra::topk_attention`` where a consumer selects for itself (``selection="oracle"``). ``key_blocks``:
        the KV blocks there are, when static; ``layer``: a consumer whose own ``top_k`` the policy may set, per KV
        head too (``head_n_select``, for the ``num_kv_heads`` KV heads of tensor-parallel rank ``rank``)."""
        forced = self.sink_blocks + self.local_blocks
        counts = [self._capped(n, key_blocks, forced) for n in self.layer_n_select(layer, num_kv_heads, rank)]
        settings = dict(block_size=self.block_size, n_select=max(counts), sink_blocks=self.sink_blocks,
                        local_blocks=self.local_blocks)
        if len(set(counts)) > 1:
            settings["head_n_select"] = counts
        return settings

    def layer_n_select(self, layer: int | None, num_kv_heads: int | None = None, rank: int = 0) -> list[int]:
        """Blocks a consumer selects for itself: its policy ``top_k`` (:attr:`Policy.top_k`, one count, or one per
        KV head of rank ``rank``'s ``num_kv_heads``) or the option's."""
        budget = (self.policy.top_k_of(layer, num_kv_heads, rank) if self.policy is not None and layer is not None
                  else None)
        if budget is None:
            return [self.n_select]
        return [-(-b // self.block_size) for b in (budget if isinstance(budget, list) else [budget])]

    @property
    def prefilter_settings(self) -> dict[str, int]:
        """``hylra::refine_blocks``' ``prefilter`` keyword, where it is not the op's default (graphs show what
        changes)."""
        return {"prefilter": self.prefilter} if self.prefilter else {}

    @property
    def dense_block(self) -> int:
        """The block size of the layers left dense: they select nothing, so their kernels' fastest tile rather than
        the selection's grain: :data:`DENSE_BLOCK` keys, or ``producer_block_size`` where larger."""
        return max(self.producer_block_size, DENSE_BLOCK)

    @property
    def expansion(self) -> int:
        """Blocks of ``block_size`` per producer block (``hylra::expand_blocks``'s ``factor``; 1: no expansion)."""
        return self.producer_block_size // self.block_size

    def producer_settings(self, key_blocks: int | None = None) -> dict[str, int]:
        """The keyword arguments of a producer's ``hylra::topk_attention``: its selection is ``candidates`` times
        ``top_k`` under ``selection="refine"``, in blocks of ``producer_block_size`` (holding at least the sink and
        local tokens of the options). ``key_blocks``: the KV blocks of ``producer_block_size`` there are, when
        static."""
        multiple = self.candidates if self.selection == "refine" else 1
        size = self.producer_block_size
        sink, local = (-(-blocks * self.block_size // size) for blocks in (self.sink_blocks, self.local_blocks))
        n_select = -(-self.top_k // size) * multiple
        return dict(block_size=size, n_select=self._capped(n_select, key_blocks, sink + local), sink_blocks=sink,
                    local_blocks=local)

    @staticmethod
    def _capped(n_select: int, key_blocks: int | None, forced: int) -> int:
        """``n_select`` cut to the KV blocks there are: more selects nothing more, but the ops size each selection
        by it (top_k=1e12 asked for 13 TB). Never below the ``forced`` sink and local blocks, which the ops
        require."""
        if key_blocks is None:
            return n_select
        return min(n_select, max(key_blocks, forced))

    def consumer_settings(self) -> dict[str, int]:
        """The keyword arguments of ``hylra::sparse_attention`` that these options set."""
        return dict(block_size=self.block_size, min_seq_len=self.min_seq_len)

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None = None) -> "HylraOptions":
        """Options from a mapping: policy paths and mode lists become a :class:`Policy`, ``HYLRA_DUMP_DIR`` fills
        ``dump_dir``; unknown keys raise ``ValueError`` naming the valid ones."""
        merged = dict(options or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(valid))
        if unknown:
            raise ValueError(f"unknown hylra option(s) {unknown}; valid options are {valid}")
        if merged.get("dump_dir") is None and os.environ.get("HYLRA_DUMP_DIR"):
            merged["dump_dir"] = os.environ["HYLRA_DUMP_DIR"]
        if "policy" in merged:
            merged["policy"] = _parse_policy(merged["policy"])
        return cls(**merged)

    def __post_init__(self) -> None:
        for name in ("top_k", "block_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"hylra option {name} must be a positive int, got {value!r}")
        self._fill_left_out()
        for name in ("sink_blocks", "local_blocks", "min_seq_len"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"hylra option {name} must be an int >= 0, got {value!r}")
        if self.n_select < self.sink_blocks + self.local_blocks:
            raise ValueError(
                f"top_k={self.top_k} selects {self.n_select} block(s) of {self.block_size}, fewer than "
                f"sink_blocks + local_blocks = {self.sink_blocks + self.local_blocks}; raise top_k or lower them"
            )
        if self.selection not in SELECTIONS:
            raise ValueError(f"hylra option selection must be one of {list(SELECTIONS)}, got {self.selection!r}")
        if not _is_int(self.candidates) or self.candidates < 1:
            raise ValueError(f"hylra option candidates must be a positive int, got {self.candidates!r}")
        if self.producer_block_size is not None:
            size = self.producer_block_size
            if not _is_int(size) or size < self.block_size or size % self.block_size:
                raise ValueError(f"hylra option producer_block_size must be a multiple of block_size="
                                 f"{self.block_size}, got {size!r}")
            if size != self.block_size and self.selection != "refine":
                raise ValueError(f"hylra option producer_block_size={size} needs selection='refine' (consumers "
                                 f"refine among the blocks of {self.block_size} the producers' blocks hold), got "
                                 f"selection={self.selection!r}")
        if not _is_int(self.prefilter) or self.prefilter < 0:
            raise ValueError(f"hylra option prefilter must be an int >= 0 (0: none), got {self.prefilter!r}")
        if self.prefilter and self.selection != "refine":
            warnings.warn(f"hylra option prefilter={self.prefilter} does nothing with selection={self.selection!r}: "
                          "only selection='refine' reads it", stacklevel=3)
        elif self.prefilter >= self.candidates and not (self.policy is not None and self.policy.has_budgets):
            warnings.warn(f"hylra option prefilter={self.prefilter} narrows nothing: a consumer's candidates "
                          f"(candidates={self.candidates} x top_k) are no more than prefilter x top_k", stacklevel=3)
        if self.candidates != DEFAULT_CANDIDATES and self.selection != "refine":
            warnings.warn(f"hylra option candidates={self.candidates} does nothing with selection="
                          f"{self.selection!r}: only selection='refine' reads it", stacklevel=3)
        for name in ("inductor", "cudagraphs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"hylra option {name} must be True or False, got {getattr(self, name)!r}")
        if self.cudagraphs and not self.inductor:
            raise ValueError("hylra option cudagraphs=True needs inductor=True (CUDA graphs are Inductor's)")
        if self.dump_dir is not None and not isinstance(self.dump_dir, (str, os.PathLike)):
            raise ValueError(f"hylra option dump_dir must be a path or None, got {self.dump_dir!r}")
        if self.policy is not None and not isinstance(self.policy, Policy):
            raise ValueError(f"hylra option policy must be a Policy here, got {type(self.policy).__name__}")
        if self.policy is not None and self.policy.has_budgets:
            self._check_budgets()

    def _fill_left_out(self) -> None:
        """Options left ``None`` take their values in tokens, as blocks of this ``block_size`` (the dataclass is
        frozen: filled once, here)."""
        for name, blocks in forced_blocks(self.block_size).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, blocks)
        if self.producer_block_size is None:
            coarser = self.selection == "refine" and PRODUCER_BLOCK > self.block_size and (
                PRODUCER_BLOCK % self.block_size == 0)
            object.__setattr__(self, "producer_block_size", PRODUCER_BLOCK if coarser else self.block_size)

    def _check_budgets(self) -> None:
        """A policy's per-layer top_k needs consumers that choose their own blocks, each at least the forced sink
        and local blocks and (under refine) at most the candidates its producer emits."""
        if self.selection == "reuse":
            raise ValueError("the policy gives consumers their own top_k, which needs selection='refine' or 'oracle' "
                             "(under 'reuse' a consumer attends its producer's top_k blocks)")
        if self.selection == "oracle" and self.policy.has_head_budgets:
            raise ValueError("the policy gives consumers a top_k per KV head, which needs selection='refine' (the "
                             "oracle's hylra::topk_attention selects one count for every head)")
        # Under refine: the candidates its producer emits, counted in blocks of block_size.
        most = self.producer_settings()["n_select"] * self.expansion if self.selection == "refine" else None
        for layer, budget in enumerate(self.policy.top_k):
            if budget is None:
                continue
            counts = self.layer_n_select(layer)
            if min(counts) < self.sink_blocks + self.local_blocks:
                raise ValueError(f"layer {layer}: top_k={budget} selects {min(counts)} block(s) of {self.block_size}, "
                                 f"fewer than sink_blocks + local_blocks = {self.sink_blocks + self.local_blocks}")
            n_select = max(counts)
            if most is not None and n_select > most:
                raise ValueError(f"layer {layer}: top_k={budget} selects {n_select} blocks, more than the "
                                 f"{most} candidates its producer emits (candidates={self.candidates} x "
                                 f"top_k={self.top_k}): raise candidates or lower it")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_policy(value: Any) -> Policy | None:
    if value is None or isinstance(value, Policy):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Policy.load(Path(value))
    if isinstance(value, (list, tuple)):
        return Policy.from_modes(list(value))
    raise ValueError(
        f"hylra option policy must be a Policy, a path to a policy JSON or a list of modes, got {type(value).__name__}"
    )
