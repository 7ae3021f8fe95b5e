"""Triangle multiplicative update of the pair representation, fused layout.

Mirrors ``modules.TriangleMultiplication._fused_triangle_multiplication``
(ColabFold with ``fuse_projection_weights=True``):
Jumper et al. (2021) Suppl. Alg. 11 "TriangleMultiplicationOutgoing"
(equation ``ikc,jkc->ijc``) and Suppl. Alg. 12 "TriangleMultiplicationIncoming"
(``kjc,kic->ijc``).

``projection`` and ``gate`` have width ``2c``: the left projection is the first
``c`` output channels and the right one the last ``c`` (concatenated halves,
not interleaved). The mask multiplies the projection before the sigmoid gate;
the gate itself is not masked, as in haiku.

Memory: the whole-tensor path makes about seven pair-sized temporaries (the
[4c, N, N] projection alone is four), which is what stops long sequences. With
the policy's ``channel_groups`` above 1 the update is made in place in two
phases: the contraction, group of channels by group, from projections built
row slice by row slice; then the output (centre LayerNorm, gate, projection)
row slice by row slice, added into the pair. Peak: the pair, the [c, N, N]
products and one group's two projections and products (about 3 pair-sized
tensors with 4 groups: 3.2 measured by ``af2cpu calibrate``). Every position's arithmetic is the same; only GEMM blocking differs.
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import row_slices
from .policy import compute_dtype, current_policy
from .primitives import LayerNorm, Linear, channel_products, derived, gated_residual_add_, gated_rows_, linear_2d

_OUTGOING = "ikc,jkc->ijc"
_INCOMING = "kjc,kic->ijc"


class TriangleMultiplication(nn.Module):
    """Suppl. Alg. 11 / 12, fused projection weights."""

    def __init__(self, config, pair_channel: int) -> None:
        super().__init__()
        equation = config.equation.replace(" ", "")
        if equation not in (_OUTGOING, _INCOMING):
            raise ValueError(f"unsupported triangle multiplication equation {config.equation!r}")
        if not config.get("fuse_projection_weights", True):
            raise ValueError("only the fused layout is served; convert unfused params first")
        self.outgoing = equation == _OUTGOING
        ci = config.num_intermediate_channel
        self.num_intermediate_channel = ci
        self.left_norm_input = LayerNorm(pair_channel)
        self.projection = Linear(pair_channel, 2 * ci)
        self.gate = Linear(pair_channel, 2 * ci)
        self.center_norm = LayerNorm(ci)
        self.output_projection = Linear(ci, pair_channel)
        self.gating_linear = Linear(pair_channel, pair_channel)

    def _projection_params(self, dtype: torch.dtype, groups: int = 1):
        """``projection`` and ``gate`` stacked channel-major, per channel group g: the [4c/groups, c_z]
        weight rows (left and right projection, then left and right gate, for g's channels) in ``dtype``
        and their fp32 bias. One group is the whole [4c, c_z] stack."""

        def build(pw, pb, gw, gb):
            ci, n = self.num_intermediate_channel, self.num_intermediate_channel // groups
            w = torch.cat([pw, gw], dim=1).t()
            b = torch.cat([pb, gb])
            rows = [torch.cat([torch.arange(k * ci + g * n, k * ci + (g + 1) * n) for k in range(4)])
                    for g in range(groups)]
            return [(w[r].to(dtype).contiguous(), b[r].float().contiguous()) for r in rows]

        lin_p, lin_g = self.projection, self.gate
        return derived(self, f"proj_gate/{groups}@{dtype}", build, lin_p.weights, lin_p.bias, lin_g.weights,
                       lin_g.bias)

    @staticmethod
    def _mask_rows(pair_mask: torch.Tensor):
        """The mask as one fp32 row of N*N, or None when it is all ones (no padding: one query), skipped."""
        return None if bool(pair_mask.all()) else pair_mask.to(torch.float32).reshape(-1)

    def _contract(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """The triangle products [c, N, N] of channel-major ``left`` and ``right``."""
        if self.outgoing:
            # out[c, i, j] = sum_k left[c, i, k] * right[c, j, k]
            return channel_products(left, right)
        # out[c, i, j] = sum_k left[c, k, j] * right[c, k, i]
        return channel_products(right.transpose(1, 2), left.transpose(1, 2))

    def add_update_(self, pair_act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """``pair_act += self(pair_act, pair_mask)`` (a residual update); in groups under the policy."""
        return self._update(pair_act, pair_mask, into=pair_act)

    def forward(self, pair_act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """pair_act [R, R, c_z], pair_mask [R, R] -> update [R, R, c_z]."""
        return self._update(pair_act, pair_mask, into=torch.zeros_like(pair_act))

    def _update(self, pair_act: torch.Tensor, pair_mask: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
        """``into += update`` (``into`` may be ``pair_act`` itself: its rows are overwritten only once the
        products are complete)."""
        n0, n1, cz = pair_act.shape
        ci = self.num_intermediate_channel
        groups = current_policy().channel_groups or 1
        if groups == 1 or ci % groups:
            act = self.left_norm_input(pair_act).reshape(n0 * n1, cz)
            out = self.center_norm.forward_channel_major(self._products(act, pair_mask))  # [c, i, j] -> [i, j, c]
            gated_residual_add_(into.view(n0 * n1, cz), self.output_projection, out.reshape(n0 * n1, ci),
                                self.gating_linear, act)
            return into
        tri = self._grouped_products(pair_act, pair_mask, groups)
        for start, rows in row_slices(pair_act):
            act = self.left_norm_input(pair_act.narrow(0, start, rows)).reshape(rows * n1, cz)
            out = self.center_norm.forward_channel_major(tri.narrow(1, start, rows).contiguous())
            gated_residual_add_(into.narrow(0, start, rows).view(rows * n1, cz), self.output_projection,
                                out.reshape(rows * n1, ci), self.gating_linear, act)
        return into

    def _grouped_products(self, pair_act: torch.Tensor, pair_mask: torch.Tensor, groups: int) -> torch.Tensor:
        """The triangle products [c, N, N], ``groups`` channel groups at a time."""
        n0, n1, cz = pair_act.shape
        ci = self.num_intermediate_channel
        n = ci // groups
        mask = self._mask_rows(pair_mask)
        tri = None
        for g, (weight_t, bias) in enumerate(self._projection_params(compute_dtype(), groups)):
            left = right = None
            for start, rows in row_slices(pair_act):
                act = self.left_norm_input(pair_act.narrow(0, start, rows)).reshape(rows * n1, cz)
                m = None if mask is None else mask.narrow(0, start * n1, rows * n1)
                proj = gated_rows_(linear_2d(weight_t, act, None), bias, m)
                if left is None:
                    left = proj.new_empty((n, n0, n1))
                    right = proj.new_empty((n, n0, n1))
                left[:, start:start + rows] = proj[:n].reshape(n, rows, n1)
                right[:, start:start + rows] = proj[n:].reshape(n, rows, n1)
                del act, proj
            products = self._contract(left, right)
            del left, right
            if tri is None:
                tri = products.new_empty((ci, n0, n1))
            tri[g * n:(g + 1) * n] = products
            del products
        return tri

    def _products(self, act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """The triangle products [c, N, N] from the whole normalised pair ``act`` [N*N, c_z]."""
        n0, n1 = pair_mask.shape
        ci = self.num_intermediate_channel
        # Channel-major [4c, N*N] (projection rows, then gate rows) so that the
        # triangle contraction below is a bmm over channels: W·actᵀ is the
        # GEMM linear_2d computes with the roles of input and weight swapped
        # (so the bias runs along rows and is added with the gate, in one pass).
        weight_t, bias = self._projection_params(act.dtype)[0]
        proj = gated_rows_(linear_2d(weight_t, act, None), bias, self._mask_rows(pair_mask))
        # (proj + b) * mask * sigmoid(gate + b_g), as haiku
        return self._contract(proj[:ci].reshape(ci, n0, n1), proj[ci:].reshape(ci, n0, n1))
