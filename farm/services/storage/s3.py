"""Storage in an S3 bucket: AWS, MinIO, Ceph, or anything else that speaks the S3 API.

The endpoint and credentials come from boto3's usual chain (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, profiles, instance roles); this module never reads them itself. Large files
go up and down in parts, several at a time, through s3transfer's manager. An upload is atomic by
S3's own rules: the object appears when its PUT or its CompleteMultipartUpload succeeds, and a
cancelled or failed multipart upload is aborted so that its parts do not linger (and cost money).

Outages: botocore retries each request a few times at once (standard mode, with connect and read
timeouts), and ``RetryPolicy`` starts a transfer that still failed again from the start, with
backoff, until it gives up with ``StorageUnavailable``. A multipart upload whose abort could not
get through (the endpoint was down) is aborted by this storage's next upload or sweep, and every
node's start aborts incomplete uploads older than a day under the prefix (what a crash left).
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.constants import CLASSIC_TRANSFER_CLIENT
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from s3transfer.exceptions import RetriesExceededError
from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from farm.base.redact import redact_url
from farm.domain.object_keys import InvalidKeyError, join_key, normalize_prefix
from farm.services.storage.base import (
    INTERNAL_PREFIX,
    ObjectNotFound,
    ProgressCallback,
    ProgressTracker,
    Storage,
    StorageError,
    StoredObject,
    TransferCancelled,
)
from farm.services.storage.retry import RetryPolicy, StorageUnavailable, unavailable_message

log = logging.getLogger(__name__)

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit
_AWS_DOMAINS = ("amazonaws.com", "amazonaws.com.cn")
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_CANCEL_POLL_SECONDS = 0.05
_NO_RETRY_ID = "encodeflow-no-retry-when-cancelled"
REQUEST_ATTEMPTS = 3  # botocore's quick retries of one request, inside each of RetryPolicy's tries
STALE_UPLOAD_AGE = timedelta(days=1)  # an incomplete multipart upload this old has no live writer
_SERVER_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket``; the key ``a/b`` is the S3 object ``<prefix>/a/b``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        session: boto3.session.Session | None = None,
        policy: RetryPolicy | None = None,
    ):
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.policy = policy or RetryPolicy()
        self._session = session or boto3.session.Session()
        self._client = _make_client(
            self._session,
            max_attempts=REQUEST_ATTEMPTS,
            connect_timeout=self.policy.connect_timeout,
            read_timeout=self.policy.read_timeout,
        )
        # Multipart uploads started and not yet completed or aborted, by object key, so that a
        # failed upload can abort its own parts; and those whose abort did not get through.
        self._uploads_lock = threading.Lock()
        self._open_uploads: dict[str, set[str]] = {}
        self._unaborted: set[tuple[str, str]] = set()
        self._client.meta.events.register("after-call.s3.CreateMultipartUpload", self._note_upload)
        self._transfer_config = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=4,
            use_threads=True,
            preferred_transfer_client=CLASSIC_TRANSFER_CLIENT,
        )

    @property
    def endpoint(self) -> str:
        endpoint: str = self._client.meta.endpoint_url
        return endpoint

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

        def attempt() -> None:
            try:
                self._transfer(
                    lambda manager, subscriber: manager.upload(
                        os.fspath(path), self.bucket, object_key, extra_args, [subscriber]
                    ),
                    tracker,
                )
            except BaseException:
                self._abort_uploads_of(object_key)  # s3transfer tries too, but not past an outage
                raise
            with self._uploads_lock:
                self._open_uploads.pop(object_key, None)  # completed
            self._abort_unaborted()  # the endpoint answers again: clear what the outage left

        action = f"upload {path} to {key!r}"
        with self._errors(action, key):
            self._retrying(attempt, action, tracker)
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
        action = f"download {key!r} to {dest}"
        try:
            with self._errors(action, key):
                dest.parent.mkdir(parents=True, exist_ok=True)
                future = self._retrying(
                    lambda: self._transfer(
                        lambda manager, subscriber: manager.download(
                            self.bucket, object_key, os.fspath(temp), None, [subscriber]
                        ),
                        tracker,
                    ),
                    action,
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
        size: int = future.meta.size
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
        tracker.restart()
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
            action = f"read the size of {key!r}"
            with self._errors(action, key):
                head = self._retrying(lambda: self._client.head_object(Bucket=self.bucket, Key=object_key), action)
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
                    key = item["Key"][len(base) :]
                    if key.rsplit("/", 1)[-1].startswith(INTERNAL_PREFIX):
                        continue
                    yield StoredObject(
                        key=key,
                        size=int(item["Size"]),
                        modified=item["LastModified"].astimezone(UTC),
                    )

    def delete(self, key: str) -> None:
        object_key = self._key(key)
        action = f"delete {key!r}"
        with self._errors(action, key):
            self._retrying(lambda: self._client.delete_object(Bucket=self.bucket, Key=object_key), action)

    def delete_prefix(self, prefix: str) -> int:
        prefix = normalize_prefix(prefix)
        if not prefix:
            raise InvalidKeyError("refusing to delete every object: give a non-empty prefix")
        keys = [self._key(obj.key) for obj in self.list(prefix)]
        with self._errors(f"delete the objects under {prefix!r}"):
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
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
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=expires
            )
            return url

    def check(self) -> None:
        """Reach the endpoint, find the bucket, then list and write under the prefix.

        Uses a client with few retries and short timeouts: someone is waiting for the answer.
        """
        client = _make_client(self._session, max_attempts=2, connect_timeout=5, read_timeout=15)
        probe = join_key(self.prefix, f"{INTERNAL_PREFIX}check-{uuid.uuid4().hex}")
        try:
            with self._errors("check the storage", client=client):
                client.head_bucket(Bucket=self.bucket)
                client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
                client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=probe)
        except StorageError as exc:
            # A server that is down or busy may answer later; a missing bucket or refused keys won't
            # (a node exits 1 for the first, to be restarted, and 2 for the others).
            if _transient_reason(exc.__context__) is not None:
                raise StorageUnavailable(str(exc)) from None
            raise

    def sweep_leftovers(self) -> int:
        """Abort multipart uploads that no live transfer owns: ours whose abort failed, and any
        under the prefix started more than a day ago (a node that died mid-upload)."""
        count = self._abort_unaborted()
        cutoff = datetime.now(UTC) - STALE_UPLOAD_AGE
        listed = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=listed
            ):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        count += 1
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not sweep incomplete uploads in %s: %s", self.url, _short_reason(exc))
        if count:
            log.info(
                "aborted %d incomplete multipart upload(s) in %s left by failed or crashed uploads", count, self.url
            )
        return count

    # -- helpers -----------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _retrying(self, call: Callable[[], Any], action: str, tracker: ProgressTracker | None = None) -> Any:
        """``call()`` under the retry policy; a cancelled transfer is never retried."""

        def unavailable(seconds: float, tries: int, reason: str) -> StorageUnavailable:
            return StorageUnavailable(
                unavailable_message(
                    f"{self.url} at {redact_url(self.endpoint)}",
                    action,
                    seconds,
                    tries,
                    reason,
                    "check that the S3 server is running and reachable from this machine "
                    "(AWS_ENDPOINT_URL), then try again",
                )
            )

        return self.policy.run(
            call,
            transient=_transient_reason,
            unavailable=unavailable,
            cancel=tracker.cancel_event if tracker is not None else None,
            what=f"{action} in {self.url}",
        )

    def _note_upload(self, parsed: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if parsed and parsed.get("UploadId") and parsed.get("Key"):
            with self._uploads_lock:
                self._open_uploads.setdefault(parsed["Key"], set()).add(parsed["UploadId"])

    def _abort_uploads_of(self, object_key: str) -> None:
        """Queue the failed upload's parts for an abort. Not sent now: the endpoint may be the thing
        that is down, and each abort would wait out its timeouts; the next upload that gets through
        (and every node's start-up sweep) sends them."""
        with self._uploads_lock:
            ids = self._open_uploads.pop(object_key, set())
            self._unaborted.update((object_key, upload_id) for upload_id in ids)

    def _abort_unaborted(self) -> int:
        """Abort the multipart uploads whose abort has not got through yet; keep those that fail."""
        with self._uploads_lock:
            pending = list(self._unaborted)
        aborted = 0
        for object_key, upload_id in pending:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
                aborted += 1
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                    log.info(
                        "could not abort the failed upload of %s yet (%s); will try again",
                        object_key,
                        _short_reason(exc),
                    )
                    continue
                # already aborted (s3transfer's own clean-up got through)
            except BotoCoreError as exc:
                log.info(
                    "could not abort the failed upload of %s yet (%s); will try again", object_key, _short_reason(exc)
                )
                continue
            with self._uploads_lock:
                self._unaborted.discard((object_key, upload_id))
        return aborted

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


class _Subscriber(BaseSubscriber):  # type: ignore[misc]  # s3transfer has no type hints
    def __init__(self, tracker: ProgressTracker):
        self.tracker = tracker
        self.done = threading.Event()

    def on_progress(self, future: TransferFuture, bytes_transferred: int, **kwargs: Any) -> None:
        self.tracker.add(bytes_transferred)

    def on_done(self, future: TransferFuture, **kwargs: Any) -> None:
        self.done.set()


def _client_error(exc: ClientError, action: str, key: str | None, bucket: str, url: str, endpoint: str) -> StorageError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = error.get("Message") or ""
    if code == "NoSuchBucket" or (code in _MISSING_CODES and key is None):
        return StorageError(f"bucket {bucket!r} does not exist at {endpoint}; create it or fix ENCODEFLOW_STORAGE_URL")
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


def _transient_reason(exc: BaseException | None) -> str | None:
    """Why an S3 error may pass on its own (down, unreachable, slow, busy), or ``None``."""
    seen = 0
    while exc is not None and seen < 10:
        seen += 1
        if isinstance(exc, TransferCancelled):
            return None
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(error.get("Code", ""))
            if status >= 500 or code in _SERVER_BUSY:
                return f"the server answered {code or status}"
            return None
        if isinstance(exc, (BotoConnectionError, HTTPClientError, RetriesExceededError, ConnectionError, TimeoutError)):
            return _short_reason(exc)
        if isinstance(exc, OSError) and exc.errno is None:
            return _short_reason(exc)  # urllib3's connection errors during a body
        exc = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
    return None


def _short_reason(exc: BaseException) -> str:
    """A few words for a network error, without the long request URL botocore puts in its text."""
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return _short_reason(exc.last_exception)
    if isinstance(exc, ConnectTimeoutError):
        return "connecting timed out"
    if isinstance(exc, ReadTimeoutError) or "Read timed out" in str(exc):
        return "no answer within the read timeout"
    if isinstance(exc, EndpointConnectionError):
        return "could not connect (connection refused or host unreachable)"
    if isinstance(exc, ConnectionClosedError) or "reset" in str(exc).lower():
        return "the connection was reset"
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return redact_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _make_client(
    session: boto3.session.Session, *, max_attempts: int, connect_timeout: float, read_timeout: float
) -> Any:
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
