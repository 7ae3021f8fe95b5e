"""Opt-in: the ``Linear`` GEMMs through intel-extension-for-pytorch (``RuntimePolicy.kernels="ipex"``).

IPEX is archived upstream and its last CPU release (2.8.0) needs torch 2.8,
so it lives in its own venv (``scripts/setup-ipex.sh``), never in the default
one. There the cpu backend picks it when it is importable and built for the
running torch (:func:`status`); the choice is recorded in ``config.json``.
Measured on the machines we have, stock PyTorch's oneDNN kernels are faster
(README), which is why stock stays the default.

Each weight is prepacked once by ``ipex.optimize`` (IPEX's blocked layout for
its oneDNN linear) and reused; everything but ``Linear`` runs on stock torch.
"""

from __future__ import annotations

import functools
import weakref
from typing import Dict, Optional, Tuple

import torch


@functools.lru_cache(maxsize=1)
def status() -> Tuple[bool, str]:
    """(usable, why): IPEX importable and built for this torch's major.minor."""
    try:
        import intel_extension_for_pytorch as ipex
    except Exception as exc:  # ImportError, or IPEX refusing a torch it was not built for
        return False, f"intel-extension-for-pytorch not importable ({type(exc).__name__})"
    want = ".".join(torch.__version__.split(".")[:2])
    have = ".".join(ipex.__version__.split(".")[:2])
    if want != have:
        return False, f"intel-extension-for-pytorch {ipex.__version__} does not match torch {torch.__version__}"
    return True, f"intel-extension-for-pytorch {ipex.__version__}"


_PACKED: Dict[int, torch.nn.Module] = {}


def _packed(weight_t: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.nn.Module:
    key = id(weight_t)
    module = _PACKED.get(key)
    if module is None:
        import intel_extension_for_pytorch as ipex

        lin = torch.nn.Linear(weight_t.shape[1], weight_t.shape[0], bias=bias is not None, dtype=weight_t.dtype)
        with torch.no_grad():
            lin.weight.copy_(weight_t)
            if bias is not None:
                lin.bias.copy_(bias)
        # The flags keep ipex.optimize from fx-tracing (it would return a GraphModule with plain torch linear).
        packed = ipex.optimize(torch.nn.Sequential(lin).eval(), dtype=weight_t.dtype, weights_prepack=True,
                               concat_linear=False, conv_bn_folding=False, linear_bn_folding=False, inplace=True)
        module = _PACKED[key] = packed[0]
        weakref.finalize(weight_t, _PACKED.pop, key, None)  # dropped with the (derived) weight layout
    return module


def linear(x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor], post: str = "none",
           other: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Same contract as :func:`af2cpu_plugin.engine.primitives.linear_2d` (plus ``other``: a fused product)."""
    y = _packed(weight_t, bias)(x)
    if post == "relu":
        y = torch.relu_(y)
    elif post == "sigmoid":
        y = torch.sigmoid_(y)
    return y.mul_(other) if other is not None else y
