"""The whole path in processes: `encodeflow submit` -> embedded Redis -> farm-node -> FFmpeg -> storage."""

from __future__ import annotations

import time

import pytest

from farm.client import Farm
from farm.domain.media import probe
from farm.services.storage import open_storage
from farm_node.workdir import entries
from tests.e2e.helpers import json_lines, run_cli, wait_for


def test_six_jobs_on_two_nodes_all_complete(local_farm, make_clip, tmp_path):
    nodes = local_farm(2)
    clips = [make_clip(640, 360, seconds=2.0, name=f"e2e_{i}.mp4") for i in range(6)]

    result = run_cli("submit", *map(str, clips), "--resolution", "360p", "--format", "mp4", "--wait", "--json")

    assert result.returncode == 0, result.stderr
    jobs = json_lines(result.stdout)
    assert len(jobs) == 6
    assert {j["status"] for j in jobs} == {"completed"}
    assert {j["progress"] for j in jobs} == {100}
    assert {j["node"] for j in jobs} == {n.name for n in nodes}, "both nodes should have done work"
    storage = open_storage(local_farm.settings.effective_storage_url)
    for job in jobs:
        dest = tmp_path / f"{job['id']}.mp4"
        storage.download_file(job["output"]["key"], dest)
        info = probe(dest)
        assert (info.width, info.height) == (640, 360)
        assert info.video_codec == "h264" and info.audio_codec == "aac"
        assert abs(info.duration - 2.0) < 0.2
        assert job["output"]["size"] == dest.stat().st_size
    for node in nodes:
        assert entries(node.work_dir) == [], "work dir must be empty after each job"


@pytest.mark.alone
def test_cancel_a_running_job(local_farm, make_clip):
    (node,) = local_farm(1)
    source = make_clip(1280, 720, seconds=20.0, name="long_720p.mp4")
    submitted = json_lines(run_cli("submit", str(source), "--format", "hevc", "--resolution", "720p", "--json").stdout)
    job_id = submitted[0]["id"]
    farm = Farm(local_farm.settings, start_embedded=False)
    wait_for(lambda: farm.show(job_id).progress > 0, timeout=60, what="the job to make progress")
    assert node.ffmpeg_children(), "FFmpeg should be running"

    started = time.monotonic()
    result = run_cli("cancel", job_id)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: farm.show(job_id).status == "cancelled", timeout=5, what="status cancelled")
    assert time.monotonic() - started < 5
    wait_for(lambda: not node.ffmpeg_children(), timeout=5, what="FFmpeg to exit")
    wait_for(lambda: entries(node.work_dir) == [], timeout=5, what="an empty work dir")
    assert farm.show(job_id).output is None
    farm.close()


def test_bad_inputs_exit_2_and_enqueue_nothing(local_farm, clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    cases = {
        "text as .mp4": ([str(text)], "not a video"),
        "empty file": ([str(empty)], "empty"),
        "missing file": ([str(tmp_path / "missing.mov")], "no such file"),
        "unknown resolution": ([str(clip), "--resolution", "4k"], "invalid choice: '4k'"),
        "unknown format": ([str(clip), "--format", "avi"], "invalid choice: 'avi'"),
        "one bad among good": ([str(clip), str(text)], "not a video"),
    }
    for label, (args, reason) in cases.items():
        result = run_cli("submit", *args)
        assert result.returncode == 2, f"{label}: {result.returncode} {result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"{label}: expected one line, got {lines}"
        assert reason in lines[0], f"{label}: {lines[0]}"
    farm = Farm(local_farm.settings, start_embedded=False)
    assert sum(farm.queue_counts().values()) == 0, "nothing may be enqueued"
    farm.close()
    assert run_cli("jobs", "--json").stdout.strip() == ""
    storage_root = local_farm.settings.data_dir / "storage"
    assert not storage_root.exists() or not any(p.is_file() for p in storage_root.rglob("*"))


def test_a_node_idle_for_a_while_still_picks_up_a_job_at_once(local_farm, clip):
    """Regression: an idle worker's blocking wait used to outlast redis-py's read timeout, and
    BullMQ then backed off for up to 20 s without listening for jobs."""
    local_farm(1)
    time.sleep(12)  # idle long enough for several 5 s waits and the backoff they caused
    (job,) = json_lines(run_cli("submit", str(clip), "--resolution", "360p", "--wait", "--json").stdout)
    assert job["status"] == "completed"
    assert job["queue_wait_seconds"] < 2.0, f"picked up after {job['queue_wait_seconds']:.1f} s"
