"""Route a transformers model's attention calls to a Python function, through HF's ``AttentionInterface``.

The profiler (records every layer's top-k sets) and the evaluator (runs a policy through the hylra ops, eagerly)
both need each layer's q, k, v, mask and scale as SDPA would get them; :func:`routed_attention` gives them one
:class:`AttentionCall` per layer and call, with no model code patched and no compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

from torch import Tensor

from .layers import module_layers

ATTENTION_NAME = "hylra_routed"

# The function the registered attention calls while routed_attention() runs (None otherwise), and the layer of
# each of the routed model's modules (hylra_compile.layers: the backend numbers layers the same way).
_active_handler: "Callable[[AttentionCall], Tensor] | None" = None
_active_layers: dict[int, int] = {}


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """One layer's attention as the hylra ops take it: ``query`` [B, Hq, Sq, D], ``key`` / ``value``
    [B, Hkv, Skv, D], ``mask`` (bool or additive, broadcastable to [B, Hq, Sq, Skv]) or None, ``is_causal`` (only
    where HF's SDPA would pass it: a multi-query step with no mask) and ``scale``."""

    layer: int
    query: Tensor
    key: Tensor
    value: Tensor
    mask: Tensor | None
    is_causal: bool
    scale: float | None


def attention_call(
    layer: int | None, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> AttentionCall:
    """Read one call of HF's attention-function signature made by ``module`` of ``layer``; refuse what the hylra
    ops cannot compute."""
    if any(kwargs.get(name) is not None for name in ("softcap", "position_bias", "s_aux")):
        raise ValueError("the hylra ops support plain softmax attention only (no softcap, position bias or sinks)")
    if dropout:
        raise ValueError(f"attention dropout {dropout} is active: run the model in eval mode (model.eval())")
    if layer is None:
        raise ValueError(
            f"attention module {type(module).__name__} has no layer number in its module path, or is shared by "
            "several layers; cannot tell its layer"
        )
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[2]]
    # Mirror sdpa_attention_forward: HF's sdpa mask is None exactly when plain causal masking applies.
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    is_causal = bool(query.shape[2] > 1 and mask is None and is_causal)
    return AttentionCall(layer, query, key, value, mask, is_causal, scaling)


def _routed_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """The function registered as ``hylra_routed``: output [B, S, Hq, Dv] as HF's attention functions return it."""
    if _active_handler is None:
        raise RuntimeError("the hylra_routed attention implementation only runs inside hylra_compile.routed_attention()")
    layer = _active_layers.get(id(module))
    out = _active_handler(attention_call(layer, module, query, key, value, attention_mask, *args, **kwargs))
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _routed_attention)
    # The same masks sdpa gets: a 4-d bool mask, or None where plain causal masking is enough.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


@contextlib.contextmanager
def routed_attention(model, handler: Callable[[AttentionCall], Tensor]) -> Iterator[None]:
    """Inside the block every attention call of ``model`` (a transformers ``PreTrainedModel``) runs
    ``handler(call)``, which returns the output [B, Hq, Sq, Dv]; the model's attention implementation is restored
    after. Not re-entrant."""
    global _active_handler, _active_layers
    if _active_handler is not None:
        raise RuntimeError("routed_attention() is already active; it does not nest")
    _register()
    original = model.config._attn_implementation
    try:
        model.set_attn_implementation(ATTENTION_NAME)
        _active_handler, _active_layers = handler, module_layers(model)
        yield
    finally:
        _active_handler, _active_layers = None, {}
        model.set_attn_implementation(original)
