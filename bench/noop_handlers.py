"""No-op step handlers for the end-to-end benchmark (`bench/bench.py`).

The benchmark puts this directory on the workers' PYTHONPATH, so a pipeline step can name
`noop_handlers:noop` as its python `ref`.
"""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> dict[str, bool]:
    """Do nothing and succeed: measures Baton's own overhead per step."""
    return {"ok": True}
