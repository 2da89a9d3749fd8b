"""HyLRA's policy optimiser: an exact dynamic programme over the profile's similarity matrix.

Policy space (the one :func:`optimize` searches exactly, and the brute-force test enumerates): every assignment of
a mode (``full`` / ``producer`` / ``consumer``) to each *governed* layer (:attr:`Profile.governed_layers`: every
layer but a hybrid model's sliding-window layers that the backend leaves as written at the profile's top_k, which
are ``full`` and take no part below) in which

* the first governed layer, every layer whose sensitivity exceeds ``max_rnmse`` and the ``keep_sensitive`` layers
  of largest sensitivity are not consumers (they run dense);
* each consumer j reuses the *nearest earlier governed producer* i (on a model whose every layer is governed, the
  policies :meth:`Policy.from_modes` builds), and in threshold mode needs ``similarity[i, j] >= theta``.

So the layers form contiguous segments, each opened by a producer and followed by its consumers; ``full`` layers
may sit inside a segment without ending it (a sensitive layer then does not cut a run of reuse). A producer that
no layer consumes is written as ``full`` (same cost, same result).

Objective: threshold mode minimises the number of dense (full + producer) governed layers, then maximises the
summed similarity Σ_consumers similarity[source(j), j]; budget mode fixes the number of dense governed layers to
``budget`` and maximises the summed similarity (θ ignored, as Kascade's anchor selection).

The DP runs over the governed layers alone (below, j and L count them). After layers 0..j-1, state (k, a) = (k dense
layers so far, nearest producer a, or none), value = the largest summed similarity reaching it. Layer j either
consumes a (k, a), runs full (k + 1, a) or produces (k + 1, j). (L + 1)² states per layer and O(1) work per
transition: O(L³) time, O(L³) memory for the back-pointers (the work per layer is vectorised over states with
numpy).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .policy import Policy
from .profiler import Profile

# Back-pointer codes of the DP.
_CONSUMER, _FULL, _PRODUCER = 0, 1, 2


def optimize(
    profile: Profile,
    *,
    theta: float | None = None,
    max_rnmse: float | None = None,
    budget: int | None = None,
    keep_sensitive: int = 0,
    map_heads: bool = False,
) -> Policy:
    """The optimal policy in the space of the module docstring.

    ``theta`` in [0, 1]: least similarity a consumer needs to its producer (threshold mode; required unless
    ``budget`` is given). ``max_rnmse``: layers with a larger sensitivity run dense. ``budget``: run exactly that
    many governed layers with full attention (full or producer: the first governed layer and the sensitive ones
    among them) and let every other governed layer consume; ``theta`` is then ignored. The layers the policy does
    not govern (:attr:`Profile.governed_layers`) are ``full`` and not counted in ``budget``. ``keep_sensitive``: the
    governed layers of the k largest sensitivities run dense (a count, where ``max_rnmse`` is a level; on SmolLM2
    keeping the 3 most sensitive layers full held accuracy best). When ``theta`` admits no reuse at all the result
    is every layer full, with a warning naming why each layer could not consume. Ties between equally good policies
    go to the one found first by the DP.
    The policy's provenance records the parameters, the governed layers (``governed_layers``; its
    ``num_dense_layers`` counts those with full attention), the profile's metadata and its matrices, and, when the
    profile has a head map, ``head_map[j]``: for each KV head of consumer j, the best-overlapping KV head of its
    source. ``map_heads=True`` (needs a profile with ``head_map=True``) makes that map the policy's
    (:attr:`Policy.heads`: each consumer KV head reads its best producer head, Kascade's head-mapped reuse) and the
    DP's similarity the mapped one, the mean over consumer heads h of max over producer heads g of
    ``head_overlap[i, j, g, h]``; otherwise equal heads are paired and the map is informative.
    """
    if not isinstance(profile, Profile):
        raise ValueError(f"optimize needs a hylra_compile.Profile, got {type(profile).__name__}")
    num_layers = profile.num_layers
    governed = profile.governed_layers
    if not isinstance(map_heads, bool):
        raise ValueError(f"map_heads must be True or False, got {map_heads!r}")
    if map_heads and profile.head_overlap is None:
        raise ValueError("map_heads=True needs a profile with a head map (profile(..., head_map=True), "
                         "hylra profile --head-map)")
    mapped = profile.head_overlap.max(axis=2).mean(-1) if map_heads else profile.similarity
    # The DP sees the governed layers only, numbered 0..len(governed) - 1; its result is mapped back below.
    similarity = mapped[np.ix_(governed, governed)]
    sensitivity = profile.sensitivity[governed]
    num_governed = len(governed)
    if budget is None:
        if theta is None:
            raise ValueError("optimize needs theta (threshold mode) or budget (budget mode)")
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0.0 <= theta <= 1.0:
            raise ValueError(f"theta must be a number in [0, 1], got {theta!r}")
    elif isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= num_governed:
        raise ValueError(f"budget must be an int in [1, {num_governed}] (dense layers among the "
                         f"{_governed(governed, num_layers)}, layer {governed[0]} included), got {budget!r}")
    if max_rnmse is not None and (isinstance(max_rnmse, bool) or not isinstance(max_rnmse, (int, float))
                                  or math.isnan(max_rnmse) or max_rnmse < 0):
        raise ValueError(f"max_rnmse must be a number >= 0 or None, got {max_rnmse!r}")

    forced = np.zeros(num_governed, dtype=bool)
    forced[0] = True
    if (isinstance(keep_sensitive, bool) or not isinstance(keep_sensitive, int)
            or not 0 <= keep_sensitive <= num_governed):
        raise ValueError(f"keep_sensitive must be an int in [0, {num_governed}] (a count of the "
                         f"{_governed(governed, num_layers)}), got {keep_sensitive!r}")
    if max_rnmse is not None:
        forced |= sensitivity > max_rnmse
    forced[np.argsort(-sensitivity, kind="stable")[:keep_sensitive]] = True
    if budget is not None and forced.sum() > budget:
        raise ValueError(
            f"budget={budget} dense layers is fewer than the {int(forced.sum())} that must run dense "
            f"(layer {governed[0]} and the sensitive layers: {[governed[p] for p in np.flatnonzero(forced)]})"
        )
    may_reuse = np.ones_like(similarity, dtype=bool) if budget is not None else similarity >= theta
    governed_modes, governed_sources, total = _solve(similarity, may_reuse, forced, budget)
    modes, sources = ["full"] * num_layers, [None] * num_layers
    for position, layer in enumerate(governed):
        modes[layer] = governed_modes[position]
        source = governed_sources[position]
        sources[layer] = None if source is None else governed[source]

    if budget is None and num_governed > 1 and "consumer" not in modes:
        warnings.warn(_why_no_reuse(similarity, sensitivity, theta, forced, governed), stacklevel=2)
    provenance = {
        "optimizer": "hylra-dp",
        "theta": None if budget is not None else float(theta),
        "max_rnmse": max_rnmse,
        "keep_sensitive": keep_sensitive,
        "budget": budget,
        "map_heads": map_heads,
        **{key: profile.metadata.get(key) for key in ("top_k", "block_size", "sink_blocks", "local_blocks",
                                                       "candidates", "calibration", "model")},
        "similarity_measure": profile.metadata.get("similarity"),  # overlap or mass ("similarity": the matrix)
        "governed_layers": governed,
        "num_dense_layers": sum(mode != "consumer" for mode in governed_modes),
        "summed_similarity": total,
        "similarity": mapped.tolist(),  # what the DP maximised
        "sensitivity": profile.sensitivity.tolist(),
    }
    if profile.head_map is not None:
        # Per consumer j: for each of its KV heads, the KV head of its source with the largest overlap.
        provenance["head_map"] = [
            None if source is None else profile.head_map[source, j].tolist() for j, source in enumerate(sources)
        ]
    heads = None
    if map_heads:
        heads = [None if source is None else profile.head_map[source, j].tolist() for j, source in enumerate(sources)]
    return Policy.from_modes(modes, sources, num_kv_heads=profile.num_kv_heads, provenance=provenance, heads=heads)


def _solve(
    similarity: np.ndarray, may_reuse: np.ndarray, forced: np.ndarray, budget: int | None
) -> tuple[list[str], list[int | None], float]:
    """Run the DP; return (modes, sources, summed similarity) of the optimum."""
    num_layers = similarity.shape[0]
    none = num_layers  # the state "no producer yet"
    # best[k, a]: largest summed similarity with k dense layers so far and nearest producer a.
    best = np.full((num_layers + 1, num_layers + 1), -np.inf)
    best[0, none] = 0.0
    choices, producer_from = [], []
    for j in range(num_layers):
        consume = np.full(num_layers + 1, -np.inf)
        if not forced[j]:
            # Gain of consuming producer a (rows a >= j are unreachable and stay -inf in best).
            consume[:j] = np.where(may_reuse[:j, j], similarity[:j, j], -np.inf)
        via_consume = best + consume[None, :]
        via_full = np.vstack([np.full((1, num_layers + 1), -np.inf), best[:-1]])
        new = np.maximum(via_consume, via_full)
        choice = np.where(via_consume >= via_full, _CONSUMER, _FULL)
        choice[new == -np.inf] = _FULL
        # Producing: state (k + 1, j) from the best state with k dense layers, whatever its producer.
        previous = best[:-1].argmax(axis=1)
        new[1:, j] = best[:-1].max(axis=1)
        new[0, j] = -np.inf
        choice[:, j] = _PRODUCER
        choices.append(choice)
        producer_from.append(np.concatenate([[none], previous]))
        best = new

    if budget is None:
        k = int(np.flatnonzero((best > -np.inf).any(axis=1))[0])
    else:
        k = budget
    a = int(best[k].argmax())
    total = float(best[k, a])

    modes: list[str] = [""] * num_layers
    for j in range(num_layers - 1, -1, -1):
        code = choices[j][k, a]
        if code == _PRODUCER:
            modes[j] = "producer"
            k, a = k - 1, int(producer_from[j][k])
        elif code == _FULL:
            modes[j] = "full"
            k -= 1
        else:
            modes[j] = "consumer"
    sources = Policy.from_modes(modes).sources
    consumed = {s for s in sources if s is not None}
    modes = ["full" if mode == "producer" and j not in consumed else mode for j, mode in enumerate(modes)]
    return modes, sources, total


def _governed(governed: list[int], num_layers: int) -> str:
    """The governed layers in words, for an error."""
    if len(governed) == num_layers:
        return f"{num_layers} layers"
    return f"{len(governed)} layers the policy governs, {governed} (the others slide within top_k)"


def _why_no_reuse(similarity: np.ndarray, sensitivity: np.ndarray, theta: float, forced: np.ndarray,
                  governed: list[int]) -> str:
    """Why no governed layer may consume; ``similarity``, ``sensitivity`` and ``forced`` are over the governed
    layers, named by their layer numbers ``governed``."""
    first = "first layer" if governed[0] == 0 else "first layer the policy governs"
    reasons = [f"layer {governed[0]} ({first})"]
    for j in range(1, similarity.shape[0]):
        if forced[j]:
            reasons.append(f"layer {governed[j]} (sensitivity {sensitivity[j]:.3g}: kept dense as sensitive)")
        else:
            i = int(similarity[:j, j].argmax())
            reasons.append(f"layer {governed[j]} (best similarity {similarity[i, j]:.3g} with layer {governed[i]} "
                           "< theta)")
    return f"theta={theta} admits no reuse, so every layer runs full attention; " + "; ".join(reasons)


def allocate_top_k(policy: Policy, profile: Profile, *, top_k: int, block_size: int, spread: int = 4,
                   per_head: bool = False, min_blocks: int = 1) -> Policy:
    """``policy`` with each consumer's own ``top_k`` sized by need, the total fixed (budgets by need).

    A consumer's need is its profiled sensitivity (the RNMSE of its output attending only its own top-k), or with
    ``per_head`` each of its KV heads' (:attr:`Profile.head_sensitivity`; the policy's ``top_k`` then lists one
    budget per KV head). Each keeps the ``min_blocks`` its selection forces (sink and local) and gets free blocks in
    proportion to its need, between ``ceil(f / spread)`` and ``f * spread`` where f = n - ``min_blocks`` and n =
    ceil(top_k / block_size): no consumer is left its forced blocks alone (sized by prose sensitivity from zero
    free blocks up, the least sensitive SmolLM2 layers kept only those and lost every pass key, docs/results.md).
    Together they keep n blocks each on average (so a model's attention
    reads the same number of keys). The proportion is found by bisection on the clipped sum and rounded by largest
    remainders. Needs ``selection="refine"`` (with ``candidates >= spread``) or, per layer only, ``"oracle"`` at
    compile time: under ``reuse`` a consumer attends its producer's blocks. The provenance records the needs and
    the blocks per consumer (per KV head).
    """
    if not isinstance(policy, Policy) or not isinstance(profile, Profile):
        raise ValueError("allocate_top_k needs a hylra_compile.Policy and the Profile it was made from")
    if profile.num_layers != policy.num_layers:
        raise ValueError(f"the profile has {profile.num_layers} layers, the policy {policy.num_layers}")
    for name, value in (("top_k", top_k), ("block_size", block_size), ("spread", spread), ("min_blocks", min_blocks)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(per_head, bool):
        raise ValueError(f"per_head must be True or False, got {per_head!r}")
    if per_head and profile.head_sensitivity is None:
        raise ValueError("per_head=True needs a profile with head_sensitivity (made by hylra_compile.profile)")
    consumers = [layer for layer, mode in enumerate(policy.modes) if mode == "consumer"]
    if not consumers:
        raise ValueError("the policy has no consumer layer: there is no top_k to allocate")
    n = -(-top_k // block_size)
    if min_blocks > n:
        raise ValueError(f"min_blocks={min_blocks} is more than the {n} blocks of top_k={top_k}: no consumer can "
                         "have less than the average")
    free = n - min_blocks  # what the allocation moves between consumers
    low, high = -(-free // spread), free * spread
    need = (profile.head_sensitivity[consumers] if per_head else profile.sensitivity[consumers]).astype(np.float64)
    shape = need.shape  # [consumers] or [consumers, KV heads]
    need = need.ravel()
    need = need / need.mean() if need.mean() > 0 else np.ones_like(need)
    total = free * need.size

    def blocks(scale: float) -> np.ndarray:
        return np.clip(scale * free * need, low, high)

    lo_scale, hi_scale = 0.0, 1.0
    while blocks(hi_scale).sum() < total and hi_scale < 1e12:
        hi_scale *= 2
    for _ in range(100):  # bisection on the clipped sum, which grows with the scale
        mid = (lo_scale + hi_scale) / 2
        lo_scale, hi_scale = (mid, hi_scale) if blocks(mid).sum() < total else (lo_scale, mid)
    share = blocks(hi_scale)
    counts = np.floor(share).astype(int)
    for position in np.argsort(-(share - counts), kind="stable")[: max(0, total - int(counts.sum()))]:
        counts[position] += 1  # largest remainders, to the total exactly
    counts = counts.reshape(shape) + min_blocks
    budgets: list = [None] * policy.num_layers
    allocated = {}
    for layer, count in zip(consumers, counts):
        budgets[layer] = [int(c) * block_size for c in count] if per_head else int(count) * block_size
        allocated[str(layer)] = [int(c) for c in count] if per_head else int(count)
    provenance = {**policy.provenance, "top_k_allocation": {
        "top_k": top_k, "block_size": block_size, "spread": spread,
        "need": "sensitivity per KV head" if per_head else "sensitivity", "blocks": allocated}}
    num_kv_heads = policy.num_kv_heads if policy.num_kv_heads is not None else (
        shape[1] if per_head else None)
    return Policy(policy.modes, policy.sources, num_kv_heads=num_kv_heads, provenance=provenance,
                  heads=policy.heads, top_k=budgets)
