"""Storage outages caused for real: moto's S3 server behind a link that is cut or stalled, and a
storage folder that goes away, as a NAS share does.

Each test sets short retry windows and timeouts through the environment knobs (the defaults ride
out about a minute); elapsed times are printed for docs/reliability.md, and asserted only against
generous bounds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from farm.base.settings import ENV_VARS, Settings, SettingsError
from farm.services.storage import StorageUnavailable, TransferCancelled, open_storage
from farm.services.storage.local import temp_name
from farm.services.storage.retry import RetryPolicy
from tests.files import MiB, random_file, sha256

MULTIPART_SIZE = 24 * MiB  # three 8 MiB parts: a multipart upload, and a ranged download
SECRET = "testing-secret-key"  # the s3_url fixture's AWS_SECRET_ACCESS_KEY
OUTAGE_S = 3.0


@pytest.fixture(scope="module")
def multipart_file(tmp_path_factory) -> Path:
    return random_file(tmp_path_factory.mktemp("faults") / "take.bin", MULTIPART_SIZE)


def knobs(monkeypatch, retry: float, timeout: float = 2.0) -> None:
    """Short patience, set as an admin would (the environment); ``configured`` reads it back."""
    monkeypatch.setenv(ENV_VARS["storage_retry_seconds"], str(retry))
    monkeypatch.setenv(ENV_VARS["storage_connect_timeout"], str(timeout))
    monkeypatch.setenv(ENV_VARS["storage_read_timeout"], str(timeout))


def configured(url: str | None = None):
    """The storage as a node opens it: URL and retry policy from the settings."""
    settings = Settings.load()
    return open_storage(url or settings.effective_storage_url, RetryPolicy.from_settings(settings))


def upload_cancelled_after(storage, source: Path, key: str, seconds: float) -> None:
    """Cancel an upload that waits out an outage after ``seconds``: it stops as a cancel, at once
    (not at the end of the tests' long retry window)."""
    cancel = threading.Event()
    threading.Timer(seconds, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TransferCancelled):
        storage.upload_file(source, key, cancel=cancel)
    assert time.monotonic() - started < seconds + 10


class Outage:
    """Breaks the link as soon as a transfer has moved its first bytes, for ``seconds`` (or for good).

    Use its ``progress`` as the transfer's callback; ``during_transfer`` says whether the link
    really broke while the transfer was still running (else the test proved nothing).
    """

    def __init__(self, link, seconds: float | None, mode: str = "cut"):
        self.link, self.seconds, self.mode = link, seconds, mode
        self.started = threading.Event()
        self.transfer_done = threading.Event()
        self.during_transfer = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def progress(self, done: int) -> None:
        if done > 0:
            self.started.set()

    def _run(self) -> None:
        if not self.started.wait(60):
            return
        getattr(self.link, self.mode)()
        self.during_transfer = not self.transfer_done.is_set()
        if self.seconds is not None:
            time.sleep(self.seconds)
            self.link.restore()

    def finish(self) -> None:
        self.transfer_done.set()
        self.thread.join(30)


def incomplete_uploads(link, bucket: str) -> list:
    return link.admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# -- S3: the endpoint goes away ----------------------------------------------------------------


def test_an_upload_survives_a_short_outage_and_the_object_is_whole(s3_link, monkeypatch, multipart_file):
    knobs(monkeypatch, retry=60)
    storage = configured()
    outage = Outage(s3_link, OUTAGE_S)
    started = time.monotonic()
    size = storage.upload_file(multipart_file, "inputs/v1/take.bin", progress=outage.progress)
    elapsed = time.monotonic() - started
    outage.finish()

    assert outage.during_transfer, "the link was cut after the upload had finished: nothing was tested"
    assert size == MULTIPART_SIZE
    head = s3_link.admin.head_object(Bucket=storage.bucket, Key="farm/inputs/v1/take.bin")
    assert head["ContentLength"] == MULTIPART_SIZE
    back = Path(os.environ["ENCODEFLOW_DATA_DIR"]) / "back.bin"
    storage.download_file("inputs/v1/take.bin", back)
    assert sha256(back) == sha256(multipart_file)
    assert incomplete_uploads(s3_link, storage.bucket) == []  # the broken attempt's parts are gone
    print(f"\nupload of {MULTIPART_SIZE // MiB} MiB with a {OUTAGE_S:.0f} s cut took {elapsed:.1f} s")


def test_a_download_survives_a_short_outage_and_the_file_is_whole(s3_link, monkeypatch, multipart_file, tmp_path):
    knobs(monkeypatch, retry=60)
    storage = configured()
    storage.upload_file(multipart_file, "inputs/v1/take.bin")
    dest = tmp_path / "dl" / "take.bin"
    outage = Outage(s3_link, OUTAGE_S)
    started = time.monotonic()
    storage.download_file("inputs/v1/take.bin", dest, progress=outage.progress)
    elapsed = time.monotonic() - started
    outage.finish()

    assert outage.during_transfer, "the link was cut after the download had finished: nothing was tested"
    assert sha256(dest) == sha256(multipart_file)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["take.bin"]  # no temp file left
    print(f"\ndownload of {MULTIPART_SIZE // MiB} MiB with a {OUTAGE_S:.0f} s cut took {elapsed:.1f} s")


def test_a_long_outage_fails_clearly_and_leaves_no_object_and_no_parts(s3_link, monkeypatch, multipart_file, tmp_path):
    knobs(monkeypatch, retry=3)
    storage = configured()
    outage = Outage(s3_link, None)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        storage.upload_file(multipart_file, "outputs/j1/attempt-1/take.bin", progress=outage.progress)
    elapsed = time.monotonic() - started
    outage.finish()
    assert outage.during_transfer

    message = str(info.value)
    assert message.startswith(f"storage {storage.url} at http://127.0.0.1:{s3_link.port} did not answer")
    assert "upload" in message and "outputs/j1/attempt-1/take.bin" in message
    assert "AWS_ENDPOINT_URL" in message and SECRET not in message
    assert elapsed < 3 + 60, elapsed  # the window, plus one try's timeouts, plus a loaded machine

    s3_link.restore()
    listed = s3_link.admin.list_objects_v2(Bucket=storage.bucket, Prefix="farm/outputs/")
    assert listed.get("KeyCount", 0) == 0  # no object, whole or partial
    # The abort of the broken upload could not get through while the link was down; the
    # storage's next upload sends it first.
    storage.upload_file(multipart_file, "outputs/j1/attempt-2/take.bin")
    assert incomplete_uploads(s3_link, storage.bucket) == []
    assert [o.key for o in storage.list("outputs/j1")] == ["outputs/j1/attempt-2/take.bin"]
    print(f"\nupload during a long cut gave up after {elapsed:.1f} s (window 3 s)")


def test_a_failed_download_keeps_the_old_destination(s3_link, monkeypatch, multipart_file, tmp_path):
    knobs(monkeypatch, retry=2)
    storage = configured()
    storage.upload_file(multipart_file, "inputs/v1/take.bin")
    dest = tmp_path / "dl" / "take.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous version")
    outage = Outage(s3_link, None)
    with pytest.raises(StorageUnavailable, match="did not answer"):
        storage.download_file("inputs/v1/take.bin", dest, progress=outage.progress)
    outage.finish()
    assert outage.during_transfer
    assert dest.read_bytes() == b"the previous version"
    assert [p.name for p in dest.parent.iterdir()] == ["take.bin"]  # no temp file left


