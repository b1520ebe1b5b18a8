"""Fixtures shared by every test: an isolated data dir and settings, real services, generated clips.

Every test gets a fresh data dir and an environment with no ``ENCODEFLOW_*`` variables, so a
developer's own config never leaks in. Services are real: the Redis and PostgreSQL servers this
machine runs (override with ENCODEFLOW_TEST_REDIS_URL / ENCODEFLOW_TEST_PG_URL), moto's S3 server,
and the FFmpeg binary the node itself would use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import hypothesis
import pytest

from farm.base.settings import CONFIG_ENV, ENV_VARS, Settings
from tests.files import alone_or_together, run_folder
from tests.prometheus_fixture import prometheus_server, promtool  # noqa: F401 - fixtures for every test

# Hypothesis' "too slow" health check and its per-example deadline time the machine, not the code:
# beside FFmpeg and the farm's processes (or on a shared CI runner) generating a nested payload or
# running one example can take seconds, and the property tests then failed at random. None of
# them is about speed, so neither timer applies; the checks on the strategies themselves do.
hypothesis.settings.register_profile(
    "encodeflow", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("encodeflow")

# A run started in the background (`pytest &`, nohup) ignores Ctrl-C, and so would every program
# the tests start: `encodeflow up` would never see the SIGINT its tests send it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests run in parallel (pytest-xdist, ``-n auto`` in pyproject.toml). Most of the long ones wait
# on processes, Redis and FFmpeg rather than compute, so more workers than cores finish sooner.
# Not many more: the tests that check how soon a farm recovers (a dead node's job restarted within
# lock + stalled checks, a cancel within seconds) run real nodes whose timers starve when six
# workers' FFmpegs share two cores.
WORKERS_PER_CORE = 2


def pytest_xdist_auto_num_workers(config) -> int:
    """How many workers ``-n auto`` starts; PYTEST_XDIST_AUTO_NUM_WORKERS overrides it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return WORKERS_PER_CORE * len(os.sched_getaffinity(0))


def pytest_collection_modifyitems(config, items) -> None:
    """Longest first, so that no worker starts a long test while the others are nearly done: one
    test of the node bundle (which builds it), the tests marked slow, the rest of e2e and the
    whole-farm checks beside it (secrets, packaging), the panel's, the others; last, the rest of
    the bundle's tests, which by then find it built; the tests that must run alone at the very end,
    when the others have run out of work anyway."""
    bundle = [item for item in items if item.path.name == "test_bundle.py"]

    def rank(item) -> int:
        if item.get_closest_marker("alone"):
            return 6
        if item in bundle:
            return 0 if item is bundle[0] else 5
        if item.get_closest_marker("slow"):
            return 1
        if "/tests/e2e/" in item.path.as_posix() or item.path.parent.name == "tests":
            return 2
        if "/tests/app/" in item.path.as_posix():
            return 3
        return 4

    items.sort(key=rank)  # stable: within a rank, the order of collection


