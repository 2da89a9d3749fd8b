"""Reference implementations of the hylra ops: pure torch, any device. These functions ARE the semantics.

Shapes: ``q`` [B, Hq, Sq, D]; ``k`` [B, Hkv, Skv, D]; ``v`` [B, Hkv, Skv, Dv]; G = Hq / Hkv query heads share a
KV head. KV block c holds keys [c*bs, (c+1)*bs); query block r holds queries [r*bs, (r+1)*bs).

A key is *allowed* for a query exactly when SDPA with the same ``attn_mask`` / ``is_causal`` would attend to it:
``is_causal`` keeps key j for query i when j <= i (PyTorch's top-left alignment); a bool mask keeps True; a float
mask drops keys whose value is -inf or <= finfo(mask.dtype).min / 2 (Hugging Face's convention) and adds the
other values to the scores. A query with no allowed key outputs zeros, never NaN.

Both ops stream over chunks of whole query blocks, so no [Sq, Skv] score matrix is ever materialised at once;
a chunk reads only the keys up to its last allowed one (causal, or the mask's; the others are never allowed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import guard_or_false, statically_known_true

# Scores of one chunk are held in fp32: cap a chunk at about this many elements, and at this many queries (small
# chunks let a causal chunk skip more of the keys above the diagonal). A GPU takes larger chunks: at 32K keys the
# CPU's caps make 512 chunks of ~30 small kernels per layer, bound by their launches.
_CHUNK_ELEMENTS = {"cpu": 1 << 25, "cuda": 1 << 28}
_CHUNK_QUERIES = {"cpu": 256, "cuda": 2048}
# mask_blocks reads the mask in chunks of about this many elements: few enough that a [1, 1, 128K, 128K] mask takes
# 128 of them, not 512 (512 chunks of small reductions were host-bound: 0.2 s of a 128K prefill on the H100). Its
# temporaries are a few bool tensors of a chunk's size (up to ~6 at once for a float mask: ~0.8 GiB).
_MASK_CHUNK_ELEMENTS = 1 << 27


def holds(condition) -> bool:
    """Whether a size condition (bool or SymBool) holds for the graph being compiled: statically, or for the sizes
    Dynamo traced with, in which case a guard is installed (Dynamo recompiles the graph if it stops holding, so a
    rewrite resting on it is never run on sizes that break it). False when it fails, or depends on data."""
    return condition if isinstance(condition, bool) else guard_or_false(condition)


def _require(condition, message: str, provable: bool) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` holds. When ``provable`` (the pattern matcher, which then
    leaves the site dense) a symbolic condition must :func:`holds`; otherwise it is handed to ``torch._check``
    (the fake kernels, while AOT traces an accepted graph)."""
    if isinstance(condition, bool):
        if not condition:
            raise ValueError(message)
    elif not statically_known_true(condition):
        if provable:
            if not holds(condition):
                raise ValueError(f"cannot prove: {message}")
            return
        try:
            torch._check(condition, lambda: message)
        except RuntimeError:
            raise ValueError(message) from None


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, block_size: int, provable: bool = False
) -> None:
    """Raise a clear error for inputs the ops cannot take (shared by the fake and the real kernels, and by the
    pattern matcher, which passes ``provable=True`` and leaves such a site dense)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-d [B, H, S, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    layout = "q [B, Hq, Sq, D], k [B, Hkv, Skv, D], v [B, Hkv, Skv, Dv]"
    for what, a, b in (
        ("k batch", k.shape[0], B),
        ("v batch", v.shape[0], B),
        ("v heads", v.shape[1], Hkv),
        ("v length", v.shape[2], Skv),
        ("k head dim", k.shape[3], D),
    ):
        _require(a == b, f"{what} {a} differs from {b} ({layout})", provable)
    _require(Hq % Hkv == 0, f"query heads {Hq} are not a multiple of KV heads {Hkv}", provable)
    if not (q.is_floating_point() and q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if mask is not None:
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(f"mask must be bool (True = attend) or floating (additive), got {mask.dtype}")
        target = (B, Hq, Sq, Skv)
        message = f"mask of shape {tuple(mask.shape)} does not broadcast to [B, Hq, Sq, Skv] = {list(target)}"
        if mask.dim() > 4:
            raise ValueError(message)
        for m, t in zip(reversed(mask.shape), reversed(target)):
            _require(statically_known_true(m == 1) or m == t, message, provable)


def check_selection(n_select: int, sink_blocks: int, local_blocks: int) -> None:
    if n_select < sink_blocks + local_blocks:
        raise ValueError(f"n_select={n_select} is smaller than sink_blocks + local_blocks = {sink_blocks + local_blocks}")


def check_block_idx(block_idx: Tensor, q: Tensor, k: Tensor, block_size: int, name: str = "block_idx") -> None:
    """``block_idx`` must be int32 [B, Hkv, ceil(Sq / bs), n_sel] (values are checked by the reference only)."""
    B, Sq, Hkv = q.shape[0], q.shape[2], k.shape[1]
    n_qb = num_blocks(Sq, block_size)
    message = f"{name} must be int32 [B, Hkv, ceil(Sq/bs), n_sel] = [{B}, {Hkv}, {n_qb}, n_sel], got "
    message += f"{block_idx.dtype} {tuple(block_idx.shape)}"
    if block_idx.dim() != 4 or block_idx.dtype != torch.int32:
        raise ValueError(message)
    for a, b in zip(block_idx.shape[:3], (B, Hkv, n_qb)):
        _require(a == b, message, provable=False)


def mask_4d(mask: Tensor | None) -> Tensor | None:
    """A mask broadcastable to [B, Hq, Sq, Skv], given leading size-1 dims up to 4-d."""
    if mask is None:
        return None
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def num_blocks(length, block_size: int):
    """Number of blocks of ``block_size`` covering ``length`` (works on SymInts)."""
    return (length + block_size - 1) // block_size


def _compute_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _expanded_mask(mask: Tensor, B: int, Sq: int, Skv: int, q_start: int, q_end: int) -> Tensor:
    """The mask's rows [q_start, q_end): [B|1, Hq|1, n, Skv]."""
    m = mask_4d(mask)
    return m.expand(B if m.shape[0] != 1 else 1, m.shape[1], Sq, Skv)[:, :, q_start:q_end]


