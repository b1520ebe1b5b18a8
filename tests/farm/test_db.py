"""The database layer on both backends it ships for: SQLite under the data dir, and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from farm.domain.job import ORDER_FIELDS, order_key
from farm.domain.payload import JobPayload
from farm.domain.status import STATUSES
from farm.services.db import (
    DatabaseError,
    Job,
    Video,
    open_database,
    repo,
)
from farm.services.db.models import Base

REPO_ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = {
    "jobId": "ignored-here",
    "input": {"key": "inputs/5f0c7d3e-1111-4222-8333-444455556666/holiday.mov", "name": "holiday.mov"},
    "outputConfig": {"resolution": "720p", "format": "mp4", "includeAudio": True},
}
PROBE = {
    "size": 1234,
    "duration": 2.0,
    "width": 320,
    "height": 240,
    "video_codec": "h264",
    "audio_codec": "aac",
    "container": "mov,mp4,m4a,3gp,3g2,mj2",
    "fps": 25.0,
    "rotation": 0,
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("settings").effective_database_url
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url):
    database = open_database(db_url)
    yield database
    database.dispose()


def add_job(db, name: str = "clip.mp4", **job_kwargs) -> Job:
    video = repo.create_video(
        db,
        name=name,
        key=f"inputs/x/{name}",
        size=1000,
        duration=2.5,
        width=320,
        height=240,
        video_codec="h264",
        audio_codec="aac",
        container="mov",
        submitted_by="ed",
    )
    return repo.create_job(db, video.id, {"resolution": "720p", "format": "mp4", "includeAudio": True}, **job_kwargs)


def set_created_at(db, job_id: str, moment: datetime) -> None:
    with db.session() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(created_at=moment))


# -- schema --------------------------------------------------------------------------------------


def test_migrations_create_the_schema_and_reopening_is_a_no_op(db_url):
    first = open_database(db_url)
    first.dispose()
    with open_database(db_url) as db, db.engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert {"videos", "jobs", "alembic_version"} <= set(inspector.get_table_names())
        assert {"ix_jobs_status_created_at", "ix_jobs_created_at", "ix_jobs_video_id"} <= {
            index["name"] for index in inspector.get_indexes("jobs")
        }
        assert MigrationContext.configure(conn).get_current_heads() == ("0001",)
        assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 1
        # The models describe exactly what the migrations made.
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []


def test_a_schema_from_a_newer_version_is_refused(db_url):
    with open_database(db_url) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(DatabaseError, match="newer EncodeFlow"):
        open_database(db_url)


def test_sqlite_is_set_up_for_several_processes(settings):
    with open_database(settings.effective_database_url) as db, db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert (settings.data_dir / "encodeflow.db").is_file()


def test_a_sqlite_file_in_a_new_folder_is_created(tmp_path):
    with open_database(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'farm.db'}") as db:
        assert repo.count_by_status(db) == dict.fromkeys(STATUSES, 0)


def test_unreachable_postgres_error_names_the_server_but_not_the_password():
    with pytest.raises(DatabaseError) as caught:
        open_database("postgresql+psycopg://farm:Sup3r-S3cret@127.0.0.1:1/encodeflow?sslmode=disable")
    message = str(caught.value)
    assert "Sup3r-S3cret" not in message
    assert "127.0.0.1:1" in message and "farm:***@" in message
    assert caught.value.__suppress_context__  # no chained driver traceback to leak anything either


def test_a_bad_url_is_a_database_error():
    with pytest.raises(DatabaseError, match="not a valid SQLAlchemy URL"):
        open_database("not a url at all")


# -- creating and reading ------------------------------------------------------------------------


def test_create_and_get_job_as_json(db):
    job = add_job(db, "holiday.mov", priority=3)
    assert job.status == "queued" and job.video.name == "holiday.mov"
    data = repo.to_job(repo.get_job(db, job.id)).to_json()
    assert data["id"] == job.id
    assert data["status"] == "queued" and data["progress"] == 0 and data["attempts"] == 0
    assert data["node"] is None and data["error"] is None and data["output"] is None
    assert data["outputs"] == [] and data["priority"] == 3
    assert data["config"] == {"resolution": "720p", "format": "mp4", "includeAudio": True}
    assert data["video"]["name"] == "holiday.mov" and data["video"]["width"] == 320
    assert data["video"]["video_codec"] == "h264" and data["video"]["audio_codec"] == "aac"
    assert data["started_at"] is None and data["finished_at"] is None and data["queue_wait_seconds"] is None
    created = datetime.fromisoformat(data["created_at"])
    assert data["created_at"].endswith("Z") and created.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    json.dumps(data)  # the contract is JSON
    assert repo.get_job(db, "no-such-job") is None and repo.get_job_with_video(db, "no-such-job") is None
    found_job, found_video = repo.get_job_with_video(db, job.id)
    assert repo.to_job(found_job, found_video).to_json() == data
    named = repo.create_video(
        db,
        id="7d7a0b1c-0000-4000-8000-000000000001",
        name="n.mp4",
        key="inputs/7d7a/n.mp4",
        size=1,
        duration=1.0,
        width=2,
        height=2,
        video_codec="h264",
        container="mov",
    )
    assert repo.get_video(db, named.id).name == "n.mp4"
    with pytest.raises(LookupError):
        repo.create_job(db, "no-such-video", {})


def test_list_jobs_pages_filters_and_counts(db):
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    jobs = [add_job(db, f"{'interview' if i % 3 == 0 else 'b-roll'}_{i:02}.mp4") for i in range(25)]
    for i, job in enumerate(jobs):
        set_created_at(db, job.id, base + timedelta(minutes=i))
    for job in jobs[:5]:
        repo.mark_active(db, job.id, "node-a", 1)
    for job in jobs[:3]:
        repo.finish_job(db, job.id, "completed", attempt=1)

    pages = [repo.list_jobs(db, limit=10, offset=offset) for offset in (0, 10, 20)]
    assert [len(page) for page in pages] == [10, 10, 5]
    listed = [job.id for page in pages for job, _ in page]
    assert listed == [job.id for job in reversed(jobs)]
    assert [j.id for j, _ in repo.list_jobs(db, limit=3, newest_first=False)] == [j.id for j in jobs[:3]]
    assert pages[0][0][1].name == "interview_24.mp4"  # (job, video) pairs

    assert {j.id for j, _ in repo.list_jobs(db, status="active")} == {j.id for j in jobs[3:5]}
    assert len(repo.list_jobs(db, status=["active", "completed"])) == 5
    assert {v.name for _, v in repo.list_jobs(db, text="INTERVIEW")} == {
        f"interview_{i:02}.mp4" for i in range(0, 25, 3)
    }
    assert [j.id for j, _ in repo.list_jobs(db, text=jobs[7].id[:13])] == [jobs[7].id]
    assert repo.list_jobs(db, text="100%") == []  # LIKE wildcards are taken literally
    window = repo.list_jobs(db, since=base + timedelta(minutes=10), until=base + timedelta(minutes=12))
    assert [j.id for j, _ in window] == [jobs[11].id, jobs[10].id]
    assert repo.count_jobs(db, text="interview") == 9 and repo.count_jobs(db, status="queued") == 20
    with pytest.raises(ValueError, match="unknown status"):
        repo.list_jobs(db, status="running")

    assert repo.count_by_status(db) == {"queued": 20, "active": 2, "completed": 3, "failed": 0, "cancelled": 0}
    repo.finish_job(db, jobs[3].id, "failed", attempt=1, error="boom")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert repo.finished_since(db, an_hour_ago) == {"completed": 3, "failed": 1, "cancelled": 0}
    assert repo.finished_since(db, datetime.now(UTC) + timedelta(minutes=1)) == {
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }


@pytest.mark.parametrize("order_by", ORDER_FIELDS)
def test_list_jobs_sorts_by_each_field_both_ways_and_order_key_agrees(db, order_by):
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    names = ["delta.mp4", "Alpha.mov", "charlie.mp4", "bravo.mkv", "alpha.mov", "Echo.mp4"]
    jobs = [add_job(db, name) for name in names]
    for i, job in enumerate(jobs):
        set_created_at(db, job.id, base + timedelta(minutes=i))
    repo.mark_active(db, jobs[0].id, "node-a", 1)
    repo.update_progress(db, jobs[0].id, 40)
    repo.mark_active(db, jobs[1].id, "node-a", 1)
    repo.finish_job(db, jobs[1].id, "completed", attempt=1)
    repo.mark_active(db, jobs[2].id, "node-a", 1)
    repo.update_progress(db, jobs[2].id, 40)  # ties with jobs[0]: broken by age
    repo.finish_job(db, jobs[2].id, "failed", attempt=1, error="boom")
    repo.mark_cancelled(db, jobs[3].id, "cancelled by user")

    ascending = [repo.to_job(j, v).to_json() for j, v in repo.list_jobs(db, order_by=order_by, descending=False)]
    descending = [repo.to_job(j, v).to_json() for j, v in repo.list_jobs(db, order_by=order_by, descending=True)]
    assert [j["id"] for j in descending] == [j["id"] for j in reversed(ascending)]
    key = order_key(order_by)
    assert [j["id"] for j in sorted(descending, key=key)] == [j["id"] for j in ascending]
    paged = [
        j.id
        for offset in (0, 2, 4)
        for j, _ in repo.list_jobs(db, order_by=order_by, descending=False, limit=2, offset=offset)
    ]
    assert paged == [j["id"] for j in ascending]

    expected_first = {
        "created_at": "delta.mp4",
        "name": "Alpha.mov",  # case-insensitive, then the older of the two "alpha"s
        "progress": "bravo.mkv",  # 0 % (the cancelled one is the oldest of those at 0)
        "finished_at": "Alpha.mov",  # finished first; the unfinished ones come last
    }
    if order_by == "status":  # the job's life order, not the alphabet
        assert [j["status"] for j in ascending] == ["queued", "queued", "active", "completed", "failed", "cancelled"]
    else:
        assert ascending[0]["video"]["name"] == expected_first[order_by]
    if order_by == "finished_at":
        assert [j["finished_at"] is None for j in ascending] == [False, False, False, True, True, True]
    if order_by == "name":
        assert [j["video"]["name"] for j in ascending] == [
            "Alpha.mov",
            "alpha.mov",
            "bravo.mkv",
            "charlie.mp4",
            "delta.mp4",
            "Echo.mp4",
        ]


def test_list_jobs_default_order_is_unchanged_and_unknown_fields_are_refused(db):
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    jobs = [add_job(db, f"{i}.mp4") for i in range(3)]
    for i, job in enumerate(jobs):
        set_created_at(db, job.id, base + timedelta(minutes=i))
    assert [j.id for j, _ in repo.list_jobs(db)] == [j.id for j in reversed(jobs)]
    assert [j.id for j, _ in repo.list_jobs(db, newest_first=False)] == [j.id for j in jobs]
    assert [j.id for j, _ in repo.list_jobs(db, order_by="created_at", descending=False)] == [j.id for j in jobs]
    with pytest.raises(ValueError, match="cannot sort jobs by 'size'"):
        repo.list_jobs(db, order_by="size")
    with pytest.raises(ValueError, match="cannot sort jobs by"):
        order_key("size")


def test_listing_stays_fast_with_many_jobs(db):
    video = add_job(db).video
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"bulk-{i:05}",
            "video_id": video.id,
            "config": {},
            "status": STATUSES[i % 5],
            "progress": 0.0,
            "priority": 0,
            "attempts": 0,
            "outputs": [],
            "created_at": now - timedelta(seconds=i),
            "updated_at": now,
        }
        for i in range(10_000)
    ]
    with db.session() as session:
        session.execute(sa.insert(Job), rows)
    started = time.perf_counter()
    page = repo.list_jobs(db, status="failed", limit=100, offset=1000)
    text_page = repo.list_jobs(db, text="bulk-09", limit=100)
    elapsed = time.perf_counter() - started
    assert len(page) == 100 and all(job.status == "failed" for job, _ in page)
    assert len(text_page) == 100
    assert elapsed < 1.0


# -- the job's life ------------------------------------------------------------------------------


def test_mark_active_records_the_queue_wait_of_the_first_start_only(db):
    job = add_job(db)
    set_created_at(db, job.id, datetime.now(UTC) - timedelta(seconds=30))
    assert repo.mark_active(db, job.id, "node-a", 1)
    first = repo.get_job(db, job.id)
    assert first.status == "active" and first.node == "node-a" and first.attempts == 1
    assert 29 < first.queue_wait_seconds < 90
    assert repo.update_progress(db, job.id, 42.5, node="node-a")
    assert not repo.update_progress(db, job.id, 50, node="node-b")  # a stale run elsewhere
    assert repo.get_job(db, job.id).progress == 42.5
    assert repo.finish_job(db, job.id, "failed", attempt=1, error="ffmpeg exited 1")
    assert repo.mark_active(db, job.id, "node-b", 2)
    second = repo.get_job(db, job.id)
    assert second.node == "node-b" and second.attempts == 2 and second.error is None
    assert second.queue_wait_seconds == first.queue_wait_seconds
    assert second.started_at >= first.started_at and second.finished_at is None
    assert not repo.mark_active(db, "no-such-job", "node-a", 1)


def test_finish_job_settles_once(db):
    job = add_job(db)
    repo.mark_active(db, job.id, "node-a", 1)
    repo.mark_active(db, job.id, "node-b", 1)  # a second run of the same job (the first node stalled)
    outputs = [{"name": "720p-mp4.mp4", "kind": "video", "key": f"outputs/{job.id}/1/720p-mp4.mp4", "size": 99}]
    assert repo.finish_job(db, job.id, "completed", attempt=1, outputs=outputs, log_tail="x" * 50_000)
    assert not repo.finish_job(db, job.id, "completed", attempt=1, outputs=[{"key": "other"}])
    assert not repo.finish_job(db, job.id, "failed", attempt=1, error="stale run")
    assert not repo.update_progress(db, job.id, 10)
    assert not repo.mark_active(db, job.id, "node-c", 2)
    assert not repo.mark_cancelled(db, job.id, "too late")
    assert not repo.requeue(db, job.id)
    done = repo.to_job(repo.get_job(db, job.id)).to_json()
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["outputs"] == outputs and done["output"] == {"key": outputs[0]["key"], "size": 99}
    assert len(done["log_tail"]) == 16_000 and done["finished_at"].endswith("Z")
    with pytest.raises(ValueError):
        repo.finish_job(db, job.id, "active", attempt=1)


def test_a_failed_job_can_be_requeued_and_then_completed(db):
    job = add_job(db)
    repo.mark_active(db, job.id, "node-a", 1)
    repo.update_progress(db, job.id, 60)
    assert repo.finish_job(db, job.id, "failed", attempt=1, error="disk full", log_tail="frame=1")
    failed = repo.get_job(db, job.id)
    assert failed.status == "failed" and failed.error == "disk full" and failed.finished_at is not None
    assert repo.requeue(db, job.id)
    again = repo.get_job(db, job.id)
    assert (again.status, again.progress, again.error, again.finished_at) == ("queued", 0, None, None)
    assert again.attempts == 1  # history kept
    assert repo.mark_active(db, job.id, "node-b", 2)
    assert repo.finish_job(db, job.id, "completed", attempt=2)
    assert repo.get_job(db, job.id).attempts == 2
    # A late failure report of the first attempt changes nothing, nor can a retry.
    assert not repo.finish_job(db, job.id, "failed", attempt=1, error="late")
    assert not repo.requeue(db, job.id)


def test_retries_and_hand_backs_put_the_job_back_in_line(db):
    job = add_job(db)
    repo.mark_active(db, job.id, "node-a", 1)
    repo.update_progress(db, job.id, 30)
    assert repo.note_retry(db, job.id, "attempt 1 of 3 failed, will retry: timeout")
    waiting = repo.get_job(db, job.id)
    assert (waiting.status, waiting.progress) == ("queued", 0)
    assert waiting.error.startswith("attempt 1 of 3 failed") and waiting.finished_at is None
    repo.mark_active(db, job.id, "node-a", 2)
    assert repo.requeue(db, job.id, note="handed back by node node-a")  # a cold stop
    handed_back = repo.get_job(db, job.id)
    assert (handed_back.status, handed_back.node, handed_back.attempts) == ("queued", None, 2)
    assert handed_back.error == "handed back by node node-a"


def test_cancelled_jobs_stay_cancelled_until_retried(db):
    job = add_job(db)
    assert repo.mark_cancelled(db, job.id, "cancelled by ed")
    cancelled = repo.get_job(db, job.id)
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled by ed"
    assert not repo.mark_active(db, job.id, "node-a", 1)
    assert not repo.finish_job(db, job.id, "completed", attempt=1)
    assert repo.requeue(db, job.id) and repo.get_job(db, job.id).status == "queued"


def test_progress_is_clamped_and_only_moves_active_jobs(db):
    job = add_job(db)
    assert not repo.update_progress(db, job.id, 10)  # still queued
    repo.mark_active(db, job.id, "node-a", 1)
    assert repo.update_progress(db, job.id, 140)
    assert repo.get_job(db, job.id).progress == 100
    with pytest.raises(ValueError):
        repo.update_progress(db, job.id, float("nan"))


def test_timestamps_are_aware_utc(db_url, db):
    job = add_job(db)
    repo.mark_active(db, job.id, "node-a", 1)
    repo.finish_job(db, job.id, "completed", attempt=1)
    url = db_url
    if url.startswith("postgresql"):
        # A server session in another time zone must not change what we read.
        url = sa.make_url(db_url).update_query_dict({"options": "-c timezone=Asia/Tokyo"})
        url = url.render_as_string(hide_password=False)
    with open_database(url) as other:
        reread = repo.get_job(other, job.id)
    for moment in (
        reread.created_at,
        reread.started_at,
        reread.finished_at,
        reread.updated_at,
        reread.video.created_at,
    ):
        assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
    assert abs(reread.finished_at - repo.get_job(db, job.id).finished_at) < timedelta(milliseconds=1)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        repo.list_jobs(db, since=datetime(2024, 1, 1))


# -- jobs that arrive from the queue -------------------------------------------------------------


def parsed(job_id: str, data: dict = PAYLOAD) -> JobPayload:
    return JobPayload.parse(job_id, {**data, "jobId": job_id})


def test_ensure_from_payload_creates_the_rows_once(db):
    job = repo.ensure_from_payload(db, parsed("bull-42"), PROBE)
    again = repo.ensure_from_payload(db, parsed("bull-42"), PROBE)
    assert job.id == again.id == "bull-42" and job.status == "queued"
    assert job.video.id == "5f0c7d3e-1111-4222-8333-444455556666"  # from inputs/<video id>/<name>
    assert job.video.name == "holiday.mov" and job.video.container == PROBE["container"]
    assert job.config == PAYLOAD["outputConfig"]
    assert repo.count_jobs(db) == 1
    # A second job for the same input shares its video.
    other = repo.ensure_from_payload(db, parsed("bull-43"), PROBE)
    assert other.video.id == job.video.id


def test_ensure_from_payload_from_concurrent_nodes(db):
    payload = parsed("shared-job", {**PAYLOAD, "input": {"key": "inputs/from-node-api/raw.mxf", "name": "raw.mxf"}})
    barrier = threading.Barrier(6)
    results, errors = [], []

    def node():
        barrier.wait()
        try:
            results.append(repo.ensure_from_payload(db, payload, PROBE))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {job.id for job in results} == {"shared-job"} and len({job.video.id for job in results}) == 1
    with db.session(read_only=True) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(Video)) == 1


def test_ensure_from_payload_refuses_an_incomplete_probe(db):
    with pytest.raises(ValueError, match="duration"):
        repo.ensure_from_payload(db, parsed("j"), {**PROBE, "duration": None})
    assert repo.get_job(db, "j") is None


# -- several processes ---------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import json, sys, time
    from farm.services.db import open_database, repo
    from farm.domain.payload import JobPayload
    url, name, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    payload = json.loads(sys.argv[4])
    time.sleep(max(0.0, start_at - time.time()))  # both processes open a new database at once
    db = open_database(url)
    video = repo.create_video(db, name=name, key="inputs/" + name, size=1, duration=1.0, width=2,
                              height=2, video_codec="h264", container="mov")
    job = repo.create_job(db, video.id, {})
    repo.mark_active(db, job.id, name, 1)
    for i in range(200):
        assert repo.update_progress(db, job.id, i / 2)
    shared = repo.ensure_from_payload(db, JobPayload.parse("shared", {**payload, "jobId": "shared"}),
                                      json.loads(sys.argv[5]))
    repo.mark_active(db, shared.id, name, 1)
    won = repo.finish_job(db, shared.id, "completed", attempt=1, outputs=[{"key": name}])
    print(json.dumps({"job": job.id, "won": won}))
""")


def test_two_processes_write_to_one_database(db_url):
    start_at = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db_url, name, str(start_at), json.dumps(PAYLOAD), json.dumps(PROBE)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("node-a", "node-b")
    ]
    outcomes = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
    reports = [json.loads(out) for out, _ in outcomes]
    assert sorted(report["won"] for report in reports) == [False, True]
    with open_database(db_url) as db:
        for report in reports:
            assert repo.get_job(db, report["job"]).progress == 99.5
        shared = repo.get_job(db, "shared")
        winner = "node-a" if reports[0]["won"] else "node-b"
        assert shared.status == "completed" and shared.outputs == [{"key": winner}]
        assert repo.count_jobs(db) == 3
