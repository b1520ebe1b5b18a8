"""The node agent on a farm of several machines: the machine's Redis, PostgreSQL and an S3 API.

``FarmNode.run()`` runs on its own event loop in a thread, as ``farm-node`` would run it, while the
test acts as another machine: a foreign BullMQ producer (a Node.js one, say) adding jobs with
no database rows, or a producer whose input in storage turns out not to be a video. What is
asserted is what users see: the job's row (``Farm.show``), BullMQ's own record of the job, and the
output in storage.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest
import redis
from bullmq import Queue

from farm.base.settings import Settings
from farm.client import Farm, FarmError, UnknownJobError
from farm.domain.media import probe
from farm.services.db import repo
from farm.services.registry import NodeRegistry
from farm.services.storage import open_storage
from farm_node.agent import FarmNode
from farm_node.workdir import entries
from tests.bull import bull_job
from tests.e2e.helpers import wait_for


class NodeThread:
    """A FarmNode running ``run()`` on its own loop in a thread; ``stop()`` is its SIGTERM."""

    def __init__(self, settings: Settings, name: str, work_dir: Path):
        self.node = FarmNode(settings, name=name, work_dir=work_dir, metrics_port=None)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=f"node-{name}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        async def main() -> int:
            self.loop = asyncio.get_running_loop()
            return await self.node.run()

        try:
            self.exit_code = asyncio.run(main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self, timeout: float = 60) -> int | None:
        for _ in range(2):  # drain; if that takes too long, hand the jobs back
            if not self.thread.is_alive():
                break
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.node.request_stop)
            self.thread.join(timeout / 2)
        assert not self.thread.is_alive(), "the node did not stop"
        if self.error is not None:
            raise self.error
        return self.exit_code


@pytest.fixture
def settings_on_services(redis_url, pg_url, s3_url) -> Settings:
    """Settings of a multi-machine farm: real Redis (own queue), PostgreSQL, S3 (moto)."""
    return Settings.load()


@pytest.fixture
def farm(settings_on_services):
    farm = Farm(settings_on_services, start_embedded=False)
    yield farm
    farm.close()


@pytest.fixture
def start_node(settings_on_services, tmp_path):
    """start_node(name) -> a registered NodeThread; every node is stopped, and FFmpeg checked, after."""
    started: list[NodeThread] = []
    client = redis.Redis.from_url(settings_on_services.redis_url, decode_responses=True)
    registry = NodeRegistry(client, settings_on_services.queue)

    def start(name: str = "agent-1") -> NodeThread:
        node = NodeThread(settings_on_services, name, tmp_path / "work" / name)
        started.append(node)
        wait_for(
            lambda: node.error or any(n.name == name and n.online for n in registry.nodes()),
            timeout=60,
            what=f"node {name} to register",
        )
        assert node.error is None, node.error
        return node

    yield start
    codes = [node.stop() for node in started]
    client.close()
    ffmpeg = [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in (p.name() or "")]
    assert not ffmpeg, f"FFmpeg left running: {ffmpeg}"
    assert codes == [0] * len(started)


def bull_add(settings: Settings, job_id: str, payload: dict, **opts) -> None:
    """What any BullMQ producer (Node.js BullMQ producers included) does to enqueue a job."""

    async def add():
        queue = Queue(settings.queue, {"connection": settings.redis_url})
        try:
            await queue.add("transcode", payload, {"jobId": job_id, **opts})
        finally:
            await queue.close()

    asyncio.run(add())


def upload_input(settings: Settings, path: Path) -> tuple[str, str]:
    """Put ``path`` where a producer puts inputs; returns (video id, key)."""
    video_id = str(uuid.uuid4())
    key = f"inputs/{video_id}/{path.name}"
    open_storage(settings.effective_storage_url).upload_file(path, key)
    return video_id, key


def payload(job_id: str, key: str, name: str, **config) -> dict:
    return {
        "jobId": job_id,
        "input": {"key": key, "name": name},
        "outputConfig": {"resolution": "360p", "format": "mp4", "includeAudio": True, **config},
    }


def finished(farm: Farm, job_id: str) -> dict | None:
    try:
        job = farm.show(job_id)
    except UnknownJobError:  # a foreign job: no row until the node records it
        return None
    return job.to_json() if job.status in ("completed", "failed", "cancelled") else None


# -- jobs from other producers ----------------------------------------------------------------


@pytest.mark.postgres
def test_a_job_from_a_foreign_producer_gets_its_rows_and_completes(
    settings_on_services, farm, start_node, make_clip, tmp_path
):
    node = start_node()
    source = make_clip(640, 360, seconds=2.0, name="from_the_node_api.mp4")
    video_id, key = upload_input(settings_on_services, source)
    job_id = str(uuid.uuid4())

    bull_add(
        settings_on_services,
        job_id,
        payload(job_id, key, "interview.mp4"),
        attempts=3,
        backoff={"type": "exponential", "delay": 5000},
    )

    job = wait_for(lambda: finished(farm, job_id), timeout=60, what="the foreign job to finish")
    assert (job["status"], job["node"], job["attempts"], job["error"]) == ("completed", node.node.name, 1, None)
    assert job["config"]["resolution"] == "360p" and job["config"]["format"] == "mp4"
    video = job["video"]
    assert (video["id"], video["key"], video["name"]) == (video_id, key, "interview.mp4")
    assert (video["width"], video["height"], video["video_codec"]) == (640, 360, "h264")
    assert video["duration"] == pytest.approx(2.0, abs=0.1)
    assert video["size"] == source.stat().st_size
    assert [j.id for j in farm.jobs()] == [job_id], "the job must be listed like any other"

    dest = farm.download(job_id, tmp_path / "out.mp4")
    out = probe(dest)
    assert (out.width, out.height, out.video_codec, out.audio_codec) == (640, 360, "h264", "aac")
    assert job["output"]["size"] == dest.stat().st_size
    # Into a folder, under the output's name: a file of that name already there is someone's.
    folder = tmp_path / "renders"
    folder.mkdir()
    theirs = folder / Path(job["output"]["key"]).name
    theirs.write_bytes(b"an editor's own render")
    with pytest.raises(FarmError, match="already exists; nothing was downloaded"):
        farm.download(job_id, folder)
    assert theirs.read_bytes() == b"an editor's own render"
    assert farm.download(job_id, theirs) == theirs and theirs.stat().st_size == dest.stat().st_size
    state, bull = bull_job(settings_on_services.redis_url, settings_on_services.queue, job_id)
    assert state == "completed"
    assert bull.returnvalue["outputs"][0]["key"] == job["output"]["key"]
    assert entries(node.node.work_dir) == []


# -- errors a retry cannot fix ------------------------------------------------------------------


@pytest.mark.postgres
def test_an_invalid_payload_fails_at_once_naming_the_field(settings_on_services, farm, start_node, clip):
    start_node()
    _, key = upload_input(settings_on_services, clip)
    job_id = str(uuid.uuid4())

    bull_add(
        settings_on_services,
        job_id,
        payload(job_id, key, clip.name, resolution="4k"),
        attempts=3,
        backoff={"type": "fixed", "delay": 100},
    )

    wait_for(
        lambda: bull_job(settings_on_services.redis_url, settings_on_services.queue, job_id)[0] == "failed",
        timeout=30,
        what="the job to fail",
    )
    state, bull = bull_job(settings_on_services.redis_url, settings_on_services.queue, job_id)
    assert bull.attemptsMade == 1, "a payload a retry cannot fix must not be retried"
    assert "resolution" in bull.failedReason and "4k" in bull.failedReason, bull.failedReason
    (job,) = [j.to_json() for j in farm.jobs(status="failed")]  # the refusal is listed, nothing probed
    assert (job["id"], job["attempts"], job["video"]["container"]) == (job_id, 1, "refused")
    assert job["error"] == bull.failedReason and job["error"].startswith("invalid job payload: outputConfig: ")


@pytest.mark.postgres
def test_an_input_that_is_not_a_video_fails_at_once_with_the_reason(settings_on_services, farm, start_node, tmp_path):
    node = start_node()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    video_id, key = upload_input(settings_on_services, text)
    # A producer that recorded the job (as the Node API does with Prisma) before the node saw the file.
    repo.create_video(
        farm.db,
        id=video_id,
        name=text.name,
        key=key,
        size=text.stat().st_size,
        duration=10.0,
        width=1280,
        height=720,
        video_codec="h264",
        container="mov,mp4,m4a,3gp,3g2,mj2",
    )
    job_id = repo.create_job(farm.db, video_id, {"resolution": "360p", "format": "mp4", "includeAudio": True}).id

    bull_add(
        settings_on_services,
        job_id,
        payload(job_id, key, text.name),
        attempts=3,
        backoff={"type": "fixed", "delay": 100},
    )

    job = wait_for(lambda: finished(farm, job_id), timeout=30, what="the job to finish")
    assert (job["status"], job["attempts"], job["output"]) == ("failed", 1, None)
    assert job["error"].startswith("notes.mp4 is not a video"), "the reason must name the user's file"
    state, bull = bull_job(settings_on_services.redis_url, settings_on_services.queue, job_id)
    assert (state, bull.attemptsMade) == ("failed", 1), "no retries for a file that is not a video"
    assert "not a video" in bull.failedReason
    assert entries(node.node.work_dir) == []


@pytest.mark.postgres
def test_a_foreign_job_whose_input_is_not_a_video_is_listed_as_failed(settings_on_services, farm, start_node, tmp_path):
    start_node()
    text = tmp_path / "readme.mov"
    text.write_text("plain text\n" * 20)
    _, key = upload_input(settings_on_services, text)
    job_id = "foreign-bad-input"
    bull_add(settings_on_services, job_id, payload(job_id, key, text.name), attempts=3)

    job = wait_for(lambda: finished(farm, job_id), timeout=30, what="the job to finish")
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "readme.mov is not a video" in job["error"]
    assert job["video"]["name"] == "readme.mov" and job["video"]["size"] == text.stat().st_size
    assert [j.id for j in farm.jobs(status="failed")] == [job_id]


@pytest.mark.postgres
def test_a_missing_input_fails_at_once(settings_on_services, farm, start_node):
    start_node()
    job_id = str(uuid.uuid4())
    key = f"inputs/{uuid.uuid4()}/gone.mp4"

    bull_add(
        settings_on_services,
        job_id,
        payload(job_id, key, "gone.mp4"),
        attempts=3,
        backoff={"type": "fixed", "delay": 100},
    )

    wait_for(
        lambda: bull_job(settings_on_services.redis_url, settings_on_services.queue, job_id)[0] == "failed",
        timeout=30,
        what="the job to fail",
    )
    _, bull = bull_job(settings_on_services.redis_url, settings_on_services.queue, job_id)
    assert bull.attemptsMade == 1
    assert key in bull.failedReason and "not in storage" in bull.failedReason, bull.failedReason
    # Its producer recorded nothing: the failed list (the dead-letter list) must still show it.
    job = wait_for(lambda: finished(farm, job_id), timeout=30, what="the failure to be recorded")
    assert (job["status"], job["attempts"], job["video"]["name"]) == ("failed", 1, "gone.mp4")
    assert "not in storage" in job["error"]
    assert [j.id for j in farm.jobs(status="failed")] == [job_id]


# -- the agent as a program -----------------------------------------------------------------------


def test_a_node_is_built_without_side_effects(settings, tmp_path):
    work = tmp_path / "work"
    handler = signal.getsignal(signal.SIGTERM)
    node = FarmNode(settings, name="quiet", work_dir=work, metrics_port=0)
    assert not work.exists(), "the constructor must not touch the disk"
    assert signal.getsignal(signal.SIGTERM) is handler, "signal handlers belong to the CLI's run"
    assert node.status() == "idle"
    node.request_stop()
    assert node.status() == "draining"
    with pytest.raises(ValueError, match="concurrency"):
        FarmNode(settings, concurrency=0)


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--name", "edit bay:2"], "node name 'edit bay:2' is not allowed: use 1 to 64 letters, digits"),
        (["--redis-url", "http://nope"], "must start with redis://"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_touch_nothing(args, reason, data_dir, tmp_path):
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "farm_node", "--no-metrics", "--work-dir", str(work), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], lines
    assert not work.exists() and list(data_dir.iterdir()) == [], "a refused start must leave nothing behind"


def test_a_metrics_port_in_use_is_named_in_one_line(redis_url, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "farm_node",
                "--name",
                "busy-port",
                "--work-dir",
                str(tmp_path / "w"),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, (result.returncode, result.stderr)  # a flag to change: no restart
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "--metrics-port" in lines[0], lines[0]
