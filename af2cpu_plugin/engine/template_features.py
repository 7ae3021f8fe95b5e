"""Geometric template features: torsion angles and backbone unit vectors.

The torsion angles of the template rows (Suppl. Alg. 2 lines 7-8) come from
ColabFold's own jitted function (see :func:`colabfold_torsion_angles` for
why); the backbone-frame unit vectors of ``modules.SingleTemplateEmbedding``
(``quat_affine.make_transform_from_reference`` then ``invert_point``) are torch,
in AlphaFold's order of operations (same epsilons, same sums), so they agree
with the JAX ones to float32 rounding.
"""

from __future__ import annotations

import functools
from typing import Dict

import numpy as np
import torch

from alphafold.common import residue_constants as rc

_N, _CA, _C = (rc.atom_order[a] for a in ("N", "CA", "C"))


def colabfold_torsion_angles(aatype: torch.Tensor, all_atom_pos: torch.Tensor, all_atom_mask: torch.Tensor,
                             placeholder_for_undefined: bool = False) -> Dict[str, torch.Tensor]:
    """The 7 template torsions as (sin, cos), their alternatives and masks, by ColabFold's own
    ``all_atom.atom37_to_torsion_angles``, jitted as in ColabFold's model.

    Why not torch: with ColabFold's configs (``zero_init=True``, no
    placeholder) the *undefined* torsions (residue 0's pre-omega, residues
    after a template gap) come from a degenerate frame, and their values are
    whatever XLA's fused float32 ops round to: eager JAX gives (0, 0), jitted
    JAX a unit vector. They still enter the MSA rows, so only XLA's own
    arithmetic reproduces ColabFold (first-pass coordinates 8.9 Å apart
    otherwise, 6e-4 Å this way, bench/parity.py --case templates130). The
    features are tiny ([templates, residues, 7, 2]); everything learned stays
    in torch.
    """
    fn = _jitted_torsions(bool(placeholder_for_undefined))
    out = fn(aatype.cpu().numpy().astype(np.int32), all_atom_pos.detach().cpu().float().numpy(),
             all_atom_mask.detach().cpu().float().numpy())
    dtype = all_atom_pos.dtype
    return {k: torch.from_numpy(np.array(v, np.float32)).to(dtype) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _jitted_torsions(placeholder_for_undefined: bool):
    import jax
    from alphafold.model import all_atom

    return jax.jit(lambda a, p, m: all_atom.atom37_to_torsion_angles(
        aatype=a, all_atom_pos=p, all_atom_mask=m, placeholder_for_undefined=placeholder_for_undefined))


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
    ret = colabfold_torsion_angles(template_aatype, template_all_atom_positions, template_all_atom_masks,
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
