"""Build the PyInstaller bundles: ``python packaging/pyinstaller/build.py [node] [desktop]``.

    node     dist/farm-node/           farm-node + encodeflow, no Qt (for node machines and servers)
    desktop  dist/encodeflow-desktop/  the panel, with farm-node + encodeflow next to it, so a
                                       double-click starts the local farm

With no argument it builds both. Run it with the Python of the environment to bundle (the project
installed with ``.[desktop,dev]`` for the desktop bundle, ``.[dev]`` is enough for the node).
A bundle runs only on the OS and CPU it was built on: build on each platform you ship.
Options: ``--dist DIR`` (default dist/), ``--work DIR`` (PyInstaller's cache, default build/pyinstaller;
keep it between builds: a rebuild reuses its analysis).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SPECS = {"node": HERE / "farm-node.spec", "desktop": HERE / "encodeflow-desktop.spec"}
FOLDERS = {"node": "farm-node", "desktop": "encodeflow-desktop"}
EXECUTABLES = {"node": ["farm-node", "encodeflow"], "desktop": ["encodeflow-desktop", "farm-node", "encodeflow"]}


def build(target: str, dist: Path, work: Path) -> Path:
    started = time.monotonic()
    print(
        f"==> building the {target} bundle into {dist / FOLDERS[target]} (docs/benchmarks.md says how long it takes)",
        flush=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level=WARN",
            "--distpath",
            str(dist),
            "--workpath",
            str(work / target),
            str(SPECS[target]),
        ],
        check=True,
        cwd=ROOT,
    )
    folder = dist / FOLDERS[target]
    missing = [name for name in EXECUTABLES[target] if not (folder / exe_name(name)).is_file()]
    if missing:
        raise SystemExit(f"build.py: the {target} bundle lacks {', '.join(missing)}; see PyInstaller's output above")
    # Not following links: PyInstaller links some libraries into place, and they take no room.
    size = sum(f.lstat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    print(
        f"==> {folder}: {size / 2**20:.0f} MiB, built in {time.monotonic() - started:.0f} s; "
        f"run {folder / exe_name(EXECUTABLES[target][0])}",
        flush=True,
    )
    return folder


def exe_name(name: str) -> str:
    return f"{name}.exe" if sys.platform == "win32" else name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build EncodeFlow's PyInstaller bundles.")
    p.add_argument("targets", nargs="*", metavar="node|desktop", help="what to build (default: both)")
    p.add_argument("--dist", type=Path, default=ROOT / "dist")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    args = p.parse_args(argv)
    unknown = set(args.targets) - set(SPECS)
    if unknown:
        p.error(f"unknown bundle {', '.join(sorted(unknown))}: choose node or desktop")
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        print("build.py: PyInstaller is not installed here: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    for target in args.targets or list(SPECS):
        build(target, args.dist.resolve(), args.work.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
