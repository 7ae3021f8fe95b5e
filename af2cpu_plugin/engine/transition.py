"""Position-wise two-layer MLP (modules.Transition).

Jumper et al. (2021) Suppl. Alg. 9 "MSATransition" and Suppl. Alg. 15
"PairTransition".
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .chunking import subbatched
from .primitives import LayerNorm, Linear


class Transition(nn.Module):
    """LayerNorm, Linear(c -> factor*c), ReLU, Linear(factor*c -> c).

    Suppl. Alg. 9 / 15. ``config`` is the haiku module's config
    (``msa_transition`` / ``pair_transition``), read for
    ``num_intermediate_factor``.
    """

    def __init__(self, config, num_channel: int) -> None:
        super().__init__()
        num_intermediate = int(num_channel * config.num_intermediate_factor)
        self.input_layer_norm = LayerNorm(num_channel)
        self.transition1 = Linear(num_channel, num_intermediate)
        self.transition2 = Linear(num_intermediate, num_channel)

    def _mlp(self, act: torch.Tensor) -> torch.Tensor:
        # LayerNorm per slice (it is per row): no whole normalized copy of the input is made.
        return self.transition2(self.transition1.forward_relu(self.input_layer_norm(act)))

    def forward(self, act: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """act [b, n, c] -> update [b, n, c].

        ``mask`` is accepted for the haiku call signature; haiku's Transition
        does not use it (padded positions are handled downstream).
        """
        del mask
        return subbatched(self._mlp, [act])

    def add_update_(self, act: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``act += self(act, mask)`` (a residual update), slice by slice."""
        del mask
        return subbatched(self._mlp, [act], add_into=act)
