"""Converted-params cache: one ``.safetensors`` per npz content hash.

``params_model_1_ptm.npz`` converts to ``params_model_1_ptm.<sha256[:16]>.safetensors``
beside it, or in the user cache dir when the params dir is read-only. A
cached file counts only if its metadata names the same source hash and
converter version; otherwise it is converted again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Tuple, Union

from .cache_dirs import is_writable_dir, user_cache_dir
from .errors import ConversionError
from .hashing import file_sha256
from .npz_reader import DOWNLOAD_FIX
from .npz_to_safetensors import CONVERTER_FORMAT_VERSION, convert_npz

LOG = logging.getLogger("af2cpu_plugin.converters")

#: A logger, or any callable taking one message string (``logger.info``, ``print``).
LogSink = Union[logging.Logger, Callable[[str], object]]


def emit(log: LogSink, msg: str, *args: object) -> None:
    """Send ``msg % args`` to a logger (at INFO) or a plain callable."""
    if isinstance(log, logging.Logger) or hasattr(log, "info"):
        log.info(msg, *args)
    else:
        log(msg % args if args else msg)


def converted_name(npz_path: Path, sha256: str) -> str:
    return f"{Path(npz_path).stem}.{sha256[:16]}.safetensors"


def _candidates(npz_path: Path, sha256: str) -> Iterator[Path]:
    name = converted_name(npz_path, sha256)
    yield npz_path.parent / name
    yield user_cache_dir() / name


def _is_valid(path: Path, sha256: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except Exception:  # missing, truncated or foreign file
        return False
    return meta.get("source_sha256") == sha256 and meta.get("converter_version") == CONVERTER_FORMAT_VERSION


def find_cached(npz_path, sha256: Optional[str] = None) -> Optional[Path]:
    """The valid converted file for ``npz_path``, if any."""
    npz_path = Path(npz_path)
    sha256 = sha256 or file_sha256(npz_path)
    for path in _candidates(npz_path, sha256):
        if path.is_file() and _is_valid(path, sha256):
            return path
    return None


def _stat_or_raise(npz_path: Path) -> None:
    if not npz_path.is_file():
        raise ConversionError(f"params file {npz_path} not found — {DOWNLOAD_FIX}")
    try:
        with open(npz_path, "rb"):
            pass
    except PermissionError as e:
        raise ConversionError(f"cannot read params file {npz_path} ({e.strerror}) — fix its permissions (chmod a+r)") from None


def ensure_converted(npz_path, log: LogSink = LOG,
                     expected: Optional[Mapping[str, Tuple[int, ...]]] = None) -> Path:
    """The converted ``.safetensors`` for ``npz_path``, converting it first if no valid one is cached."""
    npz_path = Path(npz_path)
    _stat_or_raise(npz_path)
    sha256 = file_sha256(npz_path)
    cached = find_cached(npz_path, sha256)
    if cached is not None:
        emit(log, "reusing cached safetensors %s (for %s)", cached, npz_path.name)
        return cached
    params_dir = npz_path.parent
    if is_writable_dir(params_dir):
        out = params_dir / converted_name(npz_path, sha256)
    else:
        cache = user_cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConversionError(
                f"cannot convert {npz_path}: {params_dir} is read-only and the cache dir {cache} cannot be created "
                f"({e.strerror}) — set AF2CPU_CACHE to a writable directory") from None
        out = cache / converted_name(npz_path, sha256)
    # One conversion per file however many processes start at once (several `af2cpu batch` runs, or the
    # workers of one, on a shared data dir): the first converts under the lock, the others wait and reuse
    # its file. The write itself is atomic (a temporary file renamed), so a conversion killed midway leaves
    # nothing a later run would load.
    from filelock import FileLock

    try:
        with FileLock(str(out) + ".lock", timeout=1800):
            if out.is_file() and _is_valid(out, sha256):
                emit(log, "reusing cached safetensors %s (for %s; converted meanwhile by another process)",
                     out, npz_path.name)
                return out
            convert_npz(npz_path, out, expected=expected, sha256=sha256)
    except PermissionError as e:
        raise ConversionError(
            f"cannot write {out} ({e.strerror}) — set AF2CPU_CACHE to a writable directory") from None
    emit(log, "converted %s -> %s", npz_path, out)
    return out


def convert_data_dir(data_dir, log: LogSink = LOG) -> List[Path]:
    """Convert every ``params_model_*.npz`` in ``<data_dir>/params`` (``af2cpu convert --data DIR``).

    Returns the converted files' paths, ``[]`` when there is no npz to convert.
    """
    params_dir = Path(data_dir) / "params"
    files = sorted(params_dir.glob("params_model_*.npz"))
    return [ensure_converted(f, log) for f in files]
