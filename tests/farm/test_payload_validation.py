"""Every field of a queue payload is checked before a node downloads anything, and each refusal
names its field in one short line, whatever the payload holds.

What is refused here is what the database or storage would have refused later (after a download,
a probe and three attempts) or what would have been stored as it came: a NUL byte, a number out of
BullMQ's range, a string longer than its column, an id that is a path, another video's id.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.domain.jobspec import MAX_PRIORITY, OutputConfig
from farm.domain.payload import JobPayload, PayloadError, salvage
from farm.services.db import open_database, repo

VIDEO = "5f0c7d3e-1111-4222-8333-444455556666"
KEY = f"inputs/{VIDEO}/holiday.mov"
KNOWN_FIELDS = {
    "payload",
    "jobId",
    "input",
    "input.key",
    "input.name",
    "outputConfig",
    "videoId",
    "priority",
    "submittedBy",
}
MAX_MESSAGE = 400  # a refusal quotes at most the start of a value


def payload(**fields) -> dict:
    data = {
        "jobId": "job-1",
        "input": {"key": KEY, "name": "holiday.mov"},
        "outputConfig": {"resolution": "360p", "format": "mp4", "includeAudio": True},
    }
    data.update(fields)
    return {name: value for name, value in data.items() if value is not ...}


def refused(data, bull_id: str = "job-1") -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        JobPayload.parse(bull_id, data)
    message = str(caught.value)
    assert message.startswith(f"{caught.value.field}: ")
    assert "\n" not in message and "\x00" not in message and len(message) < MAX_MESSAGE, message
    return caught.value


# -- each field, each bad value ---------------------------------------------------------------------

BAD = [
    ("payload", ["a string"], None),
    ("jobId", {"jobId": "job-1\nINFO forged"}, "job-1\nINFO forged"),
    ("jobId", {"jobId": "x" * 10_000}, "x" * 10_000),
    ("jobId", {"jobId": "../../etc"}, "../../etc"),
    ("jobId", {"jobId": 42}, "42"),
    ("jobId", {"jobId": ""}, ""),
    ("jobId", {"jobId": "other"}, None),  # not the BullMQ id
    ("jobId", {"jobId": ...}, "job-1\r"),  # left out: the BullMQ id must follow the rules itself
    ("input", {"input": KEY}, None),
    ("input", {"input": ...}, None),
    ("input.key", {"input": {"name": "a.mov"}}, None),
    ("input.key", {"input": {"key": "outputs/v/a.mov"}}, None),
    ("input.key", {"input": {"key": "inputs/v/../../etc/passwd"}}, None),
    ("input.key", {"input": {"key": "inputs/../etc"}}, None),
    ("input.key", {"input": {"key": "inputs/v/a\nb.mov"}}, None),
    ("input.key", {"input": {"key": "inputs/v/a\x00b.mov"}}, None),
    ("input.key", {"input": {"key": "inputs/v/a\ud800.mov"}}, None),
    ("input.key", {"input": {"key": "inputs/v/" + "a" * 256}}, None),
    ("input.key", {"input": {"key": ["inputs/v/a.mov"]}}, None),
    ("input.name", {"input": {"key": KEY, "name": "holi\x00day.mov"}}, None),
    ("input.name", {"input": {"key": KEY, "name": "holiday\udc80.mov"}}, None),
    ("input.name", {"input": {"key": KEY, "name": "a" * 1025}}, None),
    ("input.name", {"input": {"key": KEY, "name": 7}}, None),
    ("input.name", {"input": {"key": KEY, "name": ""}}, None),
    ("outputConfig", {"outputConfig": ...}, None),
    ("outputConfig", {"outputConfig": None}, None),
    ("outputConfig", {"outputConfig": "720p"}, None),
    ("outputConfig", {"outputConfig": {"resolution": "4k"}}, None),
    ("outputConfig", {"outputConfig": {"format": "avi"}}, None),
    ("outputConfig", {"outputConfig": {"includeAudio": "yes"}}, None),
    ("outputConfig", {"outputConfig": {"resolution": "720p", "crf": 0}}, None),
    ("videoId", {"videoId": "../../etc"}, None),
    ("videoId", {"videoId": "abc\x00"}, None),
    ("videoId", {"videoId": "v" * 65}, None),
    ("videoId", {"videoId": 12}, None),
    ("videoId", {"videoId": "another-video"}, None),  # not the id in input.key
    ("priority", {"priority": 10**30}, None),
    ("priority", {"priority": -1}, None),
    ("priority", {"priority": MAX_PRIORITY + 1}, None),
    ("priority", {"priority": 1.5}, None),
    ("priority", {"priority": "5"}, None),
    ("priority", {"priority": True}, None),
    ("submittedBy", {"submittedBy": "e" * 300}, None),
    ("submittedBy", {"submittedBy": "ed\x00"}, None),
    ("submittedBy", {"submittedBy": "ed\nINFO forged"}, None),
    ("submittedBy", {"submittedBy": "\x1b[31med"}, None),
    ("submittedBy", {"submittedBy": "ed\u202egnp.exe"}, None),
    ("submittedBy", {"submittedBy": ["ed"]}, None),
]


@pytest.mark.parametrize("field, fields, bull_id", BAD, ids=[f"{field}-{i}" for i, (field, _, _) in enumerate(BAD)])
def test_each_bad_value_is_refused_naming_its_field(field, fields, bull_id):
    """``bull_id``: the BullMQ job id, which BullMQ lets a producer choose freely (default job-1)."""
    data = fields if isinstance(fields, list) else payload(**fields)
    assert refused(data, bull_id or "job-1").field == field


def test_a_refusal_quotes_a_hostile_value_escaped_and_cut():
    error = refused(payload(jobId="a\nb" + "x" * 10_000), "a\nb" + "x" * 10_000)
    assert "'a\\nbxxx" in str(error) and "(10003 characters)" in str(error)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"jobId": ...},  # the BullMQ id stands for it
        {"input": {"key": KEY}},  # the name defaults to the key's last part
        {"input": {"key": KEY, "name": "line\nbreak \u202e.mov"}},  # file names may hold these; shown escaped
        {"input": {"key": KEY, "name": "é" * 1024}},
        {"outputConfig": {}},  # every outputConfig field has a documented default
        {"videoId": VIDEO},
        {"videoId": None, "priority": None, "submittedBy": None},  # null is "not given"
        {"priority": 0},
        {"priority": 1},
        {"priority": MAX_PRIORITY},
        {"submittedBy": ""},
        {"submittedBy": "Zoë Ångström"},
        {"submittedBy": "e" * 255},
        {"preset": "whatever", "extra": {"nested": [1, 2]}},  # more fields may follow; they are ignored
    ],
)
def test_valid_payloads_are_accepted(fields):
    parsed = JobPayload.parse("job-1", payload(**fields))
    assert (parsed.job_id, parsed.input_key, parsed.video_id) == ("job-1", KEY, VIDEO)


def test_what_a_payload_gives_the_row():
    parsed = JobPayload.parse("job-1", payload(priority=7, submittedBy="ed", videoId=VIDEO, extra="x" * 10_000))
    assert (parsed.input_name, parsed.config, parsed.priority, parsed.submitted_by) == (
        "holiday.mov",
        OutputConfig("360p", "mp4"),
        7,
        "ed",
    )
    assert not hasattr(parsed, "raw"), "unknown fields are never carried along to be stored"


def test_salvage_keeps_only_the_fields_that_passed_their_check():
    found = salvage(
        payload(priority=10**30, submittedBy="e" * 300, extra="x", input={"key": KEY, "name": "holi\x00day.mov"})
    )
    assert found == {"input_key": KEY, "input_name": "holiday.mov", "config": OutputConfig("360p", "mp4")}
    assert salvage("not an object") == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["jobId", "input", "outputConfig", "videoId", "priority", "submittedBy"]),
    value=st.one_of(json_values, st.text(min_size=200, max_size=5000)),
)
def test_any_value_of_any_field_is_accepted_or_refused_by_name(field, value):
    """Never another exception, never a message that spans lines or quotes a value whole."""
    try:
        JobPayload.parse("job-1", payload(**{field: value}))
    except PayloadError as exc:
        assert exc.field in KNOWN_FIELDS
        assert "\n" not in str(exc) and len(str(exc)) < MAX_MESSAGE, str(exc)


# -- against the recorded rows --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request):
    url = (
        request.getfixturevalue("settings").effective_database_url
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    database = open_database(url)
    yield database
    database.dispose()


def other_video(db):
    return repo.create_video(
        db,
        id=VIDEO,
        name="theirs.mov",
        key=f"inputs/{VIDEO}/theirs.mov",
        size=10,
        duration=60.0,
        width=1920,
        height=1080,
        video_codec="h264",
        container="mov",
    )


def test_a_job_is_never_attached_to_another_inputs_video(db):
    other_video(db)
    with pytest.raises(PayloadError) as caught:
        repo.check_payload(db, JobPayload.parse("job-1", payload(videoId=VIDEO)))
    assert caught.value.field == "videoId"
    with pytest.raises(PayloadError):  # the same video named by the key alone
        repo.check_payload(db, JobPayload.parse("job-1", payload()))
    same_input = payload(input={"key": f"inputs/{VIDEO}/theirs.mov"})
    repo.check_payload(db, JobPayload.parse("job-1", same_input))  # a second job for that very input is fine


def test_a_recorded_job_must_keep_its_input(db):
    video = other_video(db)
    job = repo.create_job(db, video.id, {"resolution": "360p"})
    with pytest.raises(PayloadError) as caught:
        repo.check_payload(db, JobPayload.parse(job.id, payload(jobId=job.id)))
    assert caught.value.field == "input.key"
    repo.check_payload(db, JobPayload.parse(job.id, payload(jobId=job.id, input={"key": video.key})))


def test_a_refusal_is_recorded_on_a_row_of_its_own(db):
    theirs = other_video(db)
    data = payload(jobId="job-9", videoId=VIDEO, priority=10**30, submittedBy="ed")
    job = repo.record_refusal(db, "job-9", data, "invalid job payload: priority: ...", attempt=1)
    assert (job.id, job.status, job.attempts, job.priority) == ("job-9", "failed", 1, 0)
    assert job.error == "invalid job payload: priority: ..."
    assert job.video.id != VIDEO and job.video.container == repo.REFUSED_CONTAINER
    assert (job.video.name, job.video.key, job.video.submitted_by) == ("holiday.mov", KEY, "ed")
    assert repo.get_video(db, VIDEO).name == theirs.name, "the named video is untouched"
    again = repo.record_refusal(db, "job-9", data, "invalid job payload: priority: ...", attempt=1)
    assert again.video.id == job.video.id and repo.count_jobs(db) == 1


@pytest.mark.parametrize("bull_id", ["job\nINFO forged", "x" * 10_000, "../../etc", "job\x00"])
def test_a_refused_job_whose_id_cannot_be_stored_gets_one_derived_from_it(db, bull_id):
    job = repo.record_refusal(db, bull_id, {"jobId": bull_id}, "invalid job payload: jobId: ...", attempt=1)
    assert job.id.startswith("refused-") and job.id == repo.refusal_job_id(bull_id)
    assert (job.status, job.video.name, job.video.key) == ("failed", "(invalid payload)", "")
    assert [j.id for j, _ in repo.list_jobs(db, status="failed")] == [job.id]


def test_stored_errors_have_no_control_characters_and_a_bounded_length(db):
    video = other_video(db)
    job = repo.create_job(db, video.id, {})
    repo.finish_job(
        db,
        job.id,
        "failed",
        attempt=1,
        error="line one\nline two\x1b[2J" + "y" * 10_000,
        log_tail="frame=1\nthe title \x1b[31mred\n",
    )
    stored = repo.get_job(db, job.id)
    assert stored.error.startswith("line one\nline two\\x1b[2J") and len(stored.error) < repo.ERROR_MAX_CHARS + 40
    assert stored.log_tail == "frame=1\nthe title \\x1b[31mred\n"
