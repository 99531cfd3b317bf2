"""The ``file`` check: list the files matching a glob in a directory (name, size, mtime)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from baton.events.monitor import FileSettings
from baton.monitor.checks import CheckFailed


def scan_directory(settings: FileSettings) -> dict[str, Any]:
    """The observation of a file monitor: matching regular files sorted by (mtime, name)."""
    root = Path(settings.directory)
    if not root.is_dir():
        raise CheckFailed(f"directory {settings.directory!r} does not exist or is not a directory")
    pattern = settings.glob
    matches = root.rglob(pattern) if settings.recursive else root.glob(pattern)
    files: list[dict[str, Any]] = []
    try:
        for path in matches:
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed between listing and stat: not there
                continue
            if not path.is_file():
                continue
            files.append(
                {"name": path.relative_to(root).as_posix(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            )
    except OSError as exc:
        raise CheckFailed(f"cannot list {settings.directory!r}: {exc}") from exc
    files.sort(key=lambda f: (f["mtime_ns"], f["name"]))
    return {"directory": settings.directory, "glob": pattern, "count": len(files), "files": files}


async def observe_files(settings: FileSettings) -> dict[str, Any]:
    """``scan_directory`` off the event loop (a large directory must not stall other monitors)."""
    return await asyncio.to_thread(scan_directory, settings)
