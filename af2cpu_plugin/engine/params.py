"""Binding AlphaFold2 parameters (haiku names) to the engine's modules.

Each engine module is registered under the haiku scope name of the module it
mirrors (``msa_transition``, ``transition1``...), so a parameter's haiku key is
its module path joined with ``/`` plus ``//`` and the parameter name, under the
root scope ``alphafold/alphafold_iteration``. Layers that haiku stacks with a
leading dimension (``layer_stack``) live in a :class:`LayerStack`; layer ``i``
takes slice ``i`` of each stacked array.

Params arrive either flat (``{"scope//name": array}``, as in the npz and
safetensors files) or nested as haiku gives them (``{"scope": {"name":
array}}``, as ColabFold passes them around); both are accepted.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import weight_pages
from .primitives import clear_derived

ROOT_SCOPE = "alphafold/alphafold_iteration"


class LayerStack(nn.ModuleList):
    """Identical layers whose parameters haiku stores stacked on axis 0."""


class Scopeless(nn.Module):
    """A grouping with no haiku scope of its own: its children sit in the parent's scope.

    Lets the engine group parameters by algorithm (``InputEmbedder``,
    ``RecyclingEmbedder``) where haiku kept them flat in one scope.
    """


class ParamsMismatch(ValueError):
    """The params do not fit the model: names the missing, unexpected and mis-shaped arrays."""

    def __init__(self, missing: List[str], unexpected: List[str], misshaped: List[str]) -> None:
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if names:
                shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
                parts.append(f"{len(names)} {label}: {shown}")
        super().__init__("params do not fit the model: " + "; ".join(parts))


def _walk(
    module: nn.Module, scope: str, stack: Tuple[int, ...]
) -> Iterator[Tuple[str, Tuple[int, ...], nn.Module, str]]:
    """Yield (haiku key, stack indices, owning module, attribute) for every parameter."""
    for name, param in module.named_parameters(recurse=False):
        if param is not None:
            yield f"{scope}//{name}", stack, module, name
    for name, child in module.named_children():
        if isinstance(child, LayerStack):
            for i, layer in enumerate(child):
                yield from _walk(layer, f"{scope}/{name}", stack + (i,))
        elif isinstance(child, Scopeless):
            yield from _walk(child, scope, stack)
        else:
            yield from _walk(child, f"{scope}/{name}", stack)


def expected_params(model: nn.Module, root: str = ROOT_SCOPE) -> Dict[str, Tuple[int, ...]]:
    """The haiku key and full (stacked) shape of every array the model needs."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    depth: Dict[str, List[int]] = {}
    for key, stack, owner, attr in _walk(model, root, ()):
        shape = tuple(getattr(owner, attr).shape)
        depth.setdefault(key, [0] * len(stack))
        depth[key] = [max(d, i + 1) for d, i in zip(depth[key], stack)]
        shapes[key] = shape
    return {k: tuple(depth[k]) + s for k, s in shapes.items()}


def flatten(params: Mapping) -> Dict[str, object]:
    """Nested haiku params -> flat ``scope//name`` keys (flat input passes through)."""
    flat: Dict[str, object] = {}
    for scope, value in params.items():
        if isinstance(value, Mapping):
            for name, array in value.items():
                flat[f"{scope}//{name}"] = array
        else:
            flat[scope] = value
    return flat


def nested(flat: Mapping[str, object]) -> Dict[str, Dict[str, object]]:
    """Flat ``scope//name`` keys -> ``{scope: {name: array}}`` as haiku gives params (inverse of :func:`flatten`)."""
    out: Dict[str, Dict[str, object]] = {}
    for key, value in flat.items():
        scope, name = key.split("//")
        out.setdefault(scope, {})[name] = value
    return out


def _as_tensor(array: object) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().to(torch.float32)
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable:  # jax-backed and memory-mapped arrays are read-only
        array = array.copy()
    return torch.from_numpy(array)


def check_params(model: nn.Module, params: Mapping, root: str = ROOT_SCOPE) -> None:
    """Raise :class:`ParamsMismatch` unless ``params`` has exactly the model's arrays."""
    flat = flatten(params)
    want = expected_params(model, root)
    missing = sorted(set(want) - set(flat))
    unexpected = sorted(set(flat) - set(want))
    misshaped = sorted(
        f"{k} {tuple(np.shape(flat[k]))} != {want[k]}"
        for k in set(want) & set(flat)
        if tuple(np.shape(flat[k])) != want[k]
    )
    if missing or unexpected or misshaped:
        raise ParamsMismatch(missing, unexpected, misshaped)


def bind_params(model: nn.Module, params: Mapping, root: str = ROOT_SCOPE) -> None:
    """Copy ``params`` into the model, after checking they fit exactly."""
    check_params(model, params, root)
    flat = {k: _as_tensor(v) for k, v in flatten(params).items()}
    with torch.no_grad():
        for key, stack, owner, attr in _walk(model, root, ()):
            value = flat[key]
            for i in stack:
                value = value[i]
            getattr(owner, attr).data = value.contiguous()
    clear_derived(model)  # layouts derived from the old values (primitives.derived)
    weight_pages.forget_mappings()  # the new values may be mapped from another file


def subset(params: Mapping, prefix: str) -> Optional[Dict[str, object]]:
    """The flat params under a scope prefix (handy for module-level tests)."""
    flat = flatten(params)
    return {k: v for k, v in flat.items() if k.startswith(prefix)}
