"""Output heads (Suppl. Sec. 1.9): distogram, masked MSA, pLDDT, PAE, resolved atoms.

Each head maps a representation to logits; confidence numbers derived from
the logits (pLDDT, PAE, pTM) are ColabFold's own functions, applied by the
runner, so they stay ColabFold's definitions.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .primitives import LayerNorm, Linear


class DistogramHead(nn.Module):
    """Suppl. Sec. 1.9.8 "Distogram prediction": symmetrised pair logits."""

    def __init__(self, config, pair_channel: int) -> None:
        super().__init__()
        self.config = config
        self.half_logits = Linear(pair_channel, config.num_bins)

    def forward(self, pair: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = symmetrised_(self.half_logits(pair))
        c = self.config
        breaks = torch.linspace(c.first_break, c.last_break, c.num_bins - 1)
        return {"logits": logits, "bin_edges": breaks}


def symmetrised_(half: torch.Tensor, tile: int = 256) -> torch.Tensor:
    """``half + half.transpose(0, 1)`` for ``half`` [N, N, C], written into ``half`` tile pair by tile pair.

    The same numbers (a + b == b + a exactly) without a second [N, N, C]
    tensor: 2.1 GiB at 3,000 residues. Each tile pair (I, J), I <= J, is
    summed once into a temporary and written to both places.
    """
    n = half.shape[0]
    for i0 in range(0, n, tile):
        for j0 in range(i0, n, tile):
            upper = half[i0:i0 + tile, j0:j0 + tile]
            lower = half[j0:j0 + tile, i0:i0 + tile]
            total = upper + lower.transpose(0, 1)
            upper.copy_(total)
            lower.copy_(total.transpose(0, 1))
    return half


class MaskedMsaHead(nn.Module):
    """Suppl. Sec. 1.9.9 "Masked MSA prediction": per-position residue logits."""

    def __init__(self, num_output: int, msa_channel: int) -> None:
        """``num_output``: the monomer config's ``num_output`` (23); 22 for multimer (haiku's ``multimer_mode``)."""
        super().__init__()
        self.logits = Linear(msa_channel, num_output)

    def forward(self, msa: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"logits": self.logits(msa)}


class PredictedLDDTHead(nn.Module):
    """Suppl. Alg. 29 "predictPerResidueLDDT_Ca": binned lDDT-Cα logits."""

    def __init__(self, config, seq_channel: int) -> None:
        super().__init__()
        self.input_layer_norm = LayerNorm(seq_channel)
        self.act_0 = Linear(seq_channel, config.num_channels)
        self.act_1 = Linear(config.num_channels, config.num_channels)
        self.logits = Linear(config.num_channels, config.num_bins)

    def forward(self, structure_single: torch.Tensor) -> Dict[str, torch.Tensor]:
        act = self.input_layer_norm(structure_single)
        act = torch.relu(self.act_0(act))
        act = torch.relu(self.act_1(act))
        return {"logits": self.logits(act)}


class PredictedAlignedErrorHead(nn.Module):
    """Suppl. Sec. 1.9.7 "TM-score prediction": binned aligned-error logits."""

    def __init__(self, config, pair_channel: int) -> None:
        super().__init__()
        self.config = config
        self.logits = Linear(pair_channel, config.num_bins)

    def forward(self, pair: torch.Tensor) -> Dict[str, torch.Tensor]:
        c = self.config
        breaks = torch.linspace(0.0, c.max_error_bin, c.num_bins - 1)
        return {"logits": self.logits(pair), "breaks": breaks}


class ExperimentallyResolvedHead(nn.Module):
    """Suppl. Sec. 1.9.10 "Experimentally resolved": per-atom37 logits."""

    def __init__(self, config, seq_channel: int) -> None:
        super().__init__()
        self.logits = Linear(seq_channel, 37)

    def forward(self, single: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"logits": self.logits(single)}
