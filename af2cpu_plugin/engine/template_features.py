"""Geometric template features: torsion angles and backbone unit vectors.

Torch versions of ``all_atom.atom37_to_torsion_angles`` (the template rows of
Suppl. Alg. 2 lines 7-8) and of the backbone-frame unit vectors of
``modules.SingleTemplateEmbedding`` (``quat_affine.make_transform_from_reference``
then ``invert_point``). The operations follow AlphaFold's order (same epsilons,
same sums), so the numbers agree with the JAX ones to float32 rounding.

The per-residue-type tables come from ``alphafold.common.residue_constants``.
"""

from __future__ import annotations

import functools
from typing import Dict

import numpy as np
import torch

from alphafold.common import residue_constants as rc

_N, _CA, _C = (rc.atom_order[a] for a in ("N", "CA", "C"))


@functools.lru_cache(maxsize=None)
def _chi_tables() -> Dict[str, np.ndarray]:
    """Chi-atom indices [21, 4, 4], chi mask [21, 4] and pi-periodicity [21, 4] (UNK last, all zero)."""
    indices = []
    for letter in rc.restypes:
        chis = [[rc.atom_order[a] for a in chi] for chi in rc.chi_angles_atoms[rc.restype_1to3[letter]]]
        chis += [[0, 0, 0, 0]] * (4 - len(chis))
        indices.append(chis)
    indices.append([[0, 0, 0, 0]] * 4)
    mask = list(rc.chi_angles_mask) + [[0.0, 0.0, 0.0, 0.0]]
    return {
        "chi_atom_indices": np.asarray(indices, np.int64),
        "chi_angles_mask": np.asarray(mask, np.float32),
        "chi_pi_periodic": np.asarray(rc.chi_pi_periodic, np.float32),
    }


