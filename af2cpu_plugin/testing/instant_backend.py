"""A backend whose "model" answers at once with a made-up, well-formed prediction.

For tests of everything around the model (ColabFold's outputs, ranking,
relax, interruption and resume, a full disk) in seconds instead of minutes of
real compute. It registers the backend name ``instant`` only when passed to
``cli.main(argv, extra_plugins=[InstantBackend()])``, or run as a command
(subprocess tests)::

    python -m af2cpu_plugin.testing.instant_backend [--seconds S] batch --backend instant ...

The prediction is a straight CA trace (CA atoms only) with a pLDDT profile
that differs per model, so ColabFold ranks the models in a fixed order
(model 5 first). Nothing here is AlphaFold2; never use it for results.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from af2cpu_plugin.hooks.hookspecs import hookimpl

NAME = "instant"
CA = 1  # atom37 index of the alpha carbon
RISE = 3.8  # Å between consecutive CA atoms


class InstantRunner:
    """ColabFold's RunModel contract: process_features, params, predict(feat, random_seed, ..., callback)."""

    def __init__(self, config: Any, params: Optional[Mapping], seconds: float) -> None:
        self.config, self.params, self.seconds = config, params, seconds
        self.multimer_mode = bool(getattr(config.model.global_config, "multimer_mode", False))

    def process_features(self, raw_features: Mapping[str, np.ndarray], random_seed: int) -> Dict[str, np.ndarray]:
        if self.multimer_mode:
            return dict(raw_features)
        from alphafold.model import features

        return features.np_example_to_features(np_example=raw_features, config=self.config, random_seed=random_seed)

    def _model_number(self) -> int:
        return int(np.asarray(self.params["instant"]["model_number"]))

    def predict(self, feat: Mapping[str, np.ndarray], random_seed: int = 0, return_representations: bool = False,
                callback=None) -> Tuple[Dict[str, Any], int]:
        time.sleep(self.seconds)
        aatype = np.asarray(feat["aatype"])
        length = aatype.shape[-1]
        positions = np.zeros((length, 37, 3), np.float32)
        positions[:, CA, 0] = RISE * np.arange(length)
        mask = np.zeros((length, 37), np.float32)
        mask[:, CA] = 1.0
        n = self._model_number()
        plddt = (50.0 + 5.0 * n + 10.0 * np.sin(np.arange(length) / 3.0 + random_seed)).astype(np.float32)
        pae = np.abs(np.subtract.outer(np.arange(length), np.arange(length))).astype(np.float32) / length * 30.0
        ptm = np.float32(0.1 * n)
        result = {
            "structure_module": {"final_atom_positions": positions, "final_atom_mask": mask},
            "plddt": plddt,
            "mean_plddt": np.float32(plddt.mean()),
            "predicted_aligned_error": pae,
            "max_predicted_aligned_error": np.float32(31.75),
            "ptm": ptm,
            "iptm": ptm,
            "ranking_confidence": np.float32(plddt.mean() / 100.0),
        }
        if callback is not None:
            callback(dict(result), 0)
        return result, 0


class InstantBackend:
    """The plugin: provides the model for ``--backend instant``; params are not read."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    @hookimpl
    def af2cpu_backends(self):
        return [NAME]

    @hookimpl
    def af2cpu_provides_model(self, backend):
        return True if backend == NAME else None

    @hookimpl
    def af2cpu_prepare_params(self, backend, model_number):
        if backend != NAME:
            return None
        return {"instant": {"model_number": np.asarray(int(model_number))}}

    @hookimpl
    def af2cpu_make_runner(self, backend, config, params):
        return InstantRunner(config, params, self.seconds) if backend == NAME else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``[--seconds S] <af2cpu command and options>``: the af2cpu CLI with the instant backend registered."""
    from af2cpu_plugin import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    seconds = 0.0
    if argv[:1] == ["--seconds"]:
        seconds, argv = float(argv[1]), argv[2:]
    return cli.main(argv, extra_plugins=[InstantBackend(seconds)])


if __name__ == "__main__":
    sys.exit(main())
