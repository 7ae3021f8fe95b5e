"""Input, relative-position, recycling and extra-MSA embedders.

Haiku keeps these parameters flat in the ``evoformer`` scope; here each
algorithm of the paper is its own class, registered as :class:`Scopeless` so
the parameter names stay haiku's.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from alphafold.common import residue_constants

from .chunking import row_slices
from .params import Scopeless
from .policy import pair_dtype
from .primitives import LayerNorm, Linear

_GLY = residue_constants.restype_order["G"]
_CA = residue_constants.atom_order["CA"]
_CB = residue_constants.atom_order["CB"]


def _linear_on_one_hot(linear: Linear, index: torch.Tensor) -> torch.Tensor:
    """``linear(one_hot(index))`` as a row gather: the same numbers, no one-hot tensor."""
    return linear.weights[index] + linear.bias


class RelativePositionEncoding(Scopeless):
    """Suppl. Alg. 4 "relpos" with ColabFold's chain masking.

    Offsets are clipped to ±max_relative_feature. ColabFold folds complexes
    (``A:B``) with monomer models by setting every cross-chain offset to the
    extreme bin, by the sign of the chain-id difference.
    """

    def __init__(self, max_relative_feature: int, pair_channel: int) -> None:
        super().__init__()
        self.max_relative_feature = max_relative_feature
        self.pair_activiations = Linear(2 * max_relative_feature + 1, pair_channel)  # (sic) haiku name

    def forward(self, residue_index: torch.Tensor, asym_id: Optional[torch.Tensor]) -> torch.Tensor:
        return self.rows(residue_index, residue_index, asym_id, asym_id)

    def rows(self, index_i: torch.Tensor, index_j: torch.Tensor, asym_i: Optional[torch.Tensor],
             asym_j: Optional[torch.Tensor]) -> torch.Tensor:
        """The encoding's rows for residues ``i`` (a slice) against all residues ``j``."""
        r = self.max_relative_feature
        offset = (index_i[:, None] - index_j[None, :]).long()
        offset = torch.clamp(offset + r, 0, 2 * r)
        if asym_i is not None:
            chain = (asym_i[:, None] - asym_j[None, :])
            cross = torch.where(chain > 0, torch.full_like(offset, 2 * r), torch.zeros_like(offset))
            offset = torch.where(chain == 0, offset, cross)
        return _linear_on_one_hot(self.pair_activiations, offset)


def add_relpos_(pair: torch.Tensor, relpos: nn.Module, *per_residue: Optional[torch.Tensor]) -> torch.Tensor:
    """``pair += relpos(*per_residue)``, row slice by row slice (no pair-sized temporary).

    ``relpos`` is either relative encoding; its ``rows`` method takes each
    per-residue feature twice: sliced to the rows, then whole.
    """
    for start, rows in row_slices(pair):
        args = []
        for feature in per_residue:
            args += [None, None] if feature is None else [feature.narrow(0, start, rows), feature]
        pair.narrow(0, start, rows).add_(relpos.rows(*args))
    return pair


