"""Where converted files go.

The converted ``.safetensors`` sits beside its ``.npz`` when that directory
is writable, else in the user cache dir: ``$AF2CPU_CACHE`` or
``~/.cache/af2cpu-plugin/params``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AF2CPU_CACHE"


def user_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "af2cpu-plugin" / "params"


def is_writable_dir(d: Path) -> bool:
    return d.is_dir() and os.access(d, os.W_OK | os.X_OK)
