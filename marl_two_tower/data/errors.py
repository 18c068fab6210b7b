"""One error type for bad input data, always naming the file and (when known) line."""

from __future__ import annotations

from pathlib import Path

from marl_two_tower.errors import UserError


class DataError(UserError, ValueError):
    """Malformed or unusable input data (a :class:`UserError`, and a ``ValueError``
    for callers that catch that).

    The message reads ``path:line: reason`` (or ``path: reason`` when the problem is
    not tied to one line, e.g. an empty file or a missing column).
    """

    def __init__(self, path: str | Path, reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")
