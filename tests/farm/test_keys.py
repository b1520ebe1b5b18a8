"""Keys: safe names from users' file names, the inputs/outputs layout, and keys that cannot escape."""

from __future__ import annotations

import posixpath
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.domain.object_keys import (
    MAX_NAME_BYTES,
    InvalidKeyError,
    input_key,
    join_key,
    output_filename,
    output_key,
    output_prefix,
    sanitize_name,
)

# Text with plenty of the characters that matter here, not only what st.text() finds by chance.
tricky_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('/\\.-_ \x00\t\n:*?"<>|\u202e\u200b\u0301\u00a0')),
        st.characters(),
    ),
    max_size=400,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clip.mp4", "clip.mp4"),
        ("My Film (final).MOV", "My_Film_final.MOV"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ed\\Desktop\\take 2.mov", "take_2.mov"),
        ("/abs/path/to/video.mkv", "video.mkv"),
        (".hidden.mp4", "hidden.mp4"),
        ("-i input.mp4", "i_input.mp4"),
        ("--.-x.mp4", "x.mp4"),
        ("a  b\t\tc.mp4", "a_b_c.mp4"),
        ("日本語 ビデオ.mov", "日本語_ビデオ.mov"),
        ("evil\u202egpj.exe", "evil_gpj.exe"),
        ("null\x00byte.mp4", "null_byte.mp4"),
        ("CON.mp4", "file_CON.mp4"),
        ("", "file"),
        (".", "file"),
        ("..", "file"),
        ("///", "file"),
        ("***", "file"),
        ("dir/", "dir"),
    ],
)
def test_sanitize_name_examples(name, expected):
    assert sanitize_name(name) == expected


def test_sanitize_name_normalises_to_nfc():
    decomposed = "Cafe\u0301.mp4"
    assert sanitize_name(decomposed) == "Caf\u00e9.mp4"


def test_sanitize_name_caps_length_and_keeps_the_extension():
    name = sanitize_name("é" * 300 + ".mp4")
    assert name.endswith("é.mp4")
    assert len(name.encode()) <= MAX_NAME_BYTES


def test_sanitize_name_without_an_extension_is_capped_too():
    name = sanitize_name("x" * 1000)
    assert name == "x" * MAX_NAME_BYTES


@settings(max_examples=500, deadline=None)
@given(tricky_text)
def test_sanitize_name_always_gives_one_safe_component(text):
    name = sanitize_name(text)
    assert name
    assert name not in (".", "..")
    assert not any(bad in name for bad in ("/", "\\", "\x00"))
    assert not name.startswith((".", "-"))
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert all(ch in "._-" or unicodedata.category(ch)[0] in "LMN" for ch in name)
    assert unicodedata.is_normalized("NFC", name)
    assert sanitize_name(name) == name  # idempotent: a stored name survives another pass


def test_input_and_output_keys():
    assert input_key("3f2b-uuid_1", "My Clip.mov") == "inputs/3f2b-uuid_1/My_Clip.mov"
    assert output_key("job-1", 0, "720p-mp4.mp4") == "outputs/job-1/attempt-0/720p-mp4.mp4"
    assert output_key("job-1", 3, "../x.mp4") == "outputs/job-1/attempt-3/x.mp4"
    assert output_prefix("job-1") == "outputs/job-1"


@pytest.mark.parametrize("bad_id", ["", "a/b", "..", "a b", "x" * 65, "id\n", "é", None, 5])
def test_ids_are_validated(bad_id):
    with pytest.raises(InvalidKeyError, match="video id must be 1 to 64"):
        input_key(bad_id, "clip.mp4")
    with pytest.raises(InvalidKeyError, match="job id must be 1 to 64"):
        output_key(bad_id, 1, "out.mp4")


@pytest.mark.parametrize("attempt", [-1, 1.0, "1", True, None])
def test_attempt_must_be_a_whole_number(attempt):
    with pytest.raises(InvalidKeyError, match="attempt"):
        output_key("job", attempt, "out.mp4")


def test_invalid_key_error_is_a_value_error():
    assert issubclass(InvalidKeyError, ValueError)
    assert not issubclass(InvalidKeyError, KeyError)


