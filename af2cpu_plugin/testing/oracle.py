"""Run a haiku module from ColabFold's AlphaFold as the reference.

``haiku_reference(build, *inputs)`` initialises the module inside
``hk.transform`` with ``zero_init=False`` style configs, perturbs the
constant arrays (see :mod:`af2cpu_plugin.random_params`), applies it in fp32
and returns ``(flat_params, output)``. The flat params use full haiku keys
(``scope//name``), ready for :func:`af2cpu_plugin.engine.params.bind_params`
with ``root`` set to the module's scope.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Tuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from ..engine.params import flatten, nested
from ..random_params import perturb_constant_arrays


def fp32_global_config(model_name: str = "model_3_ptm", **overrides: Any):
    """ColabFold's global_config for ``model_name`` (a monomer model by default), made fp32 and non-zero-init."""
    from alphafold.model import config

    gc = config.model_config(model_name).model.global_config
    gc.bfloat16 = False
    gc.zero_init = False
    gc.eval_dropout = False
    for k, v in overrides.items():
        gc[k] = v
    return gc


def fp32_multimer_global_config():
    """The same for AlphaFold-Multimer (model_1_multimer_v3's global_config: ``multimer_mode`` on)."""
    return fp32_global_config("model_1_multimer_v3")


def haiku_reference(build: Callable[..., Any], *inputs: np.ndarray, seed: int = 0) -> Tuple[Dict[str, np.ndarray], Any]:
    """Init + perturb + apply ``build(*inputs)`` under hk.transform; fp32."""
    import haiku as hk
    import jax

    fn = hk.transform(build)
    key = jax.random.PRNGKey(seed)
    params = fn.init(key, *inputs)
    flat = perturb_constant_arrays({k: np.asarray(v) for k, v in flatten(params).items()}, seed=seed)
    out = jax.jit(fn.apply)(nested(flat), key, *inputs)
    out = jax.tree_util.tree_map(np.asarray, out)
    return flat, out


def max_mean_abs(a: Any, b: Any) -> Tuple[float, float]:
    """max and mean |a-b| (both as float64 numpy)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d.max()), float(d.mean())


def as_tensor(x):
    """numpy -> torch for module tests: integers as int64, everything else float32 (a copy)."""
    import torch

    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return torch.from_numpy(x.astype(np.int64))
    return torch.from_numpy(np.asarray(x, np.float32).copy())


def assert_close(name: str, ours: Any, ref: Any, rel_tol: float = 1e-4) -> Tuple[float, float]:
    """Assert max |ours - ref| < rel_tol * max(1, max|ref|); print and return (max, mean) |Δ|."""
    if hasattr(ours, "detach"):
        ours = ours.detach().numpy()
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    assert np.isfinite(ours).all(), f"{name}: non-finite output"
    mx, mean = max_mean_abs(ours, ref)
    scale = max(1.0, float(np.abs(ref).max()))
    print(f"{name}: max|d|={mx:.3e} mean|d|={mean:.3e} (scale {scale:.2f})")
    assert mx < rel_tol * scale, f"{name}: max|d|={mx:.3e} mean|d|={mean:.3e} scale={scale:.3e}"
    return mx, mean
