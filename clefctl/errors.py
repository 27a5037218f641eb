"""One exception type for every problem a user can fix.

The CLI turns a :class:`ClefError` into one line on stderr and exit code 2; library
code raises it with a message that says what went wrong, where (file and line when
known) and what to do.
"""

from __future__ import annotations


class ClefError(Exception):
    """A user-facing error: bad input, missing file, invalid configuration."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 hint: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.hint = hint
        self.bare_message = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        text = where + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class Interrupted(ClefError):
    """A run stopped on purpose (SIGINT / SIGTERM) after saving what it could.

    The CLI prints the message (e.g. where the checkpoint is and how to continue) and exits 130.
    """

    exit_code = 130


class DiskFull(ClefError):
    """A write that ran out of space (``ENOSPC``, a quota, or a native library's own error for it),
    naming the file; raised by :func:`clefctl.paths.writing`. A caller that knows better what to do
    afterwards (``finetune``: ``--resume``) re-raises it with its own hint."""
