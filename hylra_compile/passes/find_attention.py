"""Phase 1, ``find_attention(gm, model)``: every attention call of a Dynamo graph as an immutable
:class:`AttentionMatch`.

Two patterns, each a plain function with an explicit check (in the style of Inductor's ``fuse_attention``),
written in the canonical ops of :mod:`.patterns` so every spelling of a call matches:

* :func:`match_sdpa` -- ``scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
  enable_gqa)``.
* :func:`match_eager` -- Hugging Face's eager attention: ``matmul(q, kᵀ)`` → ``* scale`` → ``+ mask`` →
  ``softmax(dim=-1, dtype=float32)`` → ``.to(dtype)`` → ``dropout(p=0 or eval)`` → ``matmul(·, v)``.

In both, HF's ``repeat_kv`` (``x[:, :, None]`` → ``expand`` → ``reshape``) is looked through, so the ops get the
native KV heads and the repeated copy of the cache disappears. A call that is attention but does not match
exactly is still a match, with ``problem`` saying why: it stays dense and the report shows the reason.

A match's ``layer`` is :func:`hylra_compile.layers.layer_of_node` (the number in its module path), the same number
the profiler gives the layer. A graph break inside the layer loop compiles each layer's forward as its own frame,
whose paths hold no number: the module's qualified name in the model (found on the call stack) gives it then.
Attention in plain functions (no module, no numbers) is numbered in graph order.
A match is ``bidirectional`` when its queries see keys after them: a prefill call with neither a mask nor
``is_causal``, or a call in a module whose ``is_causal`` flag is False (a padding mask alone cannot tell an encoder
from a decoder).
"""

from __future__ import annotations

import collections
import dataclasses
import operator
from typing import Literal, Mapping

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..layers import TracedModel, layer_of_node
from ..lowering import reference
from .patterns import NoMatch, call_args, constant, describe, example_value, is_call, single_user, transposed_source

SiteKind = Literal["sdpa", "eager"]


@dataclasses.dataclass(frozen=True)
class AttentionMatch:
    """One attention call of the graph, as found (phase 1's output; never modified after).

    ``output``: the node whose value is the attention output [B, Hq, Sq, Dv]. ``q``/``k``/``v``: the ops' inputs
    (``k``/``v`` with native KV heads), ``mask`` the SDPA-style mask or None, ``internal`` the nodes the site is
    made of (erased once a rewrite leaves them unused). ``problem``: why the ops cannot take this call (it then
    stays dense). ``notes``: what the report should say about a call that is taken anyway. ``bidirectional``: its
    queries see keys after them (a bidirectional encoder, cross-attention).
    """

    layer: int | None
    kind: SiteKind
    output: torch.fx.Node
    q: torch.fx.Node | None = None
    k: torch.fx.Node | None = None
    v: torch.fx.Node | None = None
    mask: torch.fx.Node | None = None
    is_causal: bool = False
    scale: float | None = None
    internal: tuple[torch.fx.Node, ...] = ()
    problem: str | None = None
    notes: tuple[str, ...] = ()
    bidirectional: bool = False

    def shape(self, operand: str) -> tuple:
        """The (possibly symbolic) shape of ``q``, ``k``, ``v`` or ``mask``."""
        return tuple(example_value(getattr(self, operand)).shape)


def find_attention(gm: torch.fx.GraphModule, model: TracedModel = TracedModel()) -> tuple[AttentionMatch, ...]:
    """Every attention call of ``gm``, matched or not, in layer order (graph order among equal layers). ``model``:
    what the model says of its modules (which are not causal, and their layers by name)."""
    found = []
    for node in gm.graph.nodes:
        if is_call(node, "sdpa"):
            kind, matcher = "sdpa", match_sdpa
        elif _is_eager_candidate(node):
            kind, matcher = "eager", match_eager
        else:
            continue
        try:
            match = matcher(node)
            match = dataclasses.replace(match, bidirectional=_is_bidirectional(match, model.causal))
        except NoMatch as err:
            match = AttentionMatch(layer=None, kind=kind, output=node, problem=str(err))
        found.append(match)
    numbered = _number_layers(found, in_module=_traces_a_module(gm), named=model.layers)
    return tuple(sorted(numbered, key=lambda m: (m.layer is None, m.layer or 0)))


