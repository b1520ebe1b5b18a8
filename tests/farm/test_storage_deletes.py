"""Folder storage whose root is a user's folder (``file:///home/me``): deleting an object or sweeping
temp files removes only what EncodeFlow wrote."""

from __future__ import annotations

import os
import time

from farm.services.storage import open_storage
from tests.files import random_file


def test_deleting_an_object_keeps_the_folders_the_user_had(tmp_path):
    home = tmp_path / "home"
    (home / "outputs").mkdir(parents=True)  # the user's own, empty for now
    (home / "notes.txt").write_text("mine")
    storage = open_storage(home.as_uri())
    storage.upload_file(random_file(tmp_path / "a", 10), "outputs/j1/attempt-1/a.mp4")

    storage.delete("outputs/j1/attempt-1/a.mp4")

    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == ["notes.txt", "outputs"]


def test_the_sweep_removes_only_temp_files_it_wrote(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    storage = open_storage(home.as_uri())
    storage.check()
    work = home / ".local" / "share" / "encodeflow" / "work" / "n1"
    work.mkdir(parents=True)
    others = [work / ".encodeflow-node", home / ".encodeflow-notes", home / "projects" / ".encodeflow-tmp-draft"]
    ours = home / "outputs" / "j1" / f".encodeflow-tmp-{'0' * 32}-4242-other-host"
    for path in [*others, ours]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        two_days_ago = time.time() - 2 * 24 * 3600
        os.utime(path, (two_days_ago, two_days_ago))

    assert storage.sweep_leftovers() == 1
    assert not ours.exists()
    assert all(path.exists() for path in others), [p for p in others if not p.exists()]
