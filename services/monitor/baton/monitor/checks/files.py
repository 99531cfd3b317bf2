"""The ``file`` check: list the files matching a glob in a directory (name, size, mtime)."""

from __future__ import annotations

import asyncio
import fnmatch
import os
from pathlib import Path
from typing import Any

from baton.events.monitor import FileSettings
from baton.monitor.checks import CheckFailed


def scan_directory(settings: FileSettings) -> dict[str, Any]:
    """The observation of a file monitor: matching regular files sorted by (mtime, name)."""
    root = Path(settings.directory)
    if not root.is_dir():
        raise CheckFailed(f"directory {settings.directory!r} does not exist or is not a directory")
    try:
        plain = not settings.recursive and "/" not in settings.glob and "**" not in settings.glob
        files = _list(root, settings.glob) if plain else _walk(root, settings.glob, settings.recursive)
    except OSError as exc:
        raise CheckFailed(f"cannot list {settings.directory!r}: {exc}") from exc
    files.sort(key=lambda f: (f["mtime_ns"], f["name"]))
    return {"directory": settings.directory, "glob": settings.glob, "count": len(files), "files": files}


def _list(root: Path, pattern: str) -> list[dict[str, Any]]:
    """One directory level with os.scandir (no per-file path objects: monitors scan every second)."""
    files = []
    with os.scandir(root) as entries:
        for entry in entries:
            if not fnmatch.fnmatchcase(entry.name, pattern):
                continue
            try:
                if not entry.is_file():
                    continue
                stat = entry.stat()
            except FileNotFoundError:  # removed between listing and stat: not there
                continue
            files.append({"name": entry.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return files


def _walk(root: Path, pattern: str, recursive: bool) -> list[dict[str, Any]]:
    """Patterns with directories in them, or every level below ``root``."""
    files = []
    for path in root.rglob(pattern) if recursive else root.glob(pattern):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            name = path.relative_to(root).as_posix()
            files.append({"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return files


async def observe_files(settings: FileSettings) -> dict[str, Any]:
    """``scan_directory`` off the event loop (a large directory must not stall other monitors)."""
    return await asyncio.to_thread(scan_directory, settings)