def _is_bidirectional(match: AttentionMatch, causal: Mapping[str, bool]) -> bool:
    """Whether the call's queries see keys after them: a prefill call with neither a mask nor ``is_causal``, or a
    call whose innermost module with an ``is_causal`` flag says False (a padded encoder's mask is a padding mask)."""
    if match.mask is None and not match.is_causal and not statically_known_true(match.shape("q")[2] == 1):
        return True
    stack = match.output.meta.get("nn_module_stack") or {}
    flags = [causal[path] for path, _ in reversed(list(stack.values())) if path in causal]
    return bool(flags) and not flags[0]


def _traces_a_module(gm: torch.fx.GraphModule) -> bool:
    """Whether the graph comes from a module's method (Dynamo names the module's tensors ``L_self_...``)."""
    return any(str(node.target).startswith("L_self_") for node in gm.graph.find_nodes(op="placeholder"))


def _number_layers(found: list[AttentionMatch], in_module: bool, named: Mapping[str, int]) -> list[AttentionMatch]:
    """Give each match its layer: by its module path, else by its module's name in the model (``named``); a layer
    claimed by several causal calls, or a causal call with no layer, stays dense. A non-causal call stays dense
    whatever its number, so it claims none (a decoder layer's cross-attention leaves the layer's policy entry to
    its self-attention)."""
    by_path = [layer_of_node(m.output) for m in found]
    layers = [layer_of_node(m.output, named) if layer is None else layer for m, layer in zip(found, by_path)]
    found = [dataclasses.replace(m, notes=m.notes + (LAYER_BY_NAME,)) if path is None and layer is not None else m
             for m, path, layer in zip(found, by_path, layers)]
    if not in_module and all(layer is None for layer in layers):  # plain functions: no layers to number by
        note = "layer number from graph order (no module path)"
        return [dataclasses.replace(m, layer=i, notes=m.notes + (note,)) for i, m in enumerate(found)]
    claims = collections.defaultdict(list)  # layer -> the module path of each causal call claiming it
    for match, layer in zip(found, layers):
        if not match.bidirectional:
            claims[layer].append(_module_path(match.output))
    numbered = []
    for match, layer in zip(found, layers):
        problem = match.problem
        if problem is None and not match.bidirectional:
            if layer is None:
                problem = ("no layer number in its module path, nor a model on the call stack that names its module "
                           "with one")
            elif len(claims[layer]) > 1:
                problem = _shared_layer(layer, claims[layer])
        numbered.append(dataclasses.replace(match, layer=layer, problem=problem))
    return numbered


# The note on a match numbered by its module's name in the model (the manager warns when a graph has one).
LAYER_BY_NAME = ("layer number from the module's name in the model (its module path in this graph has none: a graph "
                 "break inside the layer loop; Dynamo may run this graph for other layers too)")


def _shared_layer(layer: int, paths: list[str]) -> str:
    """Why calls sharing a layer number stay dense: one module calling attention several times, or several modules
    whose paths end in the same number (T5 numbers the sub-layers of each block: ``block.N.layer.0``)."""
    modules = sorted(set(paths))
    if len(modules) == 1:
        return (f"layer {layer} makes {len(paths)} attention calls in this graph; one policy entry per layer cannot "
                "tell them apart")
    return (f"{len(modules)} modules' attention calls ({', '.join(modules)}) share layer number {layer}, the last "
            "number of their module paths (blocks that number their sub-layers, like T5's block.N.layer.M): one "
            "policy entry per layer cannot tell them apart")


