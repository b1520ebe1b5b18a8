"""Storage outages seen by users: a node whose upload meets a dead S3 endpoint, a submit while S3
is down, and a node that starts after an upload to folder storage was killed half way.

S3 is moto's server behind a FaultyLink (the ``s3_link`` fixture); the knobs make a storage give up
after a few seconds instead of the default minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from farm.base.settings import ENV_VARS, Settings
from farm.services.storage import open_storage
from tests.e2e.helpers import LONG_JOB, run_cli, submit, wait_for

SECRET = "testing-secret-key"  # the s3_url fixture's AWS_SECRET_ACCESS_KEY


def short_storage_patience(monkeypatch, retry: float = 2) -> None:
    monkeypatch.setenv(ENV_VARS["storage_retry_seconds"], str(retry))
    monkeypatch.setenv(ENV_VARS["storage_connect_timeout"], "2")
    monkeypatch.setenv(ENV_VARS["storage_read_timeout"], "2")


def test_a_node_whose_upload_meets_a_cut_retries_the_job_and_completes_once(
    s3_link, monkeypatch, local_farm, farm, long_clip
):
    short_storage_patience(monkeypatch)
    (node,) = local_farm(1)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(node.ffmpeg_children, timeout=60, what="FFmpeg to start")
    s3_link.cut()  # the input is on the node already; its output upload will find S3 gone
    cut_at = time.monotonic()

    retrying = wait_for(
        lambda: (job := farm.show(job_id).to_json())["error"] and job,
        timeout=90,
        what="the failed upload to be noted on the job",
    )
    assert retrying["status"] in ("queued", "active"), retrying
    assert retrying["error"].startswith("attempt 1 of 3 failed, will retry: storage s3://"), retrying["error"]
    assert "did not answer" in retrying["error"] and SECRET not in retrying["error"]
    noted_after = time.monotonic() - cut_at
    s3_link.restore()
    restored_at = time.monotonic()

    done = wait_for(
        lambda: (job := farm.show(job_id).to_json())["status"] in ("completed", "failed") and job,
        timeout=180,
        what="the job to end",
    )
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["error"] is None
    outputs = [o.key for o in farm.storage.list(f"outputs/{job_id}")]
    assert outputs == [done["output"]["key"]] and "/attempt-2/" in outputs[0]
    assert farm.storage.size(outputs[0]) == done["output"]["size"]
    assert s3_link.admin.list_multipart_uploads(Bucket=farm.storage.bucket).get("Uploads", []) == []
    print(
        f"\nthe failed upload was noted on the job {noted_after:.1f} s after the cut; "
        f"job completed {time.monotonic() - restored_at:.1f} s after the link came back"
    )


def test_submit_while_storage_is_down_fails_clearly_and_creates_no_job(s3_link, monkeypatch, clip):
    short_storage_patience(monkeypatch)
    s3_link.cut()
    started = time.monotonic()
    result = run_cli("submit", str(clip), "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result
    assert result.stdout == ""
    *retries, line = result.stderr.strip().splitlines()
    assert all("retry" in r for r in retries), retries  # the waiting is shown as it happens
    assert f"could not upload {clip.name}, so no job was created: storage s3://" in line
    assert f"at http://127.0.0.1:{s3_link.port} did not answer" in line and "AWS_ENDPOINT_URL" in line
    assert SECRET not in result.stderr and "Traceback" not in result.stderr

    s3_link.restore()
    from farm.client import Farm

    farm = Farm(Settings.load(), start_embedded=False)
    try:
        assert farm.jobs() == []
        assert list(farm.storage.list()) == []
        assert s3_link.admin.list_multipart_uploads(Bucket=farm.storage.bucket).get("Uploads", []) == []
    finally:
        farm.close()
    print(f"\nencodeflow submit with S3 down (window 2 s) gave up after {elapsed:.1f} s")


# An upload whose source never ends: the uploader is caught half way, every time.
_UPLOADER = """
import sys
from farm.services.storage import open_storage
open_storage(sys.argv[1]).upload_file(sys.argv[2], "outputs/j1/attempt-1/out.mp4")
"""


def test_a_node_start_sweeps_the_temp_file_of_an_upload_killed_half_way(local_farm, data_dir, tmp_path):
    storage = open_storage(local_farm.settings.effective_storage_url)  # the farm's folder storage
    storage.check()
    fifo = tmp_path / "endless.mp4"
    os.mkfifo(fifo)
    uploader = subprocess.Popen([sys.executable, "-c", _UPLOADER, storage.url, str(fifo)])
    with open(fifo, "wb") as feed:
        feed.write(os.urandom(2 * 1024 * 1024))
        feed.flush()
        folder = storage.root / "outputs" / "j1" / "attempt-1"
        temp = wait_for(
            lambda: folder.is_dir() and [p for p in folder.iterdir() if p.stat().st_size],
            timeout=30,
            what="the upload's temp file to fill",
        )
        os.kill(uploader.pid, signal.SIGKILL)
        uploader.wait(10)
    assert [p.name.startswith(".encodeflow-tmp-") for p in temp] == [True]
    assert list(storage.list()) == []  # never taken for an object, even before the sweep

    (node,) = local_farm(1)  # the sweep runs beside the node's start
    wait_for(lambda: not temp[0].exists(), timeout=30, what="the node to sweep the temp file")
    wait_for(lambda: "removed 1 temp file(s) left in" in node.log.read_text(), timeout=10, what="the log line")