TEST_REDIS_URL = os.environ.get("ENCODEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_PG_URL = os.environ.get("ENCODEFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _alone_when_marked(request, tmp_path_factory):
    """A test marked ``alone`` measures how soon the farm reacts (a cancel, a dead node's job taken
    over): beside other workers' FFmpegs on a small machine its nodes' timers starve, so in a
    parallel run it runs with no other test running (first of the autouse fixtures: before any
    of its set-up)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    with alone_or_together(run_folder(tmp_path_factory), alone=request.node.get_closest_marker("alone") is not None):
        yield


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """A fresh data dir and config file per test; no ENCODEFLOW_* or AWS_* from the developer."""
    for var in list(os.environ):
        if var.startswith("ENCODEFLOW_") and not var.startswith("ENCODEFLOW_TEST_"):
            monkeypatch.delenv(var, raising=False)
        if var.startswith("AWS_"):
            monkeypatch.delenv(var, raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv(ENV_VARS["data_dir"], str(data_dir))
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config.toml"))
    yield data_dir
    # A CLI command on the embedded defaults starts the data dir's Redis and leaves it running for
    # the next command, as it should for a user; a test's must not outlive the test.
    from farm.services.embedded import running_embedded_redis

    leftover = running_embedded_redis(Settings(data_dir=data_dir))
    if leftover is not None:
        leftover.stop()


@pytest.fixture
def data_dir(isolated_env) -> Path:
    return isolated_env


@pytest.fixture
def settings(data_dir) -> Settings:
    """Embedded defaults under the test's data dir (SQLite, folder storage, no Redis URL)."""
    return Settings.load()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory) -> str:
    """The machine's Redis; where none runs (a laptop), a private redis-server for the session."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
        yield TEST_REDIS_URL
        return
    except redis.ConnectionError as exc:
        if "ENCODEFLOW_TEST_REDIS_URL" in os.environ:
            pytest.fail(f"Redis at {TEST_REDIS_URL} is not reachable ({exc})")
    finally:
        client.close()
    from farm.services.embedded import ensure_embedded_redis

    server = ensure_embedded_redis(Settings(data_dir=tmp_path_factory.mktemp("redis-server")))
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server_url, monkeypatch) -> str:
    """A Redis server, with a queue name unique to this test so tests never see each other."""
    import redis

    queue = f"test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(ENV_VARS["redis_url"], redis_server_url)
    monkeypatch.setenv(ENV_VARS["queue"], queue)
    yield redis_server_url
    client = redis.Redis.from_url(redis_server_url)
    for key in client.scan_iter(match=f"*{queue}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import sqlalchemy as sa

    admin = sa.create_engine(TEST_PG_URL, isolation_level="AUTOCOMMIT")
    name = f"encodeflow_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL at {TEST_PG_URL} is not reachable ({exc}); start it or set ENCODEFLOW_TEST_PG_URL"
        # CI and anyone who named a server must run these tests; a laptop without PostgreSQL skips them.
        if os.environ.get("CI") or "ENCODEFLOW_TEST_PG_URL" in os.environ:
            pytest.fail(message)
        pytest.skip(message)
    url = sa.engine.make_url(TEST_PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url, monkeypatch) -> str:
    """The session's PostgreSQL database, emptied before each test that uses it."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    monkeypatch.setenv(ENV_VARS["database_url"], pg_server_url)
    return pg_server_url


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port: a real HTTP S3 API, not an in-process mock."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    """A fresh bucket on moto's server; sets the AWS_* variables and ENCODEFLOW_STORAGE_URL."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"ef-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/farm"
    monkeypatch.setenv(ENV_VARS["storage_url"], url)
    return url


@pytest.fixture
def s3_link(s3_url, s3_server, monkeypatch):
    """A FaultyLink between the farm and moto's S3 server: AWS_ENDPOINT_URL points at the link.

    ``s3_link.admin`` is a client that goes straight to the server (to look behind a cut link).
    """
    from urllib.parse import urlsplit

    import boto3

    from tests.faults import FaultyLink

    server = urlsplit(s3_server)
    with FaultyLink(server.hostname, server.port) as link:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{link.port}")
        link.admin = boto3.client("s3", endpoint_url=s3_server)
        yield link


# -- media -------------------------------------------------------------------------------------


def _ffmpeg() -> str:
    from farm.domain.media import find_ffmpeg

    return find_ffmpeg()


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """One folder of clips for the whole run: a clip one pytest-xdist worker made is there for the others."""
    folder = run_folder(tmp_path_factory) / "clips"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def make_clip(clip_dir):
    """make_clip(width=320, height=240, seconds=2.0, audio=True, name=None) -> Path of an MP4.

    Clips are generated once per run with FFmpeg's test sources and cached by their parameters
    (or their name). A clip is written beside its final name and renamed into place, so a worker
    never reads one that another is still writing; two that make the same clip at once both
    make the same bytes.
    """

    def make(
        width: int = 320,
        height: int = 240,
        seconds: float = 2.0,
        audio: bool = True,
        name: str | None = None,
        fps: int = 25,
    ) -> Path:
        name = name or f"clip_{width}x{height}_{seconds}s_{'a' if audio else 'na'}_{fps}.mp4"
        path = clip_dir / name
        if path.exists():
            return path
        cmd = [
            _ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
        ]
        if audio:
            cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        if audio:
            cmd += ["-c:a", "aac", "-shortest"]
        partial = path.with_name(f".{os.getpid()}.{path.name}")
        cmd.append(str(partial))
        subprocess.run(cmd, check=True)
        os.replace(partial, path)
        return path

    return make


@pytest.fixture
def clip(make_clip) -> Path:
    """A 2 s 320x240 H.264 + AAC clip."""
    return make_clip()