def _module_path(node: torch.fx.Node) -> str:
    """The path of the innermost module running ``node``, as Dynamo spells it."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else "?"


# -- SDPA --------------------------------------------------------------------------------------------------------
def match_sdpa(node: torch.fx.Node) -> AttentionMatch:
    """An SDPA call. Raises :class:`NoMatch` with the reason when an argument is out of the ops' reach."""
    args = call_args(node, "sdpa")
    dropout_p = constant(args["dropout_p"], "dropout_p", (int, float))
    if dropout_p != 0:
        raise NoMatch(f"dropout_p={dropout_p} > 0 (training-mode attention is left dense)")
    scale = args["scale"]
    mask = args["attn_mask"]
    if mask is not None and not isinstance(mask, torch.fx.Node):
        raise NoMatch(f"attn_mask {mask!r} is not a tensor")
    constant(args["enable_gqa"], "enable_gqa", (bool,))
    (k, repeat_k, note_k), (v, repeat_v, note_v) = _native_kv(args["key"], "key"), _native_kv(args["value"], "value")
    match = AttentionMatch(
        layer=None, kind="sdpa", output=node, q=args["query"], k=k, v=v, mask=mask,
        is_causal=constant(args["is_causal"], "is_causal", (bool,)),
        scale=None if scale is None else float(constant(scale, "scale", (int, float))),
        internal=(node, *repeat_k, *repeat_v), notes=note_k + note_v,
    )
    _check_inputs(match)
    return match


# -- HF eager ----------------------------------------------------------------------------------------------------
def match_eager(softmax: torch.fx.Node) -> AttentionMatch:
    """HF eager attention around ``softmax``. Raises :class:`NoMatch` with the reason when it deviates."""
    args = call_args(softmax, "softmax")
    if args["dim"] not in (-1, 3):
        raise NoMatch(f"softmax over dim {args['dim']}, not the key dim")
    if args["dtype"] not in (None, torch.float32):
        raise NoMatch(f"softmax in {args['dtype']}, not float32")
    # Upstream: matmul(q, kᵀ) [* scale] [+ mask]
    scores, mask, internal = args["input"], None, [softmax]
    if _is_call_function(scores, (operator.add, torch.add)):
        internal.append(scores)
        scores, mask = _scores_and_mask(scores)
    scaled = scores
    qk, scale = _scores_and_scale(scores)
    if qk is not scaled:
        internal.append(scaled)
    if not is_call(qk, "matmul"):
        raise NoMatch(_between_scores_and_softmax(qk))
    internal.append(qk)
    qk_args = call_args(qk, "matmul")
    q, k_t = qk_args["input"], qk_args["other"]
    k = transposed_source(k_t)
    if k is None:
        raise NoMatch(f"second matmul operand {getattr(k_t, 'name', k_t)} is not kᵀ (its last two dims swapped)")
    internal.append(k_t)
    for node in internal[1:]:
        single_user(node, "score tensor")
    # Downstream: softmax [.to(dtype)] [dropout(p=0 / eval)] matmul(·, v)
    probs = softmax
    node = single_user(probs, "softmax probabilities")
    if node.op == "call_method" and node.target in ("to", "type_as", "type"):
        internal.append(node)
        probs, node = node, single_user(node, "softmax probabilities")
    if is_call(node, "dropout"):
        dropout = call_args(node, "dropout")
        p, training = dropout["p"], dropout["training"]
        if isinstance(p, torch.fx.Node) or isinstance(training, torch.fx.Node) or (p != 0 and training):
            raise NoMatch(f"dropout p={p} in training mode (left dense)")
        internal.append(node)
        probs, node = node, single_user(node, "softmax probabilities")
    pv_args = call_args(node, "matmul") if is_call(node, "matmul") else None
    if pv_args is None or pv_args["input"] is not probs:
        raise NoMatch(f"softmax probabilities flow into {describe(node)}, not matmul(probs, v)")
    (k, repeat_k, note_k), (v, repeat_v, note_v) = _native_kv(k, "key"), _native_kv(pv_args["other"], "value")
    match = AttentionMatch(
        layer=None, kind="eager", output=node, q=q, k=k, v=v, mask=mask, is_causal=False, scale=scale,
        internal=(node, *internal, *repeat_k, *repeat_v), notes=note_k + note_v,
    )
    _check_inputs(match)
    out, q_val = example_value(node), example_value(q)
    if out is None or out.dtype != q_val.dtype:
        raise NoMatch(f"attention output dtype {getattr(out, 'dtype', None)} differs from the query's {q_val.dtype}")
    return match


