"""Execution choices for the engine, kept in one place.

The modules in this package read like the AlphaFold2 paper: they never take
chunk sizes, precision flags or in-place switches as arguments. Those choices
live in one :class:`RuntimePolicy`, which the runner activates around a
forward pass, and the few primitives that care (attention, transitions, the
chunking utility) read it through :func:`current_policy`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Optional

import torch


@dataclasses.dataclass(frozen=True)
class RuntimePolicy:
    """How to execute the model, as opposed to what it computes.

    Attributes:
      precision: "fp32" (the parity reference) or "bf16" (not yet served).
      subbatch_size: rows of a batched attention/transition processed at once;
        None leaves it to ``slice_bytes``. Smaller saves memory on long
        sequences; it never changes the result beyond rounding.
      slice_bytes: with ``subbatch_size`` None, rows are sliced so that each
        sliced input holds at most this many bytes (a module's temporaries are
        a few times that). It is a speed setting: glibc hands out blocks over
        its mmap threshold (at most 32 MiB) as fresh pages, and faulting them
        in costs about as much as the GEMM that fills them, while smaller
        blocks are reused. None runs each module on the whole tensor.
      threads: intra-op threads for torch; None leaves torch's setting alone.
    """

    precision: str = "fp32"
    subbatch_size: Optional[int] = None
    slice_bytes: Optional[int] = 2 * 1024 * 1024
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; use fp32 or bf16")
        if self.subbatch_size is not None and self.subbatch_size < 1:
            raise ValueError("subbatch_size must be a positive number of rows")
        if self.slice_bytes is not None and self.slice_bytes < 1:
            raise ValueError("slice_bytes must be a positive number of bytes")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    @contextlib.contextmanager
    def active(self) -> Iterator["RuntimePolicy"]:
        """Make this the policy the engine's primitives see."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


_CURRENT: contextvars.ContextVar[RuntimePolicy] = contextvars.ContextVar(
    "af2cpu_runtime_policy", default=RuntimePolicy()
)


def current_policy() -> RuntimePolicy:
    """The policy in force; the fp32, unchunked default when none was set."""
    return _CURRENT.get()
