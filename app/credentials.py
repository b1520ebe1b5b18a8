"""S3 credentials kept in the operating system's keyring (macOS Keychain, Windows Credential
Locker, Secret Service on Linux desktops), through the ``keyring`` package.

Where there is no usable keyring (a headless Linux box, where keyring falls back to its "fail" or
"null" backend) ``available()`` says so and the Settings page disables saving; credentials then
come from boto3's usual chain, i.e. the environment or ``~/.aws/credentials``.

How stored credentials reach S3: ``apply_to_environment()`` copies them into ``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` of this process (the app calls it at start-up, before it opens the
storage), so boto3 and the local farm's node processes, which inherit the environment, use them.
Credentials already set in the environment win at start-up; saving on the Settings page replaces
them for this run, because the user just asked for those. Nodes on other machines read their own
environment or ``~/.aws/credentials``.

Every function here may block (a keyring can ask the desktop to unlock): call them through the
background runner.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import NamedTuple

SERVICE = "EncodeFlow S3"
_KEY_ID = "access-key-id"
_SECRET = "secret-access-key"
ENV_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_SECRET = "AWS_SECRET_ACCESS_KEY"

NO_KEYRING_MESSAGE = (
    "No system keyring found: credentials are taken from the environment "
    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or ~/.aws/credentials"
)


class CredentialsError(RuntimeError):
    """The keyring could not read or store the credentials; the message says why."""


class S3Credentials(NamedTuple):
    access_key_id: str
    secret: str


def available() -> tuple[bool, str]:
    """Whether a real keyring backend is usable here, and a sentence for the user."""
    backend = _backend()
    if backend is None:
        return False, NO_KEYRING_MESSAGE
    return True, f"Credentials are kept in the system keyring ({_backend_name(backend)})."


def load() -> S3Credentials | None:
    """The stored credentials, or ``None`` when there are none (or no keyring)."""
    keyring = _keyring_or_none()
    if keyring is None or _backend() is None:
        return None
    try:
        key_id = keyring.get_password(SERVICE, _KEY_ID)
        secret = keyring.get_password(SERVICE, _SECRET)
    except Exception as exc:  # keyring backends raise their own types (DBus errors, locked keychains...)
        raise CredentialsError(f"cannot read the S3 credentials from the system keyring: {exc}") from exc
    if not key_id or not secret:
        return None
    return S3Credentials(key_id, secret)


def save(access_key_id: str, secret: str) -> None:
    """Store both values, replacing what was there; two empty values remove them."""
    keyring = _keyring_or_none()
    if keyring is None or _backend() is None:
        raise CredentialsError(NO_KEYRING_MESSAGE)
    access_key_id, secret = access_key_id.strip(), secret.strip()
    if not access_key_id and not secret:
        clear()
        return
    if not access_key_id or not secret:
        raise CredentialsError("give both the S3 access key id and the secret access key, or neither")
    try:
        keyring.set_password(SERVICE, _KEY_ID, access_key_id)
        keyring.set_password(SERVICE, _SECRET, secret)
    except Exception as exc:
        raise CredentialsError(
            f"the system keyring did not store the S3 credentials: {exc}; unlock the keyring and try again"
        ) from exc


def clear() -> None:
    keyring = _keyring_or_none()
    if keyring is None or _backend() is None:
        return
    from keyring.errors import PasswordDeleteError

    for user in (_KEY_ID, _SECRET):
        try:
            keyring.delete_password(SERVICE, user)
        except PasswordDeleteError:
            pass  # nothing stored
        except Exception as exc:
            raise CredentialsError(f"the system keyring did not remove the S3 credentials: {exc}") from exc


def apply_to_environment(
    credentials: S3Credentials | None = None,
    environ: MutableMapping[str, str] | None = None,
    *,
    override: bool = False,
) -> bool:
    """Put the credentials (given, or loaded from the keyring) into ``AWS_*`` variables.

    Returns whether anything was set. Without ``override``, credentials already in the
    environment are kept.
    """
    environ = os.environ if environ is None else environ
    if not override and environ.get(ENV_KEY_ID):
        return False
    if credentials is None:
        credentials = load()
    if credentials is None:
        return False
    environ[ENV_KEY_ID] = credentials.access_key_id
    environ[ENV_SECRET] = credentials.secret
    return True


# -- helpers -----------------------------------------------------------------------------------


def _keyring_or_none():
    try:
        import keyring
    except ImportError:  # the desktop extra brings it; a bare install still runs
        return None
    return keyring


def _backend():
    """The active keyring backend if it can really store secrets, else ``None``."""
    keyring = _keyring_or_none()
    if keyring is None:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:
        return None
    from keyring.backends import fail, null

    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return None
    try:
        usable = float(backend.priority) > 0
    except Exception:
        usable = False
    return backend if usable else None


def _backend_name(backend) -> str:
    name = getattr(backend, "name", "") or type(backend).__name__
    return str(name)
