"""One module per monitor type: how an observation is made (I/O); what it means is in ``evaluation``."""

from __future__ import annotations


class CheckFailed(Exception):
    """The outside world could not be observed (missing directory, refused connection, bad query)."""
