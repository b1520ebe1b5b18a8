"""The layering rule: `farm` and `farm_node` never import Qt or `app`; nothing imports `app`.

Checked on the source (every import statement) and at run time (importing the node's modules in a
fresh interpreter pulls in no Qt), so a lazy import inside a function is caught too.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "app", "shiboken6")


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_core_and_node_never_import_qt_or_app():
    offenders = []
    for package in ("farm", "farm_node"):
        for path in (ROOT / package).rglob("*.py"):
            for name in _imports(path):
                if name in FORBIDDEN_IN_CORE or (package == "farm" and name == "farm_node"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_nothing_imports_app():
    offenders = [
        f"{path.relative_to(ROOT)}"
        for package in ("farm", "farm_node")
        for path in (ROOT / package).rglob("*.py")
        if "app" in set(_imports(path))
    ]
    assert offenders == []


def test_node_runs_without_qt_loaded():
    code = (
        "import sys, farm.cli, farm.cli.commands, farm.client, farm_node.cli, farm_node.agent;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'app')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