def test_a_stalled_endpoint_times_out_is_retried_then_fails_clearly(s3_link, monkeypatch, tmp_path):
    knobs(monkeypatch, retry=3, timeout=1)
    storage = configured()
    small = tmp_path / "small.mp4"
    small.write_bytes(os.urandom(4096))
    storage.upload_file(small, "inputs/v1/warm.mp4")  # the client has a pooled connection now
    s3_link.stall()
    before = s3_link.accepted
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        storage.size("inputs/v1/warm.mp4")
    elapsed = time.monotonic() - started
    assert "no answer within the read timeout" in str(info.value)
    assert s3_link.accepted - before >= 2  # each try opened a new connection: it was retried
    print(f"\na stalled endpoint (read timeout 1 s, window 3 s) gave up after {elapsed:.1f} s")

    # Slow, not dead: a stall that ends while the retries go on costs time, not the transfer.
    threading.Timer(2.0, s3_link.restore).start()
    knobs(monkeypatch, retry=30, timeout=1)
    patient = configured()
    assert patient.size("inputs/v1/warm.mp4") == 4096


def test_a_cancel_during_an_outage_stops_at_once(s3_link, monkeypatch, tmp_path):
    knobs(monkeypatch, retry=120)
    storage = configured()
    small = tmp_path / "small.mp4"
    small.write_bytes(os.urandom(4096))
    s3_link.cut()
    upload_cancelled_after(storage, small, "inputs/v1/small.mp4", 1.5)
    s3_link.restore()
    assert not storage.exists("inputs/v1/small.mp4")


def test_retry_knobs_are_settings_and_are_validated(monkeypatch, tmp_path):
    variable = ENV_VARS["storage_read_timeout"]
    monkeypatch.setenv(variable, "soon")
    with pytest.raises(SettingsError, match=f"{variable} must be a number of seconds, got 'soon'"):
        Settings.load()
    monkeypatch.setenv(variable, "0")
    with pytest.raises(SettingsError, match=variable):
        Settings.load()
    monkeypatch.delenv(variable)
    assert RetryPolicy.from_settings(Settings.load()) == RetryPolicy()  # the production defaults
    # The config file (what the Settings page writes) works like the environment, below it.
    config = tmp_path / "knobs.toml"
    config.write_text("storage_retry_seconds = 5\nstorage_read_timeout = 7.5\n")
    policy = RetryPolicy.from_settings(Settings.load(config_path=config))
    assert (policy.give_up_after, policy.read_timeout, policy.connect_timeout) == (5.0, 7.5, 10.0)
    monkeypatch.setenv(ENV_VARS["storage_retry_seconds"], "9")
    assert RetryPolicy.from_settings(Settings.load(config_path=config)).give_up_after == 9.0


