"""The per-model progress bar of ``--backend cpu``: recycles x Evoformer blocks, with an ETA.

A model on the CPU takes minutes, and ColabFold logs nothing until the first
recycle ends. When stderr is a terminal, :func:`evoformer_bar` shows a tqdm
bar that the engine advances after each main-stack Evoformer block
(:mod:`af2cpu_plugin.engine.progress`). Anywhere else (a log file, a
pipeline, a batch job) there is no bar and no observer at all; ColabFold's
callback still logs one ``recycle=N pLDDT=...`` line per pass.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, Optional

from tqdm import tqdm

from .engine import progress as engine_progress

FALLBACK_DESC = "model pass"


def model_tag(callback: Optional[Callable]) -> str:
    """ColabFold's name for this model run ("alphafold2_ptm_model_1_seed_000"), else :data:`FALLBACK_DESC`.

    ``RunModel.predict`` is given no model name, but ColabFold's recycle
    callback (``colabfold.batch.predict_structure``) closes over the ``tag``
    it logs with, so the bar reads it from there; any other callable gets
    the generic description.
    """
    code, cells = getattr(callback, "__code__", None), getattr(callback, "__closure__", None)
    if code is None or not cells:
        return FALLBACK_DESC
    for name, cell in zip(code.co_freevars, cells):
        if name == "tag":
            try:
                tag = cell.cell_contents
            except ValueError:  # an empty cell
                return FALLBACK_DESC
            return tag if isinstance(tag, str) and tag else FALLBACK_DESC
    return FALLBACK_DESC


@contextlib.contextmanager
def evoformer_bar(num_passes: int, num_blocks: int, desc: str = FALLBACK_DESC) -> Iterator[None]:
    """A bar over ``num_passes * num_blocks`` main-stack blocks while the body runs, if stderr is a terminal
    (and ``AF2CPU_PROGRESS`` is not ``0``: multi-instance workers set it, their bars would interleave).

    The bar is transient (``leave=False``): a loop that stops early (``tol``,
    ``stop_at_score``) clears it rather than leaving a bar short of 100% or
    jumping it to 100%; ColabFold's per-recycle lines say how the run ended.
    Those lines go through ColabFold's ``TqdmHandler`` (``tqdm.write``), which
    prints them above the bar.
    """
    if not sys.stderr.isatty() or os.environ.get("AF2CPU_PROGRESS", "1") == "0":
        yield
        return
    # smoothing=0: the ETA uses the mean rate since the start, so each pass's
    # time outside the main stack (embeddings, extra-MSA stack, structure
    # module, confidence) is spread over its blocks instead of showing up as a
    # stall between passes.
    bar = tqdm(total=num_passes * num_blocks, desc=desc, unit="block", leave=False, smoothing=0,
               dynamic_ncols=True)
    try:
        with engine_progress.observing(bar.update):
            yield
    finally:
        bar.close()
