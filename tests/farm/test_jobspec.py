import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.domain.jobspec import (
    BUILTIN_PRESETS,
    FORMATS,
    RESOLUTIONS,
    JobSpecError,
    OutputConfig,
    PresetStore,
    validate_priority,
)
from farm.domain.payload import JobPayload, PayloadError, queue_payload


def test_payload_round_trip_uses_the_node_systems_names():
    config = OutputConfig("480p", "webm", include_audio=False)
    assert config.to_payload() == {"resolution": "480p", "format": "webm", "includeAudio": False}
    assert OutputConfig.from_payload(config.to_payload()) == config


@pytest.mark.parametrize(
    "data,message",
    [
        ({"resolution": "4k"}, "unknown resolution '4k'; choose one of 1080p, 720p, 480p, 360p"),
        ({"format": "avi"}, "unknown format 'avi'; choose one of mp4, webm, hevc"),
        ({"includeAudio": "yes"}, "includeAudio must be true or false"),
        ({"resolution": 720}, "resolution must be a string"),
        ({"bitrate": "5M"}, "unknown outputConfig field(s) bitrate"),
        ([], "outputConfig must be an object"),
    ],
)
def test_invalid_configs_name_the_field_and_the_choices(data, message):
    with pytest.raises(JobSpecError) as info:
        OutputConfig.from_payload(data)
    assert message in str(info.value)


@given(
    st.dictionaries(
        st.sampled_from(["resolution", "format", "includeAudio", "allowUpscale", "x"]),
        st.one_of(
            st.text(max_size=8),
            st.booleans(),
            st.integers(),
            st.none(),
            st.sampled_from(list(RESOLUTIONS) + list(FORMATS)),
        ),
    )
)
def test_validation_accepts_exactly_the_valid_configs(data):
    valid = (
        "x" not in data
        and data.get("resolution", "720p") in RESOLUTIONS
        and isinstance(data.get("resolution", "720p"), str)
        and data.get("format", "mp4") in FORMATS
        and isinstance(data.get("format", "mp4"), str)
        and isinstance(data.get("includeAudio", True), bool)
        and isinstance(data.get("allowUpscale", False), bool)
    )
    try:
        config = OutputConfig.from_payload(data)
    except JobSpecError as exc:
        assert not valid, f"refused a valid config {data}: {exc}"
        assert str(exc)
    else:
        assert valid, f"accepted an invalid config {data}"
        assert OutputConfig.from_payload(config.to_payload()) == config


def test_priority_bounds():
    assert validate_priority(0) == 0 and validate_priority(1) == 1
    for bad in (-1, 2_097_153, 1.5, True, "1"):
        with pytest.raises(JobSpecError):
            validate_priority(bad)


def test_user_presets_are_saved_and_cannot_shadow_builtins(data_dir):
    store = PresetStore(data_dir / "presets.toml")
    store.save("web-small", OutputConfig("360p", "webm"))
    assert store.get("web-small") == OutputConfig("360p", "webm")
    assert set(BUILTIN_PRESETS) < set(store.all())
    with pytest.raises(JobSpecError, match="built-in"):
        store.save("720p-mp4", OutputConfig())
    with pytest.raises(JobSpecError, match="unknown preset 'nope'"):
        store.get("nope")
    store.delete("web-small")
    assert "web-small" not in store.all()


def _payload(**overrides):
    data = {
        "jobId": "job-1",
        "input": {"key": "inputs/vid-1/a.mov", "name": "a.mov"},
        "outputConfig": {"resolution": "720p", "format": "mp4", "includeAudio": True},
    }
    data.update(overrides)
    return data


def test_payload_is_validated_on_the_node():
    parsed = JobPayload.parse("job-1", _payload(extraField="ignored"))
    assert (parsed.input_key, parsed.input_name, parsed.config.resolution) == ("inputs/vid-1/a.mov", "a.mov", "720p")
    assert queue_payload("job-1", "inputs/vid-1/a.mov", "a.mov", OutputConfig()) == {
        "jobId": "job-1",
        "input": {"key": "inputs/vid-1/a.mov", "name": "a.mov"},
        "outputConfig": {"resolution": "720p", "format": "mp4", "includeAudio": True},
    }


def test_a_recorded_job_is_enqueued_from_its_stored_config():
    stored = {"resolution": "360p", "format": "webm", "include_audio": False}  # as a row may hold it
    assert queue_payload("job-1", "inputs/vid-1/a.mov", "a.mov", stored, video_id="vid-1") == {
        "jobId": "job-1",
        "input": {"key": "inputs/vid-1/a.mov", "name": "a.mov"},
        "outputConfig": {"resolution": "360p", "format": "webm", "includeAudio": False},
        "videoId": "vid-1",
    }


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"jobId": "other"}, "does not match"),
        ({"input": {"key": "../etc/passwd"}}, "input.key"),
        ({"input": {"key": "inputs/v/../../x"}}, "input.key"),
        ({"input": {"key": "outputs/v/a.mp4"}}, "input.key"),
        ({"input": "inputs/v/a.mp4"}, "input must be an object"),
        ({"outputConfig": {"resolution": "4k"}}, "unknown resolution"),
    ],
)
def test_hostile_payloads_are_refused(overrides, message):
    with pytest.raises(PayloadError, match=message):
        JobPayload.parse("job-1", _payload(**overrides))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
payload_like = st.fixed_dictionaries(
    {},
    optional={
        "jobId": st.one_of(st.just("job-1"), st.text(max_size=70), json_values),
        "input": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "key": st.one_of(
                        st.text(max_size=80), st.text(max_size=20).map(lambda t: f"inputs/v1/{t}"), json_values
                    ),
                    "name": st.one_of(st.text(max_size=40), json_values),
                },
            ),
        ),
        "outputConfig": st.one_of(
            json_values,
            st.dictionaries(
                st.sampled_from(["resolution", "format", "includeAudio", "allowUpscale", "include_audio", "x"]),
                json_values,
            ),
        ),
    },
)


@given(st.one_of(payload_like, json_values))
def test_any_queue_payload_is_either_valid_or_a_payload_error(data):
    """A node never fails on a payload with anything but PayloadError (an unrecoverable, named
    failure); and what it accepts is a plain key inside inputs/<id>/ that storage will take."""
    from farm.domain.object_keys import join_key

    try:
        parsed = JobPayload.parse("job-1", data)
    except PayloadError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert parsed.job_id == "job-1"
    parts = join_key("farm", parsed.input_key).split("/")
    assert parts[:2] == ["farm", "inputs"] and len(parts) == 4


@pytest.mark.parametrize(
    "job_id, key",
    [
        ("job-1\n", "inputs/v/a.mp4"),  # "$" in a regex matched before a final newline
        ("job-1", "inputs/v/a.mp4\n"),
        ("job-1", "inputs/v/a\nb.mp4"),  # storage refuses control characters: a retry would not help
        ("job-1", "inputs/v/a\x7fb.mp4"),
    ],
)
def test_ids_and_keys_with_control_characters_are_refused(job_id, key):
    with pytest.raises(PayloadError):
        JobPayload.parse(job_id, {"jobId": job_id, "input": {"key": key}})
