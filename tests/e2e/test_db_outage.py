"""The database goes away while a node runs a job: the node waits it out, or hands the job back.

Real ``farm-node`` processes on the test's embedded Redis and folder storage, and the machine's
PostgreSQL reached through a ``FaultyLink`` that the test cuts (every connection reset, new ones
refused, as a PostgreSQL restart or a network cut does) and restores on the same port. The test
itself reads the database directly, so it sees the rows while the nodes cannot. What is asserted is
what users and admins see: the row, BullMQ's record of the job, storage, the node's log.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.bull import bull_job
from tests.e2e.helpers import LONG_JOB, submit, wait_for
from tests.e2e.test_node_death import FAST, outputs_in_storage, running_on
from tests.faults import FaultyLink

pytestmark = pytest.mark.postgres

OUTAGE_LOG = "unreachable"
RECOVERY_LOG = "reachable again after"
HAND_BACK_LOG = "handing the job back to the queue"


@pytest.fixture
def pg_link(pg_url, monkeypatch):
    """A link to the test's PostgreSQL database that the test can cut; nodes started after this
    fixture connect through it (ENCODEFLOW_DATABASE_URL). Request it after ``local_farm`` and
    ``farm``, which then read the database directly (and ``pg_url`` before them)."""
    direct = sa.make_url(pg_url)
    with FaultyLink(direct.host or "127.0.0.1", direct.port or 5432) as link:
        monkeypatch.setenv("ENCODEFLOW_DATABASE_URL", direct.set(port=link.port).render_as_string(hide_password=False))
        yield link


def finished(farm, job_id: str) -> dict | None:
    job = farm.show(job_id).to_json()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def test_a_short_outage_mid_transcode_is_waited_out(pg_url, local_farm, farm, pg_link, long_clip):
    (node,) = local_farm(1)  # default lock (60 s): a write may wait that long for the database
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [node]), timeout=60, what="the job to run")

    pg_link.cut()
    time.sleep(10)
    # The node kept its job: still running, and still holding it in the queue (not failed or handed back).
    assert node.proc.poll() is None and bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)[0] == "active"
    pg_link.restore()

    job = wait_for(lambda: finished(farm, job_id), timeout=120, what="the job to finish")
    assert (job["status"], job["attempts"], job["node"], job["error"]) == ("completed", 1, node.name, None)
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]], "exactly one output, the row's"
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert (state, bull.attemptsMade, bull.returnvalue["outputs"][0]["key"]) == ("completed", 1, job["output"]["key"])
    log = node.log.read_text()
    assert log.count(OUTAGE_LOG) == 1, log
    assert RECOVERY_LOG in log and HAND_BACK_LOG not in log, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_an_outage_past_the_retry_hands_the_job_back_and_it_completes_once(
    pg_url, local_farm, farm, pg_link, long_clip
):
    (node,) = local_farm(1, extra=FAST)  # lock 5 s: a write waits at most 5 s for the database
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [node]), timeout=60, what="the job to run")

    pg_link.cut()  # lasts past the end of the transcode and the writes' 5 s of retries
    try:
        wait_for(lambda: HAND_BACK_LOG in node.log.read_text(), timeout=120, what="the node to hand the job back")
        seen = set()
        for _ in range(30):  # the job goes round (handed back, taken, handed back) while the database is away
            seen.add(bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)[0])
            time.sleep(0.2)
        assert "completed" not in seen, "the queue must not say completed while the row cannot"
        assert farm.show(job_id).status == "active"
    finally:
        pg_link.restore()

    job = wait_for(lambda: finished(farm, job_id), timeout=180, what="the job to finish")
    assert (job["status"], job["node"], job["error"]) == ("completed", node.name, None)
    assert job["attempts"] == 1, "a hand back is not an attempt"
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]], "exactly one output, the row's"
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert (state, bull.returnvalue["outputs"][0]["key"]) == ("completed", job["output"]["key"])
    assert bull.attemptsStarted >= 2, "the job ran again once the database was back"
    time.sleep(3)
    assert farm.show(job_id).to_json()["finished_at"] == job["finished_at"], "finished once"
    assert RECOVERY_LOG in node.log.read_text()
