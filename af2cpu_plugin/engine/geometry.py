"""Rigid-body geometry for the structure module (quat_affine.py and r3.py).

Two representations, as in AlphaFold:

* :class:`QuatAffine` — the backbone frames the fold iterations update: a unit
  quaternion, the rotation matrix derived from it, and a translation
  (``alphafold/model/quat_affine.py``). Suppl. Alg. 23 "BackboneUpdate".
* :class:`Rigids` — rotation matrix + translation, used for the side-chain
  frames and atom placement (``alphafold/model/r3.py``). Suppl. Alg. 24.

Vectors are plain tensors with a trailing axis of 3 (x, y, z); rotations are
``[..., 3, 3]`` tensors with ``rot[..., row, col]`` (r3's ``xy`` is
``rot[..., 0, 1]``). As in r3.py, the 3x3 products are written as
elementwise multiply-and-sum rather than matmul, so no backend can route them
through reduced-precision matrix units.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import torch

# quat_affine.QUAT_TO_ROT: rot[..., 3x3] = sum_ij q_i q_j QUAT_TO_ROT[i, j].
_QUAT_TO_ROT = np.zeros((4, 4, 3, 3), dtype=np.float32)
_QUAT_TO_ROT[0, 0] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # rr
_QUAT_TO_ROT[1, 1] = [[1, 0, 0], [0, -1, 0], [0, 0, -1]]  # ii
_QUAT_TO_ROT[2, 2] = [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]  # jj
_QUAT_TO_ROT[3, 3] = [[-1, 0, 0], [0, -1, 0], [0, 0, 1]]  # kk
_QUAT_TO_ROT[1, 2] = [[0, 2, 0], [2, 0, 0], [0, 0, 0]]  # ij
_QUAT_TO_ROT[1, 3] = [[0, 0, 2], [0, 0, 0], [2, 0, 0]]  # ik
_QUAT_TO_ROT[2, 3] = [[0, 0, 0], [0, 0, 2], [0, 2, 0]]  # jk
_QUAT_TO_ROT[0, 1] = [[0, 0, 0], [0, 0, -2], [0, 2, 0]]  # ir
_QUAT_TO_ROT[0, 2] = [[0, 0, 2], [0, 0, 0], [-2, 0, 0]]  # jr
_QUAT_TO_ROT[0, 3] = [[0, -2, 0], [2, 0, 0], [0, 0, 0]]  # kr

# Hamilton product q * (0, v) for a pure-vector quaternion v:
# out_k = sum_ij q_i v_j _QUAT_MULTIPLY_BY_VEC[i, j, k] (quat_affine.QUAT_MULTIPLY[:, 1:, :]).
_QUAT_MULTIPLY = np.zeros((4, 4, 4), dtype=np.float32)
_QUAT_MULTIPLY[:, :, 0] = [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0], [0, 0, 0, -1]]
_QUAT_MULTIPLY[:, :, 1] = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, -1, 0]]
_QUAT_MULTIPLY[:, :, 2] = [[0, 0, 1, 0], [0, 0, 0, -1], [1, 0, 0, 0], [0, 1, 0, 0]]
_QUAT_MULTIPLY[:, :, 3] = [[0, 0, 0, 1], [0, 0, 1, 0], [0, -1, 0, 0], [1, 0, 0, 0]]
_QUAT_MULTIPLY_BY_VEC = _QUAT_MULTIPLY[:, 1:, :]


def _table(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(array, dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------
# Rotations and vectors (elementwise, r3.py style)


def rot_mul_vec(rot: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``R v`` for rot ``[..., 3, 3]`` and vec ``[..., 3]`` (r3.rots_mul_vecs)."""
    x, y, z = vec.unbind(-1)
    return torch.stack(
        [rot[..., i, 0] * x + rot[..., i, 1] * y + rot[..., i, 2] * z for i in range(3)], dim=-1
    )


