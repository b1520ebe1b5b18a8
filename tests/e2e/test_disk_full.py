"""A node whose work dir fills up: the job fails with that reason after its retries, nothing is left."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.helpers import json_lines, run_cli, wait_for


@pytest.fixture
def tiny_disk(tmp_path, request):
    """A tmpfs of ``size`` bytes (needs root, as CI has); skipped where mounting is not allowed."""
    mounts = []

    def make(size: int):
        path = tmp_path / "tiny-disk"
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_work_dir_full_fails_the_job_with_that_reason_and_leaves_it_empty(local_farm, make_clip, tiny_disk):
    source = make_clip(1280, 720, 4.0, name="fills_the_disk.mp4")
    # Room for the downloaded input but not for FFmpeg's output next to it.
    disk = tiny_disk(source.stat().st_size + 64 * 1024)
    local_farm(1, extra=["--work-dir", str(disk)])

    (job,) = json_lines(run_cli("submit", str(source), "--resolution", "720p", "--json").stdout)
    done = wait_for(lambda: _finished(job["id"]), timeout=120, interval=0.5, what="the job to fail")

    assert done["status"] == "failed"
    assert "ran out of disk space" in done["error"] and str(disk) in done["error"]
    assert done["attempts"] == 3, "another node might have room: the job is retried before it fails"
    assert done["output"] is None
    assert list(disk.iterdir()) == [], "the work dir is emptied on every path"


def _finished(job_id: str):
    job = json.loads(run_cli("show", job_id, "--json").stdout)
    return job if job["status"] in ("completed", "failed", "cancelled") else None
