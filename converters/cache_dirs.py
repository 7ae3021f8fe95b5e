"""Where converted files go, and atomic writes.

The converted ``.safetensors`` sits beside its ``.npz`` when that directory
is writable, else in the user cache dir: ``$AF2CPU_CACHE`` or
``~/.cache/af2cpu-plugin/params``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "AF2CPU_CACHE"


def user_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "af2cpu-plugin" / "params"


def is_writable_dir(d: Path) -> bool:
    return d.is_dir() and os.access(d, os.W_OK | os.X_OK)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_name)`` into a temp file beside ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)
