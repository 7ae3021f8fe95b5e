"""Loading AlphaFold2 params as torch tensors (flat haiku keys, fused layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from .errors import ConversionError
from .npz_to_safetensors import data_checksum
from .params_cache import LOG, LogSink, emit, ensure_converted
from .validate import check_expected


def load_params(npz_path, log: LogSink = LOG,
                expected: Optional[Mapping[str, Tuple[int, ...]]] = None) -> Dict[str, torch.Tensor]:
    """``{"scope//name": tensor}`` for ``npz_path``, converted once to a cached safetensors file.

    ``log`` is a logger or a callable taking a message (``logger.info``). Logs
    ``converted ... -> ...`` or ``reusing cached safetensors ...``. Loads
    with ``safetensors.torch.load_file`` (no pickle) and checks the data's
    checksum (written at conversion): a damaged cache is converted again, never used. The pages that
    check read are then handed back (:func:`.weight_pages.release_loaded`). ``expected``
    (``engine.params.expected_params(model)``) raises ``ParamsMismatch`` naming
    missing/unexpected/mis-shaped arrays.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    for attempt in range(2):
        path = ensure_converted(npz_path, log, expected=expected)
        flat = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("data_checksum")
        if recorded == data_checksum(flat):
            break
        # Damaged on disk since it was written (a flipped byte, a zeroed page): never used silently.
        del flat
        emit(log, "cached safetensors %s is damaged (its data no longer match their checksum): converting %s again",
             path, Path(npz_path).name)
        path.unlink(missing_ok=True)
    else:
        raise ConversionError(f"the converted params for {npz_path} fail their checksum right after conversion "
                              f"({path}) — check the disk or memory of this machine")
    check_expected(flat, expected, source=str(Path(npz_path)))
    from af2cpu_plugin.engine import weight_pages

    weight_pages.release_loaded(flat.values())  # the checksum made every page resident; binding reads them again
    return flat