# -- folder storage: the share goes away ---------------------------------------------------------


def folder_storage(tmp_path, monkeypatch, retry: float):
    monkeypatch.setenv(ENV_VARS["storage_retry_seconds"], str(retry))
    storage = configured((tmp_path / "share" / "encodeflow").as_uri())
    storage.check()
    return storage


def test_a_download_waits_for_a_share_that_comes_back(tmp_path, monkeypatch):
    storage = folder_storage(tmp_path, monkeypatch, retry=30)
    source = tmp_path / "clip.mp4"
    source.write_bytes(os.urandom(3 * MiB))
    storage.upload_file(source, "inputs/v1/clip.mp4")
    away = tmp_path / "share" / "unmounted"
    storage.root.rename(away)  # the share is gone: its folder is not there (ENOENT)
    threading.Timer(2.0, away.rename, args=(storage.root,)).start()
    dest = tmp_path / "work" / "input.mp4"
    storage.download_file("inputs/v1/clip.mp4", dest)
    assert sha256(dest) == sha256(source)


def test_a_share_that_stays_away_fails_clearly(tmp_path, monkeypatch):
    storage = folder_storage(tmp_path, monkeypatch, retry=2)
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x" * 1000)
    storage.upload_file(source, "inputs/v1/clip.mp4")
    storage.root.rename(tmp_path / "share" / "unmounted")
    dest = tmp_path / "work" / "input.mp4"
    with pytest.raises(StorageUnavailable) as info:
        storage.download_file("inputs/v1/clip.mp4", dest)
    message = str(info.value)
    assert message.startswith(f"storage {storage.url} did not answer")
    assert "is the share mounted" in message and "then try again" in message
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # no half file, no temp


def test_an_upload_while_the_share_is_away_waits_and_never_writes_to_the_local_disk(tmp_path, monkeypatch):
    storage = folder_storage(tmp_path, monkeypatch, retry=2)
    source = tmp_path / "out.mp4"
    source.write_bytes(b"x" * 1000)
    storage.root.rename(tmp_path / "share" / "unmounted")  # what an unmounted share looks like
    with pytest.raises(StorageUnavailable, match="is the share mounted"):
        storage.upload_file(source, "outputs/j1/attempt-1/out.mp4")
    assert not storage.root.exists(), "the storage folder was recreated on the local disk"
    with pytest.raises(StorageUnavailable):  # asking for an object's size waits for the share too
        storage.size("outputs/j1/attempt-1/out.mp4")


def test_a_cancel_while_the_share_is_away_is_a_cancel(tmp_path, monkeypatch):
    storage = folder_storage(tmp_path, monkeypatch, retry=120)
    source = tmp_path / "out.mp4"
    source.write_bytes(b"x" * 1000)
    storage.root.rename(tmp_path / "share" / "unmounted")
    upload_cancelled_after(storage, source, "outputs/j1/attempt-1/out.mp4", 1.0)


def test_a_storage_never_used_still_says_the_object_is_missing(tmp_path, monkeypatch):
    from farm.services.storage import ObjectNotFound

    monkeypatch.setenv(ENV_VARS["storage_retry_seconds"], "30")
    storage = configured((tmp_path / "new").as_uri())
    started = time.monotonic()
    with pytest.raises(ObjectNotFound):
        storage.download_file("inputs/v1/a.mp4", tmp_path / "a.mp4")
    assert time.monotonic() - started < 10  # refused at once, not retried for 30 s


def _dead_pid() -> int:
    """The pid of a process that really ran here and has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_sweep_removes_only_temp_files_whose_writer_is_gone(tmp_path):
    storage = open_storage((tmp_path / "storage").as_uri())
    source = tmp_path / "a.mp4"
    source.write_bytes(b"whole")
    storage.upload_file(source, "outputs/j1/attempt-1/a.mp4")
    folder = storage.root / "outputs" / "j1" / "attempt-1"
    ours = temp_name()  # this process is alive: a transfer may be writing it now
    start, pid, _host = re.fullmatch(r"(\.encodeflow-tmp-[0-9a-f]{32}-)(\d+)-(.+)", ours).groups()
    assert int(pid) == os.getpid()
    names = {
        "dead writer here": f"{start}{_dead_pid()}-{_host}",
        "live writer here": ours,
        "another host, recent": f"{start}{_dead_pid()}-other-host",
        "another host, old": f"{temp_name()[: len(start)]}{os.getpid()}-other-host",
    }
    for name in names.values():
        (folder / name).write_bytes(b"part")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(folder / names["another host, old"], (two_days_ago, two_days_ago))
    assert [o.key for o in storage.list()] == ["outputs/j1/attempt-1/a.mp4"]  # never listed

    assert storage.sweep_leftovers() == 2
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(["a.mp4", names["live writer here"], names["another host, recent"]])
