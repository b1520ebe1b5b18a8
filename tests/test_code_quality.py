"""The quality gates: lint, formatting, types and the import layers, each as its own tool runs it.

The configuration of all four is in pyproject.toml; .pre-commit-config.yaml runs the same commands
before a commit. A failure shows the tool's own output, so the fix is read straight off the report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GATES = {
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy"],  # the files and the strictness per package are in [tool.mypy]
    "lint-imports": ["lint-imports"],
}


def tool(name: str) -> str:
    """The tool installed beside this Python (the dev extra), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


@pytest.mark.parametrize("gate", list(GATES))
def test_gate_passes(gate: str) -> None:
    command = [tool(GATES[gate][0]), *GATES[gate][1:]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(GATES[gate])}` failed (exit {result.returncode}):\n{output}", pytrace=False)
