"""A node's name and work dir are its own: real ``farm-node`` processes that are given a name that
leaves its folder, a user's folder as work dir, or the name of a live node, and must refuse (exit 2,
one line) without touching a file, a process or a job of anyone else's; and a node killed outright
that must still restart under its name at once."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from farm.domain.keyspace import Keyspace
from tests.e2e.helpers import LONG_JOB, submit, wait_for
from tests.e2e.test_node_death import FAST, running_on

HOST = socket.gethostname()


def farm_node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``farm-node ARGS`` on the test's data dir; a node that does not refuse is stopped at ``timeout``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm_node", "--no-metrics", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, "still running", out, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def snapshot(folder) -> dict[str, int]:
    """Every file under ``folder`` by relative path (what a sweep would remove), with its size."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_a_name_that_leaves_its_folder_is_refused_and_touches_nothing(local_farm, farm, data_dir, clip, request):
    job_id = submit(clip, "--resolution", "360p")  # a database, stored inputs, the embedded Redis's files
    local_farm(1)
    wait_for(lambda: farm.show(job_id).status == "completed", timeout=60, what="the job to complete")
    (data_dir / "unrelated.txt").write_text("a user's file")
    # A short path, so the refusal quotes it whole (a pytest-xdist worker's tmp_path is longer).
    elsewhere = Path(tempfile.mkdtemp(prefix="elsewhere-"))
    request.addfinalizer(lambda: shutil.rmtree(elsewhere, ignore_errors=True))
    (elsewhere / "project.txt").write_text("a user's file")
    kept = {"data": sorted(snapshot(data_dir)), "elsewhere": snapshot(elsewhere)}
    assert {"encodeflow.db", "unrelated.txt"} <= set(kept["data"])

    for name in ("..", str(elsewhere), "edit bay", "."):
        line = refusal(farm_node("--name", name))
        assert line.startswith(f"farm-node: node name {name!r} is not allowed: use 1 to 64 letters, digits"), line

    assert sorted(snapshot(data_dir)) == kept["data"], "the data dir is as it was"
    assert snapshot(elsewhere) == kept["elsewhere"]
    assert farm.show(job_id).status == "completed", "the database still answers"


def test_a_work_dir_holding_a_users_files_is_refused_and_left_as_it_was(local_farm, tmp_path):
    project = tmp_path / "project"
    (project / "renders-1").mkdir(parents=True)
    (project / "renders-1" / "final.mov").write_bytes(b"footage")
    (project / "edit.prproj").write_text("a user's project")
    kept = snapshot(project)

    line = refusal(farm_node("--name", "n1", "--work-dir", str(project)))

    assert f"work dir {project} is not empty" in line and "--work-dir" in line, line
    assert snapshot(project) == kept and sorted(p.name for p in project.iterdir()) == ["edit.prproj", "renders-1"]


def test_a_second_node_with_a_live_nodes_name_is_refused_and_the_first_finishes_its_job(
    local_farm, farm, long_clip, tmp_path
):
    (first,) = local_farm(1, extra=FAST)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [first]), timeout=60, what="the job to run")
    ffmpeg = first.ffmpeg_children()

    expected = (
        f"farm-node: a node named {first.name} is already running: pid {first.proc.pid} on this host "
        f"({HOST}); give this node another --name, or stop that one first"
    )
    # Another work dir (another machine's, say) is refused by the name; the same work dir too.
    assert refusal(farm_node("--name", first.name, "--work-dir", str(tmp_path / "other"), *FAST)) == expected
    began = time.monotonic()
    assert refusal(farm_node("--name", first.name, *FAST)) == expected
    print(f"a second node of a live node's name exited 2 after {time.monotonic() - began:.1f} s")

    assert [p.pid for p in first.ffmpeg_children()] == [p.pid for p in ffmpeg], "its FFmpeg runs on"
    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
        timeout=120,
        what="the job to finish",
    )
    assert (job["status"], job["node"], job["attempts"], job["error"]) == ("completed", first.name, 1, None)


def test_a_node_killed_outright_restarts_under_its_name_at_once(local_farm, data_dir):
    (node,) = local_farm(1, extra=FAST)
    node.proc.kill()
    node.proc.wait(10)
    killed_at = time.monotonic()
    client = redis.Redis.from_url(local_farm.redis_url, decode_responses=True)
    claim = json.loads(client.get(Keyspace(local_farm.settings.queue).claim(node.name)))
    assert claim == {"host": HOST, "pid": node.proc.pid}, "the dead run's claim is still there"

    again = local_farm.start_named(node.name, extra=FAST)
    print(
        f"restarted under its name and registered {time.monotonic() - killed_at:.1f} s after the SIGKILL "
        f"(the dead run's claim would have expired after 20 s)"
    )

    assert "took over the name from a previous run that is gone" in again.log.read_text()
    assert json.loads(client.get(Keyspace(local_farm.settings.queue).claim(node.name)))["pid"] == again.proc.pid
    assert again.stop() == 0
    assert client.get(Keyspace(local_farm.settings.queue).claim(node.name)) is None, "a clean exit gives it back"


def test_encodeflow_up_twice_on_one_data_dir_refuses_the_second(settings):
    first = subprocess.Popen(
        [sys.executable, "-m", "farm", "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        node = wait_for(lambda: _registered_child(first, settings), timeout=60, what="the first farm's node")

        second = subprocess.Popen(
            [sys.executable, "-m", "farm", "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            _, err = second.communicate(timeout=60)
        finally:
            second.kill()

        assert second.returncode == 2, err
        assert err.strip().splitlines() == [
            f"encodeflow up: a local farm is already running on queue {settings.queue!r}: its node {node.name} is "
            f"pid {node.pid} on {HOST}; use that farm, or stop it (Ctrl-C where it runs) before starting another"
        ]
        assert psutil.pid_exists(node.pid) and first.poll() is None, "the first farm runs on"
        again = _registered_child(first, settings)
        assert (again.name, again.pid) == (node.name, node.pid)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0


def _registered_child(up: subprocess.Popen, settings):
    """The ``encodeflow up`` process's node as the registry lists it, once it is online."""
    from farm.services.embedded import running_embedded_redis
    from farm.services.registry import NodeRegistry

    server = running_embedded_redis(settings)
    if server is None:
        return None
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        nodes = NodeRegistry(client, settings.queue).nodes()
    children = {p.pid for p in psutil.Process(up.pid).children()}
    return next((n for n in nodes if n.online and n.pid in children), None)