def _dropped(m: Tensor) -> Tensor:
    """Keys a float mask drops: -inf or at most finfo.min / 2 (Hugging Face's convention)."""
    return (m == float("-inf")) | (m <= torch.finfo(m.dtype).min / 2)


def _allowed_and_bias(
    mask: Tensor | None,
    is_causal: bool,
    q_start: int,
    q_end: int,
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor | None, int]:
    """(allowed, bias, key_end) for queries [q_start, q_end): keys [0, key_end) hold every key allowed to them
    (with ``is_causal`` none lies past the last query, with a mask none past its last allowed key: a static
    cache's unfilled tail, a padded batch); ``allowed`` [B, Hkv, G|1, n, key_end] (bool) and the additive ``bias``
    (or None) cover those keys. The head-group axis has size 1 unless the mask differs between query heads. The
    mask's rows are read once."""
    B, Hkv, G, Sq, Skv = shape
    n = q_end - q_start
    key_end = min(q_end, Skv) if is_causal else Skv
    m = kept = None
    if mask is not None:
        m = _expanded_mask(mask, B, Sq, Skv, q_start, q_end)[..., :key_end]
        kept = m if m.dtype == torch.bool else ~_dropped(m)
        hits = kept.reshape(-1, key_end).any(0).nonzero()
        key_end = int(hits[-1]) + 1 if hits.numel() else 1
        m, kept = m[..., :key_end], kept[..., :key_end]
    allowed = torch.ones(1, 1, n, key_end, dtype=torch.bool, device=device)
    if is_causal:
        rows = torch.arange(q_start, q_end, device=device)[:, None]
        allowed = allowed & (torch.arange(key_end, device=device)[None, :] <= rows)
    bias = None
    if mask is not None:
        allowed = allowed & kept
        if m.dtype != torch.bool:
            bias = m.to(dtype).masked_fill(~kept, 0.0)
    allowed = _group_heads(allowed, B, Hkv, G, n, key_end)
    bias = None if bias is None else _group_heads(bias, B, Hkv, G, n, key_end)
    return allowed, bias, key_end


def _group_heads(x: Tensor, B: int, Hkv: int, G: int, n: int, Skv: int) -> Tensor:
    """Broadcast [B|1, Hq|1, n, Skv] to [B, Hkv, G, n, Skv], or to [B, Hkv, 1, n, Skv] when shared by all heads."""
    x = x.expand(B, x.shape[1], n, Skv)
    if x.shape[1] == 1:
        return x.unsqueeze(1).expand(B, Hkv, 1, n, Skv)
    return x.reshape(B, Hkv, G, n, Skv)


