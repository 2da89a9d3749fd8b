"""Texts that ship with Python itself, so that profiling and evaluation need no download.

``builtin:prose``: the language and library reference topics of ``pydoc`` (``pydoc_data.topics``, ~110K tokens of
English technical prose, sorted by topic). ``builtin:code``: the source of a fixed list of standard-library
modules (Python code with docstrings). Both depend on the Python version; results name it.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

PREFIX = "builtin:"
CODE_MODULES = ("argparse", "inspect", "dataclasses", "typing", "textwrap", "fractions", "statistics", "shutil")


def builtin_names() -> list[str]:
    return [PREFIX + name for name in ("prose", "code")]


def builtin_text(name: str) -> str:
    """The text of ``builtin:prose`` or ``builtin:code``."""
    if name == PREFIX + "prose":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if name == PREFIX + "code":
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        return "\n\n".join((stdlib / f"{module}.py").read_text() for module in CODE_MODULES)
    raise ValueError(f"unknown built-in text {name!r}; valid ones are {builtin_names()}")
