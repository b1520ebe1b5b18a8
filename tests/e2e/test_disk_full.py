"""A node whose work dir fills up hands its jobs back, attempts unused, to a node with room; alone,
it fails them with that reason once their attempts are spent. Nothing is left in the work dir.

The small disk is a real tmpfs (mounting needs root, as CI has; elsewhere the tests skip, never in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import pytest

from tests.e2e.helpers import json_lines, metrics, node_info, run_cli, submit, wait_for

MB = 1_000_000


@pytest.fixture
def tiny_disk(tmp_path):
    """``make(size)``: a tmpfs of ``size`` bytes; ``grow(path, size)`` frees room on it."""
    mounts = []

    def make(size: int):
        path = tmp_path / f"tiny-disk-{len(mounts)}"
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs in CI: {result.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounts.append(path)
        return path

    def grow(path, size: int):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    make.grow = grow
    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def padded(clip, size: int, tmp_path):
    """``clip`` grown to ``size`` bytes by a trailing MP4 ``free`` box: a large input that is quick to
    transcode (players and FFmpeg skip the box)."""
    big = tmp_path / f"big-{clip.name}"
    shutil.copyfile(clip, big)
    pad = size - big.stat().st_size
    with big.open("ab") as out:
        out.write(struct.pack(">I", pad) + b"free")
        out.write(bytes(pad - 8))
    return big


@pytest.mark.slow
def test_a_full_node_hands_jobs_to_a_node_with_room(local_farm, make_clip, tiny_disk, tmp_path):
    disk = tiny_disk(20 * MB)
    (full,) = local_farm(1, extra=["--work-dir", str(disk)])
    (healthy,) = local_farm(1)
    # The healthy node waits (paused, still listed) until the full node has met the jobs.
    assert run_cli("node", "pause", healthy.name).returncode == 0
    wait_for(lambda: node_info(healthy.name)["status"] == "paused", timeout=30, what="the healthy node to pause")

    source = padded(make_clip(320, 240, 2.0, name="disk_full_source.mp4"), 30 * MB, tmp_path)
    jobs = [submit(source, "--resolution", "360p") for _ in range(3)]

    wait_for(lambda: node_info(full.name)["status"] == "disk full", timeout=60, what="the full node to say so")
    seen = node_info(full.name)
    assert "20.0 MB free" in seen["reason"] or "MB free" in seen["reason"], seen
    listed = run_cli("nodes").stdout
    assert f"{full.name}" in listed and "disk full" in listed and "a job needed about 30.0 MB" in listed
    full_metrics = metrics(full.name)
    assert full_metrics[("worker_disk_full", frozenset({("node", full.name)}))] == 1
    handed_back = ("worker_jobs_handed_back_total", frozenset({("node", full.name), ("reason", "disk_full")}))
    assert full_metrics[handed_back] >= 1
    assert "work dir" in full.log.read_text() and "is full" in full.log.read_text()

    assert run_cli("node", "resume", healthy.name).returncode == 0
    done = [wait_for(lambda j=job: _finished(j), timeout=300, interval=0.5, what=f"job {job}") for job in jobs]

    assert [d["status"] for d in done] == ["completed"] * 3, [(d["status"], d["error"]) for d in done]
    assert [d["node"] for d in done] == [healthy.name] * 3
    assert [d["attempts"] for d in done] == [1, 1, 1], "the full node used none of their attempts"
    assert [p.name for p in disk.iterdir() if not p.name.startswith(".")] == []

    tiny_disk.grow(disk, 100 * MB)  # room again: the node takes jobs again by itself
    wait_for(lambda: node_info(full.name)["status"] == "idle", timeout=30, what="the full node to recover")
    assert metrics(full.name)[("worker_disk_full", frozenset({("node", full.name)}))] == 0
    assert "free: taking jobs again" in full.log.read_text()


@pytest.mark.slow
def test_a_lone_full_node_fails_the_job_with_that_reason_after_its_attempts(local_farm, make_clip, tiny_disk):
    source = make_clip(1280, 720, 4.0, name="fills_the_disk.mp4")
    # Room for the downloaded input but not for FFmpeg's output next to it; no other node to take it.
    disk = tiny_disk(source.stat().st_size + 64 * 1024)
    local_farm(1, extra=["--work-dir", str(disk)])

    (job,) = json_lines(run_cli("submit", str(source), "--resolution", "720p", "--json").stdout)
    done = wait_for(lambda: _finished(job["id"]), timeout=180, interval=0.5, what="the job to fail")

    assert done["status"] == "failed"
    assert "ran out of disk space" in done["error"] and str(disk) in done["error"]
    assert "MB free, the job needs about" in done["error"]
    assert done["attempts"] == 3, "with no other node, each run is an attempt, and the job fails after them"
    assert done["output"] is None
    assert [p.name for p in disk.iterdir() if not p.name.startswith(".")] == [], "the work dir is emptied"


def _finished(job_id: str):
    job = json.loads(run_cli("show", job_id, "--json").stdout)
    return job if job["status"] in ("completed", "failed", "cancelled") else None


@pytest.mark.slow
def test_a_full_storage_is_said_as_such_and_no_node_is_called_full(
    data_dir, monkeypatch, local_farm, make_clip, tiny_disk
):
    """A full storage share is every node's problem, not one node's work dir: the job is retried
    with backoff and fails naming the storage; no node says "disk full" or hands the job back."""
    storage = tiny_disk(4 * MB)
    monkeypatch.setenv("ENCODEFLOW_STORAGE_URL", storage.as_uri())
    source = make_clip(640, 360, 2.0, name="storage_fills_up.mp4")
    (node,) = local_farm(1)
    assert run_cli("node", "pause", node.name).returncode == 0
    wait_for(lambda: node_info(node.name)["status"] == "paused", timeout=30, what="the node to pause")
    (job,) = json_lines(run_cli("submit", str(source), "--resolution", "360p", "--json").stdout)
    # The input is in; now someone else's files fill the share.
    filler = storage / "someone-elses-renders.bin"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(bytes(64 * 1024))
                out.flush()
        except OSError:
            pass
    assert run_cli("node", "resume", node.name).returncode == 0

    done = wait_for(lambda: _finished(job["id"]), timeout=180, interval=0.5, what="the job to fail")
    assert done["status"] == "failed" and done["attempts"] == 3
    assert "the storage has no space left for the output of storage_fills_up.mp4" in done["error"], done["error"]
    assert "work dir" not in done["error"]
    assert node_info(node.name)["status"] != "disk full"
    handed_back = ("worker_jobs_handed_back_total", frozenset({("node", node.name), ("reason", "disk_full")}))
    assert metrics(node.name).get(handed_back, 0) == 0
    assert filler.exists(), "what the node did not write stays"
