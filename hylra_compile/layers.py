"""Layer identity: which policy entry an attention call belongs to, one definition for the backend and profiler.

A call's layer is the last number in the qualified name of the module that runs it (``model.layers.3.self_attn``
-> 3; Dynamo spells the same path ``L['self'].model.layers[3].self_attn``). The backend reads that path from a
node's ``nn_module_stack``, the profiler and evaluator from ``model.named_modules()``: both see the same number,
including for models whose layers are skipped or numbered with gaps.

:func:`traced_model` finds, while Dynamo compiles a frame, the model that frame belongs to, and what the graph
alone cannot tell of it: how many layers it has, which of them attend over a sliding window, which of its attention
modules are not causal, and the layer of a module whose path in the graph holds no number (a layer compiled on its
own: its qualified name in the model does).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Mapping

import torch

_NUMBER_IN_PATH = re.compile(r"[.\[](\d+)(?=[.\]]|$)")


def layer_of_path(path: str) -> int | None:
    """The last ``.N`` / ``[N]`` component of a module path, or None when it has none."""
    numbers = _NUMBER_IN_PATH.findall(str(path))
    return int(numbers[-1]) if numbers else None


# Dynamo leaves the compiled frame's own module (the self of a module's method) out of ``nn_module_stack``.
FRAME_MODULE = "L['self']"


def layer_of_node(node, named: Mapping[str, int] | None = None) -> int | None:
    """The layer of an FX node: the innermost module of its ``nn_module_stack`` whose path holds a number, or
    (``named``: path -> layer, :attr:`TracedModel.layers`) whose qualified name in the model does, the frame's own
    module last."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        layer = layer_of_path(path)
        if layer is None and named:
            layer = named.get(path)
        if layer is not None:
            return layer
    return named.get(FRAME_MODULE) if named else None


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


@dataclasses.dataclass(frozen=True)
class TracedModel:
    """What the model a Dynamo graph belongs to says of itself. ``num_layers``: its config's
    ``num_hidden_layers`` (None when no enclosing module has a config giving it, or the model is an
    encoder-decoder, whose count is the encoder's). ``causal``: each module path of
    the graph whose module carries an ``is_causal`` flag -> the flag (Hugging Face's attention modules do, and its
    SDPA integration reads it: False for a bidirectional encoder or cross-attention). ``layers``: each module path
    of the graph (and :data:`FRAME_MODULE`) -> the layer of the module's qualified name in the model
    (:func:`module_layers`), for a path that holds no number itself (a frame running one layer, compiled on its
    own after a graph break). ``sliding_windows``: each layer its config's ``layer_types`` calls
    ``sliding_attention`` -> the config's ``sliding_window`` (hybrid models: Gemma 2/3, Cohere2, ...)."""

    num_layers: int | None = None
    causal: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    layers: Mapping[str, int] = dataclasses.field(default_factory=dict)
    sliding_windows: Mapping[int, int] = dataclasses.field(default_factory=dict)


def traced_model(gm: torch.fx.GraphModule) -> TracedModel:
    """The model of the frame Dynamo is compiling into ``gm``: the outermost module, among the frame's locals and
    the ``self`` of the frames that called it, that holds a module the graph runs. A graph may hold only part of
    the model (graph breaks, one layer compiled on its own); the model is still there, in the calling frames.
    Outside a Dynamo compile (the passes run on a graph given directly), nothing is known."""
    frame_locals = _compiled_frame_locals()
    if frame_locals is None:
        return TracedModel()
    paths = {path for node in gm.graph.nodes for path, _ in (node.meta.get("nn_module_stack") or {}).values()}
    resolved = {path: _resolve(path, frame_locals) for path in paths | {FRAME_MODULE}}
    modules = {path: module for path, module in resolved.items() if isinstance(module, torch.nn.Module)}
    causal = {path: module.is_causal for path, module in modules.items()
              if isinstance(getattr(module, "is_causal", None), bool)}
    graph_modules = {id(module) for module in modules.values()}
    frame_modules = [value for value in frame_locals.values() if isinstance(value, torch.nn.Module)]
    enclosing = [module for module in frame_modules + _caller_modules()
                 if any(id(inner) in graph_modules for inner in module.modules())]
    named = module_layers(enclosing[-1]) if enclosing else {}
    layers = {path: named[id(module)] for path, module in modules.items() if id(module) in named}
    config = _model_config(enclosing)
    if config is None or getattr(config, "is_encoder_decoder", False):
        # An encoder-decoder's num_hidden_layers counts the encoder's layers; a policy governs the decoder's.
        return TracedModel(None, causal, layers)
    return TracedModel(config.num_hidden_layers, causal, layers, sliding_windows(config))


