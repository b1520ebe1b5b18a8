"""Finding FFmpeg and probing media with PyAV."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FFMPEG_ENV = "ENCODEFLOW_FFMPEG"


class FFmpegNotFound(RuntimeError):
    pass


def find_ffmpeg(configured: str | None = None) -> str:
    """The FFmpeg binary: the configured one, ``ENCODEFLOW_FFMPEG``, the one on PATH, else the one
    the ``imageio-ffmpeg`` wheel ships, so that a node needs nothing from the OS."""
    candidate = configured or os.environ.get(FFMPEG_ENV)
    if candidate:
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if not path:
            raise FFmpegNotFound(f"FFmpeg not found at {candidate!r} (from ENCODEFLOW_FFMPEG or settings)")
        return path
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFound(
            "no FFmpeg: install ffmpeg, set ENCODEFLOW_FFMPEG, or pip install imageio-ffmpeg"
        ) from exc
