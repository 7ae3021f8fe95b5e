"""ColabFold's confidence metrics (``alphafold.common.confidence.get_confidence_metrics``), row slice by row slice.

ColabFold's numpy functions take the whole [L, L, 64] PAE logits at once:
each softmax makes two more arrays of that size, and pTM makes its own
softmax again beside the kept ``aligned_confidence_probs``. At 1,500
residues that was the pass's peak: 2 GiB above the Evoformer's (measured:
4.09 GiB after the structure module, 6.10 GiB after the metrics). Every
quantity is per residue pair, or per row and then reduced over rows, so this
module calls ColabFold's own ``compute_predicted_aligned_error`` on slices
of rows and computes pTM/ipTM with ColabFold's arithmetic per row
(:func:`predicted_tm_score` below, the same numpy operations in the same
order): the results are identical to the bit (``tests/test_confidence.py``),
and no temporary is larger than a slice.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import scipy.special
from alphafold.common import confidence

#: Bytes of one slice's [rows, L, bins] float32 logits (its softmax temporaries are 2-3 times that).
SLICE_BYTES = 16 << 20


def _row_slices(logits: np.ndarray) -> Iterator[Tuple[int, int]]:
    n = logits.shape[0]
    rows = max(1, SLICE_BYTES // max(1, logits[0].nbytes))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def predicted_aligned_error(logits: np.ndarray, breaks: np.ndarray) -> Dict[str, Any]:
    """``confidence.compute_predicted_aligned_error(logits, breaks)``, computed on slices of rows."""
    probs = pae = None
    out: Dict[str, Any] = {}
    for start, stop in _row_slices(logits):
        part = confidence.compute_predicted_aligned_error(logits=logits[start:stop], breaks=breaks)
        if probs is None:
            probs = np.empty(logits.shape, part["aligned_confidence_probs"].dtype)
            pae = np.empty(logits.shape[:2], part["predicted_aligned_error"].dtype)
        probs[start:stop] = part["aligned_confidence_probs"]
        pae[start:stop] = part["predicted_aligned_error"]
        out["max_predicted_aligned_error"] = part["max_predicted_aligned_error"]
    out["aligned_confidence_probs"] = probs
    out["predicted_aligned_error"] = pae
    return out


def predicted_tm_score(logits: np.ndarray, breaks: np.ndarray, residue_weights: Optional[np.ndarray] = None,
                       asym_id: Optional[np.ndarray] = None) -> np.ndarray:
    """``confidence.predicted_tm_score(..., use_jnp=False)``: each row's alignment score from a slice of rows,
    then the maximum over rows, as ColabFold takes it."""
    if residue_weights is None:
        residue_weights = np.ones(logits.shape[0])
    bin_centers = confidence._calculate_bin_centers(breaks)
    num_res = residue_weights.shape[0]
    clipped_num_res = np.maximum(residue_weights.sum(), 19)
    d0 = 1.24 * (clipped_num_res - 15) ** (1. / 3) - 1.8
    tm_per_bin = 1. / (1 + np.square(bin_centers) / np.square(d0))
    per_alignment = None
    for start, stop in _row_slices(logits):
        probs = scipy.special.softmax(logits[start:stop], axis=-1)
        predicted_tm_term = (probs * tm_per_bin).sum(-1)
        del probs
        if asym_id is None:
            pair_mask = np.full((stop - start, num_res), True)
        else:
            pair_mask = asym_id[start:stop, None] != asym_id[None, :]
        predicted_tm_term *= pair_mask
        pair_residue_weights = pair_mask * (residue_weights[None, :] * residue_weights[start:stop, None])
        normed_residue_mask = pair_residue_weights / (1e-8 + pair_residue_weights.sum(-1, keepdims=True))
        rows = (predicted_tm_term * normed_residue_mask).sum(-1)
        if per_alignment is None:
            per_alignment = np.empty(num_res, rows.dtype)
        per_alignment[start:stop] = rows
    return (per_alignment * residue_weights).max()


def get_confidence_metrics(prediction_result: Mapping[str, Any], mask: np.ndarray, rank_by: str = "plddt",
                           keep_pae: bool = False) -> Dict[str, Any]:
    """``confidence.get_confidence_metrics(prediction_result, mask, rank_by, use_jnp=False, keep_pae)``."""
    metrics: Dict[str, Any] = {}
    plddt = confidence.compute_plddt(prediction_result["predicted_lddt"]["logits"])
    metrics["plddt"] = plddt
    metrics["mean_plddt"] = (plddt * mask).sum() / mask.sum()
    if "predicted_aligned_error" in prediction_result:
        pae = prediction_result["predicted_aligned_error"]
        if keep_pae:
            prediction_result["pae_matrix_with_logits"] = pae
        metrics.update(predicted_aligned_error(pae["logits"], pae["breaks"]))
        metrics["ptm"] = predicted_tm_score(pae["logits"], pae["breaks"], residue_weights=mask)
        if "asym_id" in pae:
            metrics["iptm"] = predicted_tm_score(pae["logits"], pae["breaks"], residue_weights=mask,
                                                 asym_id=pae["asym_id"])
    if rank_by == "multimer":
        mean_score = 80 * metrics["iptm"] + 20 * metrics["ptm"]
    elif rank_by == "iptm":
        mean_score = 100 * metrics["iptm"]
    elif rank_by == "ptm":
        mean_score = 100 * metrics["ptm"]
    else:
        mean_score = metrics["mean_plddt"]
    metrics["ranking_confidence"] = mean_score
    return metrics
