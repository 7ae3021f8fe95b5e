"""Loading AlphaFold2 params as torch tensors (flat haiku keys, fused layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from .params_cache import LOG, LogSink, ensure_converted
from .validate import check_expected


def load_params(npz_path, log: LogSink = LOG,
                expected: Optional[Mapping[str, Tuple[int, ...]]] = None) -> Dict[str, torch.Tensor]:
    """``{"scope//name": tensor}`` for ``npz_path``, converted once to a cached safetensors file.

    ``log`` is a logger or a callable taking a message (``logger.info``). Logs
    ``converted ... -> ...`` or ``reusing cached safetensors ...``. Loads
    with ``safetensors.torch.load_file`` (no pickle). ``expected``
    (``engine.params.expected_params(model)``) raises ``ParamsMismatch`` naming
    missing/unexpected/mis-shaped arrays.
    """
    from safetensors.torch import load_file

    path = ensure_converted(npz_path, log, expected=expected)
    flat = load_file(str(path))
    check_expected(flat, expected, source=str(Path(npz_path)))
    return flat
