"""``generate()`` through hylra: the prompt's prefill and every decode step run rewritten graphs.

Hugging Face's ``generate()`` compiles only its decode step (``compile_config``), and only with a static cache on
an accelerator; the prompt's prefill, where most of a long prompt's time goes, runs eagerly.
:func:`compile_for_generate` instead routes the model's own ``forward`` by step:

* **prefill** (any call with more than one new token, chunked or not, and any call without a static cache): one
  graph compiled with dynamic shapes, so prompts of every length share it (no recompile per length);
* **decode** (one new token into a static cache): a graph with static shapes, replayed as CUDA graphs on CUDA.

Both are rewritten by the same policy and options. ``generate()`` itself is untouched: sampling, stopping criteria,
padding and ``max_new_tokens`` behave as in plain ``generate()``, whose own compile is switched off
(``generation_config.disable_compile``) so it does not wrap the routed forward a second time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .backend import HylraBackend
from .report import GraphReport

# What compile_for_generate changes on the model's generation_config, and the values it sets.
_GENERATION_SETTINGS = {"disable_compile": True}


class GenerateCompilation:
    """What :func:`compile_for_generate` did to a model: its two backends (``prefill``, ``decode``; each keeps its
    graphs and reports) and :meth:`restore`, which puts the model back as it was."""

    def __init__(self, model: torch.nn.Module, options: dict[str, Any], decode_cudagraphs: bool):
        self.model = model
        self.prefill = HylraBackend(name="prefill", **{**options, "cudagraphs": False})
        self.decode = HylraBackend(name="decode", **{**options, "cudagraphs": decode_cudagraphs})
        self._forward = model.forward
        forward = self._forward

        # Two functions, two code objects: Dynamo keeps its cache and its shape history per code object, so the
        # decode graph never inherits the prefill graph's dynamic lengths.
        def prefill_step(*args: Any, **kwargs: Any) -> Any:
            return forward(*args, **kwargs)

        def decode_step(*args: Any, **kwargs: Any) -> Any:
            return forward(*args, **kwargs)

        self._run_prefill = torch.compile(prefill_step, backend=self.prefill)
        self._run_decode = torch.compile(decode_step, backend=self.decode, dynamic=False)
        config = model.generation_config
        self._saved = {name: getattr(config, name) for name in _GENERATION_SETTINGS}

    def reports(self) -> list[GraphReport]:
        """The report of every graph compiled so far, prefill graphs then decode graphs (names ``prefill_*`` and
        ``decode_*``)."""
        return self.prefill.reports + self.decode.reports

    def route(self, *args: Any, **kwargs: Any) -> Any:
        """The model's ``forward``, run by the decode graph for one new token into a static cache, by the prefill
        graph otherwise."""
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None:  # the model's own forward says what is missing
            return self._run_prefill(*args, **kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 | before
        static = getattr(cache, "is_compileable", False)
        if static and tokens.shape[1] == 1:
            return self._run_decode(*args, **kwargs)
        if static:
            initialise_static_cache(self.model, cache, batch_size=tokens.shape[0])
        _mark_token_dims_dynamic(tokens, kwargs)
        return self._run_prefill(*args, **kwargs)

    def restore(self) -> None:
        """Give the model back its own ``forward`` and generation settings (a second call does nothing)."""
        if "forward" not in vars(self.model):
            return
        del self.model.forward
        for name, value in self._saved.items():
            setattr(self.model.generation_config, name, value)


def initialise_static_cache(model: torch.nn.Module, cache: Any, batch_size: int) -> None:
    """Allocate a fresh static cache's tensors now, outside the prefill graph, as Hugging Face does before a compiled
    chunked prefill: allocated inside a graph they would get symbolic lengths, and no static address, which the
    decode graph's static shapes and CUDA graphs need."""
    if all(layer.is_initialized for layer in cache.layers):
        return
    init_shape = model._get_static_cache_init_shape()  # (KV heads per rank, head dim); None: not on one device
    if init_shape is not None:
        num_heads, head_dim = init_shape
        cache.early_initialization(batch_size=batch_size, num_heads=num_heads, head_dim=head_dim,
                                   dtype=model.dtype, device=model.device)


# The token dimension of forward's per-token inputs, by their number of dimensions: marked dynamic before the first
# prefill is compiled, so prompts of every length share its graph (sizes 0 and 1 stay specialised, as Dynamo always
# does). generate() gives a static cache a 4-d mask [B, 1, new tokens, cache length], else a 2-d one [B, all tokens].
_TOKEN_DIMS = {"attention_mask": {2: 1, 4: 2}, "position_ids": {2: 1, 3: 2}, "cache_position": {1: 0}}


def _mark_token_dims_dynamic(tokens: torch.Tensor, kwargs: dict[str, Any]) -> None:
    torch._dynamo.maybe_mark_dynamic(tokens, 1)
    for name, dims in _TOKEN_DIMS.items():
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() in dims:
            torch._dynamo.maybe_mark_dynamic(value, dims[value.dim()])


def compile_for_generate(model: torch.nn.Module, *, decode_cudagraphs: bool | None = None,
                         **options: Any) -> GenerateCompilation:
    """Make ``model.generate()`` run its prefill and its decode steps through the hylra backend.

    ``options``: the backend's (``policy``, ``top_k``, ``block_size``, …, as ``torch.compile(...,
    options={...})`` takes them; ``cudagraphs`` is not one of them here). ``decode_cudagraphs``: replay decode
    steps as CUDA graphs (default: when the model is on CUDA); prefill graphs never are (their shapes vary).

    Decode steps run the static decode graph with a static cache (``generate(..., cache_implementation="static")``
    or a ``StaticCache`` passed as ``cache``; ``past_key_values`` before transformers 5.24); with a dynamic cache
    they run the prefill graph (still rewritten, never CUDA graphs). The decode CUDA graph holds the static cache's
    addresses: reuse one cache across calls (``cache_implementation="static"`` does; a passed ``StaticCache`` is
    ``reset()`` between calls), since a new cache's first decode step records the graph again. The model's
    generation config gets ``disable_compile=True``. Returns a :class:`GenerateCompilation` (reports,
    ``restore()``).
    """
    if "cudagraphs" in options:
        raise ValueError(
            "compile_for_generate takes decode_cudagraphs=..., not cudagraphs: prefill graphs (varying shapes) are "
            "never replayed as CUDA graphs, decode graphs are by default on CUDA"
        )
    if not hasattr(model, "generate") or not hasattr(model, "generation_config"):
        raise TypeError(f"compile_for_generate needs a transformers generation model, got {type(model).__name__}")
    if "forward" in vars(model):
        raise ValueError(
            "model.forward is already replaced on this instance (compile_for_generate called twice?); call "
            ".restore() on the earlier GenerateCompilation first"
        )
    if decode_cudagraphs is None:
        decode_cudagraphs = next(model.parameters()).device.type == "cuda"
    compilation = GenerateCompilation(model, options, decode_cudagraphs)
    # functools.wraps keeps forward's signature, which generate() inspects (cache_position, logits_to_keep, …).
    # An outer torch.compile (or generate()'s own, re-enabled) does not trace into it: it runs its own graphs.
    @torch.compiler.disable
    @functools.wraps(compilation._forward)
    def routed_forward(*args: Any, **kwargs: Any) -> Any:
        return compilation.route(*args, **kwargs)

    model.forward = routed_forward
    for name, value in _GENERATION_SETTINGS.items():
        setattr(model.generation_config, name, value)
    return compilation