def test_join_key_joins_and_normalises_the_prefix():
    assert join_key("", "inputs/a/b.mp4") == "inputs/a/b.mp4"
    assert join_key("farm", "inputs/a/b.mp4") == "farm/inputs/a/b.mp4"
    assert join_key("/farm/x/", "k") == "farm/x/k"


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/..", "./a", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb", ".."],
)
def test_join_key_refuses_keys_that_escape_or_are_malformed(key):
    with pytest.raises(InvalidKeyError, match="storage key"):
        join_key("farm", key)


@pytest.mark.parametrize("prefix", ["a/../b", "a//b", "a\\b"])
def test_join_key_refuses_a_bad_prefix(prefix):
    with pytest.raises(InvalidKeyError):
        join_key(prefix, "k")


@settings(max_examples=500, deadline=None)
@given(
    prefix=st.lists(st.sampled_from(["farm", "a", "b-c", "x_y"]), max_size=3).map("/".join),
    key=st.lists(st.sampled_from(["..", ".", "", "a", "b", "/", "\\", "c.mp4", "\x00"]), max_size=6).map("".join),
)
def test_join_key_never_leaves_the_prefix(prefix, key):
    try:
        joined = join_key(prefix, key)
    except InvalidKeyError:
        return
    root = "/root/" + prefix if prefix else "/root"
    resolved = posixpath.normpath(posixpath.join(root, joined[len(prefix) :].lstrip("/")))
    assert resolved.startswith(root + "/")
    assert joined == posixpath.normpath(joined)  # already canonical: nothing to collapse
    assert "\\" not in joined and "\x00" not in joined


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_join_key_on_arbitrary_text_stays_inside(key):
    try:
        joined = join_key("farm", key)
    except InvalidKeyError:
        return
    assert joined.startswith("farm/")
    assert posixpath.normpath(joined).startswith("farm/")
    assert ".." not in joined.split("/")


ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(video_id=ids, name=tricky_text.filter(lambda name: name and "\x00" not in name))
def test_input_key_round_trips_through_the_nodes_payload_check(video_id, name):
    """Whatever a user's file is called (no file name holds NUL), the key and name the CLI sends are
    ones the node accepts, and the key stays inside inputs/<video id>/ in every backend."""
    from farm.base.untrusted import storable
    from farm.domain.object_keys import split_key
    from farm.domain.payload import JobPayload

    name = storable(name)  # what the CLI records and sends
    key = input_key(video_id, name)
    assert split_key(key) == ["inputs", video_id, sanitize_name(name)]
    parsed = JobPayload.parse(
        "job-1", {"jobId": "job-1", "input": {"key": key, "name": name[:1024]}, "outputConfig": {}}
    )
    assert parsed.input_key == key
    assert join_key("farm", key).startswith(f"farm/inputs/{video_id}/")


@settings(max_examples=200, deadline=None)
@given(job_id=ids, attempt=st.integers(min_value=0, max_value=10**6), name=tricky_text)
def test_output_key_stays_in_its_attempt(job_id, attempt, name):
    from farm.domain.object_keys import split_key

    assert split_key(output_key(job_id, attempt, name)) == [
        "outputs",
        job_id,
        f"attempt-{attempt}",
        sanitize_name(name),
    ]


def test_output_filename_keeps_the_output_name_of_a_long_input():
    name = output_filename("Interview " * 40 + ".mov", "720p.mp4")
    assert name.endswith("-720p.mp4") and name.startswith("Interview_Interview")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert output_filename("clip.mov", "720p.mp4") == "clip-720p.mp4"
    assert output_filename("../../", "720p.mp4") == "file-720p.mp4"


@given(name=tricky_text, output=st.sampled_from(["720p.mp4", "1080p.webm", "source.mkv"]))
def test_output_filename_is_one_safe_name_ending_in_the_output_name(name, output):
    filename = output_filename(name, output)
    assert filename == sanitize_name(filename)
    assert filename.endswith("-" + output)
    assert len(filename.encode()) <= MAX_NAME_BYTES
