"""A disk cache of full-size random AlphaFold2 weights for the test suite.

Generating one model takes half a minute on two cores, so the files are made
once and reused across test runs: ``cached_random_data_dir`` returns a
ColabFold data dir (``<dir>/params/params_model_N[_ptm].npz`` plus the
download marker) under ``$AF2CPU_TEST_CACHE`` or
``~/.cache/af2cpu-plugin/test-params``, keyed by model type, seed and
:data:`af2cpu_plugin.random_params.RANDOM_PARAMS_FORMAT_VERSION`. Missing
files are generated; existing ones are kept (writes are atomic).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..random_params import RANDOM_PARAMS_FORMAT_VERSION, write_random_params

TEST_CACHE_ENV = "AF2CPU_TEST_CACHE"


def test_cache_root() -> Path:
    env = os.environ.get(TEST_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "af2cpu-plugin" / "test-params"


def cached_random_data_dir(model_type: str, models: Iterable[int] = (1, 2, 3, 4, 5), seed: int = 0) -> Path:
    """A data dir holding random weights for ``models`` of ``model_type`` (generated on first use)."""
    data_dir = test_cache_root() / f"{model_type}-seed{seed}-v{RANDOM_PARAMS_FORMAT_VERSION}"
    write_random_params(data_dir, model_type, tuple(models), seed)
    return data_dir


# pytest would otherwise try to collect the function above as a test
test_cache_root.__test__ = False  # type: ignore[attr-defined]
