#!/usr/bin/env python3
"""The two commands a newcomer runs on a fresh clone; standard library only.

    python3 dev.py demo    # set up .venv, run two demo services: their logs, a trace, metrics
    python3 dev.py test    # set up .venv, run the tests, ruff and mypy (what CI runs)

Anything after the command is passed on (``python3 dev.py test -k wsgi``,
``python3 dev.py demo --keep-running``).
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
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = {"demo": "demo", "test": "dev"}


def setup(extra: str) -> None:
    """Create .venv and install the package with ``extra``, once per pyproject version."""
    if sys.version_info < (3, 10):
        sys.exit(f"observekit needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extra}-{digest}"
    if stamp.exists():
        return
    print(f"installing observekit[{extra}] into .venv (first run only)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f".[{extra}]"], check=True, cwd=ROOT)
    stamp.touch()


def run(*cmd: str) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def test(args: list[str]) -> int:
    py = str(PYTHON)
    # pytest exits 5 when it collected nothing: that is a failure here too.
    steps = [
        [py, "-m", "pytest", *args],
        [py, "-m", "ruff", "check", "."],
        [py, "-m", "ruff", "format", "--check", "."],
        [py, "-m", "mypy"],
    ]
    failed = [" ".join(step[1:4]) for step in steps if run(*step) != 0]
    if failed:
        print("FAILED:", "; ".join(failed), flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in EXTRAS:
        print(__doc__)
        return 2
    command, args = sys.argv[1], sys.argv[2:]
    setup(EXTRAS[command])
    if command == "test":
        return test(args)
    return run(str(BIN / "observekit"), "demo", *args)


if __name__ == "__main__":
    sys.exit(main())
