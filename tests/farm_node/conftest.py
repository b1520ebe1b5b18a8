"""Fixtures of the node's tests."""

from __future__ import annotations

import pytest

from farm.base.settings import Settings
from farm.services.db import open_database
from farm.services.storage import open_storage


@pytest.fixture
def services(redis_url, pg_url, clip):
    settings = Settings.load()
    db = open_database(settings.effective_database_url)
    storage = open_storage(settings.effective_storage_url)
    yield settings, db, storage, clip
    db.dispose()


@pytest.fixture(scope="module")
def long_clip(make_clip):
    """20 s at 25 fps: with ``tests.clips.realtime_args`` a run that lasts 20 s."""
    return make_clip(320, 240, 20.0, audio=True, fps=25)