def _chunk_len(B: int, Hq: int, Skv: int, block_size: int, device: torch.device) -> int:
    kind = "cuda" if device.type == "cuda" else "cpu"
    per_query = max(1, B * Hq * Skv)
    return max(1, min(_CHUNK_ELEMENTS[kind] // per_query, _CHUNK_QUERIES[kind]) // block_size) * block_size


def _masked_attention(q_chunk: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None, scale: float):
    """Softmax attention over ``allowed`` keys [B, Hkv, G, n, S] (``k``, ``v`` hold the S keys); returns
    (out [B, Hkv, G, n, Dv], probabilities [B, Hkv, G, n, S])."""
    B, Hkv, G, n, D = q_chunk.shape
    scores = torch.matmul(q_chunk.reshape(B, Hkv, G * n, D), k.transpose(-1, -2)).view(B, Hkv, G, n, -1)
    scores.mul_(scale)
    if bias is not None:
        scores.add_(bias)
    scores.masked_fill_(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill_(~allowed.any(-1, keepdim=True), 0.0)
    out = torch.matmul(probs.view(B, Hkv, G * n, -1), v).view(B, Hkv, G, n, -1)
    return out, probs


def _masked_attention_output(
    q_chunk: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None, scale: float
) -> Tensor:
    """The ``out`` of :func:`_masked_attention` (same math, through SDPA, which never holds the probabilities)."""
    B, Hkv, G, n, D = q_chunk.shape
    mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
    # Each KV head is a batch entry of its G query heads; the mask's head axis (G or 1) broadcasts over them.
    out = torch.nn.functional.scaled_dot_product_attention(
        q_chunk.reshape(B * Hkv, G, n, D),
        k.reshape(B * Hkv, 1, *k.shape[2:]),
        v.reshape(B * Hkv, 1, *v.shape[2:]),
        attn_mask=mask.reshape(B * Hkv, mask.shape[2], n, -1),
        scale=scale,
        enable_gqa=True,
    ).view(B, Hkv, G, n, -1)
    return out.masked_fill_(~allowed.any(-1, keepdim=True), 0.0)


def _block_hits(allowed: Tensor, block_size: int) -> Tensor:
    """[B, Hkv, G, n, Skv] allowed keys of a chunk of whole query blocks -> [B, Hkv, rows, n_kb]: the KV block holds
    an allowed key of (any query of the query block, any query head of the KV head)."""
    B, Hkv, _, n, Skv = allowed.shape
    rows, n_kb = num_blocks(n, block_size), num_blocks(Skv, block_size)
    hit = torch.nn.functional.pad(allowed.any(2), (0, n_kb * block_size - Skv, 0, rows * block_size - n))
    return hit.view(B, Hkv, rows, block_size, n_kb, block_size).any(5).any(3)


def mask_blocks(mask: Tensor, *, block_size: int) -> Tensor:
    """The block structure of ``mask`` (bool, or additive as the ops read it; [Bm, Hm, Sqm, Skv] with leading
    dims up to 4-d): int32 [Bm, ceil(Sqm / bs), 4] holding, per (batch, query block), KV block ranges
    ``(first, full_first, full_end, end)``:

    * every key allowed for a query of the query block (in any head) lies in KV blocks ``[first, end)``
      (``first == end == 0`` when there is none);
    * ``[full_first, full_end)`` is the longest run (the first, among equals) of KV blocks that lie wholly inside
      Skv and whose every key is allowed, with no additive value, for every query of the query block in every
      head; an empty run is ``full_first == full_end == first``.

    A causal mask gives ``(0, 0, r, r + 1)`` for query block r (blocks wholly below the diagonal, then the
    diagonal); padding and sliding windows move ``first``. A mask row broadcast over queries (Sqm = 1) gives one
    query block for all. It is a function of the mask alone, computed once per mask and shared by the ops of every
    layer that use it: the ops take it as ``block_mask`` and no result depends on it; their kernels visit only
    ``[first, end)`` and read no mask byte in ``[full_first, full_end)``.
    """
    check_mask_blocks_inputs(mask, block_size)
    m = mask_4d(mask)
    return block_ranges(*block_hits(m, block_size), m.shape[3], block_size)


def check_mask_blocks_inputs(mask: Tensor, block_size: int) -> None:
    """Raise a clear error for a mask or block size :func:`mask_blocks` cannot take."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"mask must be bool (True = attend) or floating (additive), got {mask.dtype}")


def block_hits(m: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Per (batch, query block, KV block) of a 4-d mask: (whether any key is allowed for some query in some head;
    whether every key is allowed with no additive value for every query in every head), bool [Bm, n_qb, n_kb]
    each. Queries past Sqm and keys past Skv count as wholly allowed (the ranges exclude blocks cut by Skv)."""
    Bm, Hm, Sqm, Skv = m.shape
    bs, n_kb = block_size, num_blocks(Skv, block_size)
    any_allowed = torch.empty(Bm, num_blocks(Sqm, bs), n_kb, dtype=torch.bool, device=m.device)
    whole = torch.empty_like(any_allowed)
    rows = max(bs, _MASK_CHUNK_ELEMENTS // max(Bm * Hm * n_kb * bs, 1) // bs * bs)
    for start in range(0, Sqm, rows):
        part = m[:, :, start : start + rows]
        allowed = part if part.dtype == torch.bool else ~_dropped(part)
        plain = allowed if part.dtype == torch.bool else allowed & (part == 0)
        n_qb = num_blocks(part.shape[2], bs)
        pad = (0, n_kb * bs - Skv, 0, n_qb * bs - part.shape[2])
        if any(pad):
            allowed = torch.nn.functional.pad(allowed, pad, value=False)
            plain = torch.nn.functional.pad(plain, pad, value=True)
        blocks = (Bm, Hm, n_qb, bs, n_kb, bs)
        r = slice(start // bs, start // bs + n_qb)
        any_allowed[:, r] = allowed.reshape(blocks).any(5).any(3).any(1)
        whole[:, r] = plain.reshape(blocks).all(5).all(3).all(1)
    return any_allowed, whole


def block_ranges(any_allowed: Tensor, whole: Tensor, Skv: int, block_size: int) -> Tensor:
    """:func:`mask_blocks`' ranges from :func:`block_hits`' two [Bm, n_qb, n_kb] tables."""
    n_kb = any_allowed.shape[-1]
    columns = torch.arange(n_kb, device=any_allowed.device)
    whole = whole & any_allowed & (columns < Skv // block_size)
    end = torch.where(any_allowed, columns + 1, 0).amax(-1)
    first = torch.where(end == 0, 0, torch.where(any_allowed, columns, n_kb).amin(-1))
    # Longest run of whole blocks: the run length ending at each column, its first maximum.
    last_break = torch.where(whole, -1, columns).cummax(-1).values
    run = torch.where(whole, columns - last_break, 0)
    length, full_end = run.max(-1)
    full_end = torch.where(length > 0, full_end + 1, first)
    return torch.stack([first, full_end - torch.where(length > 0, length, 0), full_end, end], -1).to(torch.int32)


# hylra::shared_mask starts each mask row at a multiple of this many elements (16-byte aligned for any dtype).
MASK_ROW_ALIGN = 128


def shared_mask(mask: Tensor) -> Tensor:
    """A copy of ``mask``: same shape, dtype and values, stored row-major with each row padded to a multiple of
    ``MASK_ROW_ALIGN`` elements (the padding's values are unspecified and never read as mask values).

    The passes give the ops of a graph this one copy: a mask that is a view of an expression Inductor has not
    stored (Hugging Face's causal mask is an ``expand`` of one) is otherwise computed into a buffer of its own for
    every op that takes it, 32 at once in a 32-layer model (16 GiB each for a [1, 1, 128K, 128K] bool mask). The
    aligned rows let the kernels load it 16 bytes at a time (kernels._common.readable_columns); Hugging Face's rows
    are ``max_cache_len`` long, 131105 bytes at 128K, which only byte loads can read."""
    return padded_rows_like(mask).copy_(mask)


def padded_rows_like(mask: Tensor) -> Tensor:
    """An uninitialised tensor of ``mask``'s shape and dtype, row-major, each row starting ``MASK_ROW_ALIGN``
    elements after the one before (the layout of :func:`shared_mask`)."""
    width = num_blocks(mask.shape[-1], MASK_ROW_ALIGN) * MASK_ROW_ALIGN
    return mask.new_empty((*mask.shape[:-1], width))[..., : mask.shape[-1]]


def block_mask_shape(mask: Tensor, block_size: int) -> tuple:
    """The shape of :func:`mask_blocks` of ``mask``: [Bm, ceil(Sqm / bs), 4]."""
    m = mask_4d(mask)
    return (m.shape[0], num_blocks(m.shape[2], block_size), 4)


def check_block_mask(block_mask: Tensor | None, mask: Tensor | None, k: Tensor, block_size: int) -> None:
    """``block_mask`` must be None or :func:`mask_blocks`' shape for ``mask`` (its values are not checked: the
    kernels clamp the ranges to the keys that exist)."""
    if block_mask is None:
        return
    if mask is None:
        raise ValueError("block_mask is given without a mask")
    m = mask_4d(mask)
    want = block_mask_shape(mask, block_size)
    message = f"block_mask must be int32 {list(want)} (mask_blocks of the mask), got {block_mask.dtype} "
    message += f"{tuple(block_mask.shape)}"
    if block_mask.dtype != torch.int32 or block_mask.dim() != 3:
        raise ValueError(message)
    _require(m.shape[3] == k.shape[2], "a block_mask needs a mask with one column per key", provable=False)
    for a, b in zip(block_mask.shape, want):
        _require(a == b, message, provable=False)


def candidate_counts(q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool, block_size: int) -> Tensor:
    """[B|1, Hkv|1, ceil(Sq/bs)]: how many KV blocks hold an allowed key of each query block (the producer's
    candidates), streaming like the ops; without a mask it is computed in closed form."""
    B, Hq, Sq, _ = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    n_kb = num_blocks(Skv, block_size)
    if mask is None:
        blocks = torch.arange(num_blocks(Sq, block_size), device=q.device)
        if not is_causal:
            return torch.full((1, 1, blocks.numel()), n_kb, device=q.device)
        last_query = torch.clamp((blocks + 1) * block_size - 1, max=Sq - 1)
        return torch.clamp(last_query // block_size + 1, max=n_kb)[None, None]
    counts = []
    chunk = _chunk_len(B, Hq, Skv, block_size, q.device)
    for start in range(0, Sq, chunk):
        end = min(Sq, start + chunk)
        allowed, _, _ = _allowed_and_bias(mask, is_causal, start, end, (B, Hkv, Hq // Hkv, Sq, Skv), torch.float32,
                                          q.device)
        counts.append(_block_hits(allowed, block_size).sum(-1))
    return torch.cat(counts, dim=2)


def select_blocks(importance: Tensor, candidate: Tensor, n_select: int, sink_blocks: int, local_blocks: int) -> Tensor:
    """The block selection rule, shared by producer and profiler.

    ``importance`` [..., C] float and ``candidate`` [..., C] bool (the block holds an allowed key). Returns int32
    [..., n_select]: the first ``sink_blocks`` and the last ``local_blocks`` candidates, then the most important
    other candidates (ties -> lower index; an importance of NaN or +inf counts as the largest number, one below 0 as
    0), sorted ascending and padded with -1 when there are too few candidates.
    """
    C = importance.shape[-1]
    rank = candidate.to(torch.int32).cumsum(-1)
    total = rank[..., -1:]
    forced = candidate & ((rank <= sink_blocks) | (rank > total - local_blocks))
    largest = torch.finfo(torch.float64).max  # below the forced blocks' +inf
    score = importance.to(torch.float64).nan_to_num(nan=largest, posinf=largest, neginf=0.0).clamp_min(0.0)
    score = score.masked_fill(forced, float("inf")).masked_fill(~candidate, float("-inf"))
    if C < n_select:
        score = torch.nn.functional.pad(score, (0, n_select - C), value=float("-inf"))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :n_select]
    picked = torch.gather(score, -1, order) > float("-inf")
    # Unpicked slots sort after every real block index, then become -1.
    order = torch.where(picked, order, torch.full_like(order, C)).sort(dim=-1).values
    return torch.where(order == C, -1, order).to(torch.int32)


def attention_with_importance(
    q: Tensor, k: Tensor, v: Tensor | None, mask: Tensor | None, is_causal: bool, scale: float | None, block_size: int,
    keep=None,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """(out, importance, candidate) as :func:`topk_attention` defines them: ``out`` [B, Hq, Sq, Dv] is SDPA's
    (None when ``v`` is None); ``importance`` [B, Hkv, ceil(Sq/bs), ceil(Skv/bs)] (fp32, fp64 for fp64 inputs) the
    softmax mass of each (query block, KV block), summed over the G query heads of the KV head; ``candidate``
    (bool, same shape) the blocks holding an allowed key. ``keep(start, end, allowed)``, when given, narrows the
    allowed keys of queries [start, end) (the softmax, the mass and the candidates then see only those)."""
    check_inputs(q, k, k if v is None else v, mask, block_size)
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    n_kb, n_qb = num_blocks(Skv, block_size), num_blocks(Sq, block_size)
    dtype = _compute_dtype(q)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kf = k.to(dtype)
    vf = kf[..., :0] if v is None else v.to(dtype)  # no values: the probabilities alone
    out = torch.empty(B, Hkv, G, Sq, vf.shape[3], dtype=dtype, device=q.device)
    importance = torch.zeros(B, Hkv, n_qb, n_kb, dtype=dtype, device=q.device)
    candidate = torch.zeros(B, Hkv, n_qb, n_kb, dtype=torch.bool, device=q.device)
    chunk = _chunk_len(B, Hq, Skv, block_size, q.device)
    for start in range(0, Sq, chunk):
        end = min(Sq, start + chunk)
        n, rows = end - start, num_blocks(end - start, block_size)
        r0 = start // block_size
        allowed, bias, key_end = _allowed_and_bias(mask, is_causal, start, end, (B, Hkv, G, Sq, Skv), dtype, q.device)
        if keep is not None:
            allowed = keep(start, end, allowed)
        kb_end = num_blocks(key_end, block_size)
        q_chunk = q[:, :, start:end].to(dtype).reshape(B, Hkv, G, n, D)
        out[:, :, :, start:end], probs = _masked_attention(
            q_chunk, kf[:, :, :key_end], vf[:, :, :key_end], allowed, bias, scale
        )
        # [B, Hkv, G, n, key_end] -> per (query block, KV block): pad both axes to whole blocks and sum.
        probs = torch.nn.functional.pad(probs.sum(2), (0, kb_end * block_size - key_end, 0, rows * block_size - n))
        importance[:, :, r0 : r0 + rows, :kb_end] = probs.view(B, Hkv, rows, block_size, kb_end, block_size).sum((3, 5))
        candidate[:, :, r0 : r0 + rows, :kb_end] = _block_hits(allowed, block_size)
    return None if v is None else out.reshape(B, Hq, Sq, -1).to(q.dtype), importance, candidate


def topk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    block_mask: Tensor | None = None,
    *,
    is_causal: bool,
    scale: float | None,
    block_size: int,
    n_select: int,
    sink_blocks: int,
    local_blocks: int,
) -> tuple[Tensor, Tensor]:
    """Dense attention that also emits each query block's top KV blocks.

    ``out`` [B, Hq, Sq, Dv] equals ``scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, scale=scale,
    enable_gqa=True)`` (zeros for a query with no allowed key).

    ``block_idx`` int32 [B, Hkv, ceil(Sq / bs), n_select]. The importance of KV block c for (b, KV head h, query
    block r) is the sum of the softmax probabilities over the G query heads of h, the queries of r and the keys
    of c. Candidates are the blocks holding at least one allowed key of (any query of r, any query head of h);
    selection follows :func:`select_blocks`.

    ``block_mask``: None or :func:`mask_blocks` of ``mask`` (the kernels use it; no result depends on it).
    """
    check_selection(n_select, sink_blocks, local_blocks)
    check_block_mask(block_mask, mask, k, block_size)
    out, importance, candidate = attention_with_importance(q, k, v, mask, is_causal, scale, block_size)
    return out, select_blocks(importance, candidate, n_select, sink_blocks, local_blocks)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_idx: Tensor,
    mask: Tensor | None,
    block_mask: Tensor | None = None,
    *,
    is_causal: bool,
    scale: float | None,
    block_size: int,
    min_seq_len: int,
) -> Tensor:
    """SDPA restricted to the allowed keys in the selected KV blocks of the query's KV head and query block.

    ``block_idx`` int32 [B, Hkv, ceil(Sq / bs), n_sel], as the producer emits it: each row strictly ascending
    entries in [0, ceil(Skv / bs)), then -1 padding (ignored). The CUDA kernels rely on that order and do not
    check it (a check would synchronise with the host). The selection of query block r applies to all its
    queries and to the G query heads of the KV head. A query with fewer than ``min_seq_len`` allowed keys attends
    all of them (dense). A query with no key left outputs zeros. When the selection covers every allowed key the
    result equals SDPA. ``block_mask``: as in :func:`topk_attention`.
    """
    check_inputs(q, k, v, mask, block_size)
    check_block_mask(block_mask, mask, k, block_size)
    in_selection = _selection_keys(block_idx, "block_idx", q, k, block_size)

    def keep(start: int, end: int, allowed: Tensor) -> Tensor:
        return allowed & (in_selection(start, end, allowed) | (allowed.sum(-1, keepdim=True) < min_seq_len))

    return _streamed_attention(q, k, v, mask, is_causal, scale, block_size, keep)


def _selection_keys(block_idx: Tensor, name: str, q: Tensor, k: Tensor, block_size: int):
    """Check a block selection (int32 [B, Hkv, ceil(Sq / bs), n]: each row strictly ascending block indices, then
    -1 padding) and return ``in_selection(start, end, allowed)``: bool [B, Hkv, 1, end - start, keys], whether
    each key of ``allowed`` lies in a selected block of its query's block."""
    Skv = k.shape[2]
    n_kb = num_blocks(Skv, block_size)
    check_block_idx(block_idx, q, k, block_size, name)
    if ((block_idx < -1) | (block_idx >= n_kb)).any():
        raise ValueError(f"{name} holds entries outside [-1, {n_kb})")
    valid = block_idx >= 0
    ascending = (block_idx[..., 1:] > block_idx[..., :-1]) | ~valid[..., 1:]
    if (valid[..., 1:] & ~valid[..., :-1]).any() or not ascending.all():
        raise ValueError(f"each {name} row must be strictly ascending block indices followed by -1 padding")
    selected_keys = _listed(block_idx, n_kb).repeat_interleave(block_size, dim=-1)[..., :Skv]

    def in_selection(start: int, end: int, allowed: Tensor) -> Tensor:
        query_block = torch.arange(start, end, device=q.device) // block_size
        return selected_keys[:, :, query_block, : allowed.shape[-1]].unsqueeze(2)

    return in_selection


def refine_blocks(
    q: Tensor,
    k: Tensor,
    candidate_idx: Tensor,
    mask: Tensor | None,
    block_mask: Tensor | None = None,
    *,
    is_causal: bool,
    scale: float | None,
    block_size: int,
    n_select: int,
    sink_blocks: int,
    local_blocks: int,
    head_n_select: list[int] | None = None,
    prefilter: int = 0,
) -> Tensor:
    """A consumer's own top KV blocks among the candidates its producer emitted: the ``block_idx`` that
    :func:`topk_attention` would emit for these ``q``, ``k`` and ``mask`` if only the keys of the candidate blocks
    were allowed.

    ``candidate_idx`` int32 [B, Hkv, ceil(Sq / bs), n_cand], as a producer emits it (strictly ascending entries,
    then -1 padding). The importance of candidate block c for (b, KV head h, query block r) is the softmax mass
    on the keys of c, the softmax of each query running over its allowed keys in the candidate blocks of r,
    summed over the G query heads of h and the queries of r. Candidates are the blocks of ``candidate_idx[b, h,
    r]`` holding an allowed key of (any query of r, any query head of h); selection follows
    :func:`select_blocks` (the first ``sink_blocks`` and last ``local_blocks`` candidates, then the most
    important). Returns int32 [B, Hkv, ceil(Sq / bs), n_select]. With every block a candidate it equals
    :func:`topk_attention`'s ``block_idx``. ``block_mask`` as in :func:`topk_attention` (speed only).
    ``head_n_select`` (budgets by KV head): KV head h selects ``head_n_select[h]`` blocks, between ``sink_blocks +
    local_blocks`` and ``n_select``, its rows -1 padded to ``n_select``.

    ``prefilter`` p > 0, in a prompt (``Sq > 1``) whose rows list more than ``p * n_select`` entries: the
    candidates are first narrowed to :func:`prefilter_blocks`' ``p * n_select`` by their blocks' mean keys, which
    costs one vector per block where scoring its keys costs ``block_size``; a decode step scores every candidate's
    keys.
    """
    check_inputs(q, k, k, mask, block_size)
    check_block_mask(block_mask, mask, k, block_size)
    check_selection(n_select, sink_blocks, local_blocks)
    check_head_n_select(head_n_select, n_select, sink_blocks, local_blocks, k.shape[1])
    check_prefilter(prefilter)
    in_candidates = _selection_keys(candidate_idx, "candidate_idx", q, k, block_size)
    if prefilters(prefilter, q, candidate_idx, n_select):
        narrowed = prefilter_blocks(q, k, candidate_idx, mask, is_causal=is_causal, scale=scale,
                                    block_size=block_size, n_select=prefilter * n_select, sink_blocks=sink_blocks,
                                    local_blocks=local_blocks)
        in_candidates = _selection_keys(narrowed, "candidate_idx", q, k, block_size)
    _, importance, candidate = attention_with_importance(
        q, k, None, mask, is_causal, scale, block_size, keep=lambda s, e, allowed: allowed & in_candidates(s, e, allowed)
    )
    if head_n_select is None:
        return select_blocks(importance, candidate, n_select, sink_blocks, local_blocks)
    return torch.stack([
        torch.nn.functional.pad(select_blocks(importance[:, h], candidate[:, h], count, sink_blocks, local_blocks),
                                (0, n_select - count), value=-1)
        for h, count in enumerate(head_n_select)], dim=1)


def check_prefilter(prefilter: int) -> None:
    if not isinstance(prefilter, int) or isinstance(prefilter, bool) or prefilter < 0:
        raise ValueError(f"prefilter must be an int >= 0 (0: none), got {prefilter!r}")


def prefilters(prefilter: int, q: Tensor, candidate_idx: Tensor, n_select: int) -> bool:
    """Whether :func:`refine_blocks` narrows these candidates first (a prompt listing more than it keeps)."""
    return bool(prefilter) and q.shape[2] > 1 and prefilter * n_select < candidate_idx.shape[-1]


def prefilter_blocks(q: Tensor, k: Tensor, candidate_idx: Tensor, mask: Tensor | None, *, is_causal: bool,
                     scale: float | None, block_size: int, n_select: int, sink_blocks: int,
                     local_blocks: int) -> Tensor:
    """:func:`refine_blocks`' first step under ``prefilter``: int32 [B, Hkv, ceil(Sq / bs), n_select], the
    :func:`select_blocks` of the candidates by their blocks' mean keys.

    Block c's mean key is the mean of its keys (the in-range ones of a last partial block); query i scores it
    ``scale * q_i . mean_c``. The candidates of query block r are the listed blocks inside r's block range:
    :func:`mask_blocks`' ``[first, end)`` of ``mask`` (every block without one), ``end`` cut to ``r + 1`` under
    ``is_causal`` (for a causal, padding or sliding-window mask: the listed blocks holding an allowed key); the
    mask adds no values. The importance of candidate c is the softmax of each query of r over the scores of r's
    candidates, summed over the queries of r and the G query heads of h."""
    candidate = listed_in_range(candidate_idx, k, mask, is_causal, block_size)
    return select_blocks(mean_key_importance(q, k, candidate, scale, block_size), candidate, n_select, sink_blocks,
                         local_blocks)


def block_means(k: Tensor, block_size: int) -> Tensor:
    """[B, Hkv, ceil(Skv / bs), D] (fp32, fp64 for fp64 keys): each block's mean key over its in-range keys."""
    B, Hkv, Skv, D = k.shape
    dtype, whole = _compute_dtype(k), Skv // block_size
    # Summed in the compute dtype without a copy of the keys (a 128K cache's K is 0.5 GB in fp32).
    sums = k[:, :, : whole * block_size].reshape(B, Hkv, whole, block_size, D).sum(3, dtype=dtype)
    counts = torch.full((whole, 1), float(block_size), dtype=dtype, device=k.device)
    if whole * block_size < Skv:  # a last partial block
        sums = torch.cat([sums, k[:, :, whole * block_size :].sum(2, keepdim=True, dtype=dtype)], dim=2)
        counts = torch.cat([counts, counts.new_full((1, 1), float(Skv - whole * block_size))])
    return sums / counts


def listed_in_range(candidate_idx: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool,
                    block_size: int) -> Tensor:
    """bool [B, Hkv, n_qb, n_kb]: the listed blocks of ``candidate_idx`` inside each query block's block range, as
    :func:`prefilter_blocks` defines it."""
    n_qb = candidate_idx.shape[2]
    n_kb = num_blocks(k.shape[2], block_size)
    device = k.device
    rows = torch.arange(n_qb, device=device)
    first, end = torch.zeros(1, n_qb, dtype=torch.long, device=device), torch.full((1, n_qb), n_kb, device=device)
    if mask is not None:
        ranges = mask_blocks(mask, block_size=block_size).long()  # [Bm, n_qb or 1 (a broadcast row), 4]
        first, end = ranges[..., 0].expand(-1, n_qb), ranges[..., 3].expand(-1, n_qb)
    if is_causal:
        end = torch.minimum(end, torch.clamp(rows + 1, max=n_kb))
    first = torch.minimum(first, end)
    columns = torch.arange(n_kb, device=device)
    in_range = (columns >= first[..., None]) & (columns < end[..., None])  # [B or 1, n_qb, n_kb]
    return _listed(candidate_idx, n_kb) & in_range[:, None]


def _listed(block_idx: Tensor, n_kb: int) -> Tensor:
    """bool [B, Hkv, n_qb, n_kb]: whether KV block c is listed in row (b, h, r) of a block selection."""
    listed = torch.zeros(*block_idx.shape[:3], n_kb + 1, dtype=torch.bool, device=block_idx.device)
    listed.scatter_(-1, torch.where(block_idx < 0, n_kb, block_idx).long(), True)  # -1 lands in a spare column
    return listed[..., :n_kb]


def mean_key_importance(q: Tensor, k: Tensor, candidate: Tensor, scale: float | None, block_size: int) -> Tensor:
    """The importance [B, Hkv, ceil(Sq / bs), ceil(Skv / bs)] of :func:`prefilter_blocks` over the candidate blocks
    ``candidate`` (bool, same shape)."""
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    G, n_qb = Hq // Hkv, num_blocks(Sq, block_size)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qf = q.to(_compute_dtype(q)).reshape(B, Hkv, G * Sq, D)
    scores = (qf @ block_means(k, block_size).transpose(-1, -2)).view(B, Hkv, G, Sq, -1) * scale
    of_row = candidate[:, :, torch.arange(Sq, device=q.device) // block_size].unsqueeze(2)  # [B, Hkv, 1, Sq, n_kb]
    probs = torch.softmax(scores.masked_fill(~of_row, float("-inf")), dim=-1).masked_fill(~of_row, 0.0)
    probs = torch.nn.functional.pad(probs.sum(2), (0, 0, 0, n_qb * block_size - Sq))
    return probs.view(B, Hkv, n_qb, block_size, -1).sum(3)


def check_head_n_select(head_n_select: list[int] | None, n_select: int, sink_blocks: int, local_blocks: int,
                        num_kv_heads) -> None:
    """``head_n_select``, where given, lists one count in ``[sink_blocks + local_blocks, n_select]`` per KV head."""
    if head_n_select is None:
        return
    forced = sink_blocks + local_blocks
    if (not isinstance(head_n_select, (list, tuple))
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in head_n_select)
            or not holds(len(head_n_select) == num_kv_heads)
            or any(not forced <= n <= n_select for n in head_n_select)):
        raise ValueError(f"head_n_select must list one block count in [{forced}, {n_select}] (sink_blocks + "
                         f"local_blocks to n_select) for each of the {num_kv_heads} KV heads, got {head_n_select!r}")


def map_heads(block_idx: Tensor, *, heads: list[int]) -> Tensor:
    """The selection each consumer KV head reads under a head map: ``out[:, h] = block_idx[:, heads[h]]``.

    ``block_idx`` int32 [B, Hkv, n_qb, n_sel], a producer's selection (or candidates) per KV head; ``heads`` has
    one entry per KV head of the consumer, each a KV head of the producer (``0 <= heads[h] < Hkv``). Returns a new
    int32 tensor of the same shape; ``heads = [0, 1, ..., Hkv - 1]`` returns a copy.
    """
    check_heads(heads, block_idx.shape[1])
    # Slices and a stack: an index list would be copied from the host on every call (not in a CUDA graph).
    return torch.stack([block_idx[:, h] for h in heads], dim=1)


def expand_blocks(q: Tensor, k: Tensor, block_idx: Tensor, *, block_size: int, factor: int) -> Tensor:
    """A selection made in blocks of ``factor * block_size`` as the blocks of ``block_size`` it holds: the
    candidates of a producer that selects in coarser blocks than its consumers refine in.

    ``block_idx`` int32 [B, Hkv, ceil(Sq / (factor * bs)), n]: per query block of ``factor * bs`` queries, strictly
    ascending indices of KV blocks of ``factor * bs`` keys, then -1 padding (``topk_attention``'s ``block_idx`` at
    that block size). Returns int32 [B, Hkv, ceil(Sq / bs), factor * n]: fine query block r takes the row of coarse
    query block ``r // factor``, each coarse block c becoming the fine blocks ``c * factor ... c * factor + factor -
    1`` that hold keys (fewer than ``ceil(Skv / bs)``), then -1 padding. The same keys, in the selection format of
    block size ``bs``; ``factor = 1`` returns a copy. ``q`` and ``k`` give the lengths only.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    check_block_idx(block_idx, q, k, block_size * factor)
    B, Hkv, n_coarse, n = block_idx.shape
    n_qb, n_kb = num_blocks(q.shape[2], block_size), num_blocks(k.shape[2], block_size)
    # An expand and a reshape repeat the rows: no index tensor (a host copy per call, not in a CUDA graph).
    rows = block_idx.unsqueeze(3).expand(B, Hkv, n_coarse, factor, n).reshape(B, Hkv, n_coarse * factor, n)
    rows = rows[:, :, :n_qb]
    fine = rows.unsqueeze(-1) * factor + torch.arange(factor, dtype=torch.int32, device=block_idx.device)
    fine = torch.where((rows.unsqueeze(-1) >= 0) & (fine < n_kb), fine, -1)
    return fine.flatten(-2)


def check_heads(heads: list[int], num_kv_heads) -> None:
    """``heads`` must list one producer KV head in ``[0, num_kv_heads)`` per consumer KV head."""
    if (not isinstance(heads, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool) for h in heads)
            or not holds(len(heads) == num_kv_heads) or any(not 0 <= h < num_kv_heads for h in heads)):
        raise ValueError(f"heads must list one KV head in [0, {num_kv_heads}) for each of the {num_kv_heads} KV "
                         f"heads, got {heads!r}")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    block_mask: Tensor | None = None,
    *,
    is_causal: bool,
    scale: float | None,
    block_size: int,
) -> Tensor:
    """Dense attention on the native KV heads: ``scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal,
    scale=scale, enable_gqa=True)`` (zeros for a query with no allowed key), for the layers a policy leaves dense.
    ``block_size`` sizes the kernels' tiles and ``block_mask`` (as in :func:`topk_attention`); neither changes
    the result."""
    check_inputs(q, k, v, mask, block_size)
    check_block_mask(block_mask, mask, k, block_size)
    return _streamed_attention(q, k, v, mask, is_causal, scale, block_size, None)


def _streamed_attention(q, k, v, mask, is_causal, scale, block_size, keep) -> Tensor:
    """Attention over chunks of whole query blocks: each query attends its allowed keys, narrowed by
    ``keep(start, end, allowed)`` when given."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    dtype = _compute_dtype(q)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kf, vf = k.to(dtype), v.to(dtype)
    out = torch.empty(B, Hkv, G, Sq, v.shape[3], dtype=dtype, device=q.device)
    chunk = _chunk_len(B, Hq, Skv, block_size, q.device)
    for start in range(0, Sq, chunk):
        end = min(Sq, start + chunk)
        n = end - start
        allowed, bias, key_end = _allowed_and_bias(mask, is_causal, start, end, (B, Hkv, G, Sq, Skv), dtype, q.device)
        q_chunk = q[:, :, start:end].to(dtype).reshape(B, Hkv, G, n, D)
        out[:, :, :, start:end] = _masked_attention_output(
            q_chunk, kf[:, :, :key_end], vf[:, :, :key_end], allowed if keep is None else keep(start, end, allowed),
            bias, scale,
        )
    return out.reshape(B, Hq, Sq, -1).to(q.dtype)
