"""The AlphaFold-Multimer structure module (alphafold/model/folding_multimer.py).

Suppl. Alg. 20 "StructureModule" (``generate_monomer_rigids``) with Alg. 22
"InvariantPointAttention", Alg. 23 "BackboneUpdate" and Alg. 24
"computeAllAtomCoordinates", in the multimer code's conventions. It computes
what the monomer module (:mod:`af2cpu_plugin.engine.structure`) computes, but
its parameters and several of its numerics differ, so it has its own classes:

* Frames are ``geometry.Rigid3Array`` (a rotation matrix and a translation),
  with no quaternion carried along. The backbone update (:class:`QuatRigid`)
  makes a rigid from a (1, b, c, d) quaternion and composes it onto the frame
  (``rigid @ rigid_update``); the rotation is never re-normalised.
* IPA (:class:`InvariantPointAttention`) has separate q/k/v scalar
  projections without bias and one :class:`PointProjection` per point set,
  whose Linear lays out ``[head, x-block | y-block | z-block]`` (the
  monomer's is ``[x-block | y-block | z-block]`` over all heads). The
  ``sqrt(1/3)`` logit normalisation multiplies the whole sum, mask included,
  and the point norm is ``sqrt(max(|p|^2, eps^2))`` rather than
  ``sqrt(eps + |p|^2)``.
* The atom37 mask of the output is multiplied by ``seq_mask``.

Rigid3Array's algebra (``Rot3Array.__matmul__``, ``apply_to_point``,
``apply_inverse_to_point``) is r3's, written with the same elementwise
products in the same order, so frames are held in the monomer's
:class:`~af2cpu_plugin.engine.geometry.Rigids` and composed with its
helpers. Likewise ``all_atom_multimer.torsion_angles_to_frames``,
``frames_and_literature_positions_to_atom14_pos`` (a one-hot sum there, a
gather here: the same values) and ``atom14_to_atom37`` compute exactly what
the monomer's :mod:`af2cpu_plugin.engine.all_atom` functions compute from the
same ``residue_constants`` tables; they are reused, and the tests check them
against ``all_atom_multimer``.

Haiku names repeated sub-modules ``name``, ``name_1``, ``name_2``...; the
torch sub-modules are registered under exactly those names. One
:class:`FoldIteration` (haiku scope ``structure_module/fold_iteration``, run by
``hk.scan``, which shares rather than stacks its parameters) is applied
``num_layer`` times.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from .. import structure as monomer
from ..all_atom import atom14_to_atom37, make_atom14_masks
from ..chunking import RowMapped, subbatched
from ..geometry import Rigids, rigids_mul_rigids, rot_mul_vec, rot_transpose_mul_vec
from ..primitives import LayerNorm, Linear, empty_param

# IPA's additive mask value (folding_multimer.py, as folding.py: 1e5, not the trunk's 1e9).
_IPA_MASK_VALUE = monomer._IPA_MASK_VALUE

# Rot3Array.from_quaternion clips the squared quaternion norm to this before rsqrt.
_QUAT_NORM_EPSILON = 1e-6


# ---------------------------------------------------------------------------
# Rigid3Array pieces that differ from the monomer's QuatAffine


def rot_from_quaternion(
    w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, epsilon: float = _QUAT_NORM_EPSILON
) -> torch.Tensor:
    """Rotation ``[..., 3, 3]`` from quaternion components (geometry.Rot3Array.from_quaternion, normalize=True).

    The quaternion is normalised by ``rsqrt(max(eps, |q|^2))``, so a
    near-zero quaternion gives a near-zero (not NaN) matrix, as in haiku.
    Entries are written out as there (not as the monomer's QUAT_TO_ROT table
    sum), so they round the same way.
    """
    inv_norm = torch.rsqrt(torch.clamp(w.square() + x.square() + y.square() + z.square(), min=epsilon))
    w, x, y, z = w * inv_norm, x * inv_norm, y * inv_norm, z * inv_norm
    xx = 1 - 2 * (y.square() + z.square())
    xy = 2 * (x * y - w * z)
    xz = 2 * (x * z + w * y)
    yx = 2 * (x * y + w * z)
    yy = 1 - 2 * (x.square() + z.square())
    yz = 2 * (y * z - w * x)
    zx = 2 * (x * z - w * y)
    zy = 2 * (y * z + w * x)
    zz = 1 - 2 * (x.square() + y.square())
    return torch.stack(
        [torch.stack([xx, xy, xz], -1), torch.stack([yx, yy, yz], -1), torch.stack([zx, zy, zz], -1)], dim=-2
    )


def identity_rigids(num_residues: int, dtype=torch.float32, device=None) -> Rigids:
    """geometry.Rigid3Array.identity([N]): identity rotations, zero translations."""
    rot = torch.eye(3, dtype=dtype, device=device).expand(num_residues, 3, 3).contiguous()
    return Rigids(rot, torch.zeros(num_residues, 3, dtype=dtype, device=device))


def scale_translation(rigids: Rigids, factor: float) -> Rigids:
    """Rigid3Array.scale_translation: the frames in Å for the side chains (translations times position_scale)."""
    return Rigids(rigids.rot, rigids.trans * factor)


# ---------------------------------------------------------------------------
# Modules


class QuatRigid(nn.Module):
    """Backbone update as a rigid from a (1, b, c, d) quaternion (folding_multimer.QuatRigid, full_quat=False).

    Suppl. Alg. 23 "BackboneUpdate" lines 1-3: one Linear (haiku ``rigid``)
    gives (b, c, d) and the translation; the quaternion's real part is 1
    before normalisation.
    """

    def __init__(self, num_channel: int) -> None:
        super().__init__()
        self.rigid = Linear(num_channel, 6)

    def forward(self, activations: torch.Tensor) -> Rigids:
        """activations [..., c] -> Rigids [...] (translation in the structure module's units, not Å)."""
        rigid_flat = self.rigid(activations)
        qx, qy, qz, tx, ty, tz = rigid_flat.unbind(-1)
        rot = rot_from_quaternion(torch.ones_like(qx), qx, qy, qz)
        return Rigids(rot, torch.stack([tx, ty, tz], dim=-1))


class PointProjection(nn.Module):
    """Points made in each residue's local frame, returned in the global frame (folding_multimer.PointProjection).

    Suppl. Alg. 22 lines 2-3 (q, k, v points). The Linear (haiku
    ``point_projection``) outputs ``[num_head, 3 * num_points]``; the last
    axis splits into the x, y and z blocks, each ``num_points`` wide.
    """

    def __init__(self, num_input: int, num_head: int, num_points: int) -> None:
        super().__init__()
        self.num_points = num_points
        self.point_projection = Linear(num_input, (num_head, 3 * num_points))

    def forward(self, activations: torch.Tensor, rigids: Rigids) -> torch.Tensor:
        """activations [N, c], rigids [N] -> global points [N, num_head, num_points, 3]."""
        local = self.point_projection(activations)  # [N, H, 3P]
        local = torch.stack(local.split(self.num_points, dim=-1), dim=-1)  # [N, H, P, 3]
        # rigids[..., None, None]: the same frame for every head and point.
        rot, trans = rigids.rot[:, None, None], rigids.trans[:, None, None]
        return rot_mul_vec(rot, local) + trans


class InvariantPointAttention(nn.Module):
    """Invariant point attention (folding_multimer.InvariantPointAttention).

    Suppl. Alg. 22 "InvariantPointAttention", in the multimer's form: the
    scalar, point and pair logit terms are summed (the mask subtracted) and
    the sum is then scaled by ``sqrt(1/3)``; the point weight is
    ``sqrt(1 / (P_qk * 9/2)) * softplus(trainable_point_weights)``.
    """

    def __init__(self, config, single_channel: int, pair_channel: int, dist_epsilon: float = 1e-8) -> None:
        """config: ``structure_module`` (num_head, num_scalar_qk/v, num_point_qk/v, num_channel)."""
        super().__init__()
        c = config
        self.num_head = h = c.num_head
        self.num_scalar_qk, self.num_scalar_v = c.num_scalar_qk, c.num_scalar_v
        self.num_point_qk, self.num_point_v = c.num_point_qk, c.num_point_v
        self.dist_epsilon = dist_epsilon

        self.trainable_point_weights = empty_param(h)
        self.q_point_projection = PointProjection(single_channel, h, c.num_point_qk)
        self.k_point_projection = PointProjection(single_channel, h, c.num_point_qk)
        self.q_scalar_projection = Linear(single_channel, (h, c.num_scalar_qk), use_bias=False)
        self.k_scalar_projection = Linear(single_channel, (h, c.num_scalar_qk), use_bias=False)
        self.attention_2d = Linear(pair_channel, h)
        self.v_scalar_projection = Linear(single_channel, (h, c.num_scalar_v), use_bias=False)
        self.v_point_projection = PointProjection(single_channel, h, c.num_point_v)
        num_final = h * (c.num_scalar_v + 4 * c.num_point_v + pair_channel)
        self.output_projection = Linear(num_final, c.num_channel)

    def forward(
        self, inputs_1d: torch.Tensor, inputs_2d: Union[torch.Tensor, RowMapped], mask: torch.Tensor, rigids: Rigids
    ) -> torch.Tensor:
        """inputs_1d [N, C], inputs_2d [N, N, C'] (a tensor or :class:`.chunking.RowMapped`), mask [N, 1], rigids [N] -> [N, num_channel]."""
        h, sv, pv = self.num_head, self.num_scalar_v, self.num_point_v

        # Each (q, k) point pair contributes Var[0.5 |q|^2 - <q, k>] = 9/2 (haiku's comment).
        point_variance = max(self.num_point_qk, 1) * 9.0 / 2
        point_weights = math.sqrt(1.0 / point_variance) * nn.functional.softplus(self.trainable_point_weights)
        # Each scalar pair contributes Var[q k] = 1.
        scalar_weights = math.sqrt(1.0 / (max(self.num_scalar_qk, 1) * 1.0))

        q_point = self.q_point_projection(inputs_1d, rigids)  # [N, H, Pqk, 3]
        k_point = self.k_point_projection(inputs_1d, rigids)
        q_scalar = self.q_scalar_projection(inputs_1d) * scalar_weights  # [N, H, Sqk]
        k_scalar = self.k_scalar_projection(inputs_1d)
        v_scalar = self.v_scalar_projection(inputs_1d)  # [N, H, Sv]
        v_point = self.v_point_projection(inputs_1d, rigids)  # [N, H, Pv, 3]

        # Keys and values, heads first.
        k = k_scalar.permute(1, 2, 0)  # [H, Sqk, N]
        v = v_scalar.transpose(0, 1)  # [H, N, Sv]
        kp = k_point.transpose(0, 1)  # [H, N, Pqk, 3]
        pw = point_weights[:, None, None, None]

        def attend(q_s, q_p, pair_rows, mask_q, rot, trans):
            # Query rows are independent: the whole attention runs per row slice.
            rows = q_s.shape[0]
            q_p = q_p.transpose(0, 1)  # [H, n, Pqk, 3]
            dist2 = None  # geometry.square_euclidean_distance(epsilon=0): dx*dx + dy*dy + dz*dz
            for axis in range(3):
                d = (q_p[:, :, None, :, axis] - kp[:, None, :, :, axis]).square()  # [H, n, N, Pqk]
                dist2 = d if dist2 is None else dist2 + d
            attn_logits = -0.5 * (pw * dist2).sum(-1)  # [H, n, N]
            attn_logits = attn_logits + torch.matmul(q_s.transpose(0, 1), k)
            attn_logits = attn_logits + self.attention_2d(pair_rows).permute(2, 0, 1)
            mask_2d = mask_q * mask.transpose(-1, -2)  # [n, N]
            attn_logits = attn_logits - _IPA_MASK_VALUE * (1.0 - mask_2d)
            # Normalise by the number of logit terms (3); the mask is scaled too.
            attn_logits = attn_logits * math.sqrt(1.0 / 3)
            attn = torch.softmax(attn_logits, dim=-1)  # [H, n, N], over keys

            result_scalar = torch.matmul(attn, v).transpose(0, 1).reshape(rows, h * sv)
            result_point_global = torch.einsum("hij,jhpc->ihpc", attn, v_point).reshape(rows, h * pv, 3)
            # rigid[..., None].apply_inverse_to_point: R^T (p - t).
            result_point_local = rot_transpose_mul_vec(rot[:, None], result_point_global - trans[:, None])
            x, y, z = result_point_local.unbind(-1)
            # Vec3Array.norm(eps): sqrt(max(|p|^2, eps^2)).
            point_norm = torch.sqrt(torch.clamp(x * x + y * y + z * z, min=self.dist_epsilon**2))
            result_over_2d = torch.einsum("hij,ijc->ihc", attn, pair_rows).reshape(rows, -1)
            return torch.cat([result_scalar, x, y, z, point_norm, result_over_2d], dim=-1)

        final_act = subbatched(attend, [q_scalar, q_point, inputs_2d, mask, rigids.rot, rigids.trans], dim=0)
        return self.output_projection(final_act)


class MultiRigidSidechain(monomer.MultiRigidSidechain):
    """Torsion angles and all-atom positions (folding_multimer.MultiRigidSidechain).

    Suppl. Alg. 20 line 11 and Alg. 24: the monomer's module and parameters
    (same ResNet, same l2 normalisation, same frame algebra, module
    docstring), given the backbone frames as rigids.
    """

    def forward(self, rigids: Rigids, representations_list: Sequence[torch.Tensor],
                aatype: torch.Tensor) -> Dict[str, object]:
        return self.from_rigids(rigids, representations_list, aatype)


class FoldIteration(nn.Module):
    """One shared-weight iteration of the structure module (folding_multimer.FoldIteration).

    Suppl. Alg. 20 lines 6-11: IPA (Alg. 22), transition, backbone update
    (Alg. 23, :class:`QuatRigid` composed onto the frames), side chains (Alg. 24).
    """

    def __init__(self, config, single_channel: int, pair_channel: int) -> None:
        """single_channel: of the initial (layer-normed single) activations; pair_channel: of the pair."""
        super().__init__()
        c = config.num_channel
        self.position_scale = config.position_scale
        self.invariant_point_attention = InvariantPointAttention(config, c, pair_channel)
        self.attention_layer_norm = LayerNorm(c)
        self.transition_names: List[str] = []
        for i in range(config.num_layer_in_transition):
            self.transition_names.append(monomer._haiku_name("transition", i))
            self.add_module(self.transition_names[-1], Linear(c, c))
        self.transition_layer_norm = LayerNorm(c)
        self.quat_rigid = QuatRigid(c)
        self.rigid_sidechain = MultiRigidSidechain(config.sidechain, [c, single_channel])

    def forward(
        self,
        act: torch.Tensor,
        rigids: Rigids,
        initial_act: torch.Tensor,
        static_feat_2d: Union[torch.Tensor, RowMapped],
        sequence_mask: torch.Tensor,
        aatype: torch.Tensor,
    ) -> Tuple[torch.Tensor, Rigids, Dict[str, object]]:
        """act [N, c], rigids [N] (unscaled), initial_act [N, c_s], static_feat_2d [N, N, c_z],
        sequence_mask [N, 1] -> (act, updated rigids, side-chain outputs)."""
        act = act + self.invariant_point_attention(act, static_feat_2d, sequence_mask, rigids)
        act = self.attention_layer_norm(act)

        input_act = act
        last = len(self.transition_names) - 1
        for i, name in enumerate(self.transition_names):
            layer = getattr(self, name)
            act = layer.forward_relu(act) if i < last else layer(act)
        act = self.transition_layer_norm(act + input_act)

        # Alg. 23: the update is applied in the local frame (rigid @ rigid_update).
        rigids = rigids_mul_rigids(rigids, self.quat_rigid(act))
        sc = self.rigid_sidechain(scale_translation(rigids, self.position_scale), [act, initial_act], aatype)
        # (haiku stops the rotation's gradient here: the identity at inference.)
        return act, rigids, sc


class StructureModule(nn.Module):
    """The multimer structure module head (folding_multimer.StructureModule, ``generate_monomer_rigids``).

    Suppl. Alg. 20 "StructureModule".
    """

    def __init__(self, config, seq_channel: int, pair_channel: int) -> None:
        """config: ``model.heads.structure_module`` of a multimer model config; the trunk's single and pair channels."""
        super().__init__()
        self.num_layer = config.num_layer
        self.position_scale = config.position_scale
        self.single_layer_norm = LayerNorm(seq_channel)
        self.initial_projection = Linear(seq_channel, config.num_channel)
        self.pair_layer_norm = LayerNorm(pair_channel)
        self.fold_iteration = FoldIteration(config, seq_channel, pair_channel)

    def forward(self, single: torch.Tensor, pair: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """single [N, c_s], pair [N, N, c_z]; ``batch``: ``aatype`` [N] (int), ``seq_mask`` [N].

        Returns haiku's ``compute_loss=False`` dict: ``final_atom_positions``
        [N, 37, 3] (Å, zero for absent atoms and masked residues),
        ``final_atom_mask`` [N, 37] (atom37 existence times ``seq_mask``) and
        ``act`` [N, num_channel] (the last iteration's activations, which the
        pLDDT head reads).
        """
        aatype = batch["aatype"].long()
        seq_mask = batch["seq_mask"].to(single.dtype)
        sequence_mask = seq_mask[:, None]

        act = self.single_layer_norm(single)
        initial_act = act
        act = self.initial_projection(act)
        rigids = identity_rigids(single.shape[0], dtype=single.dtype, device=single.device)
        # LayerNorm(pair), normalised where the point attention reads it, slice by slice (same numbers).
        act_2d = RowMapped(pair, self.pair_layer_norm)

        sc = None
        for _ in range(self.num_layer):
            act, rigids, sc = self.fold_iteration(act, rigids, initial_act, act_2d, sequence_mask, aatype)

        # all_atom_multimer.get_atom37_mask(aatype) * seq_mask; atom14_to_atom37 from aatype's tables.
        maps = make_atom14_masks(aatype)
        atom37_exists = maps["atom37_atom_exists"].to(single.dtype)
        atom37_mask = atom37_exists * sequence_mask
        atom37 = atom14_to_atom37(sc["atom_pos"], maps["residx_atom37_to_atom14"], atom37_exists)
        atom37 = atom37 * atom37_mask[:, :, None]
        return {"final_atom_positions": atom37, "final_atom_mask": atom37_mask, "act": act}
