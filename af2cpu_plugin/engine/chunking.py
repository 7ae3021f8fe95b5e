"""The one place where the engine splits work into chunks.

AlphaFold applies attention and transitions to a batch of rows
(``mapping.inference_subbatch``). Rows are independent, so processing them in
slices only bounds peak memory. Modules call :func:`subbatched` and the
runtime policy decides the slice size.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .policy import current_policy


def subbatched(
    fn: Callable[..., torch.Tensor],
    batched: Sequence[torch.Tensor],
    shared: Sequence[torch.Tensor] = (),
    dim: int = 0,
) -> torch.Tensor:
    """Apply ``fn(*batched, *shared)`` in slices of ``batched`` along ``dim``.

    ``batched`` tensors are sliced together (a tensor whose size along ``dim``
    is 1 is broadcast, not sliced); ``shared`` ones are passed whole. The
    slices are concatenated along ``dim``.
    """
    size = max(t.shape[dim] for t in batched)
    chunk = current_policy().subbatch_size
    if chunk is None or chunk >= size:
        return fn(*batched, *shared)
    outputs = []
    for start in range(0, size, chunk):
        sliced = [
            t if t.shape[dim] == 1 else t.narrow(dim, start, min(chunk, size - start))
            for t in batched
        ]
        outputs.append(fn(*sliced, *shared))
    return torch.cat(outputs, dim=dim)
