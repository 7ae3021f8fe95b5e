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
        None runs each module on the whole tensor. Smaller saves memory on
        long sequences; it never changes the result beyond rounding.
      threads: intra-op threads for torch; None leaves torch's setting alone.
    """

    precision: str = "fp32"
    subbatch_size: Optional[int] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; use fp32 or bf16")
        if self.subbatch_size is not None and self.subbatch_size < 1:
            raise ValueError("subbatch_size must be a positive number of rows")

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
