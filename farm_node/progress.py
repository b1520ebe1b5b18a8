"""Reads FFmpeg's ``-progress pipe:1`` output: ``key=value`` lines in blocks, each block ending with
``progress=continue`` (or ``progress=end`` for the last one).

FFmpeg's ``out_time`` is the furthest point written in any output stream, so it can jump ahead
(audio is encoded before video catches up), step back, or be ``N/A`` while the muxer finishes.
The percentage a user sees only ever moves forward, and stays below 100 until ``progress=end``,
since an output is not done while FFmpeg is still writing its index (``+faststart``).
"""

from __future__ import annotations

import math

_BEFORE_END_MAX = 99.0


class ProgressParser:
    """Feed it lines; it keeps the latest values and a monotonic ``percent`` of ``duration``."""

    def __init__(self, duration: float):
        self.duration = duration if duration and math.isfinite(duration) and duration > 0 else 0.0
        self.percent = 0.0
        self.out_time: float | None = None  # seconds of output written, from the last block that said
        self.speed: float | None = None  # times real time
        self.fps: float | None = None
        self.frame: int | None = None
        self.done = False  # progress=end seen
        self._block: dict[str, str] = {}

    def feed(self, line: str | bytes) -> float | None:
        """Take one line; at the end of a block return ``percent`` (possibly unchanged), else None."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        key, sep, value = line.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            return None  # not a key=value line: ignore
        if key != "progress":
            self._block[key] = value
            return None
        self._apply(self._block)
        self._block = {}
        if value == "end":
            self.done = True
            self.percent = 100.0
        elif self.duration and self.out_time is not None:
            share = min(self.out_time / self.duration * 100.0, _BEFORE_END_MAX)
            self.percent = max(self.percent, share)
        return self.percent

    def _apply(self, block: dict[str, str]) -> None:
        # out_time_ms is microseconds too (a long-standing FFmpeg misnomer); out_time is H:MM:SS.us.
        micros = _number(block.get("out_time_us"))
        if micros is None:
            micros = _number(block.get("out_time_ms"))
        seconds = micros / 1_000_000 if micros is not None else _clock(block.get("out_time"))
        if seconds is not None:
            self.out_time = max(0.0, seconds)  # the first blocks may be slightly negative
        speed = _number((block.get("speed") or "").rstrip("x"))
        if speed is not None:
            self.speed = speed
        fps = _number(block.get("fps"))
        if fps is not None:
            self.fps = fps
        frame = _number(block.get("frame"))
        if frame is not None:
            self.frame = int(frame)


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None  # "N/A" and garbage alike
    return value if math.isfinite(value) else None


def _clock(text: str | None) -> float | None:
    if not text:
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    parts = text.lstrip("-").split(":")
    if len(parts) != 3:
        return None
    try:
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        return None
    return sign * (hours * 3600 + minutes * 60 + seconds)
