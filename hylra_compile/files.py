"""Output files that cannot lose a user's work: written whole or not at all, checked before long work starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable


def write_atomic(path: str | Path, data: str | bytes | Iterable[bytes],
                 verify: Callable[[], None] | None = None) -> None:
    """Write ``data`` (text, bytes, or chunks of bytes) to ``path`` through a temporary file in the same folder,
    renamed over ``path`` once complete and once ``verify()`` (when given) has not raised: a failed write or check
    leaves the old file (or none), never a truncated or unverified one."""
    path = Path(path)
    mode = "w" if isinstance(data, str) else "wb"
    chunks = [data] if isinstance(data, (str, bytes)) else data
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
        try:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            if verify is not None:
                verify()
        except BaseException:
            os.unlink(out.name)
            raise
    os.replace(out.name, path)


def check_writable_folder(folder: str | Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written (``what`` names the argument)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ValueError(f"{what} {str(folder)!r} cannot be written: {err.strerror or err}") from None


def check_output_file(path: str | Path, what: str, is_previous_output, force: bool = False) -> None:
    """Refuse, before any work, an output file whose folder cannot be written, or an existing file that
    ``is_previous_output(path)`` does not recognise as an earlier output of the same kind (unless ``force``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file")
    check_writable_folder(path.parent, f"the folder of {what}")
    if path.exists() and not force and not is_previous_output(path):
        raise ValueError(f"{what} {str(path)!r} exists and is not an earlier output of this kind: choose another "
                         "path, or pass --force to replace it")
