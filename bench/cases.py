"""The inputs the speed and profile benchmarks run on, built by ColabFold's own pipeline.

Cases (names for ``--cases``):

* ``single100``, ``single200``, ``single400`` (any ``singleN``): single sequence of N
  residues, the 130-residue chain of the shared AF2 prediction repeated and cropped;
* ``deep_msa``: the shared 59-residue a3m with 7,797 sequences (512 clusters + 5,120 extra);
* ``deep_msa_x3``: the same a3m with every row repeated three times (177 residues,
  512 clusters + 5,120 extra): a longer MSA case with the same depth;
* ``heteromer``, ``homodimer``: AlphaFold-Multimer v3 on the complexes of
  ``bench/parity.py`` (the deep-MSA chain with the 130-residue chain; two
  copies of the deep-MSA chain), 508 clusters + up to 2,048 extra.

Model 3 ptm, ColabFold's config for the input (MSA budgets lowered for
shallow inputs, as ``colabfold.batch.run`` does), recycling early stop off so
that every pass runs.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

import numpy as np

from bench.parity import SHARED, case_input

CASES = ("single100", "single200", "single400", "deep_msa", "deep_msa_x3")


def case_text(name: str) -> str:
    """The a3m or bare sequence of a case."""
    m = re.fullmatch(r"single(\d+)", name)
    if m:
        chain = case_input("single130")
        n = int(m.group(1))
        return (chain * (n // len(chain) + 1))[:n]
    if name == "deep_msa":
        return case_input("deep_msa")
    if name == "deep_msa_x3":
        lines = []
        for line in (SHARED / "deep_msa_59aa_7797seqs.a3m").read_text().splitlines():
            lines.append(line if line.startswith(">") or not line.strip() else line.strip() * 3)
        return "\n".join(lines) + "\n"
    raise SystemExit(f"unknown case {name!r}; use singleN (e.g. single200), deep_msa or deep_msa_x3")


#: Complexes: AlphaFold-Multimer v3 (model 1), raw features as ColabFold makes them, its v3 MSA budgets.
MULTIMER_CASES = ("heteromer", "homodimer")


def case_model(name: str) -> Tuple[str, int]:
    """(model type, model number) a case runs: model 3 ptm, or model 1 of multimer v3 for complexes."""
    return ("alphafold2_multimer_v3", 1) if name in MULTIMER_CASES else ("alphafold2_ptm", 3)


def case_features(name: str, passes: int) -> Tuple[object, Dict[str, np.ndarray]]:
    """(config, features) for ``passes`` recycling passes of model 3 ptm (processed features)
    or, for a complex, model 1 of multimer v3 (raw features: the model samples its MSA)."""
    from af2cpu_plugin.testing import parity

    if name in MULTIMER_CASES:
        from bench.parity import multimer_chains

        cfg = parity.colabfold_config("model_1_multimer_v3", passes - 1, max_seq=508, max_extra_seq=2048,
                                      recycle_early_stop_tolerance=-1.0)
        return cfg, parity.multimer_features(multimer_chains(name), max_seq=508)
    text = case_text(name)
    cfg = parity.colabfold_config("model_3_ptm", passes - 1, msa_depth=parity.msa_depth(text),
                                  recycle_early_stop_tolerance=-1.0)
    return cfg, parity.processed_features(cfg, text)
