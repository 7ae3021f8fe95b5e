"""The one place where the engine splits work into chunks.

AlphaFold applies attention and transitions to a batch of rows
(``mapping.inference_subbatch``). Rows are independent, so processing them in
slices only bounds peak memory. Modules call :func:`subbatched` and the
runtime policy decides the slice size.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import torch

from .policy import current_policy
from .primitives import residual_add_


class RowMapped:
    """``fn(source)`` for a row-wise ``fn``, made only as :func:`subbatched` slices it.

    For an input that is a function of a bigger tensor read many times: the
    structure module's LayerNorm of the pair, which each of its 8 iterations
    reads in row slices. Normalising each slice when it is read (a LayerNorm
    is per position, so the numbers are the same) keeps the normalised pair
    from ever being whole: one pair-sized fp32 tensor less after the trunk.
    ``itemsize``: bytes per element of the result (what the slices are sized by).
    """

    def __init__(self, source: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], itemsize: int = 4) -> None:
        self.source, self.fn, self.itemsize = source, fn, itemsize

    @property
    def shape(self) -> torch.Size:
        return self.source.shape

    def numel(self) -> int:
        return self.source.numel()

    def element_size(self) -> int:
        return self.itemsize

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        return self.fn(self.source.narrow(dim, start, length))

    def whole(self) -> torch.Tensor:
        return self.fn(self.source)


def subbatched(
    fn: Callable[..., torch.Tensor],
    batched: Sequence[Union[torch.Tensor, RowMapped]],
    shared: Sequence[torch.Tensor] = (),
    dim: int = 0,
    temp_row_bytes: int = 0,
    add_into: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Apply ``fn(*batched, *shared)`` in slices of ``batched`` along ``dim``.

    ``batched`` tensors are sliced together (a tensor whose size along ``dim``
    is 1 is broadcast, not sliced); ``shared`` ones are passed whole. The
    slices are concatenated along ``dim``; a :class:`RowMapped` input is made
    slice by slice (whole when the rows are not sliced). ``temp_row_bytes``: bytes of the
    widest temporary ``fn`` makes per row, for modules whose temporaries dwarf
    their inputs (the outer product mean); it counts against 4x the policy's
    ``slice_bytes``.

    With ``add_into`` (a residual stream shaped like the result), each slice's
    result is added into that slice of it instead, and ``add_into`` is
    returned: the update is never concatenated (a copy of the whole result),
    and each slice is added while it is still in cache. ``fn`` may read the
    slice of ``add_into`` it is given (a module's own input): its result is
    complete before it is added. Slices must be independent, as they are
    for every module that slices.
    """
    size = max(t.shape[dim] for t in batched)
    row_bytes = max(
        (t.numel() // t.shape[dim] * t.element_size() for t in batched if t.shape[dim] == size and size > 0),
        default=1,
    )
    chunk = _rows_per_slice(size, row_bytes, temp_row_bytes)
    if chunk >= size:
        out = fn(*(t.whole() if isinstance(t, RowMapped) else t for t in batched), *shared)
        return out if add_into is None else residual_add_(add_into, out)
    outputs = []
    for start, length in _slices(size, chunk):
        sliced = [t if t.shape[dim] == 1 else t.narrow(dim, start, length) for t in batched]
        out = fn(*sliced, *shared)
        if add_into is None:
            outputs.append(out)
        else:
            residual_add_(add_into.narrow(dim, start, length), out)
    return add_into if add_into is not None else torch.cat(outputs, dim=dim)


def row_slices(t: torch.Tensor) -> Iterator[Tuple[int, int]]:
    """``(start, length)`` of the policy's slices of ``t``'s rows (its first axis), as :func:`subbatched`
    would slice it.

    For modules that fill or update a tensor slice by slice themselves (the
    embedders adding into the pair, the grouped triangle multiplication)
    rather than through :func:`subbatched`.
    """
    size = t.shape[0]
    return _slices(size, _rows_per_slice(size, t[0].numel() * t.element_size() if size else 1))


def _slices(size: int, chunk: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, size, chunk):
        yield start, min(chunk, size - start)


def _rows_per_slice(size: int, row_bytes: int, temp_row_bytes: int = 0) -> int:
    """The policy's ``subbatch_size``, else as many rows as fit its ``slice_bytes`` (and 4x it for the
    widest temporary, ``temp_row_bytes`` per row), in equal slices rather than a short last one."""
    policy = current_policy()
    if policy.subbatch_size is not None:
        return policy.subbatch_size
    if policy.slice_bytes is None:
        return size
    chunk = max(1, min(policy.slice_bytes // max(row_bytes, 1), 4 * policy.slice_bytes // max(temp_row_bytes, 1)))
    num_slices = -(-size // chunk)
    return -(-size // num_slices)