def _between_scores_and_softmax(node) -> str:
    """Why the op before the softmax is not attention the ops compute, naming the known variants: attention sinks
    (GPT-OSS concatenates extra logits to the scores) and logit softcapping (Gemma 2: tanh of the scores)."""
    seen, frontier = set(), [node]
    for _ in range(4):  # the variant's op lies a few nodes above the softmax's input
        found = [n for n in frontier if isinstance(n, torch.fx.Node) and (is_call(n, "cat") or is_call(n, "tanh"))]
        if found:
            kind = ("attention sinks (extra logits concatenated to the scores before the softmax)"
                    if is_call(found[0], "cat") else "logit softcapping (tanh of the scores before the softmax)")
            return f"{kind}: the hylra ops compute plain softmax attention"
        seen.update(n for n in frontier if isinstance(n, torch.fx.Node))
        frontier = [a for n in frontier if isinstance(n, torch.fx.Node) for a in n.all_input_nodes if a not in seen]
    return f"unsupported op {describe(node)} between QKᵀ and softmax"


def _is_call_function(node, targets: tuple) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in targets


def _scores_and_mask(add: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node]:
    """(scores, additive mask) of ``scores + mask``: the scores are the operand a QKᵀ matmul feeds."""
    if add.kwargs or len(add.args) != 2:
        raise NoMatch(f"{describe(add)} is not a plain two-operand add")
    a, b = add.args
    from_matmul = [_upstream_matmul(a), _upstream_matmul(b)]
    if all(from_matmul):
        raise NoMatch(f"both operands of {describe(add)} come from a matmul; cannot tell the scores from the mask")
    scores, mask = (a, b) if from_matmul[0] else (b, a)
    mask_val = example_value(mask)
    if mask_val is None or not mask_val.is_floating_point():
        raise NoMatch(f"additive mask {getattr(mask, 'name', mask)!r} is not a floating-point tensor")
    return scores, mask


def _scores_and_scale(node: torch.fx.Node) -> tuple[torch.fx.Node, float]:
    """Undo ``* scale`` / ``/ d`` on the QKᵀ product; returns (matmul node, scale)."""
    if _is_call_function(node, (operator.mul, torch.mul, operator.truediv, torch.div)) and node.kwargs:
        raise NoMatch(f"{describe(node)} has keyword arguments {dict(node.kwargs)}")
    if _is_call_function(node, (operator.mul, torch.mul)):
        a, b = node.args
        if isinstance(b, (int, float)) and isinstance(a, torch.fx.Node):
            return a, float(b)
        if isinstance(a, (int, float)) and isinstance(b, torch.fx.Node):
            return b, float(a)
        raise NoMatch(f"QKᵀ is scaled by {describe(node)}, not by a compile-time constant")
    if _is_call_function(node, (operator.truediv, torch.div)):
        a, b = node.args[:2]
        if isinstance(b, (int, float)) and b != 0 and isinstance(a, torch.fx.Node):
            return a, 1.0 / float(b)
        raise NoMatch(f"QKᵀ is divided by a non-constant ({node.name})")
    return node, 1.0


def _upstream_matmul(node, depth: int = 4) -> bool:
    """Whether a matmul feeds ``node`` within ``depth`` steps (tells scores from mask, and softmax from attention)."""
    if not isinstance(node, torch.fx.Node) or depth < 0:
        return False
    if is_call(node, "matmul"):
        return True
    return any(_upstream_matmul(arg, depth - 1) for arg in node.all_input_nodes)


