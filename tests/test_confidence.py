"""The row-sliced confidence metrics equal ColabFold's own, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from alphafold.common import confidence as colabfold_confidence

from af2cpu_plugin import confidence


def _result(L: int, asym: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    pae = {"logits": (rng.standard_normal((L, L, 64)) * 3).astype(np.float32),
           "breaks": np.linspace(0.0, 31.0, 63).astype(np.float32)}
    if asym:
        pae["asym_id"] = np.repeat(np.arange(3), -(-L // 3))[:L].astype(np.float32)
    return {"predicted_lddt": {"logits": rng.standard_normal((L, 50)).astype(np.float32)},
            "predicted_aligned_error": pae}


@pytest.mark.parametrize("asym, rank_by", [(False, "plddt"), (False, "ptm"), (True, "plddt"), (True, "ptm"),
                                           (True, "multimer")])  # ipTM (rank_by multimer) needs chains
def test_row_sliced_metrics_equal_colabfolds(monkeypatch, asym, rank_by):
    monkeypatch.setattr(confidence, "SLICE_BYTES", 7 * 37 * 64 * 4)  # 7 rows a slice: several slices, a short last one
    L = 37
    mask = np.ones(L, np.float32)
    mask[-4:] = 0  # padding residues
    ours = confidence.get_confidence_metrics(_result(L, asym), mask, rank_by=rank_by)
    theirs = colabfold_confidence.get_confidence_metrics(_result(L, asym), mask, rank_by=rank_by, use_jnp=False)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        a, b = np.asarray(ours[key]), np.asarray(theirs[key])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert np.array_equal(a, b), key


def test_keep_pae_keeps_the_logits_as_colabfold_does():
    result = _result(8, False)
    confidence.get_confidence_metrics(result, np.ones(8, np.float32), keep_pae=True)
    assert result["pae_matrix_with_logits"] is result["predicted_aligned_error"]
