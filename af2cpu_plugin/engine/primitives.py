"""Small reusable building blocks with AlphaFold's parameter layout.

Parameters keep the exact shapes of the haiku originals (``weights`` of shape
``[in..., out...]``, attention projections ``[c, heads, dim]``), so binding a
converted params file is a name lookup with no reshaping, and the engine's
expected parameter set can be compared against the file key by key.
The modules hold no values of their own: :mod:`.params` binds them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

# AF2's additive mask value and its logit clip (alphafold.model.half_precision),
# at fp32. Clipping matters: a fully masked row would otherwise give NaN.
BIG_NEG = -1e9
LOGIT_CLIP = 1e8


def empty_param(*shape: int) -> nn.Parameter:
    """An unbound parameter; its value comes from a params file."""
    return nn.Parameter(torch.empty(shape), requires_grad=False)


def mask_to_bias(mask: torch.Tensor) -> torch.Tensor:
    """AF2's ``1e9 * (mask - 1)`` attention bias."""
    return BIG_NEG * (1.0 - mask.to(torch.float32))


class Linear(nn.Module):
    """``y = x·W + b`` over the last ``num_input_dims`` axes (common_modules.Linear)."""

    def __init__(
        self,
        num_input: Union[int, Sequence[int]],
        num_output: Union[int, Sequence[int]],
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_shape: Tuple[int, ...] = (num_input,) if isinstance(num_input, int) else tuple(num_input)
        self.out_shape: Tuple[int, ...] = (num_output,) if isinstance(num_output, int) else tuple(num_output)
        self.weights = empty_param(*self.in_shape, *self.out_shape)
        self.bias = empty_param(*self.out_shape) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = len(self.in_shape)
        lead = x.shape[: x.dim() - n_in]
        w = self.weights.reshape(math.prod(self.in_shape), math.prod(self.out_shape))
        y = torch.matmul(x.reshape(*lead, -1), w)
        if self.bias is not None:
            y = y + self.bias.reshape(-1)
        return y.reshape(*lead, *self.out_shape)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with ``scale``/``offset`` (eps 1e-5, as haiku)."""

    def __init__(self, num_channel: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channel = num_channel
        self.eps = eps
        self.scale = empty_param(num_channel)
        self.offset = empty_param(num_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, (self.num_channel,), self.scale, self.offset, self.eps)


class Attention(nn.Module):
    """Gated multi-head attention (modules.Attention).

    Used by MSA row/column attention (Suppl. Alg. 7, 8) and triangle
    attention (Suppl. Alg. 13, 14).
    """

    def __init__(
        self,
        q_channel: int,
        m_channel: int,
        output_dim: int,
        num_head: int,
        gating: bool = True,
        key_dim: Optional[int] = None,
        value_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        key_dim = key_dim if key_dim is not None else q_channel
        value_dim = value_dim if value_dim is not None else m_channel
        assert key_dim % num_head == 0 and value_dim % num_head == 0
        self.num_head = num_head
        self.key_dim = key_dim // num_head
        self.value_dim = value_dim // num_head
        self.query_w = empty_param(q_channel, num_head, self.key_dim)
        self.key_w = empty_param(m_channel, num_head, self.key_dim)
        self.value_w = empty_param(m_channel, num_head, self.value_dim)
        self.gating = gating
        if gating:
            self.gating_w = empty_param(q_channel, num_head, self.value_dim)
            self.gating_b = empty_param(num_head, self.value_dim)
        self.output_w = empty_param(num_head, self.value_dim, output_dim)
        self.output_b = empty_param(output_dim)

    def forward(
        self,
        q_data: torch.Tensor,
        m_data: torch.Tensor,
        bias: torch.Tensor,
        nonbatched_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """q_data [b, q, c], m_data [b, k, c], bias broadcastable to [b, h, q, k],
        nonbatched_bias [h, q, k] -> [b, q, output_dim]."""
        q = torch.einsum("bqa,ahc->bhqc", q_data, self.query_w) * self.key_dim ** (-0.5)
        k = torch.einsum("bka,ahc->bhkc", m_data, self.key_w)
        v = torch.einsum("bka,ahc->bhkc", m_data, self.value_w)
        logits = torch.matmul(q, k.transpose(-1, -2)) + bias
        if nonbatched_bias is not None:
            logits = logits + nonbatched_bias.unsqueeze(0)
        logits = logits.clamp(-LOGIT_CLIP, LOGIT_CLIP)
        weights = torch.softmax(logits, dim=-1)
        weighted_avg = torch.matmul(weights, v).transpose(1, 2)  # [b, q, h, c]
        if self.gating:
            gate = torch.einsum("bqc,chv->bqhv", q_data, self.gating_w) + self.gating_b
            weighted_avg = weighted_avg * torch.sigmoid(gate)
        return torch.einsum("bqhc,hco->bqo", weighted_avg, self.output_w) + self.output_b


class GlobalAttention(nn.Module):
    """Global (mean-query) gated attention (modules.GlobalAttention).

    Suppl. Alg. 19 "MSAColumnGlobalAttention", lines 2-7.
    """

    def __init__(self, q_channel: int, m_channel: int, output_dim: int, num_head: int, gating: bool = True) -> None:
        super().__init__()
        key_dim, value_dim = q_channel, m_channel
        assert key_dim % num_head == 0 and value_dim % num_head == 0
        self.num_head = num_head
        self.key_dim = key_dim // num_head
        self.value_dim = value_dim // num_head
        self.query_w = empty_param(q_channel, num_head, self.key_dim)
        self.key_w = empty_param(m_channel, self.key_dim)
        self.value_w = empty_param(m_channel, self.value_dim)
        self.gating = gating
        if gating:
            self.gating_w = empty_param(q_channel, num_head, self.value_dim)
            self.gating_b = empty_param(num_head, self.value_dim)
        self.output_w = empty_param(num_head, self.value_dim, output_dim)
        self.output_b = empty_param(output_dim)

    def forward(self, q_data: torch.Tensor, m_data: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """q_data, m_data [b, k, c]; q_mask [b, k, 1] -> [b, k, output_dim]."""
        v = torch.matmul(m_data, self.value_w)  # [b, k, c]
        # utils.mask_mean over the key axis, with its eps.
        q_avg = (q_mask * q_data).sum(1) / (q_mask.sum(1) + 1e-10)
        q = torch.einsum("ba,ahc->bhc", q_avg, self.query_w) * self.key_dim ** (-0.5)
        k = torch.matmul(m_data, self.key_w)
        bias = mask_to_bias(q_mask[:, None, :, 0])
        logits = torch.einsum("bhc,bkc->bhk", q, k) + bias
        logits = logits.clamp(-LOGIT_CLIP, LOGIT_CLIP)
        weights = torch.softmax(logits, dim=-1)
        weighted_avg = torch.einsum("bhk,bkc->bhc", weights, v)
        if self.gating:
            gate = torch.sigmoid(torch.einsum("bqc,chv->bqhv", q_data, self.gating_w) + self.gating_b)
            weighted_avg = weighted_avg[:, None] * gate
            return torch.einsum("bqhc,hco->bqo", weighted_avg, self.output_w) + self.output_b
        out = torch.einsum("bhc,hco->bo", weighted_avg, self.output_w) + self.output_b
        return out[:, None]
