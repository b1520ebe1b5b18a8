"""Storage in an S3 bucket: AWS, MinIO, Ceph, or anything else that speaks the S3 API.

The endpoint and credentials come from boto3's usual chain (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, profiles, instance roles); this module never reads them itself. Large files
go up and down in parts, several at a time, through s3transfer's manager. An upload is atomic by
S3's own rules: the object appears when its PUT or its CompleteMultipartUpload succeeds, and a
cancelled or failed multipart upload is aborted so that its parts do not linger (and cost money).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import threading
import uuid
from datetime import timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import boto3
from boto3.s3.constants import CLASSIC_TRANSFER_CLIENT
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from farm.keys import InvalidKeyError, join_key, normalize_prefix
from farm.storage.base import (
    INTERNAL_PREFIX,
    ObjectNotFound,
    ProgressCallback,
    ProgressTracker,
    Storage,
    StorageError,
    StoredObject,
    TransferCancelled,
)

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit
_AWS_DOMAINS = ("amazonaws.com", "amazonaws.com.cn")
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_CANCEL_POLL_SECONDS = 0.05
_NO_RETRY_ID = "encodeflow-no-retry-when-cancelled"


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket``; the key ``a/b`` is the S3 object ``<prefix>/a/b``."""

    def __init__(self, bucket: str, prefix: str = "", session: boto3.session.Session | None = None):
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._session = session or boto3.session.Session()
        self._client = _make_client(self._session, max_attempts=5, connect_timeout=10, read_timeout=60)
        self._transfer_config = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=4,
            use_threads=True,
            preferred_transfer_client=CLASSIC_TRANSFER_CLIENT,
        )

    @property
    def endpoint(self) -> str:
        return self._client.meta.endpoint_url

    # -- transfers ---------------------------------------------------------------------------
    def upload_file(
        self,
        path: Path,
        key: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        object_key = self._key(key)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise StorageError(f"cannot upload {path}: {exc.strerror or exc}") from None
        extra_args: dict[str, Any] = {}
        content_type, _ = mimetypes.guess_type(object_key)
        if content_type:
            extra_args["ContentType"] = content_type
        tracker = ProgressTracker(progress, cancel, f"upload of {key!r} to {self.url}")
        with self._errors(f"upload {path} to {key!r}", key):
            self._transfer(
                lambda manager, subscriber: manager.upload(
                    os.fspath(path), self.bucket, object_key, extra_args, [subscriber]
                ),
                tracker,
            )
        tracker.finish(size)
        return size

    def download_file(
        self,
        key: str,
        dest: Path,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        object_key = self._key(key)
        dest = Path(dest)
        tracker = ProgressTracker(progress, cancel, f"download of {key!r} from {self.url}")
        temp = dest.parent / f"{INTERNAL_PREFIX}tmp-{uuid.uuid4().hex}"
        try:
            with self._errors(f"download {key!r} to {dest}", key):
                dest.parent.mkdir(parents=True, exist_ok=True)
                future = self._transfer(
                    lambda manager, subscriber: manager.download(
                        self.bucket, object_key, os.fspath(temp), None, [subscriber]
                    ),
                    tracker,
                )
                # s3transfer renamed its own temp file into ours; make the data durable first.
                with open(temp, "r+b") as fh:
                    os.fsync(fh.fileno())
                tracker.raise_if_cancelled()
                os.replace(temp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        size = future.meta.size
        tracker.finish(size)
        return size

    def _transfer(
        self, start: Callable[[TransferManager, BaseSubscriber], TransferFuture], tracker: ProgressTracker
    ) -> TransferFuture:
        """Run one s3transfer transfer to the end, cancelling it when the tracker's event is set.

        Cancelling works two ways: the progress hook raises inside the data path (which stops a
        request in flight), and the future is cancelled (which stops one that is queued or
        waiting to retry). Either way s3transfer aborts a multipart upload before ``result()``
        returns, and the manager's exit waits for every thread.
        """
        tracker.raise_if_cancelled()
        subscriber = _Subscriber(tracker)
        try:
            with create_transfer_manager(self._client, self._transfer_config) as manager:
                future = start(manager, subscriber)
                while not subscriber.done.wait(_CANCEL_POLL_SECONDS):
                    if tracker.cancelled:
                        future.cancel()
                        break
                future.result()
        except Exception:  # s3transfer's CancelledError is one too
            # Once cancelled, whatever stopped the transfer (our own exception, wrapped by
            # botocore or not, or s3transfer's) is the cancellation.
            if tracker.cancelled:
                raise TransferCancelled(f"{tracker.what} cancelled") from None
            raise
        return future

    # -- objects -----------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        object_key = self._key(key)
        try:
            with self._errors(f"read the size of {key!r}", key):
                head = self._client.head_object(Bucket=self.bucket, Key=object_key)
        except ObjectNotFound:
            return None
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        prefix = normalize_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        listed = f"{join_key(self.prefix, prefix)}/" if prefix else base
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(f"list {prefix or 'the root'}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=listed):
                for item in page.get("Contents", []):
                    key = item["Key"][len(base):]
                    if key.rsplit("/", 1)[-1].startswith(INTERNAL_PREFIX):
                        continue
                    yield StoredObject(
                        key=key,
                        size=int(item["Size"]),
                        modified=item["LastModified"].astimezone(timezone.utc),
                    )

    def delete(self, key: str) -> None:
        object_key = self._key(key)
        with self._errors(f"delete {key!r}", key):
            self._client.delete_object(Bucket=self.bucket, Key=object_key)

    def delete_prefix(self, prefix: str) -> int:
        prefix = normalize_prefix(prefix)
        if not prefix:
            raise InvalidKeyError("refusing to delete every object: give a non-empty prefix")
        keys = [self._key(obj.key) for obj in self.list(prefix)]
        with self._errors(f"delete the objects under {prefix!r}"):
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise StorageError(
                        f"cannot delete {len(response['Errors'])} object(s) under {prefix!r} in {self.url}, "
                        f"e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                    )
        return len(keys)

    def presigned_url(self, key: str, expires: int = 3600) -> str:
        if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires must be 1 to {MAX_PRESIGN_SECONDS} seconds, got {expires!r}")
        object_key = self._key(key)
        with self._errors(f"sign a URL for {key!r}", key):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=expires
            )

    def check(self) -> None:
        """Reach the endpoint, find the bucket, then list and write under the prefix.

        Uses a client with few retries and short timeouts: someone is waiting for the answer.
        """
        client = _make_client(self._session, max_attempts=2, connect_timeout=5, read_timeout=15)
        probe = join_key(self.prefix, f"{INTERNAL_PREFIX}check-{uuid.uuid4().hex}")
        with self._errors("check the storage", client=client):
            client.head_bucket(Bucket=self.bucket)
            client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
            client.delete_object(Bucket=self.bucket, Key=probe)

    # -- helpers -----------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None, client: Any = None) -> Iterator[None]:
        """Turn botocore's errors into a ``StorageError`` that says what failed and what to do."""
        endpoint = (client or self._client).meta.endpoint_url
        try:
            yield
        except StorageError:
            raise
        except ClientError as exc:
            raise _client_error(exc, action, key, self.bucket, self.url, endpoint) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise StorageError(
                f"cannot {action} in {self.url}: no complete S3 credentials found; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except BotoConnectionError as exc:
            raise StorageError(
                f"cannot reach S3 endpoint {endpoint} to {action}: {exc}; check AWS_ENDPOINT_URL "
                "and that the server is running and reachable"
            ) from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot {action} in {self.url} at {endpoint}: {exc}") from None
        except OSError as exc:
            raise StorageError(f"cannot {action}: {exc.strerror or exc}") from None


class _Subscriber(BaseSubscriber):
    def __init__(self, tracker: ProgressTracker):
        self.tracker = tracker
        self.done = threading.Event()

    def on_progress(self, future, bytes_transferred, **kwargs):
        self.tracker.add(bytes_transferred)

    def on_done(self, future, **kwargs):
        self.done.set()


def _client_error(
    exc: ClientError, action: str, key: str | None, bucket: str, url: str, endpoint: str
) -> StorageError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = error.get("Message") or ""
    if code == "NoSuchBucket" or (code in _MISSING_CODES and key is None):
        return StorageError(
            f"bucket {bucket!r} does not exist at {endpoint}; create it or fix ENCODEFLOW_STORAGE_URL"
        )
    if key is not None and code in _MISSING_CODES:
        return ObjectNotFound(f"there is no object {key!r} in {url}")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return StorageError(
            f"cannot {action} in {url}: S3 at {endpoint} rejected the credentials ({code}); "
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile)"
        )
    if code in ("AccessDenied", "403") or status == 403:
        return StorageError(
            f"cannot {action} in {url}: access denied by S3 at {endpoint}; check that the "
            "credentials may read and write this bucket and prefix"
        )
    detail = f"{code}: {message}" if message else code or str(status)
    return StorageError(f"cannot {action} in {url}: S3 at {endpoint} answered {detail}")


def _make_client(session: boto3.session.Session, *, max_attempts: int, connect_timeout: float,
                 read_timeout: float) -> Any:
    config = Config(
        signature_version="s3v4",
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=16,
    )
    client = session.client("s3", config=config)
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    if not any(host == domain or host.endswith("." + domain) for domain in _AWS_DOMAINS):
        # MinIO, Ceph, moto...: virtual-hosted buckets need DNS names that such servers rarely have.
        client = session.client("s3", config=config.merge(Config(s3={"addressing_style": "path"})))
    client.meta.events.register_first("needs-retry.s3", _no_retry_when_cancelled, unique_id=_NO_RETRY_ID)
    return client


def _no_retry_when_cancelled(caught_exception: Exception | None = None, **kwargs: Any) -> bool | None:
    """Stop botocore retrying a request that our progress hook broke off to cancel a transfer.

    botocore wraps any exception raised while sending (our ``TransferCancelled`` included) in
    ``HTTPClientError`` and would retry it with back-off; ``False`` means "do not retry".
    """
    if isinstance(caught_exception, HTTPClientError) and isinstance(
        caught_exception.kwargs.get("error"), TransferCancelled
    ):
        return False
    return None