def rot_transpose_mul_vec(rot: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``R^T v`` (quat_affine.apply_inverse_rot_to_vec)."""
    x, y, z = vec.unbind(-1)
    return torch.stack(
        [rot[..., 0, i] * x + rot[..., 1, i] * y + rot[..., 2, i] * z for i in range(3)], dim=-1
    )


def rot_mul_rot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A B`` for ``[..., 3, 3]`` rotations (r3.rots_mul_rots)."""
    # Column j of A·B is A applied to column j of B.
    cols = [rot_mul_vec(a, b[..., :, j]) for j in range(3)]
    return torch.stack(cols, dim=-1)


def quat_to_rot(normalized_quat: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``[..., 4]`` -> rotation ``[..., 3, 3]`` (quat_affine.quat_to_rot)."""
    table = _table(_QUAT_TO_ROT, normalized_quat).reshape(4, 4, 9)
    q = normalized_quat
    rot = (table * q[..., :, None, None] * q[..., None, :, None]).sum(dim=(-3, -2))
    return rot.reshape(*q.shape[:-1], 3, 3)


def quat_multiply_by_vec(quat: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``quat * (0, vec)`` for quat ``[..., 4]``, vec ``[..., 3]`` (quat_affine.quat_multiply_by_vec)."""
    table = _table(_QUAT_MULTIPLY_BY_VEC, quat)
    return (table * quat[..., :, None, None] * vec[..., None, :, None]).sum(dim=(-3, -2))


# ---------------------------------------------------------------------------
# QuatAffine: backbone frames


@dataclasses.dataclass
class QuatAffine:
    """Frames as quaternion + rotation + translation (quat_affine.QuatAffine).

    quaternion ``[..., 4]`` (w, x, y, z), rotation ``[..., 3, 3]`` kept in sync
    with it, translation ``[..., 3]``. Construct with :meth:`create` (which
    normalises the quaternion and derives the rotation, like haiku's
    ``QuatAffine(q, t)``), :meth:`from_tensor` or :meth:`identity`.
    """

    quaternion: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    @classmethod
    def create(cls, quaternion: torch.Tensor, translation: torch.Tensor, normalize: bool = True) -> "QuatAffine":
        if normalize:
            quaternion = quaternion / torch.linalg.vector_norm(quaternion, dim=-1, keepdim=True)
        return cls(quaternion, quat_to_rot(quaternion), translation)

    @classmethod
    def identity(cls, num_residues: int, dtype=torch.float32, device=None) -> "QuatAffine":
        """folding.generate_new_affine: quaternion (1, 0, 0, 0), zero translation."""
        quat = torch.zeros(num_residues, 4, dtype=dtype, device=device)
        quat[:, 0] = 1.0
        return cls.create(quat, torch.zeros(num_residues, 3, dtype=dtype, device=device))

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, normalize: bool = False) -> "QuatAffine":
        """``[..., 7]`` (quaternion, translation) -> QuatAffine."""
        return cls.create(tensor[..., :4], tensor[..., 4:], normalize=normalize)

    def to_tensor(self) -> torch.Tensor:
        """``[..., 7]``: quaternion then translation."""
        return torch.cat([self.quaternion, self.translation], dim=-1)

    def scale_translation(self, position_scale: float) -> "QuatAffine":
        return QuatAffine(self.quaternion, self.rotation, self.translation * position_scale)

    def pre_compose(self, update: torch.Tensor) -> "QuatAffine":
        """Apply the 6-dim ``update`` first (Suppl. Alg. 23 lines 2-4).

        ``update[..., :3]`` are (b, c, d) of the quaternion update (1, b, c, d),
        ``update[..., 3:]`` the translation in the local frame. The result is
        normalised, as haiku's ``QuatAffine(new_quaternion, new_translation)``.
        """
        vector_quaternion_update, trans_update = update[..., :3], update[..., 3:]
        new_quaternion = self.quaternion + quat_multiply_by_vec(self.quaternion, vector_quaternion_update)
        new_translation = self.translation + rot_mul_vec(self.rotation, trans_update)
        return QuatAffine.create(new_quaternion, new_translation)

    def _expand(self, extra_dims: int):
        rot, trans = self.rotation, self.translation
        for _ in range(extra_dims):
            rot = rot.unsqueeze(-3)
            trans = trans.unsqueeze(-2)
        return rot, trans

    def apply_to_point(self, point: torch.Tensor, extra_dims: int = 0) -> torch.Tensor:
        """``R p + t`` for points ``[..., *extra, 3]`` (extra axes absent from the frames)."""
        rot, trans = self._expand(extra_dims)
        return rot_mul_vec(rot, point) + trans

    def invert_point(self, transformed_point: torch.Tensor, extra_dims: int = 0) -> torch.Tensor:
        """``R^T (p - t)``."""
        rot, trans = self._expand(extra_dims)
        return rot_transpose_mul_vec(rot, transformed_point - trans)


# ---------------------------------------------------------------------------
# Rigids: side-chain frames (r3.py)


@dataclasses.dataclass
class Rigids:
    """Rigid transforms ``x -> rot x + trans`` (r3.Rigids): rot ``[..., 3, 3]``, trans ``[..., 3]``."""

    rot: torch.Tensor
    trans: torch.Tensor

    def __getitem__(self, index) -> "Rigids":
        """Index the frame (leading) axes, e.g. ``r[:, 4]`` or ``r[:, None]``; never ``...``."""
        return Rigids(self.rot[index], self.trans[index])

    def to_tensor_flat12(self) -> torch.Tensor:
        """``[..., 12]``: xx, xy, xz, yx, ..., zz, then x, y, z (r3.rigids_to_tensor_flat12)."""
        return torch.cat([self.rot.flatten(-2), self.trans], dim=-1)


def rigids_from_tensor4x4(m: torch.Tensor) -> Rigids:
    """Homogeneous ``[..., 4, 4]`` -> Rigids (r3.rigids_from_tensor4x4)."""
    return Rigids(m[..., :3, :3], m[..., :3, 3])


def rigids_from_quataffine(affine: QuatAffine) -> Rigids:
    return Rigids(affine.rotation, affine.translation)


def rigids_mul_rigids(a: Rigids, b: Rigids) -> Rigids:
    """Composition ``a ∘ b`` (r3.rigids_mul_rigids)."""
    return Rigids(rot_mul_rot(a.rot, b.rot), a.trans + rot_mul_vec(a.rot, b.trans))


def rigids_mul_rots(r: Rigids, m: torch.Tensor) -> Rigids:
    """``r`` composed with a pure rotation ``m`` (r3.rigids_mul_rots)."""
    return Rigids(rot_mul_rot(r.rot, m), r.trans)


def rigids_mul_vecs(r: Rigids, v: torch.Tensor) -> torch.Tensor:
    """Apply ``r`` to points ``v`` ``[..., 3]`` (r3.rigids_mul_vecs)."""
    return rot_mul_vec(r.rot, v) + r.trans


def invert_rigids(r: Rigids) -> Rigids:
    """Group inverse (r3.invert_rigids)."""
    inv_rot = r.rot.transpose(-1, -2)
    return Rigids(inv_rot, -rot_mul_vec(inv_rot, r.trans))