class InputEmbedder(Scopeless):
    """Suppl. Alg. 3 "InputEmbedder": target and MSA features to m and z."""

    def __init__(self, target_feat_dim: int, msa_feat_dim: int, msa_channel: int, pair_channel: int,
                 relpos: nn.Module) -> None:
        """``relpos`` is Alg. 4's encoding: :class:`RelativePositionEncoding` (monomer) or the
        multimer's relative chain encoding."""
        super().__init__()
        self.preprocess_1d = Linear(target_feat_dim, msa_channel)
        self.preprocess_msa = Linear(msa_feat_dim, msa_channel)
        self.left_single = Linear(target_feat_dim, pair_channel)
        self.right_single = Linear(target_feat_dim, pair_channel)
        self.relpos = relpos

    def forward(self, target_feat: torch.Tensor, msa_feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # In place into the [S, L, c_m] projection: one MSA-sized tensor, not two (a + b == b + a exactly).
        msa = self.preprocess_msa(msa_feat).add_(self.preprocess_1d(target_feat).unsqueeze(0))
        left, right = self.left_single(target_feat), self.right_single(target_feat)
        # Made in the dtype the trunk stores it in (bf16 where memory is short), row slice by row slice:
        # no fp32 pair is ever made alongside the bf16 one.
        pair = left.new_empty((left.shape[0], *right.shape), dtype=pair_dtype())
        for start, rows in row_slices(pair):
            torch.add(left[start:start + rows, None], right[None], out=pair.narrow(0, start, rows))
        return msa, pair


def pseudo_beta(aatype: torch.Tensor, atom37_positions: torch.Tensor) -> torch.Tensor:
    """Cβ position (Cα for glycine), as modules.pseudo_beta_fn."""
    is_gly = (aatype == _GLY)[..., None]
    return torch.where(is_gly, atom37_positions[..., _CA, :], atom37_positions[..., _CB, :])


def distogram_one_hot(positions: torch.Tensor, num_bins: int, min_bin: float, max_bin: float,
                      positions_j: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One-hot distance bins between all pairs (modules.dgram_from_positions);
    with ``positions_j``, between ``positions`` (a slice of rows) and those."""
    positions_j = positions if positions_j is None else positions_j
    lower = torch.linspace(min_bin, max_bin, num_bins, dtype=torch.float32) ** 2
    upper = torch.cat([lower[1:], lower.new_tensor([1e8])])
    dist2 = ((positions[:, None, :] - positions_j[None, :, :]) ** 2).sum(-1, keepdim=True)
    return ((dist2 > lower) & (dist2 < upper)).to(torch.float32)


class RecyclingEmbedder(Scopeless):
    """Suppl. Alg. 32 "RecyclingEmbedder": previous m[0], z and Cβ distances."""

    def __init__(self, prev_pos_config, msa_channel: int, pair_channel: int) -> None:
        super().__init__()
        self.prev_pos_config = prev_pos_config
        self.prev_pos_linear = Linear(prev_pos_config.num_bins, pair_channel)
        self.prev_msa_first_row_norm = LayerNorm(msa_channel)
        self.prev_pair_norm = LayerNorm(pair_channel)

    def forward(self, msa, pair, aatype, prev_pos, prev_msa_first_row, prev_pair) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add the recycled terms to m and z, in haiku's order of additions.

        ``msa`` and ``pair`` (the input embedder's fresh tensors) are updated
        in place, ``pair`` row slice by row slice: no pair-sized temporary,
        and ``prev_pair`` may stay float16 (as ColabFold recycles it), each
        slice upcast to float32 as AlphaFold does with the whole.
        """
        c = self.prev_pos_config
        beta = pseudo_beta(aatype, prev_pos)
        msa[0] += self.prev_msa_first_row_norm(prev_msa_first_row)
        for start, rows in row_slices(pair):
            block = pair.narrow(0, start, rows)
            dgram = distogram_one_hot(beta.narrow(0, start, rows), c.num_bins, c.min_bin, c.max_bin, beta)
            block += self.prev_pos_linear(dgram)
            block += self.prev_pair_norm(prev_pair.narrow(0, start, rows).float())
        return msa, pair


class ExtraMsaEmbedder(Scopeless):
    """Suppl. Alg. 2 line 15: one-hot extra MSA + deletion features to e."""

    NUM_CLASSES = 23  # 20 amino acids, X, gap, BERT mask

    def __init__(self, extra_msa_channel: int) -> None:
        super().__init__()
        self.extra_msa_activations = Linear(self.NUM_CLASSES + 2, extra_msa_channel)

    def forward(self, extra_msa, extra_has_deletion, extra_deletion_value) -> torch.Tensor:
        w = self.extra_msa_activations.weights
        act = w[: self.NUM_CLASSES][extra_msa.long()]
        act = act + extra_has_deletion[..., None] * w[self.NUM_CLASSES]
        act = act + extra_deletion_value[..., None] * w[self.NUM_CLASSES + 1]
        return act + self.extra_msa_activations.bias
