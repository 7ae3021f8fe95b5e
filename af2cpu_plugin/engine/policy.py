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


PRECISIONS = ("fp32", "bf16")
KERNELS = ("native", "stock", "ipex")


@dataclasses.dataclass(frozen=True)
class RuntimePolicy:
    """How to execute the model, as opposed to what it computes.

    Attributes:
      precision: "fp32" (the parity reference) or "bf16": inside
        :func:`trunk_precision` (the region ColabFold runs in bfloat16) the
        primitives then compute GEMMs and attention in bf16 with fp32
        accumulation, LayerNorm statistics and softmax in fp32, and the
        residual streams stay fp32. ``"auto"`` is resolved before a policy is
        made (:func:`af2cpu_plugin.cpu.resolve_precision`).
      subbatch_size: rows of a batched attention/transition processed at once;
        None leaves it to ``slice_bytes``. Smaller saves memory on long
        sequences; it never changes the result beyond rounding.
      slice_bytes: with ``subbatch_size`` None, rows are sliced so that each
        sliced input holds at most this many bytes (a module's temporaries are
        a few times that). It bounds the temporaries' memory; with the
        engine's malloc settings (:mod:`af2cpu_plugin.malloc`: blocks up to
        32 MiB are recycled, not re-faulted) the default keeps a slice's
        temporaries (about 4x its input: the fused q, k, v and gate
        projections) under that. None runs each module on the whole tensor.
      threads: intra-op threads for torch; None leaves torch's setting alone.
      channel_groups: the triangle multiplication contracts its intermediate
        channels in this many groups, and builds its projections and applies
        its output row slice by row slice (``slice_bytes``). 1 makes the whole
        [4c, N, N] projection at once: about 7 pair-sized temporaries; 4
        groups need about 3. The result is the same to rounding. None (the
        default): the runner picks it per input
        (:mod:`af2cpu_plugin.capacity.cost_model`: 4 from 512 residues, where
        it measured as fast, more if ``memory_limit`` needs it); modules
        outside a runner read None as 1.
      pair_storage: the dtype the trunk stores the pair representation in,
        ``"fp32"`` or ``"bf16"`` (bf16 precision only). bf16 halves the
        largest tensor of a pass, as ColabFold's bf16 trunk stores it, but
        rounds every update added to it: measured against JAX fp32 that is
        ColabFold's own bf16 error, while the fp32 pair keeps the engine's bf16
        well inside it (README, bf16 parity), and it is no faster. So None
        (the default) lets the runner store it in bf16 only where the fp32
        pair would not fit ``memory_limit``
        (:mod:`af2cpu_plugin.capacity.cost_model`); modules outside a runner
        read None as fp32.
      memory_limit: bytes this process may use (cgroup limit, MemAvailable or
        ``--memory-limit``); None when unknown. The runner chooses
        ``channel_groups`` per input to fit it; the modules never read it.
      kernels: "native" (the default: the engine's own attention,
        LayerNorm and fused elementwise kernels, :mod:`af2cpu_plugin.kernels`,
        where the CPU and the shapes allow them, PyTorch's kernels for
        everything else), "stock" (PyTorch's kernels only: oneDNN GEMMs, SDPA) or "ipex" (GEMMs through
        intel-extension-for-pytorch, opt-in, in its own venv: see
        :mod:`af2cpu_plugin.ipex`).
    """

    precision: str = "fp32"
    subbatch_size: Optional[int] = None
    slice_bytes: Optional[int] = 4 * 1024 * 1024
    threads: Optional[int] = None
    kernels: str = "native"
    channel_groups: Optional[int] = None
    pair_storage: Optional[str] = None
    memory_limit: Optional[int] = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.kernels not in KERNELS:
            raise ValueError(f"unknown kernels {self.kernels!r}; use one of {', '.join(KERNELS)}")
        if self.subbatch_size is not None and self.subbatch_size < 1:
            raise ValueError("subbatch_size must be a positive number of rows")
        if self.channel_groups is not None and self.channel_groups < 1:
            raise ValueError("channel_groups must be a positive number of groups")
        if self.pair_storage not in (None, *PRECISIONS):
            raise ValueError(f"unknown pair storage {self.pair_storage!r}; use one of {', '.join(PRECISIONS)}")
        if self.pair_storage == "bf16" and self.precision != "bf16":
            raise ValueError("the pair is stored in bf16 only under bf16 precision")
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


# The dtype the primitives compute in right now: float32 everywhere except
# inside trunk_precision() under a bf16 policy.
_COMPUTE: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar("af2cpu_compute_dtype", default=torch.float32)


def compute_dtype() -> torch.dtype:
    """The dtype of GEMM and attention inputs in the current region."""
    return _COMPUTE.get()


@contextlib.contextmanager
def trunk_precision() -> Iterator[torch.dtype]:
    """The region where a bf16 policy computes in bf16 (else a no-op).

    Mirrors ``alphafold.model.utils.bfloat16_context`` as ColabFold applies
    it: the embeddings and the Evoformer trunk run in reduced precision, the
    structure module and the heads in float32. The model marks the region,
    the policy decides what it means.
    """
    token = _COMPUTE.set(current_policy().dtype)
    try:
        yield _COMPUTE.get()
    finally:
        _COMPUTE.reset(token)


def pair_dtype() -> torch.dtype:
    """The dtype the trunk stores the pair representation in: the policy's ``pair_storage`` (fp32 unless set).

    The input embedder makes the pair in it; in bf16 the modules read it
    through their LayerNorms and add their updates into it rounded once each,
    and the structure module and heads, which compute in fp32 (ColabFold casts
    the trunk's outputs to fp32), read it slice by slice
    (:func:`.primitives.by_upcast_rows`), so no whole fp32 copy is made.
    """
    return torch.bfloat16 if current_policy().pair_storage == "bf16" else torch.float32
