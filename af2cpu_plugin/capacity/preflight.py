"""The workloads of an input, and the one-line refusal of the first that does not fit.

Shared by ``af2cpu info`` (which prints every prediction) and ``af2cpu batch
--backend cpu`` (which refuses, before any MSA or compute, a query whose
predicted peak memory exceeds the limit). Both read the settings from an
``argparse.Namespace`` with ``colabfold_batch``'s attribute names
(``msa_mode``, ``max_seq``, ``max_extra_seq``, ``max_msa``, ``templates``,
``num_recycle``, ``recycle_early_stop_tolerance``, ``recompile_padding``);
missing ones take ColabFold's defaults.

Before the MSA exists its depth is unknown, so the model's MSA budgets are
used, as ColabFold's ``run()`` chooses them: that is the worst case, and for
more than one query also what the model sees (ColabFold pads every MSA to the
budget and only trims it for a single query once its MSA is known).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional, Sequence, Tuple

from af2cpu_plugin.capacity.cost_model import Estimate, Workload, estimate
from af2cpu_plugin.capacity.limits import MemoryLimit, format_size

#: colabfold.batch.run: (max_seq, max_extra_seq) per model type when the user sets neither.
MSA_BUDGETS = {
    "alphafold2_multimer_v1": (252, 1152),
    "alphafold2_multimer_v2": (252, 1152),
    "alphafold2_multimer_v3": (508, 2048),
}
MONOMER_MSA_BUDGET = (512, 5120)
#: alphafold.model.config: default recycles (multimer v3: up to 20, early stop at tolerance 0.5).
DEFAULT_RECYCLES = {"alphafold2_multimer_v3": 20}
MONOMER_RECYCLES = 3
TEMPLATES = 4  # ColabFold always builds 4 template slots (colabfold.batch, num_templates=4)


@dataclasses.dataclass(frozen=True)
class Query:
    """One query of the input: its name, residues (all chains) and chain count."""

    name: str
    length: int
    chains: int = 1

    @property
    def is_complex(self) -> bool:
        return self.chains > 1


@dataclasses.dataclass(frozen=True)
class Planned:
    """A query, the workload one model pass sees for it, and the cost model's prediction."""

    query: Query
    workload: Workload
    estimate: Estimate


def read_queries(input_path: str, sort_queries_by: str = "length") -> Tuple[List[Query], bool]:
    """The queries of a FASTA/A3M/CSV file or directory, read as ``af2cpu batch`` reads them
    (``colabfold.batch.get_queries``), and whether any is a complex."""
    from colabfold.batch import get_queries

    raw, is_complex = get_queries(input_path, sort_queries_by)
    queries = []
    for name, sequence, *_ in raw:
        chains = [sequence] if isinstance(sequence, str) else list(sequence)
        queries.append(Query(str(name), len("".join(chains)), len(chains)))
    return queries, bool(is_complex)


def msa_budget(args: Any, model_type: str, is_complex: bool, max_chains: int) -> Tuple[int, int]:
    """``(msa_depth, extra_msa_depth)`` the model is built for, as ``colabfold.batch.run`` picks them."""
    max_seq, max_extra_seq = getattr(args, "max_seq", None), getattr(args, "max_extra_seq", None)
    if getattr(args, "max_msa", None):
        max_seq, max_extra_seq = (int(x) for x in args.max_msa.split(":"))
    default_seq, default_extra = MSA_BUDGETS.get(model_type, MONOMER_MSA_BUDGET)
    max_seq = default_seq if max_seq is None else max_seq
    max_extra_seq = default_extra if max_extra_seq is None else max_extra_seq
    if getattr(args, "msa_mode", None) == "single_sequence":
        rows = 1
        if is_complex and "multimer" not in model_type:
            rows += max_chains
        if getattr(args, "templates", False):
            rows += TEMPLATES
        max_seq = min(rows, max_seq)
        max_extra_seq = max(min(rows - max_seq, max_extra_seq), 1)
    return max_seq, max_extra_seq


