"""Per-layer attention policy: which layers run full attention, which produce top-k indices, which reuse them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from .files import write_atomic

MODES = ("full", "producer", "consumer")
FORMAT = "hylra-policy"
VERSION = 1


class Policy:
    """One mode per attention layer, in layer order.

    ``full``: dense attention, emits nothing. ``producer``: dense attention that also emits its top-k KV-block
    indices. ``consumer``: sparse attention over the indices of ``sources[layer]``, an earlier producer.
    ``heads`` (optional, per layer): a consumer's head map, for each of its KV heads the KV head of its producer
    whose selection it reads (Kascade's head-mapped reuse; :func:`hylra_compile.optimize` takes it from a profile
    with ``head_map=True``); None pairs equal heads. ``top_k`` (optional, per layer): a consumer's own budget in
    tokens, where it chooses its own blocks (``selection="refine"`` among its producer's candidates, or
    ``"oracle"``), or a list of budgets, one per KV head (``selection="refine"`` only); None takes the backend's
    ``top_k`` (:func:`hylra_compile.optimizer.allocate_top_k` sizes them by need, per layer or per KV head).
    ``num_kv_heads`` (optional) and the number of layers identify the model the policy was made for;
    ``provenance`` records how it was made (the optimiser's parameters, the profile's matrices).
    """

    def __init__(
        self,
        modes: Sequence[str],
        sources: Sequence[int | None],
        *,
        num_kv_heads: int | None = None,
        provenance: dict[str, Any] | None = None,
        heads: Sequence[Sequence[int] | None] | None = None,
        top_k: Sequence[int | Sequence[int] | None] | None = None,
    ):
        self.modes = list(modes)
        self.sources = list(sources)
        self.heads = list(heads) if heads is not None else [None] * len(self.modes)
        self.top_k = ([list(k) if isinstance(k, (list, tuple)) else k for k in top_k] if top_k is not None
                      else [None] * len(self.modes))
        self.num_kv_heads = num_kv_heads
        self.provenance = dict(provenance or {})
        self._validate()

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def full(cls, num_layers: int, *, num_kv_heads: int | None = None) -> "Policy":
        """Every layer dense."""
        _check_num_layers(num_layers)
        return cls(["full"] * num_layers, [None] * num_layers, num_kv_heads=num_kv_heads)

    @classmethod
    def every(cls, n: int, num_layers: int, *, layers: Iterable[int] | None = None,
              num_kv_heads: int | None = None) -> "Policy":
        """Jump-n over ``layers`` (default: every layer): every n-th of them, from the first, produces; every other
        listed layer consumes the nearest earlier producer among them; a layer not listed is full. On a hybrid model
        list its global layers: a sliding-window layer whose window is no longer than ``top_k`` is left as written
        whatever its mode, and a global layer may only reuse a global producer."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"Policy.every needs n >= 1, got {n!r}")
        _check_num_layers(num_layers)
        governed = range(num_layers) if layers is None else _governed_layers(layers, num_layers)
        modes = ["full"] * num_layers
        for position, layer in enumerate(governed):
            modes[layer] = "producer" if position % n == 0 else "consumer"
        return cls.from_modes(modes, num_kv_heads=num_kv_heads)

    @classmethod
    def from_modes(
        cls,
        modes: Sequence[str],
        sources: Sequence[int | None] | None = None,
        *,
        num_kv_heads: int | None = None,
        provenance: dict[str, Any] | None = None,
        heads: Sequence[Sequence[int] | None] | None = None,
        top_k: Sequence[int | None] | None = None,
    ) -> "Policy":
        """Build from a list of modes; a consumer's source defaults to the nearest earlier producer."""
        modes = list(modes)
        for layer, mode in enumerate(modes):
            if mode not in MODES:
                raise ValueError(f"layer {layer}: unknown mode {mode!r}; valid modes are {list(MODES)}")
        if sources is None:
            sources, last_producer = [], None
            for layer, mode in enumerate(modes):
                if mode == "producer":
                    last_producer = layer
                if mode == "consumer" and last_producer is None:
                    raise ValueError(f"layer {layer} is a consumer but no earlier layer is a producer")
                sources.append(last_producer if mode == "consumer" else None)
        return cls(modes, sources, num_kv_heads=num_kv_heads, provenance=provenance, heads=heads, top_k=top_k)

    # -- persistence --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "layers": [{"mode": m, "source": s, **({} if h is None else {"heads": h}),
                        **({} if k is None else {"top_k": k})}
                       for m, s, h, k in zip(self.modes, self.sources, self.heads, self.top_k)],
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Policy":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a hylra policy: expected format {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported hylra policy version {data.get('version')!r}; this build reads {VERSION}")
        missing = [key for key in ("num_layers", "layers") if key not in data]
        missing += [f"layers[{i}].{key}" for i, entry in enumerate(data.get("layers", [])) for key in ("mode", "source")
                    if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(f"policy is missing {', '.join(missing)}")
        layers = data["layers"]
        if len(layers) != data["num_layers"]:
            raise ValueError(f"policy lists {len(layers)} layers but says num_layers={data['num_layers']}")
        return cls(
            [entry["mode"] for entry in layers],
            [entry["source"] for entry in layers],
            num_kv_heads=data.get("num_kv_heads"),
            provenance=data.get("provenance"),
            heads=[entry.get("heads") for entry in layers],
            top_k=[entry.get("top_k") for entry in layers],
        )

    def save(self, path: str | Path) -> None:
        """Write the policy JSON atomically (a failed write leaves the old file, never a truncated one)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"policy file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"policy file {str(path)!r} is not valid JSON: {err}") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"policy file {str(path)!r}: {err}") from None

    @staticmethod
    def is_policy_file(path: str | Path) -> bool:
        """Whether ``path`` holds a hylra policy JSON (an earlier output of ``hylra profile``)."""
        try:
            return json.loads(Path(path).read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    # -- queries ------------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.modes)

    def check_model(self, num_layers: int, num_kv_heads: int | None) -> None:
        """Refuse a model whose number of attention layers or KV heads differs from the policy's."""
        self.check_num_layers(num_layers)
        self.check_graph(list(range(num_layers)), num_kv_heads)

    def check_num_layers(self, num_layers: int) -> None:
        """Refuse a model whose number of attention layers differs from the policy's."""
        if num_layers != self.num_layers:
            raise ValueError(
                f"the policy has {self.num_layers} layers but the model has {num_layers} attention layers; "
                f"a policy must list exactly one mode per attention layer"
            )

    def check_graph(self, layers: list[int], num_kv_heads: int | None, tp_size: int = 1) -> None:
        """Refuse a graph with attention at a layer the policy does not list, or with other KV heads. A graph
        may hold any subset of the layers (graph breaks split a model into several graphs), and under tensor
        parallelism over ``tp_size`` ranks it holds 1 / tp_size of the KV heads."""
        beyond = sorted({layer for layer in layers if layer >= self.num_layers})
        if beyond:
            raise ValueError(
                f"the graph has attention at layer(s) {beyond} but the policy lists {self.num_layers} layers; "
                f"a policy must list exactly one mode per attention layer of the model"
            )
        if self.num_kv_heads is None or num_kv_heads is None or num_kv_heads == self.num_kv_heads:
            return
        if num_kv_heads * tp_size == self.num_kv_heads:
            return  # each of the tp_size tensor-parallel ranks holds its share of the KV heads
        message = f"the policy was made for a model with {self.num_kv_heads} KV heads, this graph has {num_kv_heads}"
        if tp_size > 1:
            message += (f" on each of {tp_size} tensor-parallel ranks" if self.num_kv_heads % tp_size == 0 else
                        f"; {self.num_kv_heads} KV heads do not split evenly over {tp_size} tensor-parallel ranks")
        raise ValueError(message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.to_dict() == other.to_dict()

    @property
    def has_budgets(self) -> bool:
        """Whether some consumer has its own ``top_k``."""
        return any(k is not None for k in self.top_k)

    @property
    def has_head_budgets(self) -> bool:
        """Whether some consumer has a ``top_k`` per KV head."""
        return any(isinstance(k, list) for k in self.top_k)

    def top_k_of(self, layer: int, num_kv_heads: int | None = None, rank: int = 0) -> int | list[int] | None:
        """A consumer's own ``top_k`` on a graph holding ``num_kv_heads`` KV heads, tensor-parallel rank ``rank``:
        one budget for all its heads, the budgets of the heads this rank holds (its contiguous share), or None."""
        budget = self.top_k[layer]
        if not isinstance(budget, list) or num_kv_heads is None:
            return budget
        own = budget[rank * num_kv_heads:(rank + 1) * num_kv_heads]
        if len(own) != num_kv_heads or len(budget) % num_kv_heads:
            raise ValueError(f"layer {layer}: top_k lists {len(budget)} KV heads' budgets, the graph holds "
                             f"{num_kv_heads} KV heads (tensor-parallel rank {rank})")
        return own

    def heads_of(self, layer: int, num_kv_heads: int, rank: int = 0) -> tuple[list[int] | None, str | None]:
        """(map, why not) of a consumer's head map on a graph holding ``num_kv_heads`` KV heads, tensor-parallel
        rank ``rank`` (each rank holds its contiguous share of the heads): the map in the graph's own
        head numbering, None for equal heads (no map, an identity map, or one that crosses ranks: the second value
        then says why)."""
        heads = self.heads[layer]
        if heads is None:
            return None, None
        first = rank * num_kv_heads
        own = heads[first:first + num_kv_heads]
        if any(not first <= h < first + num_kv_heads for h in own):
            return None, (f"its head map {heads} reads KV heads of another tensor-parallel rank (this rank holds "
                          f"heads {first}..{first + num_kv_heads - 1}); equal heads paired")
        local = [h - first for h in own]
        return (None if local == list(range(num_kv_heads)) else local), None

    def __repr__(self) -> str:
        codes = "".join({"full": "F", "producer": "P", "consumer": "c"}[m] for m in self.modes)
        return f"Policy({codes!r}, num_layers={self.num_layers})"

    def _validate(self) -> None:
        if len(self.sources) != len(self.modes):
            raise ValueError(f"policy has {len(self.modes)} modes but {len(self.sources)} sources")
        for layer, (mode, source) in enumerate(zip(self.modes, self.sources)):
            if mode not in MODES:
                raise ValueError(f"layer {layer}: unknown mode {mode!r}; valid modes are {list(MODES)}")
            if mode != "consumer":
                if source is not None:
                    raise ValueError(f"layer {layer} is {mode!r} and cannot have a source (got {source})")
                continue
            if not isinstance(source, int) or isinstance(source, bool):
                raise ValueError(f"layer {layer} is a consumer and needs the index of its producer, got {source!r}")
            if not 0 <= source < layer:
                raise ValueError(f"layer {layer} consumes layer {source}, which does not come before it")
            if self.modes[source] != "producer":
                raise ValueError(
                    f"layer {layer} consumes layer {source}, which is {self.modes[source]!r}, not 'producer'"
                )
        if self.num_kv_heads is not None and (not isinstance(self.num_kv_heads, int) or self.num_kv_heads < 1):
            raise ValueError(f"num_kv_heads must be a positive int or None, got {self.num_kv_heads!r}")
        if len(self.heads) != len(self.modes):
            raise ValueError(f"policy has {len(self.modes)} modes but {len(self.heads)} head maps")
        if len(self.top_k) != len(self.modes):
            raise ValueError(f"policy has {len(self.modes)} modes but {len(self.top_k)} top_k entries")
        for layer, (mode, budget) in enumerate(zip(self.modes, self.top_k)):
            if budget is None:
                continue
            if mode != "consumer":
                raise ValueError(f"layer {layer} is {mode!r} and cannot have its own top_k (only consumers choose "
                                 "their own blocks)")
            per_head = budget if isinstance(budget, list) else [budget]
            if not per_head or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in per_head):
                raise ValueError(f"layer {layer}: top_k must be a positive int, a list of them (one per KV head) or "
                                 f"None, got {budget!r}")
            if isinstance(budget, list) and self.num_kv_heads is not None and len(budget) != self.num_kv_heads:
                raise ValueError(f"layer {layer}: top_k lists {len(budget)} budgets, the model has "
                                 f"{self.num_kv_heads} KV heads")
        for layer, (mode, heads) in enumerate(zip(self.modes, self.heads)):
            if heads is None:
                continue
            if not isinstance(heads, (list, tuple)):
                raise ValueError(f"layer {layer}: a head map is a list of KV heads or None, got {heads!r}")
            self.heads[layer] = heads = list(heads)
            if mode != "consumer":
                raise ValueError(f"layer {layer} is {mode!r} and cannot have a head map (only consumers read one)")
            count = self.num_kv_heads
            if count is None:
                raise ValueError(f"layer {layer} has a head map but the policy does not say num_kv_heads")
            if len(heads) != count or not all(_is_index(h, count) for h in heads):
                raise ValueError(f"layer {layer}: a head map lists one KV head in [0, {count}) for each of the "
                                 f"{count} KV heads, got {heads!r}")


def tensor_parallel_rank() -> tuple[int, int]:
    """(ranks, this rank) the heads may be split over: the default process group's (Hugging Face's ``tp_plan``
    shards the heads over it, each rank its contiguous share); (1, 0) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _is_index(value: Any, count: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count


def _check_num_layers(num_layers: int) -> None:
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")


def _governed_layers(layers: Iterable[int], num_layers: int) -> list[int]:
    """``layers`` in order, refused unless distinct layer indices of a ``num_layers``-layer model."""
    listed = list(layers)
    bad = [layer for layer in listed if not isinstance(layer, int) or isinstance(layer, bool)
           or not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"Policy.every: layers must be indices in 0..{num_layers - 1}, got {bad}")
    if not listed:
        raise ValueError("Policy.every: layers is empty; list the layers the policy governs (None: every layer)")
    repeated = sorted({layer for layer in listed if listed.count(layer) > 1})
    if repeated:
        raise ValueError(f"Policy.every: layers lists {repeated} more than once")
    return sorted(listed)
