"""Layer identity: which policy entry an attention call belongs to, one definition for the backend and profiler.

A call's layer is the last number in the qualified name of the module that runs it (``model.layers.3.self_attn``
-> 3; Dynamo spells the same path ``L['self'].model.layers[3].self_attn``). The backend reads that path from a
node's ``nn_module_stack``, the profiler and evaluator from ``model.named_modules()``: both see the same number,
including for models whose layers are skipped or numbered with gaps.
"""

from __future__ import annotations

import re

_NUMBER_IN_PATH = re.compile(r"[.\[](\d+)(?=[.\]]|$)")


def layer_of_path(path: str) -> int | None:
    """The last ``.N`` / ``[N]`` component of a module path, or None when it has none."""
    numbers = _NUMBER_IN_PATH.findall(str(path))
    return int(numbers[-1]) if numbers else None


def layer_of_node(node) -> int | None:
    """The layer of an FX node: the innermost module of its ``nn_module_stack`` whose path holds a number."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        layer = layer_of_path(path)
        if layer is not None:
            return layer
    return None


def module_layers(model) -> dict[int, int]:
    """``id(module) -> layer`` for every module of ``model`` whose path holds a number. A module registered
    under paths with different numbers (one attention module shared by several layers) is left out: its calls
    cannot be told apart by layer."""
    layers: dict[int, set[int]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        layer = layer_of_path("." + path)
        if layer is not None:
            layers.setdefault(id(module), set()).add(layer)
    return {key: next(iter(found)) for key, found in layers.items() if len(found) == 1}
