"""sha256 of a params file, remembered in a small sidecar so unchanged files are not re-hashed.

The sidecar (json: size, mtime_ns, sha256) lives beside the file
(``.<name>.sha256.json``) or, when that directory is read-only, in the user
cache dir. It is only a shortcut: a changed size or mtime means hashing again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from af2cpu_plugin.atomic import atomic_write_bytes

from .cache_dirs import user_cache_dir

_CHUNK = 1 << 22


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sidecars(path: Path):
    yield path.parent / f".{path.name}.sha256.json"
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    yield user_cache_dir() / "hashes" / f"{path.name}.{key}.json"


def _read(sidecar: Path, size: int, mtime_ns: int) -> Optional[str]:
    try:
        d = json.loads(sidecar.read_text())
        if d.get("size") == size and d.get("mtime_ns") == mtime_ns and len(d.get("sha256", "")) == 64:
            return d["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    return None


def file_sha256(path) -> str:
    """The content hash of ``path``; reuses a sidecar whose size and mtime still match."""
    path = Path(path)
    st = path.stat()
    for sidecar in _sidecars(path):
        digest = _read(sidecar, st.st_size, st.st_mtime_ns)
        if digest:
            return digest
    digest = sha256_of(path)
    record = json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}).encode()
    for sidecar in _sidecars(path):
        try:
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(sidecar, record)
            break
        except OSError:
            continue
    return digest
