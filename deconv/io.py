"""Writing outputs so that a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["RUN_MANIFEST", "atomic_write", "write_json", "write_text"]

RUN_MANIFEST = "deconv-run.json"
"""The manifest that makes a folder a deconv run folder (what it wrote there): see :mod:`deconv.commands.run_folder`."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it over ``path``.

    The file gets the permissions of any new file under the process's umask (``mkstemp``'s are 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically writes ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically writes ``data`` as indented JSON to ``path``."""
    return write_text(path, json.dumps(data, indent=1) + "\n")
