"""A node's work dir on real folders and real processes: what the node makes, adopts, refuses,
sweeps and kills, and everything it must leave alone."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket

import pytest

from farm_node.workdir import MARKER, WorkDir, WorkDirError, entries, job_dir_name
from tests.processes import ended, node_like, orphaned, slow_ffmpeg


def users_folder(path):
    """A folder as a user keeps it: files, a sub-folder that looks like a run folder, a hidden file."""
    (path / "project-1").mkdir(parents=True)
    (path / "project-1" / "cut.mov").write_bytes(b"footage")
    (path / "notes.txt").write_text("mine")
    (path / ".config").write_text("mine too")
    return sorted(p.name for p in path.rglob("*"))


def test_a_new_work_dir_is_made_and_marked_as_the_nodes(tmp_path):
    work = WorkDir.claim(tmp_path / "data" / "work" / "n1", "n1")
    try:
        marker = json.loads((work.path / MARKER).read_text())
        assert marker == {"node": "n1", "host": socket.gethostname(), "pid": os.getpid()}
        assert entries(work.path) == []
    finally:
        work.release()


def test_an_empty_existing_folder_is_adopted(tmp_path):
    made_by_systemd = tmp_path / "cache" / "work"
    made_by_systemd.mkdir(parents=True)
    WorkDir.claim(made_by_systemd, "n1").release()
    assert (made_by_systemd / MARKER).is_file()


def test_a_users_folder_is_refused_and_left_as_it_was(tmp_path):
    folder = tmp_path / "projects"
    before = users_folder(folder)
    with pytest.raises(WorkDirError) as refused:
        WorkDir.claim(folder, "n1")
    message = str(refused.value)
    assert str(folder) in message and "'notes.txt'" in message and "--work-dir" in message
    assert sorted(p.name for p in folder.rglob("*")) == before, "not a file touched, no marker written"


def test_a_file_or_an_unwritable_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WorkDirError, match="is a file, not a folder"):
        WorkDir.claim(tmp_path / "a-file", "n1")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: every folder is writable")
        with pytest.raises(WorkDirError, match="cannot write in work dir"):
            WorkDir.claim(locked, "n1")
    finally:
        locked.chmod(0o700)


def test_a_marker_that_is_a_symlink_is_never_written_through(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / MARKER).symlink_to(target)
    with pytest.raises(WorkDirError, match="cannot write in work dir"):
        WorkDir.claim(tmp_path / "work", "n1")
    assert target.read_text() == "root:x:0:0"


def test_the_sweep_removes_only_run_folders_and_names_the_rest(tmp_path, caplog):
    work = WorkDir.claim(tmp_path / "work" / "n1", "n1")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.mov").write_bytes(b"footage")
    run = work.path / job_dir_name("0b3c-job", 2)
    run.mkdir()
    (run / "input.mp4").write_bytes(b"half")
    (work.path / "admin-notes.txt").write_text("keep")
    (work.path / "linked-3").symlink_to(outside, target_is_directory=True)  # named like a run folder
    (work.path / "renders-1").mkdir()  # named like one too, but holds what no run writes
    (work.path / "renders-1" / "final.mov").write_bytes(b"footage")

    with caplog.at_level(logging.WARNING, logger="farm_node.workdir"):
        work.sweep()
        work.sweep()  # the stop path sweeps again: no second warning for the same things
    work.release()

    assert [p.name for p in entries(work.path)] == ["admin-notes.txt", "linked-3", "renders-1"]
    assert (outside / "precious.mov").read_bytes() == b"footage", "a symlink is never followed"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "did not make" in warnings[0] and "'admin-notes.txt'" in warnings[0] and "'linked-3'" in warnings[0]


def test_a_work_dir_a_crash_of_an_older_node_left_is_adopted(tmp_path):
    """Work dirs had no marker before; one with nothing but a dead run's folder is a node's."""
    legacy = tmp_path / "cache" / "work"
    run = legacy / job_dir_name("old-job", 1)
    run.mkdir(parents=True)
    for name in ("input.mov", "output.mp4", f".encodeflow-tmp-{'0' * 32}-4242-render-01"):
        (run / name).write_bytes(b"half")
    (legacy / job_dir_name("older-job", 3)).mkdir()  # died before its download began

    work = WorkDir.claim(legacy, "n1")
    work.sweep()
    work.release()
    assert entries(legacy) == []


def test_a_folder_with_one_thing_no_run_makes_is_not_a_nodes(tmp_path):
    folder = tmp_path / "work"
    (folder / job_dir_name("old-job", 1)).mkdir(parents=True)
    (folder / job_dir_name("old-job", 1) / "input.mov").write_bytes(b"half")
    (folder / "shots-2").mkdir()
    (folder / "shots-2" / "take.mov").write_bytes(b"footage")
    with pytest.raises(WorkDirError, match="was not made by farm-node"):
        WorkDir.claim(folder, "n1")
    assert (folder / job_dir_name("old-job", 1) / "input.mov").exists()


def test_a_work_dir_in_use_by_a_live_node_is_refused_naming_it_and_free_once_it_died(tmp_path):
    path = tmp_path / "work" / "shared"
    holder = node_like(
        tmp_path,
        f"""
        from pathlib import Path
        from farm_node.workdir import WorkDir
        held = WorkDir.claim(Path({str(path)!r}), "first")
        print("ready", flush=True)
    """,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        run = path / job_dir_name("job", 1)
        run.mkdir()
        with pytest.raises(WorkDirError) as refused:
            WorkDir.claim(path, "second")
        assert f"in use by node first (pid {holder.pid} on {socket.gethostname()})" in str(refused.value)
        assert run.is_dir(), "a refused node sweeps nothing"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    work = WorkDir.claim(path, "second")  # the kernel dropped the dead holder's lock
    work.sweep()
    work.release()
    assert entries(path) == []


def test_only_an_orphaned_ffmpeg_in_the_work_dir_is_killed(tmp_path):
    work = WorkDir.claim(tmp_path / "work" / "n1", "n1")
    other = tmp_path / "work" / "n10"  # a neighbour whose path starts with ours
    orphan = orphaned(slow_ffmpeg(work.path / job_dir_name("dead-run", 1) / "output.mp4"))
    neighbours = orphaned(slow_ffmpeg(other / job_dir_name("job", 1) / "output.mp4"))
    live_node = node_like(
        tmp_path,
        f"""
        import subprocess
        ffmpeg = subprocess.Popen({slow_ffmpeg(work.path / job_dir_name("live-run", 1) / "output.mp4")!r},
                                  start_new_session=True, stdin=subprocess.DEVNULL)
        print(ffmpeg.pid, flush=True)
    """,
    )
    try:
        live_ffmpeg = int(live_node.stdout.readline())
        assert work.stop_orphans() == [orphan.pid]
        assert ended(orphan)
        assert orphan.pid != live_ffmpeg and os.kill(live_ffmpeg, 0) is None, "a live node's FFmpeg runs on"
        assert neighbours.is_running(), "another work dir's FFmpeg runs on"
    finally:
        for pid in (live_ffmpeg, neighbours.pid, live_node.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, UnboundLocalError):
                pass
        live_node.wait(10)
        work.release()
