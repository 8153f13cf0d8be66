"""The single exception type for bad input data.

Callers (CLI, jobs) catch one type and print its message; so every message is one line that
names the file or URI and what is wrong with it, never a traceback-shaped dump.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data is missing, unreadable, malformed or fails an integrity check."""

    def __init__(self, message: str) -> None:
        # One line, always: multi-line text from lower layers (botocore, zlib) is folded.
        super().__init__(" ".join(str(message).split()))