def _model_config(enclosing: list):
    """The config of the modules holding the graph's, innermost first: that of the outermost which gives a layer
    count (``num_hidden_layers``) or is an encoder-decoder's, or None."""
    # Outermost first: a wrapper without a config (torch.compile's OptimizedModule forwards attributes to the model)
    # gives way to the model inside it that has one.
    for module in reversed(enclosing):
        config = getattr(module, "config", None)
        num_layers = getattr(config, "num_hidden_layers", None)
        if getattr(config, "is_encoder_decoder", False) or (isinstance(num_layers, int)
                                                            and not isinstance(num_layers, bool)):
            return config
    return None


def sliding_windows(config) -> dict[int, int]:
    """Layer -> window of each layer ``config.layer_types`` names ``sliding_attention``, where the config gives a
    window (Qwen2's ``use_sliding_window=False`` leaves ``sliding_window`` None: no layer slides)."""
    window, layer_types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None)
    if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1
            and isinstance(layer_types, (list, tuple))):
        return {}
    return {layer: window for layer, kind in enumerate(layer_types) if kind == "sliding_attention"}


def window_within_top_k(window: int | None, top_k: int | None) -> bool:
    """Whether a layer with this sliding window (None: a global layer) is left as written at ``top_k``: its queries
    see at most ``window`` keys, so a selection of ``top_k`` keys would hold all of them, at no less cost."""
    return window is not None and top_k is not None and window <= top_k


def governed_layers(config, num_layers: int, top_k: int) -> list[int]:
    """The layers of a ``num_layers``-layer model with ``config`` that a policy governs at ``top_k``: every layer
    but the sliding-window ones :func:`window_within_top_k` leaves as written."""
    windows = sliding_windows(config)
    return [layer for layer in range(num_layers) if not window_within_top_k(windows.get(layer), top_k)]


def _compiled_frame_locals() -> dict | None:
    """The locals of the frame Dynamo is compiling (real objects, not its variable trackers), or None."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    try:
        return InstructionTranslator.current_tx().f_locals
    except AttributeError:  # no frame is being compiled
        return None


def _caller_modules() -> list:
    """The ``self`` of every frame on the Python stack that is a module, innermost first: the frames that called
    the one Dynamo compiles (its own frame is not on the stack yet)."""
    modules, frame = [], sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and all(owner is not seen for seen in modules):
            modules.append(owner)
        frame = frame.f_back
    return modules


# Dynamo's spelling of a module path: L['local'] then .attr, [index] or ['key'] steps.
_PATH_START = re.compile(r"L\['([^']+)'\]")
_PATH_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\['([^']*)'\]")


def _resolve(path: str, frame_locals: dict):
    """The object an ``nn_module_stack`` path names among the frame's locals, or None (a global, or a path that no
    longer resolves)."""
    start = _PATH_START.match(path)
    if start is None or start.group(1) not in frame_locals:
        return None
    value, position = frame_locals[start.group(1)], start.end()
    while position < len(path):
        step = _PATH_STEP.match(path, position)
        if step is None:
            return None
        attribute, index, key = step.groups()
        try:
            value = getattr(value, attribute) if attribute is not None else value[int(index) if key is None else key]
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        position = step.end()
    return value
