"""A node that cannot start: exit 2 for a configuration error, 1 for an outage.

The shipped service units restart a node that exits 1 (Redis or the database may be back soon) and
leave one that exits 2 stopped (packaging/systemd: ``RestartPreventExitStatus=2``): a wrong password
restarted every 10 s for ever helps nobody. Each case starts a real ``farm-node`` against real
servers set up wrong, and reads what an admin reads: the exit code and the one line on stderr.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from farm.base.settings import ENV_VARS
from farm.services.embedded import ensure_embedded_redis

REDIS = "ENCODEFLOW_REDIS_URL (--redis-url)"
DATABASE = "ENCODEFLOW_DATABASE_URL (--database-url)"
STORAGE = "ENCODEFLOW_STORAGE_URL (--storage-url)"


def start_node(*extra: str, env: dict | None = None) -> tuple[int, str]:
    """Run a node to its exit; its exit code and the last line of stderr (there must be one)."""
    result = subprocess.run(
        [sys.executable, "-m", "farm_node", "--name", "misconfigured", "--no-metrics", *extra],
        capture_output=True,
        text=True,
        timeout=90,
        env=env or os.environ.copy(),
    )
    lines = result.stderr.strip().splitlines()
    assert lines and "Traceback" not in result.stderr, result.stderr
    return result.returncode, lines[-1]


@pytest.fixture
def embedded_redis(settings):
    """A password-protected redis-server: the data dir's embedded one."""
    server = ensure_embedded_redis(settings)
    yield server
    server.stop()


def test_a_wrong_redis_password_exits_2_naming_the_setting(embedded_redis, monkeypatch):
    password = embedded_redis.url.split(":")[2].split("@")[0]
    monkeypatch.setenv(ENV_VARS["redis_url"], embedded_redis.url.replace(password, "not-the-password"))
    code, line = start_node()
    assert code == 2, line
    assert REDIS in line and "refused the credentials" in line
    assert "not-the-password" not in line and password not in line


def test_a_missing_redis_password_exits_2(embedded_redis, monkeypatch):
    monkeypatch.setenv(
        ENV_VARS["redis_url"], embedded_redis.url.replace(embedded_redis.url.split("@")[0] + "@", "redis://")
    )
    code, line = start_node()
    assert (code, REDIS in line, "needs a password" in line) == (2, True, True), line


def test_a_server_that_is_not_redis_exits_2(monkeypatch):
    """The URL names another service's port (here one that greets like an SSH server)."""
    from socketserver import BaseRequestHandler, ThreadingTCPServer

    class Greeter(BaseRequestHandler):
        def handle(self):
            self.request.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            self.request.recv(1024)

    other = ThreadingTCPServer(("127.0.0.1", 0), Greeter)
    other.daemon_threads = True
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(ENV_VARS["redis_url"], f"redis://127.0.0.1:{other.server_address[1]}/0")
        code, line = start_node()
    finally:
        other.shutdown()
        other.server_close()
    assert code == 2, line
    assert REDIS in line and "does not speak Redis" in line


def test_a_refused_redis_connection_is_an_outage_exit_1(monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(ENV_VARS["redis_url"], f"redis://127.0.0.1:{port}/0")
    code, line = start_node()
    assert code == 1, line
    assert f"cannot connect to Redis at 127.0.0.1:{port}: Connection refused" in line


def test_a_missing_bucket_exits_2_naming_the_setting(redis_url, s3_url, monkeypatch):
    monkeypatch.setenv(ENV_VARS["storage_url"], "s3://no-such-bucket-here/farm")
    code, line = start_node()
    assert code == 2, line
    assert STORAGE in line and "bucket 'no-such-bucket-here' does not exist" in line


def test_a_database_that_refuses_the_user_exits_2_naming_the_setting(redis_url, pg_server_url, monkeypatch):
    import sqlalchemy as sa

    refused = sa.make_url(pg_server_url).set(username="no_such_role").render_as_string(hide_password=False)
    monkeypatch.setenv(ENV_VARS["database_url"], refused)
    code, line = start_node()
    assert code == 2, line
    assert DATABASE in line and 'role "no_such_role" does not exist' in line


def test_a_database_that_is_down_is_an_outage_exit_1(redis_url, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(ENV_VARS["database_url"], f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
    code, line = start_node()
    assert code == 1, line
    assert "Connection refused" in line and DATABASE not in line


def test_a_work_dir_that_is_a_file_exits_2(redis_url, tmp_path):
    not_a_dir = tmp_path / "work-dir-file"
    not_a_dir.write_text("someone's file")
    code, line = start_node("--work-dir", str(not_a_dir))
    assert code == 2, line
    assert "--work-dir" in line and str(not_a_dir) in line
    assert not_a_dir.read_text() == "someone's file"


def test_a_read_only_work_dir_exits_2(redis_url, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # root ignores permission bits: only a read-only mount stops it
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a read-only tmpfs in CI: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        code, line = start_node("--work-dir", str(read_only))
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert code == 2, line
    assert "--work-dir" in line and str(read_only) in line


@pytest.mark.parametrize(
    "args, env, named",
    [
        (("--concurrency", "lots"), {}, "--concurrency"),
        (("--threads", "0"), {}, "--threads"),
        ((), {"redis_url": "http://127.0.0.1:6379"}, "ENCODEFLOW_REDIS_URL"),
        ((), {"storage_url": "ftp://somewhere/x"}, "ENCODEFLOW_STORAGE_URL"),
    ],
)
def test_a_bad_flag_or_url_exits_2(args, env, named, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(ENV_VARS[name], value)
    code, line = start_node(*args)
    assert (code, named in line) == (2, True), line


@pytest.mark.parametrize(
    "command, args",
    [
        ("farm_node", ("--concurrency", "lots")),
        ("farm_node", ("--progress-timeout", "abc")),
        ("farm_node", ("--threads", "two")),
        ("farm_node", ("--no-such-flag",)),
        ("farm", ("jobs", "--status", "nope")),
    ],
)
def test_a_wrong_option_is_answered_in_one_line(command, args):
    """argparse's usage block (a dozen lines for farm-node) would bury the line that matters in a
    service's journal: a wrong option is one line naming it, and exit 2."""
    result = subprocess.run([sys.executable, "-m", command, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert args[0] in line and "see --help" in line, line
