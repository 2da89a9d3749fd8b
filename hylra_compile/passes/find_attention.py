"""Pass 1: find every attention site in a Dynamo graph.

Two patterns, each a plain function with an explicit check (in the style of Inductor's ``fuse_attention``):

* :func:`match_sdpa` -- ``scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale,
  enable_gqa)`` as Dynamo records it.
* :func:`match_eager` -- Hugging Face's eager attention: ``matmul(q, kᵀ)`` → ``* scale`` → ``+ mask`` →
  ``softmax(dim=-1, dtype=float32)`` → ``.to(dtype)`` → ``dropout(p=0 or eval)`` → ``matmul(·, v)``.

In both, HF's ``repeat_kv`` (``x[:, :, None]`` → ``expand`` → ``reshape``) is looked through, so the ops get the
native KV heads and the repeated copy of the cache disappears. A call that is attention but does not match
exactly becomes a site with ``problem`` set: it stays dense and the report says why.
"""

from __future__ import annotations

import inspect
import operator
import re

import torch
import torch.fx
from torch._dynamo.utils import counters
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..lowering import reference
from ..report import AttentionSite
from .base import HylraPass, PassContext

SDPA_TARGETS = (torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention)
SOFTMAX_TARGETS = (torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax)
MATMUL_TARGETS = (torch.matmul, operator.matmul, torch.Tensor.matmul)
DROPOUT_TARGETS = (torch.nn.functional.dropout,)


