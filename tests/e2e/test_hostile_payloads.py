"""Hostile payloads put straight on the queue of a real ``farm-node``, on SQLite and PostgreSQL.

Any BullMQ client can write to the queue, with any job id and any data. Each payload here used to
be downloaded, probed and retried three times, then failed with SQLAlchemy's SQL as its reason (or
was stored as it came). Now each fails at its first attempt, before its input is opened, with a
reason that names the field; the failed list shows it; the video it named is untouched; and the
node's log shows hostile ids escaped and cut.

Every input is a FIFO in storage, watched: a node that downloads one opens it. A valid job on the
same kind of input shows that the watch sees a download.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from farm.services.db import open_database, repo
from farm.services.storage import open_storage
from tests.bull import bull_job
from tests.e2e.helpers import json_lines, run_cli, wait_for
from tests.e2e.test_hostile_submit import bull_add
from tests.farm.test_hostile_inputs import FifoWatch, fifo

FORGED = "INFO farm_node.processor: job 1234 completed"
LONG_ID = "x" * 10_240
# What database and driver errors say; none of it may reach a user (or, here, even the log).
DB_WORDS = re.compile(
    r"sqlalchemy|psycopg|sqlite3|\[SQL: |INSERT INTO|UPDATE jobs|Python int too large|out of range|"
    r"IntegrityError|DataError|OperationalError|StringDataRightTruncation|NumericValueOutOfRange"
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request) -> str:
    """The database the farm runs on: requested before ``local_farm``, so its nodes use it."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
    return request.param


def hostile_jobs(other_video: str) -> dict[str, tuple[str, dict, str]]:
    """case -> (BullMQ job id, payload changes, the field its refusal must name)."""
    return {
        "no outputConfig": (str(uuid.uuid4()), {"outputConfig": None}, "outputConfig"),
        "priority 10**30": (str(uuid.uuid4()), {"priority": 10**30}, "priority"),
        "priority -1": (str(uuid.uuid4()), {"priority": -1}, "priority"),
        "NUL in input.name": (str(uuid.uuid4()), {"name": "clip\x00.mp4"}, "input.name"),
        "NUL in videoId": (str(uuid.uuid4()), {"videoId": "abc\x00def"}, "videoId"),
        "submittedBy of 300": (str(uuid.uuid4()), {"submittedBy": "e" * 300}, "submittedBy"),
        "another video's id": (str(uuid.uuid4()), {"videoId": other_video}, "videoId"),
        "videoId ../../etc": (str(uuid.uuid4()), {"videoId": "../../etc"}, "videoId"),
        "newline in the job id": (f"evil\n{FORGED}", {}, "jobId"),
        "10 kB job id": (LONG_ID, {}, "jobId"),
    }


