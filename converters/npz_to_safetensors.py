"""npz (released AlphaFold2 layout) -> safetensors (fused haiku layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from af2cpu_plugin.atomic import atomic_write
from .errors import ConversionError
from .fuse import fuse_triangle_multiplication
from .hashing import file_sha256
from .npz_reader import read_npz
from .validate import check_expected

#: Bumped whenever the converted arrays, their layout or the metadata change; cached files
#: with another version are converted again. 2: a checksum of the tensor data.
CONVERTER_FORMAT_VERSION = "2"


def data_checksum(tensors: Mapping[str, object]) -> str:
    """A checksum of every tensor's bytes (numpy arrays or CPU torch tensors), in key order.

    The cache sits on shared file systems for months; a flipped or zeroed
    byte must not go unnoticed, and a cryptographic hash of 370 MB on every
    load is too slow for that job. Each tensor's bytes are summed as 64-bit
    words (mod 2^64) and XORed: one flipped bit changes the sum by ±2^k, a
    zeroed run changes it unless its words summed to 0 mod 2^64; the names,
    dtypes and shapes go in too. About 0.1 s for a model on 2 cores.
    """
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        a = t.numpy() if hasattr(t, "numpy") else np.asarray(t)  # a torch tensor (a view), or numpy already
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        words, tail = raw[: raw.size // 8 * 8].view(np.uint64), raw[raw.size // 8 * 8:]
        total = int(np.add.reduce(words, dtype=np.uint64)) if words.size else 0
        xor = int(np.bitwise_xor.reduce(words)) if words.size else 0
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|{total:x}|{xor:x}|{tail.tobytes().hex()};".encode())
    return digest.hexdigest()


def convert_arrays(npz_path, expected: Optional[Mapping[str, Tuple[int, ...]]] = None) -> Dict[str, np.ndarray]:
    """Read ``npz_path`` and return its arrays in the fused layout (validated against ``expected``)."""
    npz_path = Path(npz_path)
    arrays = read_npz(npz_path)
    try:
        fused = fuse_triangle_multiplication(arrays)
    except ConversionError as e:
        raise ConversionError(f"{npz_path}: {e}") from None
    check_expected(fused, expected, source=str(npz_path))
    return fused


def convert_npz(npz_path, out_path, expected: Optional[Mapping[str, Tuple[int, ...]]] = None,
                sha256: Optional[str] = None) -> Path:
    """Convert ``npz_path`` into ``out_path`` (``.safetensors``), written atomically.

    Metadata: ``source_file``, ``source_sha256``, ``converter_version``, ``layout``, ``data_checksum``
    (:func:`data_checksum`, checked on every load).
    """
    from safetensors.numpy import save_file

    npz_path, out_path = Path(npz_path), Path(out_path)
    fused = convert_arrays(npz_path, expected)
    metadata = {
        "format": "np",
        "layout": "haiku-flat-fused-triangle-multiplication",
        "source_file": npz_path.name,
        "source_sha256": sha256 or file_sha256(npz_path),
        "converter_version": CONVERTER_FORMAT_VERSION,
    }
    tensors = {k: np.ascontiguousarray(v) for k, v in fused.items()}
    metadata["data_checksum"] = data_checksum(tensors)
    atomic_write(out_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return out_path
