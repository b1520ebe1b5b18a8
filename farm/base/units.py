"""Quantities shown to people: sizes and transfer rates, in decimal units (1 KB = 1000 bytes), as
file managers and storage vendors count them."""

from __future__ import annotations

_UNITS = ("B", "KB", "MB", "GB", "TB")


def format_size(size: float) -> str:
    """``532 B``, ``1.2 MB``, ``3.4 GB``: whole bytes, one decimal from kilobytes on, terabytes at most."""
    value = float(size)
    for unit in _UNITS[:-1]:
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {_UNITS[-1]}"


def format_rate(bytes_per_s: float) -> str:
    """``12.3 MB/s``: always megabytes, so that a rate that changes keeps its width."""
    return f"{bytes_per_s / 1_000_000:.1f} MB/s"