def _downstream_matmul(node, depth: int = 4) -> bool:
    if depth < 0:
        return False
    if is_call(node, "matmul"):
        return True
    return any(_downstream_matmul(user, depth - 1) for user in node.users)


def _is_eager_candidate(node: torch.fx.Node) -> bool:
    """A softmax between two matmuls: attention, matched or not (a router softmax is not)."""
    if not is_call(node, "softmax"):
        return False
    return any(_upstream_matmul(arg, 6) for arg in node.all_input_nodes) and any(
        _downstream_matmul(user) for user in node.users
    )


# -- shared checks -----------------------------------------------------------------------------------------------
def _native_kv(node: torch.fx.Node, name: str) -> tuple[torch.fx.Node, list[torch.fx.Node], tuple[str, ...]]:
    """(native KV node, the repeat_kv nodes looked through, notes): a head repeat that is not HF's exact
    ``repeat_kv`` is taken as it is, and the note says the ops read the repeated copy."""
    native, repeat_nodes = look_through_repeat_kv(node)
    if repeat_nodes or not _looks_like_head_repeat(node):
        return native, repeat_nodes, ()
    return node, [], (f"{name} ({node.name}) repeats its heads in a way not looked through; the ops read the copy",)


def _looks_like_head_repeat(node) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op not in ("call_method", "call_function"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name in ("repeat_interleave", "repeat", "expand"):
        return True
    return name in ("reshape", "view") and _looks_like_head_repeat(node.args[0] if node.args else None)


def look_through_repeat_kv(node: torch.fx.Node) -> tuple[torch.fx.Node, list[torch.fx.Node]]:
    """If ``node`` is HF's ``repeat_kv(x)`` (``x[:, :, None].expand(...).reshape(...)``), return x and the three
    nodes; else ``node`` and no nodes."""
    if not isinstance(node, torch.fx.Node):
        return node, []
    if not ((node.op == "call_method" and node.target in ("reshape", "view")) or node.target is torch.reshape):
        return node, []
    expand = node.args[0]
    if not (isinstance(expand, torch.fx.Node) and expand.op == "call_method" and expand.target == "expand"):
        return node, []
    unsqueeze = expand.args[0]
    if len(expand.users) != 1 or not (_is_call_function(unsqueeze, (operator.getitem,)) and len(unsqueeze.users) == 1):
        return node, []
    full, index = slice(None, None, None), unsqueeze.args[1]
    if not isinstance(index, tuple) or index[:3] != (full, full, None) or any(i != full for i in index[3:]):
        return node, []  # x[:, :, None] with any number of trailing ':'

    source, repeated, expanded = unsqueeze.args[0], example_value(node), example_value(expand)
    source_val = example_value(source)
    if source_val is None or repeated is None or expanded is None:
        return node, []
    if (source_val.dim(), expanded.dim(), repeated.dim()) != (4, 5, 4):
        return node, []
    # Only a repeat of the heads: [B, H, S, D] -> [B, H, n, S, D] -> [B, H * n, S, D].
    B, H, S, D = source_val.shape
    n = expanded.shape[2]
    same = [statically_known_true(a == b) for a, b in zip(expanded.shape, (B, H, n, S, D))]
    same += [statically_known_true(a == b) for a, b in zip(repeated.shape, (B, H * n, S, D))]
    if not all(same):
        return node, []
    return source, [node, expand, unsqueeze]


def _check_inputs(match: AttentionMatch) -> None:
    """The ops must accept the match's inputs (:func:`reference.check_inputs`) and run it without autograd."""
    q, k, v, mask = (example_value(node) for node in (match.q, match.k, match.v, match.mask))
    if q is None or k is None or v is None or (match.mask is not None and mask is None):
        raise NoMatch("no example values recorded for q/k/v/mask")
    try:
        reference.check_inputs(q, k, v, mask, block_size=1, provable=True)
    except ValueError as err:
        raise NoMatch(str(err)) from None
    if any(t.requires_grad for t in (q, k, v)):
        raise NoMatch("inputs require grad; the hylra ops are inference-only (no autograd formula)")
