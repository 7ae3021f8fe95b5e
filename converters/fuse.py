"""Triangle multiplication: unfused npz layout -> the fused layout the engine uses.

The released monomer weights store each triangle multiplication with separate
``left_projection``/``right_projection``/``left_gate``/``right_gate`` linears,
``center_layer_norm`` and ``layer_norm_input``. ColabFold (``use_fuse=True``,
``alphafold.model.utils.flat_params_to_haiku(fuse=True)``) concatenates each
left/right pair on the last axis into ``projection``/``gate`` and renames the
norms to ``center_norm``/``left_norm_input``. :func:`fuse_triangle_multiplication`
does exactly that, for any ``.../triangle_multiplication_{incoming,outgoing}``
scope (ColabFold's four: the evoformer, extra MSA and both template stacks).
Already-fused scopes (multimer v3) pass through.

Every input array is used exactly once: a half pair (left without right), a
missing bias, a scope that mixes both layouts or an unrecognised name in an
unfused scope raise :class:`ConversionError` naming the arrays.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Mapping, Set, Tuple

import numpy as np

from .errors import ConversionError

#: The stack scopes ColabFold fuses (alphafold/model/utils.py).
COLABFOLD_FUSED_STACKS = (
    "evoformer_iteration",
    "extra_msa_stack",
    "template_embedding/single_template_embedding/template_embedding_iteration",
    "template_embedding/single_template_embedding/template_pair_stack/__layer_stack_no_state",
)

_TRI_SCOPE = re.compile(r"^(?P<tri>.*/triangle_multiplication_(?:incoming|outgoing))/(?P<sub>[^/]+)$")
_UNFUSED_SUBS = ("left_projection", "right_projection", "left_gate", "right_gate", "center_layer_norm", "layer_norm_input")
_FUSED_SUBS = ("projection", "gate", "center_norm", "left_norm_input")
_PAIRS = ("projection", "gate")
_RENAMES = {"center_layer_norm": "center_norm", "layer_norm_input": "left_norm_input"}


def _split(key: str) -> tuple:
    if key.count("//") != 1:
        raise ConversionError(f"array {key!r} is not a haiku 'scope//name' key: not an AlphaFold params file")
    scope, name = key.split("//")
    return scope, name


def is_unfused(flat: Mapping[str, object]) -> bool:
    """True if any triangle multiplication in ``flat`` uses the unfused layout."""
    for key in flat:
        m = _TRI_SCOPE.match(key.split("//")[0])
        if m and m.group("sub") in _UNFUSED_SUBS:
            return True
    return False


def _concat_last(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=-1)


def _concat_shape(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """What :func:`_concat_last` would make, as a zero-stride view (its shape, nothing allocated)."""
    return np.broadcast_to(np.float32(0), left.shape[:-1] + (left.shape[-1] + right.shape[-1],))


def _fuse_scope(tri: str, flat: Mapping[str, np.ndarray], names: Dict[str, Set[str]], out: Dict[str, np.ndarray],
                consumed: Set[str], concat: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Fuse one unfused triangle multiplication ``tri`` (its subscopes' names in ``names``)."""
    mixed = sorted(f"{tri}/{s}" for s in _FUSED_SUBS if s in names)
    if mixed:
        raise ConversionError(
            f"{tri} mixes the fused and unfused triangle multiplication layouts ({', '.join(mixed)}): corrupt params file")
    for pair in _PAIRS:
        left, right = f"{tri}/left_{pair}", f"{tri}/right_{pair}"
        for d in ("bias", "weights"):
            lk, rk = f"{left}//{d}", f"{right}//{d}"
            have = [k for k in (lk, rk) if k in flat]
            if len(have) != 2:
                missing = sorted({lk, rk} - set(have))
                raise ConversionError(
                    f"half a left/right pair: {', '.join(have) or '(neither)'} without {', '.join(missing)}")
            L, R = np.asarray(flat[lk]), np.asarray(flat[rk])
            if L.shape[:-1] != R.shape[:-1]:
                raise ConversionError(f"cannot fuse {lk} {L.shape} with {rk} {R.shape}: shapes differ")
            out[f"{tri}/{pair}//{d}"] = concat(L, R)
            consumed.update((lk, rk))
    for old, new in _RENAMES.items():
        for d in ("offset", "scale"):
            k = f"{tri}/{old}//{d}"
            if k not in flat:
                raise ConversionError(f"unfused triangle multiplication {tri} lacks {k}")
            out[f"{tri}/{new}//{d}"] = np.asarray(flat[k])
            consumed.add(k)


def fuse_triangle_multiplication(flat: Mapping[str, np.ndarray],
                                 concat: Callable[[np.ndarray, np.ndarray], np.ndarray] = _concat_last
                                 ) -> Dict[str, np.ndarray]:
    """Flat ``scope//name`` params with every triangle multiplication in the fused layout.

    Equal, key for key and array for array, to
    ``flat_params_to_haiku(flat, fuse=True, to_jnp=False)`` (flattened) on
    ColabFold's stacks. Raises :class:`ConversionError` naming any array not
    used exactly once.
    """
    out: Dict[str, np.ndarray] = {}
    consumed: Set[str] = set()
    unfused: Dict[str, Dict[str, Set[str]]] = {}  # tri scope -> sub -> names
    for key in flat:
        scope, name = _split(key)
        m = _TRI_SCOPE.match(scope)
        if m:
            unfused.setdefault(m.group("tri"), {}).setdefault(m.group("sub"), set()).add(name)
    for tri, names in sorted(unfused.items()):
        if any(s in _UNFUSED_SUBS for s in names):
            _fuse_scope(tri, flat, names, out, consumed, concat)
    # Everything else (output_projection, gating_linear, other modules) passes
    # through unchanged; an unfused-layout array left unused is an error.
    for key in flat:
        if key in consumed:
            continue
        scope, _ = _split(key)
        m = _TRI_SCOPE.match(scope)
        if m and m.group("sub") in _UNFUSED_SUBS:
            continue  # an unfused array the fusing did not use: reported as leftover
        if key in out:
            raise ConversionError(f"array {key} appears twice (once after fusing): corrupt params file")
        out[key] = np.asarray(flat[key])
        consumed.add(key)
    leftover: List[str] = sorted(set(flat) - consumed)
    if leftover:
        shown = ", ".join(leftover[:5]) + (f" (+{len(leftover) - 5} more)" if len(leftover) > 5 else "")
        raise ConversionError(f"{len(leftover)} array(s) not used by the fused layout: {shown}")
    return out


def fused_shapes(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
    """The shapes :func:`fuse_triangle_multiplication` gives arrays of these shapes (nothing is allocated)."""
    views = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}
    return {k: tuple(v.shape) for k, v in fuse_triangle_multiplication(views, concat=_concat_shape).items()}
