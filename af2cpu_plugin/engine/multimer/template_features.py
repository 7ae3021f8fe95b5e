"""Geometric template features of AlphaFold-Multimer (no learned parameters).

``modules_multimer.SingleTemplateEmbedding`` builds its pair features from the
template pseudo-β distogram and from the unit vectors between backbone frames
(``folding_multimer.make_backbone_affine``: ``Rot3Array.from_two_vectors(C - CA,
N - CA)`` at CA); ``template_embedding_1d`` builds the template rows of the MSA
from the aatype and the chi angles (``all_atom_multimer.compute_chi_angles``).

The distogram and the chi features are torch, written in AlphaFold's order of
operations (same epsilons, same sums): they agree with JAX to float32
rounding. No undefined chi reaches the network: each is multiplied by its
mask, which is 0 unless all four atoms are present (so gaps and missing atoms
are harmless here, unlike the monomer's torsions).

The unit vectors come from ColabFold's own jitted code
(:func:`colabfold_unit_vectors`), for the monomer torsions' reason (see
:func:`af2cpu_plugin.engine.template_features.colabfold_torsion_angles`): a
residue's vector to its own CA is ``Rᵢᵀ·CAᵢ + Rᵢᵀ·(-CAᵢ)``, zero in exact (and
eager, and torch) arithmetic, but XLA contracts the sum into fused
multiply-adds and leaves a residue of ~1e-6 Å, which ``normalized`` (norm
clipped at 1e-6) turns into a vector of length up to 1. That diagonal is inside
the backbone mask, so it enters the template pair features of every residue
with a backbone; only XLA's own arithmetic reproduces ColabFold there.
:func:`backbone_unit_vectors` is the same computation in torch (exact zeros
on the diagonal), kept as the readable reference.
"""

from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch

from alphafold.common import residue_constants as rc

from ..embeddings import distogram_one_hot, pseudo_beta

_N, _CA, _C = (rc.atom_order[a] for a in ("N", "CA", "C"))
_CB = rc.atom_order["CB"]
_GLY = rc.restype_order["G"]
_UNK = rc.restype_num  # 20: the chi tables' last row (also what gaps, 21, clip to)

NUM_AATYPE = 22
NUM_CHI = 4
# one-hot aatype (22) + sin(chi) (4) + cos(chi) (4) + chi mask (4)
TEMPLATE_SINGLE_FEAT_DIM = NUM_AATYPE + 3 * NUM_CHI


