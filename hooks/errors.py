"""The one exception type for mistakes a user can fix.

Anything a plugin raises as :class:`UsageError` is printed by ``af2cpu`` as
one line, ``af2cpu: error: <what> — <fix>``, with no traceback, and the
command exits with :attr:`UsageError.exit_code`. Everything else is treated as
a bug and propagates with its traceback.

It deliberately does not derive from ``RuntimeError``: ColabFold's ``run()``
catches ``RuntimeError`` around model loading and prediction, logs "Not Enough
GPU memory?" and skips the query, which would hide the message.
"""

from __future__ import annotations


class UsageError(Exception):
    """A request the user can fix; ``what`` went wrong and ``fix`` says how to fix it."""

    exit_code = 2

    def __init__(self, what: str, fix: str = "", exit_code: int | None = None) -> None:
        self.what, self.fix = what.strip(), fix.strip()
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.line())

    def line(self) -> str:
        # one line even when a message quotes the user's input or a library's multi-line error
        what, fix = " ".join(self.what.split()), " ".join(self.fix.split())
        return f"{what} — {fix}" if fix else what
