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

#: Bumped whenever the converted arrays or their layout change; cached files
#: with another version are converted again.
CONVERTER_FORMAT_VERSION = "1"


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

    Metadata: ``source_file``, ``source_sha256``, ``converter_version``, ``layout``.
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
    atomic_write(out_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return out_path
