"""Storage backends against the real things: moto's S3 server over HTTP, and a real folder.

The shared behaviour runs once per backend; what only one backend has (multipart parts, a prefix
inside a bucket, folder permissions) has its own tests at the end.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from farm.domain.object_keys import InvalidKeyError
from farm.services.storage import (
    LocalStorage,
    ObjectNotFound,
    S3Storage,
    Storage,
    StorageError,
    StoredObject,
    TransferCancelled,
    open_storage,
)
from tests.files import MiB, random_file, sha256

BIG_SIZE = 100 * MiB
SECRET = "testing-secret-key"  # what the s3_url fixture puts in AWS_SECRET_ACCESS_KEY


@pytest.fixture(params=["s3", "folder"])
def storage(request, tmp_path) -> Storage:
    if request.param == "s3":
        return open_storage(request.getfixturevalue("s3_url"))
    return open_storage((tmp_path / "storage").as_uri())


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    """100 MB of random bytes, written a MiB at a time (never all in memory)."""
    return random_file(tmp_path_factory.mktemp("big") / "big.bin", BIG_SIZE)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".encodeflow-"))


def multipart_uploads(storage: Storage) -> list:
    assert isinstance(storage, S3Storage)
    return boto3.client("s3").list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])


# -- shared behaviour ----------------------------------------------------------------------------


def test_round_trip_gives_identical_bytes(storage, tmp_path):
    source = random_file(tmp_path / "in" / "clip.mp4", 3 * MiB + 17)
    assert storage.upload_file(source, "inputs/v1/clip.mp4") == source.stat().st_size

    seen: list[int] = []
    dest = tmp_path / "out" / "nested" / "copy.mp4"
    assert storage.download_file("inputs/v1/clip.mp4", dest, progress=seen.append) == source.stat().st_size
    assert dest.read_bytes() == source.read_bytes()
    assert seen[-1] == source.stat().st_size
    assert leftovers(dest.parent) == []


def test_an_empty_file_round_trips(storage, tmp_path):
    source = random_file(tmp_path / "empty.mp4", 0)
    seen: list[int] = []
    assert storage.upload_file(source, "inputs/v1/empty.mp4", progress=seen.append) == 0
    assert seen == [0]
    assert storage.size("inputs/v1/empty.mp4") == 0
    assert storage.download_file("inputs/v1/empty.mp4", tmp_path / "back.mp4") == 0
    assert (tmp_path / "back.mp4").read_bytes() == b""


def test_upload_replaces_an_existing_object(storage, tmp_path):
    storage.upload_file(random_file(tmp_path / "a", 10), "k/obj")
    storage.upload_file(random_file(tmp_path / "b", 20), "k/obj")
    assert storage.size("k/obj") == 20
    storage.download_file("k/obj", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == (tmp_path / "b").read_bytes()


def test_list_gives_keys_sizes_and_utc_dates(storage, tmp_path):
    storage.upload_file(random_file(tmp_path / "a", 10), "inputs/v1/a.mp4")
    storage.upload_file(random_file(tmp_path / "b", 20), "inputs/v1/b.mp4")
    storage.upload_file(random_file(tmp_path / "c", 5), "outputs/j1/attempt-0/out.mp4")

    objects = sorted(storage.list(), key=lambda o: o.key)
    assert [(o.key, o.size) for o in objects] == [
        ("inputs/v1/a.mp4", 10),
        ("inputs/v1/b.mp4", 20),
        ("outputs/j1/attempt-0/out.mp4", 5),
    ]
    now = datetime.now(UTC)
    for obj in objects:
        assert isinstance(obj, StoredObject)
        assert obj.modified.utcoffset() == timedelta(0)
        assert abs(now - obj.modified) < timedelta(minutes=5)

    assert sorted(o.key for o in storage.list("inputs")) == ["inputs/v1/a.mp4", "inputs/v1/b.mp4"]
    assert sorted(o.key for o in storage.list("inputs/v1/")) == ["inputs/v1/a.mp4", "inputs/v1/b.mp4"]
    assert [o.key for o in storage.list("outputs/j1")] == ["outputs/j1/attempt-0/out.mp4"]
    assert list(storage.list("inputs/v")) == []  # whole parts only: "inputs/v" is not "inputs/v1"
    assert list(storage.list("nothing/here")) == []


def test_exists_size_and_delete(storage, tmp_path):
    storage.upload_file(random_file(tmp_path / "a", 123), "inputs/v1/a.mp4")
    assert storage.exists("inputs/v1/a.mp4")
    assert storage.size("inputs/v1/a.mp4") == 123
    assert not storage.exists("inputs/v1/missing.mp4")
    assert storage.size("inputs/v1/missing.mp4") is None
    assert not storage.exists("inputs/v1")  # a "folder" is not an object

    storage.delete("inputs/v1/a.mp4")
    assert not storage.exists("inputs/v1/a.mp4")
    storage.delete("inputs/v1/a.mp4")  # deleting what is gone is fine
    storage.delete("never/existed")
    assert list(storage.list()) == []


def test_delete_prefix_removes_whole_parts_only(storage, tmp_path):
    for key in ["outputs/j1/attempt-0/a.mp4", "outputs/j1/attempt-1/a.mp4", "outputs/j10/attempt-0/a.mp4"]:
        storage.upload_file(random_file(tmp_path / "f", 7), key)

    assert storage.delete_prefix("outputs/j") == 0
    assert storage.delete_prefix("outputs/j1") == 2
    assert [o.key for o in storage.list()] == ["outputs/j10/attempt-0/a.mp4"]
    assert storage.delete_prefix("outputs/j1") == 0
    with pytest.raises(InvalidKeyError, match="non-empty prefix"):
        storage.delete_prefix("")
    with pytest.raises(InvalidKeyError):
        storage.delete_prefix("/")
    assert storage.exists("outputs/j10/attempt-0/a.mp4")


def test_presigned_url_downloads_the_bytes(storage, tmp_path):
    source = random_file(tmp_path / "a.mp4", 50_000)
    storage.upload_file(source, "outputs/j1/attempt-0/a.mp4")
    url = storage.presigned_url("outputs/j1/attempt-0/a.mp4", expires=600)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == source.read_bytes()


def test_download_of_a_missing_key_is_object_not_found(storage, tmp_path):
    dest = tmp_path / "dl" / "x.mp4"
    with pytest.raises(ObjectNotFound, match="inputs/v1/missing.mp4"):
        storage.download_file("inputs/v1/missing.mp4", dest)
    assert not dest.exists()
    assert not dest.parent.exists() or leftovers(dest.parent) == []


BAD_KEYS = ["../escape", "inputs/../../escape", "/etc/passwd", "a//b", "a\\b", "a/\x00b", "a/", ".."]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_escaping_the_prefix_are_refused(storage, tmp_path, key):
    source = random_file(tmp_path / "a", 10)
    before = sorted(tmp_path.iterdir())
    calls = [
        lambda: storage.upload_file(source, key),
        lambda: storage.download_file(key, tmp_path / "dl"),
        lambda: storage.exists(key),
        lambda: storage.size(key),
        lambda: storage.delete(key),
        lambda: storage.presigned_url(key),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()
    with pytest.raises(InvalidKeyError):
        list(storage.list("../x"))
    with pytest.raises(InvalidKeyError):
        storage.delete_prefix("a/../..")
    assert list(storage.list()) == []
    assert sorted(tmp_path.iterdir()) == before  # nothing written beside the root


def test_readers_never_see_a_partial_upload(storage, tmp_path):
    source = random_file(tmp_path / "a.mp4", 12 * MiB)  # multipart on S3
    seen_during: list[tuple[bool, list[str]]] = []

    def progress(done: int) -> None:
        if not seen_during:
            seen_during.append((storage.exists("inputs/v1/a.mp4"), [o.key for o in storage.list()]))

    storage.upload_file(source, "inputs/v1/a.mp4", progress=progress)
    assert seen_during == [(False, [])]
    assert [o.key for o in storage.list()] == ["inputs/v1/a.mp4"]


def test_cancel_mid_upload_leaves_nothing(storage, tmp_path):
    source = random_file(tmp_path / "a.mp4", 6 * MiB)  # a single PUT on S3
    cancel = threading.Event()

    def progress(done: int) -> None:
        if done >= MiB:
            cancel.set()

    with pytest.raises(TransferCancelled, match="cancelled"):
        storage.upload_file(source, "inputs/v1/a.mp4", progress=progress, cancel=cancel)
    assert not storage.exists("inputs/v1/a.mp4")
    assert list(storage.list()) == []


def test_cancel_before_start_transfers_nothing(storage, tmp_path):
    source = random_file(tmp_path / "a.mp4", 1000)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TransferCancelled):
        storage.upload_file(source, "inputs/v1/a.mp4", cancel=cancel)
    assert list(storage.list()) == []


def test_cancel_mid_download_keeps_the_old_destination(storage, tmp_path):
    storage.upload_file(random_file(tmp_path / "a.mp4", 6 * MiB), "inputs/v1/a.mp4")
    dest = tmp_path / "dl" / "a.mp4"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    cancel = threading.Event()

    with pytest.raises(TransferCancelled):
        storage.download_file("inputs/v1/a.mp4", dest, progress=lambda done: cancel.set(), cancel=cancel)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.mp4"]


def test_big_upload_reports_monotonic_progress_to_the_exact_size(storage, big_file, tmp_path):
    seen: list[int] = []
    lock = threading.Lock()

    def progress(done: int) -> None:
        with lock:
            seen.append(done)

    assert storage.upload_file(big_file, "inputs/v1/big.bin", progress=progress) == BIG_SIZE
    assert len(seen) > 10
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert seen[-1] == BIG_SIZE
    assert storage.size("inputs/v1/big.bin") == BIG_SIZE

    if isinstance(storage, S3Storage):
        head = boto3.client("s3").head_object(Bucket=storage.bucket, Key=f"{storage.prefix}/inputs/v1/big.bin")
        parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])  # a multipart ETag ends in -<parts>
        assert parts == BIG_SIZE // (8 * MiB) + 1

    seen.clear()
    dest = tmp_path / "big-copy.bin"
    assert storage.download_file("inputs/v1/big.bin", dest, progress=progress) == BIG_SIZE
    assert seen[-1] == BIG_SIZE and all(a < b for a, b in itertools.pairwise(seen))
    assert sha256(dest) == sha256(big_file)


def test_big_upload_cancelled_midway_leaves_no_object_or_parts(storage, big_file):
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        if done >= 30 * MiB:
            cancel.set()

    with pytest.raises(TransferCancelled, match="inputs/v1/big.bin"):
        storage.upload_file(big_file, "inputs/v1/big.bin", progress=progress, cancel=cancel)
    assert seen[-1] < BIG_SIZE
    assert not storage.exists("inputs/v1/big.bin")
    assert list(storage.list()) == []
    if isinstance(storage, S3Storage):
        assert multipart_uploads(storage) == []  # aborted, not left to cost money
    else:
        assert leftovers(storage.root / "inputs" / "v1") == []


def test_check_passes_and_leaves_nothing(storage):
    storage.check()
    assert list(storage.list()) == []
    if isinstance(storage, LocalStorage):
        assert storage.root.is_dir() and leftovers(storage.root) == []


def test_upload_of_a_missing_local_file_says_so(storage, tmp_path):
    with pytest.raises(StorageError, match="No such file"):
        storage.upload_file(tmp_path / "nope.mp4", "inputs/v1/nope.mp4")
    assert list(storage.list()) == []


# -- opening by URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://example.com/bucket",
        "ftp://host/dir",
        "gs://bucket/prefix",
        "/absolute/without/scheme",
        "relative/dir",
        "file://relative/dir",
        "file:relative/dir",
        "s3://",
        "s3:///prefix-only",
        "s3://bucket/../up",
        "s3://bucket/a?x=1",
    ],
)
def test_bad_urls_are_refused_clearly(url):
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert "s3://bucket[/prefix]" in message or "invalid prefix" in message


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID") as info:
        open_storage("s3://AKIDEXAMPLE:verysecret@bucket/prefix")
    assert "verysecret" not in str(info.value)


def test_open_storage_picks_the_backend(s3_url, tmp_path):
    s3 = open_storage(s3_url)
    assert isinstance(s3, S3Storage)
    assert (s3.url, s3.prefix) == (s3_url, "farm")
    folder = open_storage(tmp_path.as_uri())
    assert isinstance(folder, LocalStorage)
    assert folder.root == tmp_path
    assert folder.url == tmp_path.as_uri()
    assert not (tmp_path / "later").exists()
    open_storage((tmp_path / "later").as_uri())  # opening creates nothing; check() or a write does
    assert not (tmp_path / "later").exists()


def test_settings_default_storage_url_opens_a_folder(settings):
    storage = open_storage(settings.effective_storage_url)
    assert isinstance(storage, LocalStorage)
    assert storage.root == settings.data_dir / "storage"


# -- S3 only -------------------------------------------------------------------------------------


def test_s3_keeps_objects_under_its_prefix(s3_url, tmp_path):
    storage = open_storage(s3_url)
    client = boto3.client("s3")
    client.put_object(Bucket=storage.bucket, Key="elsewhere/x.mp4", Body=b"not ours")
    client.put_object(Bucket=storage.bucket, Key="farmer/y.mp4", Body=b"not ours either")
    storage.upload_file(random_file(tmp_path / "a", 10), "inputs/v1/a.mp4")

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=storage.bucket)["Contents"]]
    assert "farm/inputs/v1/a.mp4" in keys
    assert [o.key for o in storage.list()] == ["inputs/v1/a.mp4"]

    whole_bucket = open_storage(f"s3://{storage.bucket}")
    assert sorted(o.key for o in whole_bucket.list()) == [
        "elsewhere/x.mp4",
        "farm/inputs/v1/a.mp4",
        "farmer/y.mp4",
    ]


def test_s3_check_on_a_missing_bucket(s3_url):
    storage = open_storage("s3://no-such-bucket-here/farm")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist") as info:
        storage.check()
    assert SECRET not in str(info.value)


def test_s3_operations_on_a_missing_bucket_say_so(s3_url, tmp_path):
    storage = open_storage("s3://no-such-bucket-here")
    with pytest.raises(StorageError, match="does not exist"):
        storage.upload_file(random_file(tmp_path / "a", 10), "inputs/v1/a.mp4")
    with pytest.raises(StorageError, match="does not exist"):
        list(storage.list())


def test_s3_check_on_an_unreachable_endpoint(s3_url, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    storage = open_storage(s3_url)
    with pytest.raises(StorageError, match=rf"cannot reach S3 endpoint http://127.0.0.1:{port}") as info:
        storage.check()
    assert SECRET not in str(info.value)


def test_s3_without_credentials_says_what_to_set(s3_url, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    # No shared files and no instance metadata either, so the chain really finds nothing.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_storage(s3_url).check()


def test_s3_presigned_url_expiry_is_validated(s3_url):
    storage = open_storage(s3_url)
    for expires in (0, -1, 8 * 24 * 3600, 1.5):
        with pytest.raises(ValueError, match="expires"):
            storage.presigned_url("inputs/v1/a.mp4", expires=expires)


# -- folder only ---------------------------------------------------------------------------------


def test_folder_check_when_the_root_is_a_file(tmp_path):
    blocker = tmp_path / "storage"
    blocker.write_text("in the way")
    with pytest.raises(StorageError, match="is a file, not a folder"):
        open_storage(blocker.as_uri()).check()


def test_folder_check_when_the_root_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot create storage folder"):
        open_storage((tmp_path / "file" / "storage").as_uri()).check()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_folder_check_when_the_root_is_not_writable(tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="is not writable"):
            open_storage(root.as_uri()).check()
    finally:
        root.chmod(0o700)


def test_folder_hides_temp_files_and_prunes_empty_folders(tmp_path):
    storage = open_storage((tmp_path / "storage").as_uri())
    storage.upload_file(random_file(tmp_path / "a", 10), "outputs/j1/attempt-0/a.mp4")
    (storage.root / "outputs" / "j1" / "attempt-0" / ".encodeflow-tmp-stale").write_bytes(b"partial")
    assert [o.key for o in storage.list()] == ["outputs/j1/attempt-0/a.mp4"]

    storage.upload_file(random_file(tmp_path / "b", 10), "inputs/v1/b.mp4")
    storage.delete("inputs/v1/b.mp4")
    assert list((storage.root / "inputs").iterdir()) == [], "the object's own folder goes; the key's first stays"


def test_folder_refuses_a_relative_root():
    with pytest.raises(StorageError, match="absolute"):
        LocalStorage(Path("relative/dir"))


def test_progress_stays_monotonic_when_a_retry_rewinds_it():
    from farm.services.storage.base import ProgressTracker

    seen: list[int] = []
    tracker = ProgressTracker(seen.append, None, "upload of 'k'")
    for amount in (100, 50, -50, 50, 20):  # a part sent again after a reset connection
        tracker.add(amount)
    tracker.finish(220)
    assert seen == [100, 150, 170, 220]
