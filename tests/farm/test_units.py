"""Sizes and rates as the CLI and the panel show them."""

from farm.base.units import format_rate, format_size


def test_sizes_count_in_thousands_with_one_decimal_past_bytes():
    assert [format_size(n) for n in (0, 532, 999, 1000, 2500, 1_234_567, 3_400_000_000)] == [
        "0 B",
        "532 B",
        "999 B",
        "1.0 KB",
        "2.5 KB",
        "1.2 MB",
        "3.4 GB",
    ]
    assert format_size(1_500_000_000_000) == "1.5 TB"
    assert format_size(2_000_000_000_000_000) == "2000.0 TB", "terabytes are the largest unit"


def test_rates_are_always_megabytes_per_second():
    assert format_rate(12_345_678) == "12.3 MB/s"
    assert format_rate(0) == "0.0 MB/s"
