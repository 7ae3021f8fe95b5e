"""Checking converted params against the arrays a model expects."""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

from ..engine.params import ParamsMismatch


def check_expected(flat: Mapping[str, object], expected: Optional[Mapping[str, Tuple[int, ...]]], source: str = "") -> None:
    """Raise :class:`~af2cpu_plugin.engine.params.ParamsMismatch` naming missing/unexpected/mis-shaped arrays.

    ``expected`` maps haiku keys to shapes (``engine.params.expected_params(model)``);
    ``None`` skips the check. ``source`` (a file name) prefixes the message.
    """
    if expected is None:
        return
    want = {k: tuple(v) for k, v in expected.items()}
    missing = sorted(set(want) - set(flat))
    unexpected = sorted(set(flat) - set(want))
    misshaped = sorted(
        f"{k} {tuple(np.shape(flat[k]))} != {want[k]}" for k in set(want) & set(flat) if tuple(np.shape(flat[k])) != want[k]
    )
    if missing or unexpected or misshaped:
        err = ParamsMismatch(missing, unexpected, misshaped)
        if source:
            err.args = (f"{source}: {err.args[0]}",)
        raise err