def recycles(args: Any, model_type: str) -> Tuple[int, bool]:
    """``(passes per model, whether that is an upper bound)``: recycles + 1, early stop or not."""
    num_recycle = getattr(args, "num_recycle", None)
    if num_recycle is None:
        num_recycle = DEFAULT_RECYCLES.get(model_type, MONOMER_RECYCLES)
    tolerance = getattr(args, "recycle_early_stop_tolerance", None)
    if tolerance is None:
        tolerance = 0.5 if model_type == "alphafold2_multimer_v3" else 0.0
    return num_recycle + 1, tolerance > 0


def plan(args: Any, queries: Sequence[Query], model_type: str, is_complex: bool, precision: str,
         threads: int, limit: Optional[int]) -> List[Planned]:
    """The workload and prediction of every query, in the input's order."""
    if not queries:
        return []
    msa_depth, extra_depth = msa_budget(args, model_type, is_complex, max(q.chains for q in queries))
    templates = TEMPLATES if getattr(args, "templates", False) else 0
    out = []
    for q in queries:
        # Each query at its own length: the cpu engine takes no recompile padding (hooks: af2cpu_pads_lengths).
        workload = Workload(num_res=q.length, msa_depth=msa_depth,
                            extra_msa_depth=extra_depth, templates=templates, multimer="multimer" in model_type)
        out.append(Planned(q, workload, estimate(workload, precision, threads, limit)))
    return out


# ---------------------------------------------------------------------------
# refusal
# ---------------------------------------------------------------------------


def _smallest_extra_that_fits(workload: Workload, precision: str, threads: int, limit: int) -> Optional[Tuple[int, Estimate]]:
    """Halve the extra MSA until the prediction fits (down to 1); None if even 1 does not."""
    extra = workload.extra_msa_depth
    while extra > 1:
        extra = max(1, extra // 2)
        est = estimate(dataclasses.replace(workload, extra_msa_depth=extra), precision, threads, limit)
        if est.fits:
            return extra, est
    return None


def _extra_option(args: Any, msa_depth: int, extra: int) -> str:
    # With --max-msa set ColabFold ignores --max-extra-seq: suggest the option that takes effect.
    if getattr(args, "max_msa", None):
        return f"--max-msa {msa_depth}:{extra}"
    return f"--max-extra-seq {extra}"


def suggestions(args: Any, planned: Planned, precision: str, threads: int, limit: int,
                native_bf16: bool) -> List[str]:
    """Settings that would make ``planned`` fit, each with its predicted peak; the last is always
    a larger ``--memory-limit`` (the predicted peak, rounded up to a GiB)."""
    workload, out = planned.workload, []
    bf16 = precision != "bf16" and native_bf16
    if bf16:
        est = estimate(workload, "bf16", threads, limit)
        if est.fits:
            out.append(f"--precision bf16 ({format_size(est.peak_rss_bytes)})")
    smaller = _smallest_extra_that_fits(workload, precision, threads, limit)
    if smaller:
        extra, est = smaller
        out.append(f"{_extra_option(args, workload.msa_depth, extra)} ({format_size(est.peak_rss_bytes)})")
    elif bf16 and not out:
        both = _smallest_extra_that_fits(workload, "bf16", threads, limit)
        if both:
            extra, est = both
            out.append(f"--precision bf16 {_extra_option(args, workload.msa_depth, extra)} "
                       f"({format_size(est.peak_rss_bytes)})")
    gib = math.ceil(planned.estimate.peak_rss_bytes / (1 << 30))
    out.append(f"--memory-limit {gib}G if that much memory is really free")
    return out


def refusal(args: Any, planned: Sequence[Planned], limit: MemoryLimit, precision: str, threads: int,
            native_bf16: bool) -> Optional[str]:
    """ONE line, ``what — fix``, for the first query whose predicted peak exceeds the limit; None if all fit."""
    for p in planned:
        if p.estimate.fits:
            continue
        fixes = suggestions(args, p, precision, threads, limit.bytes, native_bf16)
        return (f"query {p.query.name!r} ({p.query.length} residues) is predicted to need "
                f"{format_size(p.estimate.peak_rss_bytes)} at its peak, over the memory limit of "
                f"{limit.describe()} — try {', or '.join(fixes)}; or pass --force to run it anyway")
    return None