def test_hostile_payloads_fail_at_once_are_listed_and_touch_nothing(backend, local_farm):
    settings = local_farm.settings
    storage = open_storage(settings.effective_storage_url)
    root = Path(storage.root)
    db = open_database(settings.effective_database_url)
    theirs_id = str(uuid.uuid4())
    theirs = repo.create_video(
        db,
        id=theirs_id,
        name="theirs.mp4",
        key=f"inputs/{theirs_id}/theirs.mp4",
        size=1000,
        duration=60.0,
        width=1920,
        height=1080,
        video_codec="h264",
        container="mov",
    )
    before = repo.to_video(repo.get_video(db, theirs_id)).to_json()
    control_id = str(uuid.uuid4())
    cases = {**hostile_jobs(theirs_id), "control": (control_id, {}, "")}
    inputs, payloads = {}, {}
    for case, (job_id, changes, _) in cases.items():  # each input a FIFO in storage, where a download opens it
        changes = dict(changes)
        key = f"inputs/{theirs_id if changes.get('videoId') == theirs_id else uuid.uuid4()}/clip.mp4"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        inputs[case] = fifo(root / key)
        payloads[case] = {
            "jobId": job_id,
            "input": {"key": key, "name": changes.pop("name", "clip.mp4")},
            "outputConfig": {"resolution": "360p", "format": "mp4", "includeAudio": True},
            **changes,
        }
        if payloads[case]["outputConfig"] is None:
            del payloads[case]["outputConfig"]

    (node,) = local_farm(1)
    with FifoWatch(*inputs.values()) as watch:
        for case, (job_id, _, _) in cases.items():
            bull_add(local_farm.redis_url, settings.queue, job_id, payloads[case])
        for case, (job_id, _, _) in cases.items():
            wait_for(
                lambda job_id=job_id: bull_job(local_farm.redis_url, settings.queue, job_id)[0] == "failed",
                timeout=60,
                what=f"the job of {case!r} to fail",
            )
    del cases["control"]

    assert watch.opened == [inputs["control"]], "only the valid job's input may be downloaded"
    listed = run_cli("jobs", "--status", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    failed = {job["id"]: job for job in json_lines(listed.stdout)}
    for case, (job_id, _, field) in cases.items():
        state, bull = bull_job(local_farm.redis_url, settings.queue, job_id)
        assert (state, bull.attemptsMade) == ("failed", 1), f"{case}: a retry cannot fix a payload"
        assert bull.failedReason.startswith(f"invalid job payload: {field}: "), (case, bull.failedReason)
        job = failed.get(repo.refusal_job_id(job_id))
        assert job is not None, f"{case}: the failed list must show the refusal"
        assert (job["error"], job["attempts"], job["output"]) == (bull.failedReason, 1, None), case
        assert job["video"]["id"] != theirs.id and job["video"]["container"] == "refused", case
        for text in (bull.failedReason, job["error"]):
            assert not DB_WORDS.search(text) and "\n" not in text and len(text) < 400, (case, text)
    assert failed[control_id]["error"].startswith("clip.mp4 is empty"), failed[control_id]
    retried = run_cli("retry", cases["priority -1"][0])
    assert retried.returncode != 0 and "refused for its queue payload, so it cannot be retried" in retried.stderr
    assert repo.to_video(repo.get_video(db, theirs.id)).to_json() == before, "the other video's row must not change"
    assert not DB_WORDS.search(listed.stdout + listed.stderr)
    db.dispose()

    log = node.log.read_text()
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith(FORGED)], "a job id forged a log line"
    assert f"'evil\\n{FORGED[:20]}" in log, "the hostile id is logged escaped"
    assert max(len(line) for line in lines) < 2000, "a 10 kB id was logged whole"
    assert not DB_WORDS.search(log.replace(LONG_ID[:80], "")), "no database error while refusing"


REFUSE_ACTIVE = """
CREATE FUNCTION refuse_active() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'active' THEN
        RAISE EXCEPTION 'jobs may not run today (a site rule)';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_active BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_active();
"""


@pytest.mark.postgres
def test_a_database_error_reaches_no_user_as_sql(pg_url, local_farm, clip):
    """A statement the database refuses (here a site's trigger) is retried like any error, but what
    BullMQ, the row and the CLI say of it is one generic line; the SQL stays in the node's log."""
    import sqlalchemy as sa

    from tests.bull import record_job

    settings = local_farm.settings
    db = open_database(settings.effective_database_url)
    job_id, payload = record_job(db, open_storage(settings.effective_storage_url), clip)
    with db.engine.begin() as conn:
        conn.execute(sa.text(REFUSE_ACTIVE))
    (node,) = local_farm(1)

    bull_add(local_farm.redis_url, settings.queue, job_id, payload)
    wait_for(
        lambda: bull_job(local_farm.redis_url, settings.queue, job_id)[0] == "failed",
        timeout=60,
        what="the job to fail",
    )

    generic = "the database refused to record the job; the node's log says why"
    _, bull = bull_job(local_farm.redis_url, settings.queue, job_id)
    assert (bull.attemptsMade, bull.failedReason) == (3, generic), "retried, then failed with one plain line"
    shown = run_cli("show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert (job["status"], job["error"]) == ("failed", generic)
    assert not DB_WORDS.search(shown.stdout + run_cli("jobs").stdout)
    log = node.log.read_text()
    assert "jobs may not run today" in log, "the node's log says what the database said"
    assert "[SQL: " not in log, "the SQL itself only at DEBUG level"
    db.dispose()
