"""Every command in a pipe whose reader went away (``encodeflow jobs --json | head -1``) ends quietly,
as Unix tools do: killed by SIGPIPE (a shell shows 141), not a word on stderr.

The reader is gone before the command writes (the pipe's read end is closed at once), so the write
fails every time rather than only when the output outgrows the pipe's buffer; one case runs a real
shell pipeline into ``head`` with more output than that buffer holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.helpers import submit

ENCODEFLOW = [sys.executable, "-m", "farm"]
FARM_NODE = [sys.executable, "-m", "farm_node"]


def into_closed_pipe(command: list[str]) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


@pytest.fixture
def farm_with_a_job(local_farm, make_clip):
    local_farm(1)
    job_id = submit(make_clip(160, 120, 1.0), "--resolution", "360p")
    return job_id


def test_every_listing_command_ends_quietly_when_its_reader_is_gone(farm_with_a_job):
    for args in (
        ["jobs", "--json"],
        ["jobs"],
        ["nodes", "--json"],
        ["nodes"],
        ["presets"],
        ["presets", "--json"],
        ["show", farm_with_a_job, "--json"],
        ["show", farm_with_a_job],
    ):
        result = into_closed_pipe(ENCODEFLOW + args)
        assert (result.returncode, result.stderr) == (-signal.SIGPIPE, ""), args


@pytest.mark.parametrize(
    "command",
    [
        ENCODEFLOW + ["--help"],
        ENCODEFLOW + ["--version"],
        ENCODEFLOW + ["jobs", "--help"],
        FARM_NODE + ["--help"],
        FARM_NODE + ["--version"],
    ],
)
def test_help_and_version_end_quietly_when_their_reader_is_gone(command):
    result = into_closed_pipe(command)
    # argparse drops what it cannot write and exits 0; either way, quiet.
    assert result.returncode in (0, -signal.SIGPIPE) and result.stderr == "", result.stderr


def test_a_shell_pipeline_into_head(data_dir):
    """``encodeflow presets --json | head -c 10`` with 2,000 presets: more than a pipe holds (64 kB)."""
    import tomli_w

    presets = {f"preset-{n:04d}": {"resolution": "720p", "format": "mp4", "includeAudio": True} for n in range(2000)}
    (data_dir / "presets.toml").write_text(tomli_w.dumps(presets))
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"{sys.executable} -m farm presets --json | head -c 10; s=${{PIPESTATUS[0]}}; echo; echo status=$s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr == ""
    assert result.stdout.splitlines() == ['{"name": "', "status=141"]
