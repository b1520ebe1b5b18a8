"""Cancel and retry at any moment, any number of times, from several clients at once.

A real farm in processes (the test's embedded Redis, SQLite, folder storage; a real ``farm-node``
where a run is needed) and the ``encodeflow`` CLI run as a user runs it. What is asserted is what
a user sees: each command's exit code and its one line, the row, and BullMQ's record of the job.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading

import pytest
from bullmq import FlowProducer, Queue, UnrecoverableError, Worker

from farm.client import Farm
from farm.services.db import repo
from tests.bull import bull_job
from tests.e2e.helpers import LONG_JOB, run_cli, submit, wait_for
from tests.e2e.test_node_death import outputs_in_storage, running_on

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.Popen:
    """``encodeflow ARGS`` started now; ``.communicate()`` for its output."""
    return subprocess.Popen(
        [sys.executable, "-m", "farm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def answers(*procs: subprocess.Popen) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process, stripped."""
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        out.append((proc.returncode, stdout.strip(), stderr.strip()))
    return out


def fail_in_queue(local_farm, farm: Farm, job_id: str) -> None:
    """The job fails for good, in BullMQ and in its row, as a node's last attempt leaves it."""

    async def fail():
        failed = asyncio.Event()

        async def boom(job, token):
            raise UnrecoverableError("the encoder caught fire")

        worker = Worker(local_farm.settings.queue, boom, {"connection": local_farm.redis_url})
        worker.on("failed", lambda *a: failed.set())
        await asyncio.wait_for(failed.wait(), 20)
        await worker.close()

    asyncio.run(fail())
    repo.finish_job(farm.db, job_id, "failed", attempt=1, error="the encoder caught fire")


def test_two_retries_at_once_one_puts_the_job_back_the_other_says_it_already_is(local_farm, farm, clip):
    job_id = submit(clip)  # no node runs: the job stays in the queue until the test fails it
    fail_in_queue(local_farm, farm, job_id)

    start = threading.Barrier(2)
    results: list = []

    def retry():
        client = Farm(local_farm.settings, start_embedded=False)
        start.wait()
        try:
            results.append(client.retry(job_id))
        except Exception as exc:  # what the user would have been shown
            results.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [f"FarmError: job {job_id} is already queued again; nothing to retry", "retried"]
    job = farm.show(job_id).to_json()
    assert (job["status"], job["error"]) == ("queued", None)
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert (state, bull.attemptsMade) == ("waiting", 0)

    # The same from two shells: one line each, never BullMQ's own words.
    fail_in_queue(local_farm, farm, job_id)
    assert sorted(answers(cli("retry", job_id), cli("retry", job_id))) == [
        (0, f"{job_id}: queued again", ""),
        (1, "", f"encodeflow retry: job {job_id} is already queued again; nothing to retry"),
    ]
    assert bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)[0] == "waiting"


def test_a_retry_the_instant_a_running_job_turned_cancelled_runs_it_again(local_farm, farm, long_clip):
    (node,) = local_farm(1)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [node]), timeout=60, what="the job to run")

    cancelling = cli("cancel", job_id)
    wait_for(
        lambda: farm.show(job_id).status == "cancelled", timeout=30, interval=0.005, what="the row to say cancelled"
    )
    # Hold the node between its row write and its word to BullMQ, where the job is still active
    # in the queue: the window a retry typed at once fell into.
    node.proc.send_signal(signal.SIGSTOP)
    threading.Timer(2.0, node.proc.send_signal, (signal.SIGCONT,)).start()
    assert bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)[0] == "active"
    retried = run_cli("retry", job_id)
    assert (retried.returncode, retried.stdout.strip(), retried.stderr) == (0, f"{job_id}: queued again", "")
    ((code, line, error),) = answers(cancelling)
    assert (code, line, error) == (0, f"{job_id}: cancelled; its node stopped FFmpeg", "")

    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
        timeout=180,
        what="the retried job to finish",
    )
    assert (job["status"], job["node"], job["error"]) == ("completed", node.name, None)
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert state == "completed" and bull.returnvalue["outputs"] == job["outputs"]
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]]


def test_cancel_twice_and_requests_the_state_rules_out_answer_in_one_line(local_farm, farm, long_clip, clip):
    (node,) = local_farm(1)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [node]), timeout=60, what="the job to run")

    running = run_cli("retry", job_id)
    assert (running.returncode, running.stdout, running.stderr.strip()) == (
        1,
        "",
        f"encodeflow retry: job {job_id} is already running on {node.name}; nothing to retry",
    )

    already = (1, "", f"encodeflow cancel: job {job_id} is already cancelled; nothing to cancel")
    assert sorted(answers(cli("cancel", job_id), cli("cancel", job_id))) == [
        (0, f"{job_id}: cancelled; its node stopped FFmpeg", ""),
        already,
    ]
    assert answers(cli("cancel", job_id)) == [already]
    assert farm.show(job_id).status == "cancelled"
    assert bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)[1].failedReason == "cancelled by user"

    done = submit(clip)
    wait_for(lambda: farm.show(done).status == "completed", timeout=60, what="a short job to complete")
    for command, line in (
        ("cancel", f"job {done} is already completed; nothing to cancel"),
        ("retry", f"job {done} is completed; only failed or cancelled jobs can be retried"),
    ):
        refused = run_cli(command, done)
        assert (refused.returncode, refused.stdout, refused.stderr.strip()) == (1, "", f"encodeflow {command}: {line}")
    unknown = run_cli("cancel", "no-such-job")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1


def test_cancel_removes_a_job_from_every_waiting_state_and_retry_brings_it_back(local_farm, farm, clip):
    """Delayed (a retry in its backoff), prioritized, and waiting for children (a flow's parent)."""
    delayed, prioritized = submit(clip), submit(clip, "--priority", "5")
    parent = submit(clip)
    queue_name, url = local_farm.settings.queue, local_farm.redis_url

    async def arrange():
        queue = Queue(queue_name, {"connection": url})
        bull = await queue.getJob(delayed)
        await queue.remove(delayed)  # back as a delayed job: what a failed attempt's backoff leaves
        await queue.add("transcode", bull.data, {"jobId": delayed, "delay": 60_000, "attempts": 3})
        parent_job = await queue.getJob(parent)
        await queue.remove(parent)
        flows = FlowProducer({"connection": url})
        await flows.add(
            {
                "name": "transcode",
                "queueName": queue_name,
                "data": parent_job.data,
                "opts": {"jobId": parent},
                "children": [{"name": "thumbnail", "queueName": f"{queue_name}-children", "data": {}}],
            }
        )
        states = [await queue.getJobState(j) for j in (delayed, prioritized, parent)]
        await flows.close()
        await queue.close()
        return states

    assert asyncio.run(arrange()) == ["delayed", "prioritized", "waiting-children"]
    for job_id in (delayed, prioritized, parent):
        cancelled = run_cli("cancel", job_id)
        assert (cancelled.returncode, cancelled.stdout.strip(), cancelled.stderr) == (
            0,
            f"{job_id}: cancelled (it was still queued)",
            "",
        ), job_id
        assert farm.show(job_id).status == "cancelled"
        assert bull_job(url, queue_name, job_id) == ("unknown", None), "no node will find it"
        retried = run_cli("retry", job_id)
        assert (retried.returncode, retried.stdout.strip()) == (0, f"{job_id}: queued again"), retried.stderr
        assert farm.show(job_id).status == "queued"
        assert bull_job(url, queue_name, job_id)[0] in ("waiting", "prioritized")
