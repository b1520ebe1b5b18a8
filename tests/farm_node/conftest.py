"""Fixtures of the node's tests."""

from __future__ import annotations

import pytest

from farm.db import open_database
from farm.settings import Settings
from farm.storage import open_storage


@pytest.fixture
def services(redis_url, pg_url, clip):
    settings = Settings.load()
    db = open_database(settings.effective_database_url)
    storage = open_storage(settings.effective_storage_url)
    yield settings, db, storage, clip
    db.dispose()
