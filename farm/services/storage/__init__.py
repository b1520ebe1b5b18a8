"""Where videos and results are kept: one interface (``Storage``), an S3 and a folder backend.

``open_storage(settings.effective_storage_url)`` gives the backend the URL names:
``s3://bucket[/prefix]`` or ``file:///absolute/dir``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit
from urllib.request import url2pathname

from farm.base.redact import redact_url
from farm.domain.object_keys import InvalidKeyError, normalize_prefix
from farm.services.storage.base import (
    ObjectNotFound,
    ProgressCallback,
    Storage,
    StorageError,
    StoredObject,
    TransferCancelled,
)
from farm.services.storage.local import LocalStorage
from farm.services.storage.retry import RetryPolicy, StorageUnavailable

__all__ = [
    "LocalStorage",
    "RetryPolicy",
    "ObjectNotFound",
    "ProgressCallback",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "StoredObject",
    "TransferCancelled",
    "open_storage",
]

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_FORMS = "use s3://bucket[/prefix] or file:///absolute/dir"


def open_storage(url: str, policy: RetryPolicy | None = None) -> Storage:
    """The backend for a storage URL; ``StorageError`` says what is wrong with a bad one.

    ``policy`` says how long an outage is ridden out (``RetryPolicy.from_settings(settings)``;
    default: a minute). Nothing is contacted here; call ``check()`` to find out whether the storage
    can be used.
    """
    policy = policy or RetryPolicy()
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    if not isinstance(url, str) or not url:
        raise StorageError(f"no storage URL given; {_FORMS}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StorageError(f"storage URL {shown!r} cannot be parsed ({exc}); {_FORMS}") from None
    if parts.scheme == "s3":
        return _open_s3(parts, shown, policy)
    if parts.scheme == "file":
        return _open_folder(parts, shown, policy)
    raise StorageError(f"unsupported storage URL {shown!r}; {_FORMS}")


def _open_s3(parts: SplitResult, shown: str, policy: RetryPolicy) -> Storage:
    from farm.services.storage.s3 import S3Storage  # boto3 takes a while to import; folder users skip it

    if "@" in parts.netloc:
        raise StorageError(
            f"storage URL {shown!r} holds credentials; remove them and set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
        )
    if parts.query or parts.fragment:
        raise StorageError(f"storage URL {shown!r} has a query or fragment; {_FORMS}")
    if not _BUCKET.fullmatch(parts.netloc):
        raise StorageError(f"storage URL {shown!r} does not name a valid bucket; {_FORMS}")
    try:
        prefix = normalize_prefix(unquote(parts.path))
    except InvalidKeyError as exc:
        raise StorageError(f"storage URL {shown!r} has an invalid prefix: {exc}") from None
    return S3Storage(parts.netloc, prefix, policy=policy)


def _open_folder(parts: SplitResult, shown: str, policy: RetryPolicy) -> Storage:
    if parts.netloc not in ("", "localhost"):
        raise StorageError(
            f"storage URL {shown!r} is not an absolute local path (the folder went into the host "
            f"part); {_FORMS}, with three slashes"
        )
    if parts.query or parts.fragment:
        raise StorageError(f"storage URL {shown!r} has a query or fragment; {_FORMS}")
    path = Path(url2pathname(parts.path))
    if not parts.path.startswith("/") or not path.is_absolute():
        raise StorageError(f"storage URL {shown!r} is not an absolute path; {_FORMS}")
    return LocalStorage(path, policy=policy)


def __getattr__(name: str) -> Any:
    # S3Storage is re-exported lazily so that importing farm.services.storage does not import boto3.
    if name == "S3Storage":
        from farm.services.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
