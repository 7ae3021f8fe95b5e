"""Random AlphaFold2 weights in the exact format of the real ones.

Real weights cannot be downloaded everywhere (CI, air-gapped clusters), so the
demo and the tests make random ones: haiku's own initialisers on ColabFold's
real config with ``zero_init=False`` (with AF2's zero init the trunk is the
identity and every atom sits at the origin), then small noise on the arrays
that init leaves constant. The noise on biases and offsets stays tiny: larger
position-shared terms swamp the pair track and PAE/pLDDT collapse to one value.
"""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

GATING_WEIGHT_STD = 0.02
SCALE_JITTER = 0.1
BIAS_STD = 0.005


def _is_bias_like(name: str) -> bool:
    return name in ("offset", "gating_b") or name.endswith("bias") or name.endswith("_b")


def perturb_constant_arrays(flat: Mapping[str, np.ndarray], seed: int = 0) -> Dict[str, np.ndarray]:
    """Add noise to every array that haiku init left constant.

    ``flat`` maps ``scope//name`` to arrays. LayerNorm scales are multiplied
    by 1±0.1, biases/offsets get N(0, 0.005), constant weights (gating) get
    N(0, 0.02). Arrays with any variation are returned unchanged.
    """
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    for key in sorted(flat):
        a = np.asarray(flat[key], dtype=np.float32)
        name = key.split("//")[-1]
        if a.size > 0 and np.all(a == a.flat[0]):
            if name == "scale":
                a = a * rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER, a.shape).astype(np.float32)
            elif _is_bias_like(name):
                a = a + rng.normal(0.0, BIAS_STD, a.shape).astype(np.float32)
            else:
                a = a + rng.normal(0.0, GATING_WEIGHT_STD, a.shape).astype(np.float32)
        out[key] = a
    return out
