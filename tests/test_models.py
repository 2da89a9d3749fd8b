"""hylra_compile.models: the KV cache argument's name across transformers versions."""

from __future__ import annotations

import inspect
import warnings

import torch
from transformers import StaticCache

from hylra_compile.models import cache_argument
from tests.tiny_models import tiny_model


def test_cache_argument_is_the_one_forward_takes_without_a_deprecation_warning():
    """The name is a parameter of the model's forward (``cache`` from transformers 5.24, ``past_key_values``
    before), the same for the torch.compile'd model, and a call with it warns about nothing."""
    model = tiny_model("llama", num_layers=2)
    name = cache_argument(model)
    assert name in inspect.signature(model.forward).parameters
    assert cache_argument(torch.compile(model)) == name
    cache = StaticCache(config=model.config, max_cache_len=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        output = model(torch.zeros(1, 4, dtype=torch.long), use_cache=True, **{name: cache})
    assert getattr(output, name) is cache
