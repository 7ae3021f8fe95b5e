"""Who hears that an Evoformer block finished: a progress observer, off by default.

A pass of the model spends almost all its time in the 48 main Evoformer
blocks, so "blocks done" is the unit a progress bar counts. Like the
:class:`~.policy.RuntimePolicy`, the observer is an execution concern, not
part of the model: it travels in a context variable, never through
``forward()``. With no observer (the default, and every run whose stderr is
not a terminal) :func:`block_done` is one context-variable read per block,
48 per pass: nothing next to a block's GEMMs.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

_OBSERVER: contextvars.ContextVar[Optional[Callable[[], object]]] = contextvars.ContextVar(
    "af2cpu_block_observer", default=None
)


@contextlib.contextmanager
def observing(callback: Callable[[], object]) -> Iterator[None]:
    """Call ``callback()`` (no arguments) after each main-stack Evoformer block run inside this context."""
    token = _OBSERVER.set(callback)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def block_done() -> None:
    """Tell the observer, if any, that one main-stack Evoformer block has finished."""
    observer = _OBSERVER.get()
    if observer is not None:
        observer()