def one_hot(index: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """jax.nn.one_hot: out-of-range indices give an all-zero row."""
    return (index.long()[..., None] == torch.arange(num_classes, device=index.device)).to(dtype)


# --------------------------------------------------------------------------- pair features


def pseudo_beta_and_mask(aatype: torch.Tensor, positions: torch.Tensor,
                         mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """modules.pseudo_beta_fn with masks: Cβ (Cα for glycine) [..., 3] and its mask [...]."""
    is_gly = aatype == _GLY
    pb_mask = torch.where(is_gly, mask[..., _CA], mask[..., _CB]).to(torch.float32)
    return pseudo_beta(aatype, positions), pb_mask


def pseudo_beta_distogram(aatype: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                          multichain_mask_2d: torch.Tensor, num_bins: int, min_bin: float,
                          max_bin: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """One template's masked pseudo-β distogram [R, R, num_bins] and its pair mask [R, R].

    The pair mask is the pseudo-β mask of both residues times the multichain
    mask (no distances between chains); the distogram is multiplied by it.
    """
    pb, pb_mask = pseudo_beta_and_mask(aatype, positions, mask)
    mask_2d = pb_mask[:, None] * pb_mask[None, :]
    mask_2d = mask_2d * multichain_mask_2d.to(mask_2d.dtype)
    dgram = distogram_one_hot(pb, num_bins, min_bin, max_bin)
    return dgram * mask_2d[..., None], mask_2d


def _normalized(v: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """geometry.Vec3Array.normalized: v / sqrt(max(|v|², ε²)), |v|² summed x, y, z in that order."""
    norm2 = v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2]
    return v / torch.sqrt(torch.clamp(norm2, min=epsilon ** 2))[..., None]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], dim=-1)


def backbone_frames(positions: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """folding_multimer.make_backbone_affine: per-residue frames from N, CA, C.

    positions [..., 37, 3], mask [..., 37] -> (rotation [..., 3, 3] whose
    columns are the frame axes e0 (along C - CA), e1 (N - CA made orthogonal
    to e0), e2 = e0 × e1; translation (CA) [..., 3]; backbone mask [...]).
    """
    n, ca, c = positions[..., _N, :], positions[..., _CA, :], positions[..., _C, :]
    e0 = _normalized(c - ca)
    e1 = n - ca
    e1 = _normalized(e1 - _dot(e1, e0)[..., None] * e0)
    e2 = _cross(e0, e1)
    rotation = torch.stack([e0, e1, e2], dim=-1)
    backbone_mask = (mask[..., _N] * mask[..., _CA] * mask[..., _C]).to(torch.float32)
    return rotation, ca, backbone_mask


def backbone_unit_vectors(positions: torch.Tensor, mask: torch.Tensor,
                          multichain_mask_2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One template's unit vectors [R, R, 3] (in i's backbone frame, towards j's CA) and their pair mask [R, R].

    As ``SingleTemplateEmbedding``: ``rigid[:, None].inverse().apply_to_point(CA_j)``,
    i.e. ``Rᵢᵀ·CA_j + Rᵢᵀ·(-CA_i)`` (two products, then the sum, as haiku),
    normalised, then multiplied by the backbone pair mask (both residues have
    N, CA and C, and the pair is within one chain). Off the diagonal it agrees
    with JAX to rounding; on it, it gives exact zeros where jitted ColabFold
    gives XLA's rounding residue normalised: the model uses
    :func:`colabfold_unit_vectors`.
    """
    rotation, translation, backbone_mask = backbone_frames(positions, mask)
    # Rᵀ·p has components eₖ·p.
    axes = rotation.transpose(-1, -2)  # [R, 3 (axis k), 3 (xyz)]
    rotated = _apply(axes[:, None], translation[None, :, :])  # [i, j, 3]: Rᵢᵀ·CA_j
    inv_translation = _apply(axes, -translation)  # [i, 3]: Rᵢᵀ·(-CA_i)
    unit_vector = _normalized(rotated + inv_translation[:, None, :])
    mask_2d = backbone_mask[:, None] * backbone_mask[None, :]
    mask_2d = mask_2d * multichain_mask_2d.to(mask_2d.dtype)
    return unit_vector * mask_2d[..., None], mask_2d


def _apply(axes: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Rot3Array.apply_to_point for the transposed rotation: rows of ``axes`` dotted with ``p``, x + y + z."""
    return torch.stack([axes[..., k, 0] * p[..., 0] + axes[..., k, 1] * p[..., 1] + axes[..., k, 2] * p[..., 2]
                        for k in range(3)], dim=-1)


# --------------------------------------------------------------------------- single (MSA row) features


@functools.lru_cache(maxsize=None)
def _chi_tables() -> Tuple[torch.Tensor, torch.Tensor]:
    """all_atom_multimer.get_chi_atom_indices [21, 4, 4] and the chi angle mask [21, 4] (UNK last, all 0)."""
    indices, masks = [], []
    for restype in rc.restypes:
        chis = rc.chi_angles_atoms[rc.restype_1to3[restype]]
        rows = [[rc.atom_order[a] for a in chi] for chi in chis]
        indices.append(rows + [[0, 0, 0, 0]] * (NUM_CHI - len(rows)))
    indices.append([[0, 0, 0, 0]] * NUM_CHI)
    masks = list(rc.chi_angles_mask) + [[0.0] * NUM_CHI]
    return torch.tensor(indices, dtype=torch.long), torch.tensor(masks, dtype=torch.float32)


def _dihedral_angle(a, b, c, d) -> torch.Tensor:
    """geometry.dihedral_angle, in its order of operations (the norm clipped at 1e-6)."""
    v1, v2, v3 = a - b, b - c, d - c
    c1 = _cross(v1, v2)
    c2 = _cross(v3, v2)
    c3 = _cross(c2, c1)
    v2_mag = torch.sqrt(torch.clamp(_dot(v2, v2), min=1e-12))
    return torch.atan2(_dot(c3, v2), v2_mag * _dot(c1, c2))


def chi_angles(aatype: torch.Tensor, positions: torch.Tensor,
               mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """all_atom_multimer.compute_chi_angles: chi angles [..., R, 4] and their mask [..., R, 4].

    The mask is 1 where the residue type has that chi and all four of its
    atoms are present. Residue types beyond UNK (the gap, 21) clip to UNK's
    row, as haiku's ``batched_gather(mode='clip')``: no chi.
    """
    atom_table, mask_table = _chi_tables()
    restype = aatype.long().clamp(0, _UNK)
    atom_indices = atom_table[restype]  # [..., R, 4 chis, 4 atoms]
    lead = atom_indices.shape[:-2]
    flat_idx = atom_indices.reshape(*lead, NUM_CHI * 4)
    atoms = torch.gather(positions, -2, flat_idx[..., None].expand(*flat_idx.shape, 3))
    atoms = atoms.reshape(*lead, NUM_CHI, 4, 3)
    angles = _dihedral_angle(atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :], atoms[..., 3, :])
    atom_mask = torch.gather(mask, -1, flat_idx).reshape(*lead, NUM_CHI, 4)
    chi_mask = mask_table[restype] * torch.prod(atom_mask, dim=-1).to(torch.float32)
    return angles, chi_mask


def template_single_features(template_aatype: torch.Tensor, template_all_atom_positions: torch.Tensor,
                             template_all_atom_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The inputs of ``template_single_embedding`` [T, R, 34] and the template rows' mask [T, R].

    one-hot aatype (22), sin(chi)·mask (4), cos(chi)·mask (4), chi mask (4),
    as ``modules_multimer.template_embedding_1d``; the row mask is the chi1
    mask (so residues without chi1, Gly and Ala, are masked, as in haiku).
    """
    angles, chi_mask = chi_angles(template_aatype, template_all_atom_positions.float(),
                                  template_all_atom_mask.float())
    features = torch.cat([
        one_hot(template_aatype, NUM_AATYPE),
        torch.sin(angles) * chi_mask,
        torch.cos(angles) * chi_mask,
        chi_mask,
    ], dim=-1)
    return features, chi_mask[..., 0]


def colabfold_unit_vectors(positions: torch.Tensor, mask: torch.Tensor,
                           multichain_mask_2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`backbone_unit_vectors` by ColabFold's own code, jitted as in ColabFold's model.

    One template: positions [R, 37, 3], mask [R, 37], multichain_mask_2d [R, R]
    -> (masked unit vectors [R, R, 3], backbone pair mask [R, R]), float32.
    The jitted function is ``SingleTemplateEmbedding``'s lines verbatim (see
    the module docstring for why the diagonal needs XLA). The features are
    small ([R, R, 3]); everything learned stays in torch.
    """
    out = _jitted_unit_vectors()(positions.detach().cpu().float().numpy(), mask.detach().cpu().float().numpy(),
                                 multichain_mask_2d.detach().cpu().float().numpy())
    unit_x, unit_y, unit_z, mask_2d = (np.array(v, np.float32) for v in out)
    return torch.from_numpy(np.stack([unit_x, unit_y, unit_z], axis=-1)), torch.from_numpy(mask_2d)


@functools.lru_cache(maxsize=None)
def _jitted_unit_vectors():
    import jax
    from alphafold.model import folding_multimer, geometry

    def unit_vectors(raw_atom_pos, template_all_atom_mask, multichain_mask_2d):
        # modules_multimer.SingleTemplateEmbedding.construct_input, unchanged (fp32).
        atom_pos = geometry.Vec3Array.from_array(raw_atom_pos)
        rigid, backbone_mask = folding_multimer.make_backbone_affine(atom_pos, template_all_atom_mask, None)
        points = rigid.translation
        rigid_vec = rigid[:, None].inverse().apply_to_point(points)
        unit_vector = rigid_vec.normalized()
        unit_vector = [unit_vector.x, unit_vector.y, unit_vector.z]
        backbone_mask_2d = backbone_mask[:, None] * backbone_mask[None, :]
        backbone_mask_2d *= multichain_mask_2d
        unit_vector = [x * backbone_mask_2d for x in unit_vector]
        return (*unit_vector, backbone_mask_2d)

    return jax.jit(unit_vectors)
