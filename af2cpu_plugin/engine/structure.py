"""The monomer structure module (alphafold/model/folding.py).

Suppl. Alg. 20 "StructureModule" with Alg. 22 "InvariantPointAttention",
Alg. 23 "BackboneUpdate" and Alg. 24 "computeAllAtomCoordinates". One
:class:`FoldIteration` (one set of weights, haiku scope
``structure_module/fold_iteration``) is applied ``num_layer`` times.

Haiku names repeated sub-modules ``name``, ``name_1``, ``name_2``...; the
torch sub-modules are registered under exactly those names.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from .all_atom import (
    atom14_to_atom37,
    frames_and_literature_positions_to_atom14_pos,
    make_atom14_masks,
    torsion_angles_to_frames,
)
from .chunking import RowMapped, subbatched
from .geometry import QuatAffine, Rigids, rigids_from_quataffine
from .primitives import LayerNorm, Linear, empty_param

# The batch features the structure module reads besides seq_mask and aatype.
_ATOM_MAPS = ("residx_atom37_to_atom14", "atom37_atom_exists", "atom14_atom_exists")

# IPA's additive mask value (folding.py uses 1e5, not the 1e9 of the trunk).
_IPA_MASK_VALUE = 1e5


def _haiku_name(base: str, index: int) -> str:
    """Name haiku gives the ``index``-th module created with ``name=base`` in one scope."""
    return base if index == 0 else f"{base}_{index}"


class InvariantPointAttention(nn.Module):
    """Invariant point attention (folding.InvariantPointAttention).

    Suppl. Alg. 22 "InvariantPointAttention".
    """

    def __init__(self, config, single_channel: int, pair_channel: int, dist_epsilon: float = 1e-8) -> None:
        super().__init__()
        c = config
        assert c.num_scalar_qk > 0 and c.num_point_qk > 0 and c.num_point_v > 0
        self.num_head = h = c.num_head
        self.num_scalar_qk, self.num_scalar_v = c.num_scalar_qk, c.num_scalar_v
        self.num_point_qk, self.num_point_v = c.num_point_qk, c.num_point_v
        self.dist_epsilon = dist_epsilon

        self.q_scalar = Linear(single_channel, h * c.num_scalar_qk)
        self.kv_scalar = Linear(single_channel, h * (c.num_scalar_v + c.num_scalar_qk))
        self.q_point_local = Linear(single_channel, h * 3 * c.num_point_qk)
        self.kv_point_local = Linear(single_channel, h * 3 * (c.num_point_qk + c.num_point_v))
        self.trainable_point_weights = empty_param(h)
        self.attention_2d = Linear(pair_channel, h)
        num_final = h * (c.num_scalar_v + 4 * c.num_point_v + pair_channel)
        self.output_projection = Linear(num_final, c.num_channel)

    def _points(self, layer: Linear, inputs_1d: torch.Tensor, affine: QuatAffine, num_points: int) -> torch.Tensor:
        """Local points from ``layer`` (x block, y block, z block) -> global, [N, H, P, 3]."""
        n = inputs_1d.shape[0]
        local = layer(inputs_1d).reshape(n, 3, -1).movedim(1, -1)  # [N, H*P, 3]
        return affine.apply_to_point(local, extra_dims=1).reshape(n, self.num_head, num_points, 3)

    def forward(
        self, inputs_1d: torch.Tensor, inputs_2d: Union[torch.Tensor, RowMapped], mask: torch.Tensor, affine: QuatAffine
    ) -> torch.Tensor:
        """inputs_1d [N, C], inputs_2d [N, N, C'] (a tensor or :class:`.chunking.RowMapped`), mask [N, 1], affine [N] -> [N, num_channel]."""
        n = inputs_1d.shape[0]
        h = self.num_head
        sqk, sv = self.num_scalar_qk, self.num_scalar_v
        pqk, pv = self.num_point_qk, self.num_point_v

        q_scalar = self.q_scalar(inputs_1d).reshape(n, h, sqk)
        k_scalar, v_scalar = self.kv_scalar(inputs_1d).reshape(n, h, sv + sqk).split([sqk, sv], dim=-1)
        q_point = self._points(self.q_point_local, inputs_1d, affine, pqk)
        k_point, v_point = self._points(self.kv_point_local, inputs_1d, affine, pqk + pv).split([pqk, pv], dim=2)

        # Equal variance for the scalar, point and pair terms of the logits.
        scalar_weights = math.sqrt(1.0 / (3 * max(sqk, 1) * 1.0))
        point_variance = max(pqk, 1) * 9.0 / 2
        point_weights = math.sqrt(1.0 / (3 * point_variance)) * nn.functional.softplus(self.trainable_point_weights)

        # Keys and values, heads first: [H, N, ...].
        k = k_scalar.transpose(0, 1)
        v = v_scalar.transpose(0, 1)
        kp = k_point.transpose(0, 1)  # [H, N, Pqk, 3]
        vp = v_point.transpose(0, 1)  # [H, N, Pv, 3]
        q_scaled = scalar_weights * q_scalar

        def attend(q_s, q_p, pair_rows, mask_q, rot, trans):
            # Query rows are independent: the whole attention runs per row slice.
            q_s = q_s.transpose(0, 1)  # [H, n, Sqk]
            q_p = q_p.transpose(0, 1)  # [H, n, Pqk, 3]
            dist2 = None
            for axis in range(3):
                d = (q_p[:, :, None, :, axis] - kp[:, None, :, :, axis]).square()  # [H, n, N, Pqk]
                dist2 = d if dist2 is None else dist2 + d
            attn_qk_point = -0.5 * (point_weights[:, None, None, None] * dist2).sum(-1)
            attn_qk_scalar = torch.matmul(q_s, k.transpose(-1, -2))
            attn_logits = attn_qk_scalar + attn_qk_point
            attention_2d = self.attention_2d(pair_rows).permute(2, 0, 1)
            attn_logits = attn_logits + math.sqrt(1.0 / 3) * attention_2d
            mask_2d = mask_q * mask.transpose(-1, -2)  # [n, N]
            attn_logits = attn_logits - _IPA_MASK_VALUE * (1.0 - mask_2d)
            attn = torch.softmax(attn_logits, dim=-1)  # [H, n, N]

            rows = attn.shape[1]
            result_scalar = torch.matmul(attn, v).transpose(0, 1).reshape(rows, h * sv)
            result_point_global = torch.einsum("hij,hjpc->ihpc", attn, vp).reshape(rows, h * pv, 3)
            result_point_local = QuatAffine(None, rot, trans).invert_point(result_point_global, extra_dims=1)
            x, y, z = result_point_local.unbind(-1)
            point_norm = torch.sqrt(self.dist_epsilon + x.square() + y.square() + z.square())
            result_over_2d = torch.einsum("hij,ijc->ihc", attn, pair_rows).reshape(rows, -1)
            return torch.cat([result_scalar, x, y, z, point_norm, result_over_2d], dim=-1)

        final_act = subbatched(
            attend, [q_scaled, q_point, inputs_2d, mask, affine.rotation, affine.translation], dim=0
        )
        return self.output_projection(final_act)


class MultiRigidSidechain(nn.Module):
    """Torsion angles and all-atom positions (folding.MultiRigidSidechain).

    Suppl. Alg. 20 line 11 (torsion angles) and Alg. 24 (frames, atoms).
    """

    def __init__(self, config, input_channels: Sequence[int]) -> None:
        """config: ``structure_module.sidechain``; input_channels: of [act, initial_act]."""
        super().__init__()
        c = config.num_channel
        self.num_residual_block = config.num_residual_block
        self.input_names: List[str] = []
        for i, cin in enumerate(input_channels):
            self.input_names.append(_haiku_name("input_projection", i))
            self.add_module(self.input_names[-1], Linear(cin, c))
        self.block_names: List[Tuple[str, str]] = []
        for i in range(self.num_residual_block):
            names = (_haiku_name("resblock1", i), _haiku_name("resblock2", i))
            self.add_module(names[0], Linear(c, c))
            self.add_module(names[1], Linear(c, c))
            self.block_names.append(names)
        self.unnormalized_angles = Linear(c, 14)

    def forward(
        self, affine: QuatAffine, representations_list: Sequence[torch.Tensor], aatype: torch.Tensor
    ) -> Dict[str, object]:
        """affine [N] (translations in Å), [act, initial_act], aatype [N] -> angles, frames, atom14."""
        return self.from_rigids(rigids_from_quataffine(affine), representations_list, aatype)

    def from_rigids(
        self, backb_to_global: Rigids, representations_list: Sequence[torch.Tensor], aatype: torch.Tensor
    ) -> Dict[str, object]:
        """The same from backbone frames as rigids (what folding_multimer passes)."""
        act = None
        for name, x in zip(self.input_names, representations_list):
            y = getattr(self, name)(torch.relu(x))
            act = y if act is None else act + y
        for name1, name2 in self.block_names:
            old_act = act
            act = getattr(self, name1)(torch.relu(act))
            act = getattr(self, name2)(torch.relu(act))
            act = act + old_act

        num_res = act.shape[0]
        unnormalized_angles = self.unnormalized_angles(torch.relu(act)).reshape(num_res, 7, 2)
        # folding.l2_normalize (eps 1e-12 on the squared norm).
        angles = unnormalized_angles / torch.sqrt(
            torch.clamp(unnormalized_angles.square().sum(-1, keepdim=True), min=1e-12)
        )
        all_frames_to_global = torsion_angles_to_frames(aatype, backb_to_global, angles)
        pred_positions = frames_and_literature_positions_to_atom14_pos(aatype, all_frames_to_global)
        return {
            "angles_sin_cos": angles,  # [N, 7, 2]
            "unnormalized_angles_sin_cos": unnormalized_angles,  # [N, 7, 2]
            "atom_pos": pred_positions,  # [N, 14, 3]
            "frames": all_frames_to_global,  # Rigids [N, 8]
        }


class FoldIteration(nn.Module):
    """One shared-weight iteration of the structure module (folding.FoldIteration).

    Suppl. Alg. 20 lines 6-11: IPA, transition, backbone update (Alg. 23),
    side chains.
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
            self.transition_names.append(_haiku_name("transition", i))
            self.add_module(self.transition_names[-1], Linear(c, c))
        self.transition_layer_norm = LayerNorm(c)
        self.affine_update = Linear(c, 6)
        self.rigid_sidechain = MultiRigidSidechain(config.sidechain, [c, single_channel])

    def forward(
        self,
        act: torch.Tensor,
        affine: QuatAffine,
        initial_act: torch.Tensor,
        static_feat_2d: Union[torch.Tensor, RowMapped],
        sequence_mask: torch.Tensor,
        aatype: torch.Tensor,
    ) -> Tuple[torch.Tensor, QuatAffine, Dict[str, object]]:
        """act [N, c], affine [N] (unscaled), initial_act [N, c_s], static_feat_2d [N, N, c_z],
        sequence_mask [N, 1] -> (act, updated affine, side-chain outputs)."""
        act = act + self.invariant_point_attention(act, static_feat_2d, sequence_mask, affine)
        act = self.attention_layer_norm(act)

        input_act = act
        last = len(self.transition_names) - 1
        for i, name in enumerate(self.transition_names):
            act = getattr(self, name)(act)
            if i < last:
                act = torch.relu(act)
        act = self.transition_layer_norm(act + input_act)

        # Alg. 23 "BackboneUpdate"; the result is re-normalised.
        affine = affine.pre_compose(self.affine_update(act))
        sc = self.rigid_sidechain(affine.scale_translation(self.position_scale), [act, initial_act], aatype)
        # (haiku stops the rotation's gradient here: the identity at inference.)
        return act, affine, sc


class StructureModule(nn.Module):
    """The structure module head (folding.StructureModule, ``generate_affines``).

    Suppl. Alg. 20 "StructureModule".
    """

    def __init__(self, config, single_channel: int, pair_channel: int) -> None:
        """config: ``model.heads.structure_module``; channels of the trunk's single and pair."""
        super().__init__()
        self.num_layer = config.num_layer
        self.position_scale = config.position_scale
        self.single_layer_norm = LayerNorm(single_channel)
        self.initial_projection = Linear(single_channel, config.num_channel)
        self.pair_layer_norm = LayerNorm(pair_channel)
        self.fold_iteration = FoldIteration(config, single_channel, pair_channel)

    def forward(self, single: torch.Tensor, pair: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> Dict[str, object]:
        """single [N, c_s], pair [N, N, c_z]; ``batch`` as haiku's: ``seq_mask`` [N], ``aatype`` [N]
        and the atom maps of ``make_atom14_masks`` (``residx_atom37_to_atom14``,
        ``atom37_atom_exists``, ``atom14_atom_exists``; derived from aatype when absent).

        Returns haiku's ``compute_loss=True`` dict (ColabFold's inference keeps
        ``final_atom_positions``, ``final_atom_mask``, ``representations``):
        ``representations`` {'structure_module': [N, c]}, ``traj`` [num_layer, N, 7]
        (quaternion, translation in Å), ``final_affines`` [N, 7], ``sidechains``
        (per-iteration ``angles_sin_cos``, ``unnormalized_angles_sin_cos`` [T, N, 7, 2],
        ``atom_pos`` [T, N, 14, 3], ``frames`` Rigids [T, N, 8]),
        ``final_atom14_positions`` [N, 14, 3], ``final_atom14_mask`` [N, 14],
        ``final_atom_positions`` [N, 37, 3], ``final_atom_mask`` [N, 37].
        """
        seq_mask, aatype = batch["seq_mask"], batch["aatype"]
        maps = {k: batch[k] for k in _ATOM_MAPS if k in batch}
        if len(maps) < len(_ATOM_MAPS):
            maps = {**make_atom14_masks(aatype), **maps}
        residx_atom37_to_atom14 = maps["residx_atom37_to_atom14"]
        atom37_atom_exists = maps["atom37_atom_exists"].to(single.dtype)
        atom14_atom_exists = maps["atom14_atom_exists"]

        sequence_mask = seq_mask.to(single.dtype)[:, None]
        act = self.single_layer_norm(single)
        initial_act = act
        act = self.initial_projection(act)
        affine = QuatAffine.identity(single.shape[0], dtype=single.dtype, device=single.device)
        # LayerNorm(pair), normalised where the point attention reads it, slice by slice (same numbers).
        act_2d = RowMapped(pair, self.pair_layer_norm)

        affines, sidechains = [], []
        for _ in range(self.num_layer):
            act, affine, sc = self.fold_iteration(act, affine, initial_act, act_2d, sequence_mask, aatype)
            affines.append(affine.to_tensor())
            sidechains.append(sc)

        scale = torch.tensor([1.0] * 4 + [self.position_scale] * 3, dtype=act.dtype, device=act.device)
        traj = torch.stack(affines) * scale
        stacked = {
            key: torch.stack([sc[key] for sc in sidechains])
            for key in ("angles_sin_cos", "unnormalized_angles_sin_cos", "atom_pos")
        }
        stacked["frames"] = Rigids(
            torch.stack([sc["frames"].rot for sc in sidechains]),
            torch.stack([sc["frames"].trans for sc in sidechains]),
        )

        atom14 = stacked["atom_pos"][-1]
        atom37 = atom14_to_atom37(atom14, residx_atom37_to_atom14, atom37_atom_exists)
        atom37 = atom37 * atom37_atom_exists[:, :, None]
        return {
            "representations": {"structure_module": act},
            "traj": traj,
            "sidechains": stacked,
            "final_atom14_positions": atom14,
            "final_atom14_mask": atom14_atom_exists,
            "final_atom_positions": atom37,
            "final_atom_mask": atom37_atom_exists,
            "final_affines": traj[-1],
        }
