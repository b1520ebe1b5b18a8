"""One error root with its exit code, one backoff policy, and how the CLI turns any error into one line."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from farm import client
from farm.base.backoff import Backoff
from farm.base.errors import EXIT_FAILURE, EXIT_USAGE, FarmError, describe
from farm.base.settings import Settings, SettingsError
from farm.base.usage import UsageError
from farm.cli import commands
from farm.client import Farm, SubmitError, UnknownJobError
from farm.domain.jobspec import JobSpecError, OutputConfig
from farm.domain.media import FFmpegNotFound, NotAVideoError
from farm.domain.nodes import UnknownNodeError
from farm.domain.object_keys import InvalidKeyError
from farm.domain.payload import PayloadError
from farm.services.db.engine import DatabaseError
from farm.services.embedded import EmbeddedRedisError
from farm.services.prometheus import PrometheusError
from farm.services.queue import QueueStateError
from farm.services.registry import NodeNameTaken
from farm.services.storage import StorageError, StorageUnavailable, TransferCancelled

# -- the root ----------------------------------------------------------------------------------

# Each error, the builtin base that `except` clauses catch it by, and the exit code it ends a command with.
ROOTED = [
    (SettingsError, ValueError, EXIT_USAGE),
    (UsageError, Exception, EXIT_USAGE),
    (JobSpecError, ValueError, EXIT_USAGE),
    (SubmitError, Exception, EXIT_USAGE),
    (UnknownJobError, Exception, EXIT_USAGE),
    (UnknownNodeError, LookupError, EXIT_USAGE),
    (NotAVideoError, ValueError, EXIT_USAGE),
    (FFmpegNotFound, ValueError, EXIT_USAGE),
    (InvalidKeyError, ValueError, EXIT_FAILURE),
    (StorageError, RuntimeError, EXIT_FAILURE),
    (StorageUnavailable, RuntimeError, EXIT_FAILURE),
    (TransferCancelled, RuntimeError, EXIT_FAILURE),
    (DatabaseError, RuntimeError, EXIT_FAILURE),
    (EmbeddedRedisError, RuntimeError, EXIT_FAILURE),
    (QueueStateError, RuntimeError, EXIT_FAILURE),
    (PrometheusError, RuntimeError, EXIT_FAILURE),
]


@pytest.mark.parametrize("error, builtin, code", ROOTED, ids=[e[0].__name__ for e in ROOTED])
def test_every_farm_error_has_one_root_its_old_base_and_its_exit_code(error, builtin, code):
    assert issubclass(error, FarmError) and issubclass(error, builtin)
    assert error.exit_code == code


def test_errors_with_their_own_arguments_keep_them():
    payload = PayloadError("input.name", "empty")
    assert (str(payload), payload.field, payload.exit_code) == ("input.name: empty", "input.name", EXIT_FAILURE)
    database = DatabaseError("no such database", config=True)
    assert (str(database), database.config) == ("no such database", True)
    taken = NodeNameTaken("node-1 runs on host-a", holder=None)
    assert isinstance(taken, SettingsError) and taken.exit_code == EXIT_USAGE and taken.holder is None


def test_an_exit_code_can_be_given_to_one_error():
    assert FarmError("refused", exit_code=EXIT_USAGE).exit_code == EXIT_USAGE
    assert FarmError("refused").exit_code == EXIT_FAILURE


def test_describe_names_the_type_and_keeps_the_first_line():
    assert describe(KeyError("k")) == "KeyError: 'k'"
    assert describe(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert describe(RuntimeError("  ")) == "RuntimeError"


def test_a_cancel_in_a_batch_submit_stays_a_cancel(monkeypatch):
    """TransferCancelled is a FarmError too, but a cancel is not a file that failed to go up."""
    farm = Farm(Settings.load(), start_embedded=False)
    outcomes = iter([SimpleNamespace(id="job-1"), TransferCancelled("upload of b.mp4: cancelled")])

    def submit_checked(item, config, **kwargs):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(client, "check_inputs", lambda paths: list(paths))
    monkeypatch.setattr(farm, "check_queue", lambda: None)
    monkeypatch.setattr(farm, "submit_checked", submit_checked)
    with pytest.raises(TransferCancelled, match="b.mp4: cancelled"):
        farm.submit([Path("a.mp4"), Path("b.mp4")], OutputConfig())
    outcomes = iter([SimpleNamespace(id="job-1"), FarmError("refused")])
    with pytest.raises(FarmError, match=r"^refused \(the 1 file\(s\) before it were submitted: job-1\)$"):
        farm.submit([Path("a.mp4"), Path("b.mp4")], OutputConfig())


# -- the CLI's mapping ---------------------------------------------------------------------------


def run_failing(monkeypatch, exc: BaseException, settings: Settings | None = None) -> FarmError:
    def handler(args, settings):
        raise exc

    monkeypatch.setitem(commands.HANDLERS, "presets", handler)
    with pytest.raises(FarmError) as caught:
        commands.run(argparse.Namespace(command="presets"), settings or Settings.load())
    return caught.value


def test_the_cli_passes_our_errors_on_as_they_are(monkeypatch):
    refused = UnknownNodeError("no node 'ghost'; known: node-1")
    assert run_failing(monkeypatch, refused) is refused


def test_the_cli_describes_any_other_error_in_one_line_exit_1(monkeypatch):
    error = run_failing(monkeypatch, KeyError("outputs"))
    assert (str(error), error.exit_code) == ("KeyError: 'outputs'", EXIT_FAILURE)


def test_the_cli_says_what_redis_did_without_its_password(monkeypatch):
    lost = redis.ConnectionError("Error 111 connecting to redis://:hunter2@127.0.0.1:1/0")
    local = run_failing(monkeypatch, lost)
    assert str(local) == (
        "the local farm's Redis failed (ConnectionError: Error 111 connecting to "
        "redis://:***@127.0.0.1:1/0); check that `encodeflow up` runs"
    )
    configured = run_failing(
        monkeypatch,
        redis.TimeoutError("Timeout reading from socket"),
        Settings.load().replace(redis_url="redis://127.0.0.1:1/0"),
    )
    assert str(configured).endswith("(ENCODEFLOW_REDIS_URL)") and configured.exit_code == EXIT_FAILURE
    assert "127.0.0.1:1" in str(configured)


def test_a_closed_pipe_is_left_to_the_quiet_exit(monkeypatch):
    def handler(args, settings):
        raise BrokenPipeError

    monkeypatch.setitem(commands.HANDLERS, "presets", handler)
    with pytest.raises(BrokenPipeError):
        commands.run(argparse.Namespace(command="presets"), Settings.load())


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_reset():
    backoff = Backoff(first=0.2, cap=1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.failures == 5
    backoff.reset()
    assert (backoff.failures, backoff.next()) == (0, 0.2)


def test_backoff_delay_is_the_pause_after_n_failures_and_survives_a_long_outage():
    backoff = Backoff(first=0.5, cap=30, factor=3)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.5, 4.5, 13.5, 30]
    assert backoff.delay(10**9) == 30  # no float overflow, no hang
    assert Backoff(first=1, cap=5, factor=1).delay(10**9) == 1


def test_backoff_jitter_takes_off_at_most_its_fraction():
    fractions = iter([0.0, 1.0, 0.5])
    backoff = Backoff(first=4, cap=100, jitter=0.5, random_fraction=lambda: next(fractions))
    assert [backoff.next() for _ in range(3)] == [4.0, 4.0, 12.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first": 0, "cap": 1},
        {"first": 1, "cap": 0},
        {"first": 1, "cap": 1, "factor": 0.5},
        {"first": 1, "cap": 1, "jitter": 1.5},
    ],
)
def test_backoff_refuses_a_policy_that_cannot_work(kwargs):
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(**kwargs)
