"""A studio's set-up: a shared Redis, PostgreSQL and S3 (moto's server), driven by the CLI."""

from __future__ import annotations

import json

import boto3

from farm.domain.media import probe
from tests.e2e.helpers import json_lines, run_cli


def test_submit_show_jobs_download_on_s3_and_postgres(redis_url, pg_url, s3_url, local_farm, make_clip, tmp_path):
    (node,) = local_farm(1)
    portrait = make_clip(360, 640, seconds=1.5, name="phone clip (1).mp4")

    result = run_cli(
        "submit", str(portrait), "--resolution", "360p", "--format", "webm", "--no-audio", "--wait", "--json"
    )
    assert result.returncode == 0, result.stderr
    (job,) = json_lines(result.stdout)
    assert job["status"] == "completed" and job["node"] == node.name and job["attempts"] == 1
    assert job["config"] == {"resolution": "360p", "format": "webm", "includeAudio": False}
    assert job["video"]["name"] == "phone clip (1).mp4"
    assert job["video"]["key"].startswith("inputs/") and job["video"]["key"].endswith("/phone_clip_1.mp4")
    assert job["output"]["key"].startswith(f"outputs/{job['id']}/attempt-1/")

    # The objects really are in the bucket, under the configured prefix.
    bucket, prefix = s3_url[len("s3://") :].split("/", 1)
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"{prefix}/{job['output']['key']}" in keys and f"{prefix}/{job['video']['key']}" in keys

    shown = json.loads(run_cli("show", job["id"], "--json").stdout)
    assert shown["status"] == "completed" and shown["output"] == job["output"]
    listed = json_lines(run_cli("jobs", "--status", "completed", "--json").stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    assert json_lines(run_cli("jobs", "--status", "failed", "--json").stdout) == []

    download = run_cli("download", job["id"], str(tmp_path))
    assert download.returncode == 0, download.stderr
    info = probe(download.stdout.strip())
    assert (info.width, info.height) == (360, 640), "portrait stays portrait, 360 wide"
    assert info.video_codec == "vp9" and info.audio_codec is None

    nodes = json_lines(run_cli("nodes", "--json").stdout)
    assert [n["name"] for n in nodes] == [node.name] and nodes[0]["status"] == "idle"


def test_cli_errors_are_one_clear_line(redis_url, pg_url, local_farm):
    cases = [
        (("show", "no-such-job"), 2, "no job 'no-such-job'"),
        (("cancel", "no-such-job"), 2, "no job 'no-such-job'"),
        (("retry", "no-such-job"), 2, "no job 'no-such-job'"),
        (("node", "pause", "ghost"), 2, "ghost"),
        (("submit", "x.mp4", "--priority", "-3"), 2, "priority must be between"),
        (("jobs", "--status", "done"), 2, "invalid choice: 'done'"),
    ]
    for args, code, text in cases:
        result = run_cli(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, lines)


def test_cancel_while_queued_then_retry_completes(redis_url, pg_url, local_farm, clip):
    (job,) = json_lines(run_cli("submit", str(clip), "--resolution", "360p", "--json").stdout)
    assert job["status"] == "queued"
    cancelled = run_cli("cancel", job["id"])
    assert cancelled.returncode == 0 and "still queued" in cancelled.stdout
    assert json.loads(run_cli("show", job["id"], "--json").stdout)["status"] == "cancelled"
    again = run_cli("cancel", job["id"])
    assert again.returncode == 1 and "already cancelled" in again.stderr

    local_farm(1)
    assert run_cli("retry", job["id"]).returncode == 0
    from farm.base.settings import Settings
    from farm.client import Farm

    farm = Farm(Settings.load(), start_embedded=False)
    (done,) = farm.wait([job["id"]], timeout=60)
    farm.close()
    assert done.status == "completed" and done.output is not None and done.output.size > 0
