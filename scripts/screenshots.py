"""Take the README's screenshots: the real panel on a real local farm, one PNG per page.

Run under a virtual screen:  xvfb-run -s "-screen 0 1440x900x24" python scripts/screenshots.py
It uses a throw-away data dir, starts the embedded farm with two nodes, submits a few generated
clips (one of them not a video), waits until the jobs are in interesting states, and saves
docs/screenshots/<page>.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"


def make_clip(path: Path, size: str, seconds: float) -> Path:
    from farm.domain.media import find_ffmpeg

    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=330:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        check=True,
    )
    return path


def main() -> int:
    data = Path(tempfile.mkdtemp(prefix="encodeflow-shots-"))
    os.environ["ENCODEFLOW_DATA_DIR"] = str(data)
    os.environ["ENCODEFLOW_CONFIG"] = str(data / "config.toml")
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.NativeFormat, QSettings.UserScope, str(data / "qsettings"))
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    from app.main_window import RESOURCES, MainWindow
    from app.runner import BackgroundRunner
    from app.services import AppServices
    from farm.base.settings import Settings
    from farm.domain.jobspec import OutputConfig
    from farm.services.local_nodes import LocalFarm

    app.setStyleSheet((RESOURCES / "style.qss").read_text())
    settings = Settings.load()
    clips = data / "clips"
    clips.mkdir()
    short = [
        make_clip(clips / f"{name}.mp4", size, 3)
        for name, size in (("interview_cam_a", "1280x720"), ("broll_street", "960x540"), ("phone_vertical", "540x960"))
    ]
    long_clip = make_clip(clips / "keynote_full.mp4", "1920x1080", 40)
    (clips / "edit_notes.mp4").write_text("these are my notes, not a video\n")

    with LocalFarm(settings, nodes=2, node_prefix="studio-ws"):
        services = AppServices(settings)
        services.open()
        runner = BackgroundRunner(max_threads=8)
        window = MainWindow(services, runner)
        window.resize(1400, 860)
        window.show()

        def pump(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                app.processEvents()
                time.sleep(0.02)

        pump(3)
        farm = services.farm
        for clip in short:
            farm.submit([clip], OutputConfig("720p", "mp4"))
        farm.submit([short[0]], OutputConfig("480p", "webm"))
        pump(12)
        farm.submit([long_clip], OutputConfig("1080p", "hevc"))
        farm.submit([long_clip], OutputConfig("720p", "webm"))
        pump(8)
        window.pages["upload"].add_paths([short[0], short[1], clips / "edit_notes.mp4"])
        pump(4)
        OUT.mkdir(parents=True, exist_ok=True)
        for key in window.pages:
            window.show_page(key)
            pump(2.5)
            window.grab().save(str(OUT / f"{key}.png"))
            print("saved", OUT / f"{key}.png", flush=True)
        window.show_page("workers")
        detail = window.pages["workers"].open_detail("studio-ws-1")
        detail.resize(900, 560)
        pump(4)
        detail.grab().save(str(OUT / "worker_detail.png"))
        print("saved", OUT / "worker_detail.png", flush=True)
        window.quit()
        runner.wait()
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