def _table(name: str, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(_chi_tables()[name], device=like.device).to(dtype)


def _robust_normalize(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """r3.vecs_robust_normalize on ``[..., 3]``."""
    x, y, z = v.unbind(-1)
    return v / torch.sqrt(x * x + y * y + z * z + eps)[..., None]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def atom37_to_torsion_angles(
    aatype: torch.Tensor,
    all_atom_pos: torch.Tensor,
    all_atom_mask: torch.Tensor,
    placeholder_for_undefined: bool = False,
) -> Dict[str, torch.Tensor]:
    """The 7 torsion angles (pre-omega, phi, psi, chi1-4) as (sin, cos), and their masks.

    aatype [B, N] (int), all_atom_pos [B, N, 37, 3], all_atom_mask [B, N, 37] ->
    ``torsion_angles_sin_cos`` and ``alt_torsion_angles_sin_cos`` [B, N, 7, 2],
    ``torsion_angles_mask`` [B, N, 7]. As ``all_atom.atom37_to_torsion_angles``.
    """
    dtype = all_atom_pos.dtype
    aatype = torch.clamp(aatype.long(), max=20)  # anything past 20 is UNK
    all_atom_mask = all_atom_mask.to(dtype)

    prev_pos = torch.cat([torch.zeros_like(all_atom_pos[:, :1]), all_atom_pos[:, :-1]], dim=1)
    prev_mask = torch.cat([torch.zeros_like(all_atom_mask[:, :1]), all_atom_mask[:, :-1]], dim=1)

    # The 4 atoms of each backbone torsion [B, N, 4, 3].
    pre_omega_pos = torch.cat([prev_pos[:, :, 1:3], all_atom_pos[:, :, 0:2]], dim=-2)  # prev CA, C; N, CA
    phi_pos = torch.cat([prev_pos[:, :, 2:3], all_atom_pos[:, :, 0:3]], dim=-2)  # prev C; N, CA, C
    psi_pos = torch.cat([all_atom_pos[:, :, 0:3], all_atom_pos[:, :, 4:5]], dim=-2)  # N, CA, C; O

    pre_omega_mask = torch.prod(prev_mask[:, :, 1:3], dim=-1) * torch.prod(all_atom_mask[:, :, 0:2], dim=-1)
    phi_mask = prev_mask[:, :, 2] * torch.prod(all_atom_mask[:, :, 0:3], dim=-1)
    psi_mask = torch.prod(all_atom_mask[:, :, 0:3], dim=-1) * all_atom_mask[:, :, 4]

    atom_indices = torch.as_tensor(_chi_tables()["chi_atom_indices"], device=aatype.device)[aatype]  # [B, N, 4, 4]
    b, n = aatype.shape
    flat_idx = atom_indices.reshape(b, n, 16)
    chis_pos = torch.gather(all_atom_pos, 2, flat_idx[..., None].expand(b, n, 16, 3)).reshape(b, n, 4, 4, 3)
    chis_mask = _table("chi_angles_mask", aatype, dtype)[aatype]
    chi_atoms_mask = torch.gather(all_atom_mask, 2, flat_idx).reshape(b, n, 4, 4)
    chis_mask = chis_mask * torch.prod(chi_atoms_mask, dim=-1)

    torsions_pos = torch.cat(
        [pre_omega_pos[:, :, None], phi_pos[:, :, None], psi_pos[:, :, None], chis_pos], dim=2
    )  # [B, N, 7, 4, 3]
    torsion_angles_mask = torch.cat(
        [pre_omega_mask[..., None], phi_mask[..., None], psi_mask[..., None], chis_mask], dim=2
    )

    # r3.rigids_from_3_points: atom 1 on the negative x axis, atom 2 the origin,
    # atom 0 in the xy plane (Suppl. Alg. 21, Gram-Schmidt).
    origin = torsions_pos[..., 2, :]
    e0 = _robust_normalize(origin - torsions_pos[..., 1, :])
    e1_raw = torsions_pos[..., 0, :] - origin
    e1 = _robust_normalize(e1_raw - _dot(e1_raw, e0)[..., None] * e0)
    e2 = torch.cross(e0, e1, dim=-1)
    # The fourth atom in that frame: inverse rigid (R^T, -R^T t) applied to it.
    # R's columns are e0, e1, e2, so R^T v is (e0·v, e1·v, e2·v); only y, z are used.
    fourth = torsions_pos[..., 3, :]
    rel_y = _dot(e1, fourth) - _dot(e1, origin)
    rel_z = _dot(e2, fourth) - _dot(e2, origin)

    sin_cos = torch.stack([rel_z, rel_y], dim=-1)
    sin_cos = sin_cos / torch.sqrt(rel_z * rel_z + rel_y * rel_y + 1e-8)[..., None]
    # psi is measured from the oxygen: mirror it.
    sin_cos = sin_cos * sin_cos.new_tensor([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])[:, None]

    chi_is_ambiguous = _table("chi_pi_periodic", aatype, dtype)[aatype]
    mirror = torch.cat([torch.ones_like(chi_is_ambiguous[..., :3]), 1.0 - 2.0 * chi_is_ambiguous], dim=-1)
    alt_sin_cos = sin_cos * mirror[..., None]

    if placeholder_for_undefined:
        # Undefined torsions (e.g. the N-terminal pre-omega) become (sin, cos) = (1, 0).
        placeholder = torch.stack([torch.ones_like(torsion_angles_mask), torch.zeros_like(torsion_angles_mask)], -1)
        m = torsion_angles_mask[..., None]
        sin_cos = sin_cos * m + placeholder * (1 - m)
        alt_sin_cos = alt_sin_cos * m + placeholder * (1 - m)

    return {
        "torsion_angles_sin_cos": sin_cos,
        "alt_torsion_angles_sin_cos": alt_sin_cos,
        "torsion_angles_mask": torsion_angles_mask,
    }


def template_single_features(
    template_aatype: torch.Tensor,
    template_all_atom_positions: torch.Tensor,
    template_all_atom_masks: torch.Tensor,
    placeholder_for_undefined: bool = False,
):
    """Per-residue template features [T, N, 57] and the psi-angle mask [T, N].

    One-hot aatype (22), torsion (sin, cos) (14), alternative torsions (14) and
    torsion masks (7), as ``EmbeddingsAndEvoformer`` builds them for the
    template rows of the MSA (Suppl. Alg. 2 line 7).
    """
    ret = atom37_to_torsion_angles(template_aatype, template_all_atom_positions, template_all_atom_masks,
                                   placeholder_for_undefined)
    num_templ, num_res = template_aatype.shape
    dtype = template_all_atom_positions.dtype
    one_hot = _one_hot(template_aatype, 22, dtype)
    features = torch.cat([
        one_hot,
        ret["torsion_angles_sin_cos"].reshape(num_templ, num_res, 14),
        ret["alt_torsion_angles_sin_cos"].reshape(num_templ, num_res, 14),
        ret["torsion_angles_mask"],
    ], dim=-1)
    return features, ret["torsion_angles_mask"][:, :, 2]


def _one_hot(index: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """jax.nn.one_hot: out-of-range indices give an all-zero row."""
    return (index.long()[..., None] == torch.arange(num_classes, device=index.device)).to(dtype)


def backbone_frames(n_xyz: torch.Tensor, ca_xyz: torch.Tensor, c_xyz: torch.Tensor) -> torch.Tensor:
    """The rotation that canonicalises each residue ([N, 3] each -> [N, 3, 3]).

    ``quat_affine.make_canonical_transform``: with CA at the origin, rotate C
    onto the x axis, then N into the xy plane. The returned matrix maps global
    offsets (from CA) to the residue's local frame.
    """
    n = n_xyz - ca_xyz
    c = c_xyz - ca_xyz
    c_x, c_y, c_z = c.unbind(-1)
    zeros, ones = torch.zeros_like(c_x), torch.ones_like(c_x)
    norm_xy = torch.sqrt(1e-20 + c_x ** 2 + c_y ** 2)
    sin_c1, cos_c1 = -c_y / norm_xy, c_x / norm_xy
    c1 = _mat([[cos_c1, -sin_c1, zeros], [sin_c1, cos_c1, zeros], [zeros, zeros, ones]])
    norm_xyz = torch.sqrt(1e-20 + c_x ** 2 + c_y ** 2 + c_z ** 2)
    sin_c2, cos_c2 = c_z / norm_xyz, torch.sqrt(c_x ** 2 + c_y ** 2) / norm_xyz
    c2 = _mat([[cos_c2, zeros, sin_c2], [zeros, ones, zeros], [-sin_c2, zeros, cos_c2]])
    c_rot = _mul(c2, c1)
    n_rot = _apply(c_rot, n)
    n_y, n_z = n_rot[..., 1], n_rot[..., 2]
    norm_yz = torch.sqrt(1e-20 + n_y ** 2 + n_z ** 2)
    sin_n, cos_n = -n_z / norm_yz, n_y / norm_yz
    n_mat = _mat([[ones, zeros, zeros], [zeros, cos_n, -sin_n], [zeros, sin_n, cos_n]])
    return _mul(n_mat, c_rot)


def _mat(rows) -> torch.Tensor:
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3x3 products written out as quat_affine._multiply does."""
    return torch.stack([
        torch.stack([a[..., i, 0] * b[..., 0, j] + a[..., i, 1] * b[..., 1, j] + a[..., i, 2] * b[..., 2, j]
                     for j in range(3)], dim=-1)
        for i in range(3)
    ], dim=-2)


def _apply(rot: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.stack([rot[..., i, 0] * v[..., 0] + rot[..., i, 1] * v[..., 1] + rot[..., i, 2] * v[..., 2]
                        for i in range(3)], dim=-1)


def backbone_unit_vectors(all_atom_positions: torch.Tensor, all_atom_masks: torch.Tensor):
    """Unit vectors from each residue's backbone frame to every other CA, and the backbone mask.

    all_atom_positions [N, 37, 3], all_atom_masks [N, 37] -> (unit vectors
    [N, N, 3] (i's frame, j's CA; zero where either residue lacks N, CA or C),
    backbone mask_2d [N, N]). As ``SingleTemplateEmbedding``.
    """
    ca = all_atom_positions[:, _CA]
    rot = backbone_frames(all_atom_positions[:, _N], ca, all_atom_positions[:, _C])  # [N, 3, 3]
    offset = ca[None, :, :] - ca[:, None, :]  # [i, j, 3]: CA_j in i's frame, before rotating
    vec = _apply(rot[:, None], offset)
    inv_distance = torch.rsqrt(1e-6 + (vec[..., 0] ** 2 + vec[..., 1] ** 2 + vec[..., 2] ** 2))
    mask = all_atom_masks[:, _N] * all_atom_masks[:, _CA] * all_atom_masks[:, _C]
    mask_2d = mask[:, None] * mask[None, :]
    inv_distance = inv_distance * mask_2d
    return vec * inv_distance[..., None], mask_2d
