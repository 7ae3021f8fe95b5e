"""From backbone frames and torsion angles to atom coordinates (all_atom.py).

Suppl. Alg. 24 "computeAllAtomCoordinates" and Alg. 25 "makeRotX", plus the
atom14 <-> atom37 bookkeeping the structure module's output needs
(``make_atom14_masks`` of ``alphafold/model/tf/data_transforms.py``, which
needs TensorFlow there and is rebuilt here from the same residue tables).

The per-residue-type tables are AlphaFold's own numpy arrays from
``alphafold.common.residue_constants`` (pure data), so they are identical.
"""

from __future__ import annotations

import functools
from typing import Dict

import numpy as np
import torch

from alphafold.common import residue_constants as rc

from .geometry import Rigids, rigids_from_tensor4x4, rigids_mul_rigids, rigids_mul_rots, rigids_mul_vecs


@functools.lru_cache(maxsize=None)
def _atom14_tables() -> Dict[str, np.ndarray]:
    """Per-restype atom14/atom37 maps and masks, 21 rows (the last, UNK, all zero)."""
    atom14_to_atom37, atom37_to_atom14, atom14_mask = [], [], []
    for rt in rc.restypes:
        names14 = rc.restype_name_to_atom14_names[rc.restype_1to3[rt]]
        atom14_to_atom37.append([rc.atom_order[n] if n else 0 for n in names14])
        idx14 = {n: i for i, n in enumerate(names14)}
        atom37_to_atom14.append([idx14.get(n, 0) for n in rc.atom_types])
        atom14_mask.append([1.0 if n else 0.0 for n in names14])
    atom14_to_atom37.append([0] * 14)
    atom37_to_atom14.append([0] * 37)
    atom14_mask.append([0.0] * 14)

    atom37_mask = np.zeros([21, 37], dtype=np.float32)
    for restype, letter in enumerate(rc.restypes):
        for name in rc.residue_atoms[rc.restype_1to3[letter]]:
            atom37_mask[restype, rc.atom_order[name]] = 1.0
    return {
        "atom14_to_atom37": np.asarray(atom14_to_atom37, np.int64),
        "atom37_to_atom14": np.asarray(atom37_to_atom14, np.int64),
        "atom14_mask": np.asarray(atom14_mask, np.float32),
        "atom37_mask": atom37_mask,
    }


def _gather(table: np.ndarray, aatype: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``table[aatype]`` as a torch tensor on aatype's device."""
    return torch.as_tensor(table, device=aatype.device).to(dtype)[aatype.long()]


def make_atom14_masks(aatype: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The atom14/atom37 maps and masks for each residue (data_transforms.make_atom14_masks).

    Returns ``atom14_atom_exists`` [N, 14], ``residx_atom14_to_atom37`` [N, 14],
    ``residx_atom37_to_atom14`` [N, 37] (int64) and ``atom37_atom_exists`` [N, 37].
    """
    t = _atom14_tables()
    return {
        "atom14_atom_exists": _gather(t["atom14_mask"], aatype),
        "residx_atom14_to_atom37": _gather(t["atom14_to_atom37"], aatype, torch.int64),
        "residx_atom37_to_atom14": _gather(t["atom37_to_atom14"], aatype, torch.int64),
        "atom37_atom_exists": _gather(t["atom37_mask"], aatype),
    }


def torsion_angles_to_frames(
    aatype: torch.Tensor, backb_to_global: Rigids, torsion_angles_sin_cos: torch.Tensor
) -> Rigids:
    """Frames of the 8 rigid groups of each residue, in the global frame.

    Suppl. Alg. 24 lines 2-10, Alg. 25 "makeRotX". aatype [N], backb_to_global
    [N], torsion_angles_sin_cos [N, 7, 2] (sin, cos) -> Rigids [N, 8].
    """
    n = aatype.shape[0]
    default_frames = rigids_from_tensor4x4(_gather(rc.restype_rigid_group_default_frame, aatype))

    # Backbone group: no rotation.
    sin = torch.cat([torsion_angles_sin_cos.new_zeros(n, 1), torsion_angles_sin_cos[..., 0]], dim=-1)
    cos = torch.cat([torsion_angles_sin_cos.new_ones(n, 1), torsion_angles_sin_cos[..., 1]], dim=-1)
    zeros, ones = torch.zeros_like(sin), torch.ones_like(sin)
    # Rotations about x: [[1, 0, 0], [0, cos, -sin], [0, sin, cos]], shape [N, 8, 3, 3].
    all_rots = torch.stack(
        [
            torch.stack([ones, zeros, zeros], dim=-1),
            torch.stack([zeros, cos, -sin], dim=-1),
            torch.stack([zeros, sin, cos], dim=-1),
        ],
        dim=-2,
    )
    all_frames = rigids_mul_rots(default_frames, all_rots)

    # chi2..chi4 frames are relative to the previous chi frame: chain them.
    chi1_to_backb = all_frames[:, 4]
    chi2_to_backb = rigids_mul_rigids(chi1_to_backb, all_frames[:, 5])
    chi3_to_backb = rigids_mul_rigids(chi2_to_backb, all_frames[:, 6])
    chi4_to_backb = rigids_mul_rigids(chi3_to_backb, all_frames[:, 7])
    chained = [chi2_to_backb, chi3_to_backb, chi4_to_backb]
    all_frames_to_backb = Rigids(
        torch.cat([all_frames.rot[:, :5]] + [f.rot[:, None] for f in chained], dim=1),
        torch.cat([all_frames.trans[:, :5]] + [f.trans[:, None] for f in chained], dim=1),
    )
    return rigids_mul_rigids(backb_to_global[:, None], all_frames_to_backb)


def frames_and_literature_positions_to_atom14_pos(aatype: torch.Tensor, all_frames_to_global: Rigids) -> torch.Tensor:
    """Place each atom's literature position in its rigid group's frame.

    Suppl. Alg. 24 line 11. aatype [N], frames Rigids [N, 8] -> atom14 positions
    [N, 14, 3], zero where the atom does not exist.
    """
    group_idx = _gather(rc.restype_atom14_to_rigid_group, aatype, torch.int64)  # [N, 14]
    rot = torch.gather(
        all_frames_to_global.rot, 1, group_idx[:, :, None, None].expand(-1, -1, 3, 3)
    )
    trans = torch.gather(all_frames_to_global.trans, 1, group_idx[:, :, None].expand(-1, -1, 3))
    lit_positions = _gather(rc.restype_atom14_rigid_group_positions, aatype)  # [N, 14, 3]
    pred_positions = rigids_mul_vecs(Rigids(rot, trans), lit_positions)
    mask = _gather(rc.restype_atom14_mask, aatype)  # [N, 14]
    return pred_positions * mask[..., None]


def atom14_to_atom37(
    atom14_data: torch.Tensor, residx_atom37_to_atom14: torch.Tensor, atom37_atom_exists: torch.Tensor
) -> torch.Tensor:
    """[N, 14, ...] -> [N, 37, ...], zero for atoms the residue lacks (all_atom.atom14_to_atom37)."""
    idx = residx_atom37_to_atom14.long()
    extra = atom14_data.shape[2:]
    idx = idx.reshape(*idx.shape, *([1] * len(extra))).expand(*idx.shape, *extra)
    atom37 = torch.gather(atom14_data, 1, idx)
    mask = atom37_atom_exists.to(atom37.dtype)
    return atom37 * mask.reshape(*mask.shape, *([1] * len(extra)))