def _sdpa_signature(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Argument names and defaults of ``scaled_dot_product_attention``, used to bind a call's args."""


def _functional_softmax_signature(input, dim=None, _stacklevel=3, dtype=None):
    """Argument names and defaults of ``torch.nn.functional.softmax``."""


def _softmax_signature(input, dim, dtype=None):
    """Argument names and defaults of ``torch.softmax`` / ``Tensor.softmax``."""


def _dropout_signature(input, p=0.5, training=True, inplace=False):
    """Argument names and defaults of ``torch.nn.functional.dropout``."""


class NoMatch(Exception):
    """The structure is attention but not one the ops can take; the message is the reason shown in the report."""


def _bind(signature_fn, node: torch.fx.Node) -> dict:
    # For a call_method node args[0] is the tensor, which binds to the first parameter like a function call.
    return inspect.signature(signature_fn).bind(*node.args, **node.kwargs).arguments


def example_value(node):
    """The example value Dynamo recorded for a node (a FakeTensor), or None."""
    if not isinstance(node, torch.fx.Node):
        return None
    return node.meta.get("example_value", node.meta.get("val"))


def _is_call(node, functions=(), methods=()) -> bool:
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def _describe(node: torch.fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target} ({node.name})"


def _single_user(node: torch.fx.Node, what: str) -> torch.fx.Node:
    users = list(node.users)
    if len(users) != 1:
        raise NoMatch(f"{what} ({node.name}) is used {len(users)} times; attention internals must not escape")
    return users[0]


def module_layer(node: torch.fx.Node) -> int | None:
    """The layer number in the innermost module path of ``nn_module_stack`` (``model.layers.3.self_attn`` -> 3)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        numbers = re.findall(r"[.\[](\d+)(?=[.\]]|$)", str(path))
        if numbers:
            return int(numbers[-1])
    return None


def look_through_repeat_kv(node: torch.fx.Node) -> tuple[torch.fx.Node, list[torch.fx.Node]]:
    """If ``node`` is HF's ``repeat_kv(x)`` (``x[:, :, None].expand(...).reshape(...)``), return x and the three nodes."""
    if not _is_call(node, (torch.reshape,), ("reshape", "view")):
        return node, []
    expand = node.args[0]
    if not _is_call(expand, (), ("expand",)) or len(expand.users) != 1:
        return node, []
    unsqueeze = expand.args[0]
    if not (_is_call(unsqueeze, (operator.getitem,)) and len(unsqueeze.users) == 1):
        return node, []
    index = unsqueeze.args[1]
    full = slice(None, None, None)
    if index != (full, full, None, full, full):
        return node, []
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


def _constant(value, name: str, types: tuple[type, ...]):
    if isinstance(value, torch.fx.Node) or not isinstance(value, types):
        raise NoMatch(f"{name}={value!r} is not a compile-time constant of type {'/'.join(t.__name__ for t in types)}")
    return value


def _check_qkv(site: AttentionSite) -> None:
    """The ops must accept the site's inputs (:func:`reference.check_inputs`) and run it without autograd."""
    q, k, v, mask = (example_value(node) for node in (site.q, site.k, site.v, site.mask))
    if q is None or k is None or v is None or (site.mask is not None and mask is None):
        raise NoMatch("no example values recorded for q/k/v/mask")
    try:
        reference.check_inputs(q, k, v, mask, block_size=1, provable=True)
    except ValueError as err:
        raise NoMatch(str(err)) from None
    if any(t.requires_grad for t in (q, k, v)):
        raise NoMatch("inputs require grad; the hylra ops are inference-only (no autograd formula)")


def match_sdpa(node: torch.fx.Node) -> AttentionSite:
    """An SDPA call. Raises :class:`NoMatch` with the reason when an argument is out of the ops' reach."""
    args = _bind(_sdpa_signature, node)
    site = AttentionSite(layer=-1, kind="sdpa", node=node, internal=[node], q=args["query"])
    dropout_p = _constant(args.get("dropout_p", 0.0), "dropout_p", (int, float))
    if dropout_p != 0:
        raise NoMatch(f"dropout_p={dropout_p} > 0 (training-mode attention is left dense)")
    site.is_causal = _constant(args.get("is_causal", False), "is_causal", (bool,))
    scale = args.get("scale")
    site.scale = None if scale is None else float(_constant(scale, "scale", (int, float)))
    mask = args.get("attn_mask")
    if mask is not None and not isinstance(mask, torch.fx.Node):
        raise NoMatch(f"attn_mask {mask!r} is not a tensor")
    site.mask = mask
    _constant(args.get("enable_gqa", False), "enable_gqa", (bool,))
    for name in ("key", "value"):
        native, repeat_nodes = look_through_repeat_kv(args[name])
        setattr(site, name[0], native)
        site.internal += repeat_nodes
    _check_qkv(site)
    return site


def _scores_and_scale(node: torch.fx.Node) -> tuple[torch.fx.Node, float]:
    """Undo ``* scale`` / ``/ d`` on the QKᵀ product; returns (matmul node, scale)."""
    if _is_call(node, (operator.mul, torch.mul, operator.truediv, torch.div)) and node.kwargs:
        raise NoMatch(f"{_describe(node)} has keyword arguments {dict(node.kwargs)}")
    if _is_call(node, (operator.mul, torch.mul)):
        a, b = node.args
        if isinstance(b, (int, float)) and isinstance(a, torch.fx.Node):
            return a, float(b)
        if isinstance(a, (int, float)) and isinstance(b, torch.fx.Node):
            return b, float(a)
        raise NoMatch(f"QKᵀ is scaled by {_describe(node)}, not by a compile-time constant")
    if _is_call(node, (operator.truediv, torch.div)):
        a, b = node.args[:2]
        if isinstance(b, (int, float)) and b != 0 and isinstance(a, torch.fx.Node):
            return a, 1.0 / float(b)
        raise NoMatch(f"QKᵀ is divided by a non-constant ({node.name})")
    return node, 1.0


def _is_transpose_last_two(node) -> bool:
    if _is_call(node, (torch.transpose,), ("transpose",)):
        dims = {int(d) % 4 for d in node.args[1:3] if isinstance(d, int)}
        return dims == {2, 3}
    return False


def match_eager(softmax: torch.fx.Node) -> AttentionSite:
    """HF eager attention around ``softmax``. Raises :class:`NoMatch` with the reason when it deviates."""
    is_functional = softmax.op == "call_function" and softmax.target is torch.nn.functional.softmax
    args = _bind(_functional_softmax_signature if is_functional else _softmax_signature, softmax)
    dim = args.get("dim")
    if dim not in (-1, 3):
        raise NoMatch(f"softmax over dim {dim}, not the key dim")
    if args.get("dtype") not in (None, torch.float32):
        raise NoMatch(f"softmax in {args['dtype']}, not float32")
    # Upstream: [matmul(q, kᵀ) (* scale)] (+ mask)
    scores, mask, internal = args["input"], None, [softmax]
    if _is_call(scores, (operator.add, torch.add)):
        if scores.kwargs:
            raise NoMatch(f"{_describe(scores)} has keyword arguments {dict(scores.kwargs)}")
        internal.append(scores)
        a, b = scores.args[:2]
        scores, mask = (a, b) if _upstream_matmul(a) else (b, a)
        mask_val = example_value(mask)
        if mask_val is None or not mask_val.is_floating_point():
            raise NoMatch(f"additive mask {getattr(mask, 'name', mask)!r} is not a floating-point tensor")
    scaled = scores
    qk, scale = _scores_and_scale(scores)
    if qk is not scaled:
        internal.append(scaled)
    if not _is_call(qk, MATMUL_TARGETS):
        raise NoMatch(f"unsupported op {_describe(qk)} between QKᵀ and softmax (e.g. softcapping)")
    internal.append(qk)
    q, k_t = qk.args[:2]
    if not _is_transpose_last_two(k_t):
        raise NoMatch(f"second matmul operand {k_t.name} is not kᵀ (transpose of the last two dims)")
    internal.append(k_t)
    for node in internal[1:]:
        _single_user(node, "score tensor")
    # Downstream: softmax (.to(dtype)) (dropout(p=0 / eval)) matmul(·, v)
    probs = softmax
    node = _single_user(probs, "softmax probabilities")
    if _is_call(node, (), ("to", "type_as", "type")):
        internal.append(node)
        probs, node = node, _single_user(node, "softmax probabilities")
    if _is_call(node, DROPOUT_TARGETS):
        dropout = _bind(_dropout_signature, node)
        p, training = dropout.get("p", 0.5), dropout.get("training", True)
        if isinstance(p, torch.fx.Node) or isinstance(training, torch.fx.Node) or (p != 0 and training):
            raise NoMatch(f"dropout p={p} in training mode (left dense)")
        internal.append(node)
        probs, node = node, _single_user(node, "softmax probabilities")
    if not _is_call(node, MATMUL_TARGETS) or node.args[0] is not probs:
        raise NoMatch(f"softmax probabilities flow into {_describe(node)}, not matmul(probs, v)")
    site = AttentionSite(layer=-1, kind="eager", node=node, q=q, mask=mask, scale=scale, is_causal=False)
    site.internal = [node, *internal]
    site.k, repeat_k = look_through_repeat_kv(k_t.args[0])
    site.v, repeat_v = look_through_repeat_kv(node.args[1])
    site.internal += repeat_k + repeat_v
    _check_qkv(site)
    out, q_val = example_value(node), example_value(q)
    if out is None or out.dtype != q_val.dtype:
        raise NoMatch(f"attention output dtype {getattr(out, 'dtype', None)} differs from the query's {q_val.dtype}")
    return site


def _upstream_matmul(node, depth: int = 4) -> bool:
    """Whether a matmul feeds ``node`` within ``depth`` steps (tells scores from mask, and softmax from attention)."""
    if not isinstance(node, torch.fx.Node) or depth < 0:
        return False
    if _is_call(node, MATMUL_TARGETS):
        return True
    return any(_upstream_matmul(arg, depth - 1) for arg in node.all_input_nodes)


def _downstream_matmul(node, depth: int = 4) -> bool:
    if depth < 0:
        return False
    if _is_call(node, MATMUL_TARGETS):
        return True
    return any(_downstream_matmul(user, depth - 1) for user in node.users)


def _is_eager_candidate(node: torch.fx.Node) -> bool:
    """A softmax between two matmuls: attention, matched or not (a router softmax is not)."""
    if not _is_call(node, SOFTMAX_TARGETS, ("softmax",)):
        return False
    return _upstream_matmul(node.args[0] if node.args else None, 6) and any(
        _downstream_matmul(user) for user in node.users
    )


class FindAttentionPass(HylraPass):
    """Fill ``ctx.report.sites`` with every attention site, in layer order."""

    name = "find_attention"

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None:
        sites = []
        for position, node in enumerate(gm.graph.nodes):
            if _is_call(node, SDPA_TARGETS):
                kind, matcher = "sdpa", match_sdpa
            elif _is_eager_candidate(node):
                kind, matcher = "eager", match_eager
            else:
                continue
            try:
                site = matcher(node)
                counters["hylra"][f"{kind}_matched"] += 1
            except NoMatch as err:
                site = AttentionSite(layer=-1, kind=kind, node=node, problem=str(err))
                counters["hylra"][f"{kind}_unmatched"] += 1
            site.module_layer = module_layer(node)
            sites.append((position, site))
        numbers = [site.module_layer for _, site in sites]
        if None not in numbers and len(set(numbers)) == len(numbers):
            sites.sort(key=lambda item: item[1].module_layer)  # else graph order
        for layer, (_, site) in enumerate(sites):
            site.layer = layer
        ctx.report.sites = [site for _, site in sites]
