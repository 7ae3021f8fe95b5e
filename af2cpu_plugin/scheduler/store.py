"""Predictions on disk: each one's inputs and, once computed, its result.

A prediction is keyed by its query, model and seed. Its features are written
before it is dispatched (workers read them from here, not through the
scheduler, which would otherwise hold every queued prediction's arrays), once
per distinct content (named by their fingerprint: the five monomer models of
one seed share one file), its result when a worker finishes it. Both are ``.npz`` files written atomically
(a worker killed mid-write leaves no file) and read with
``allow_pickle=False``. A rerun finds finished results and does not compute
them again; they live under the output directory, in ``.af2cpu/predictions``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from af2cpu_plugin.atomic import atomic_write

_SEP = "/"


def prediction_key(prefix: str, model_name: str, seed: int) -> str:
    """``<query>_<model>_seed_<seed>``, safe as a file name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", prefix)
    return f"{safe}_{model_name}_seed_{seed:03d}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, np.ndarray]:
    """Nested dicts of arrays -> ``{"a/b": array}``."""
    flat: Dict[str, np.ndarray] = {}
    for k, v in tree.items():
        if _SEP in k:
            raise ValueError(f"key {k!r} contains {_SEP!r}")
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, name + _SEP))
        else:
            flat[name] = np.asarray(v)
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for name, v in flat.items():
        *path, leaf = name.split(_SEP)
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


#: Features the model never reads. AlphaFold's TF input pipeline draws the crop seed from TensorFlow's
#: global random state, so two feature passes over one query differ there (and only there: the eval
#: config does not crop or subsample templates with it).
NOT_MODEL_INPUTS = frozenset({"random_crop_to_size_seed"})


def fingerprint(features: Mapping[str, Any]) -> str:
    """A hash of every feature array the model reads (names, dtypes, shapes, bytes): the same inputs, or not."""
    h = hashlib.sha256()
    for name, v in sorted(flatten(features).items()):
        if name in NOT_MODEL_INPUTS:
            continue
        a = np.ascontiguousarray(v)
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class PredictionStore:
    """``root``/``<fingerprint>.features.npz`` and ``<key>.result.npz``."""

    def __init__(self, root: Any) -> None:
        self.root = Path(root)

    def _path(self, key: str, kind: str) -> Path:
        return self.root / f"{key}.{kind}.npz"

    def save_features(self, features_fingerprint: str, features: Mapping[str, Any]) -> Path:
        """Write ``features`` under their fingerprint, unless a file of that content is there already."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(features_fingerprint, "features")
        if not path.is_file():
            _save_npz(path, flatten(features))
        return path

    def load_features(self, features_fingerprint: str) -> Dict[str, Any]:
        return unflatten(_load_npz(self._path(features_fingerprint, "features")))

    def has_result(self, key: str, features_fingerprint: Optional[str] = None) -> bool:
        """A finished result for ``key`` (for these inputs, when a fingerprint is given)."""
        path = self._path(key, "result")
        if not path.is_file():
            return False
        if features_fingerprint is None:
            return True
        try:
            return self._meta(path)["fingerprint"] == features_fingerprint
        except (OSError, ValueError, KeyError):
            return False

    def save_result(self, key: str, result: Mapping[str, Any], recycles: int,
                    per_recycle: List[Mapping[str, Any]], features_fingerprint: str) -> Path:
        """``result`` (ColabFold's float16 tree), the last recycle index, and each recycle's result as the
        prediction callback saw it (scalars only, unless whole results were asked for)."""
        arrays = {f"result/{k}": v for k, v in flatten(result).items()}
        for r, rec in enumerate(per_recycle):
            arrays.update({f"recycle_{r}/{k}": v for k, v in flatten(rec).items()})
        meta = {"recycles": int(recycles), "num_recycle_results": len(per_recycle),
                "fingerprint": features_fingerprint}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(key, "result")
        _save_npz(path, arrays)
        return path

    @staticmethod
    def _meta(path: Path) -> dict:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["meta"].tobytes().decode())

    def load_result(self, key: str) -> Tuple[Dict[str, Any], int, List[Dict[str, Any]], str]:
        """(result, recycles, per-recycle results, features fingerprint)."""
        flat = _load_npz(self._path(key, "result"))
        meta = json.loads(flat.pop("meta").tobytes().decode())
        tree = unflatten(flat)
        per_recycle = [tree.get(f"recycle_{r}", {}) for r in range(meta["num_recycle_results"])]
        return tree["result"], meta["recycles"], per_recycle, meta["fingerprint"]

    def remove_result(self, key: str) -> None:
        self._path(key, "result").unlink(missing_ok=True)

    def remove_features(self, features_fingerprint: str) -> None:
        self._path(features_fingerprint, "features").unlink(missing_ok=True)
