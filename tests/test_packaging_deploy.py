"""The deployment files in packaging/ (systemd, launchd, Docker): checked with the tools an admin's
machine would run on them, and the node command lines they hold run for real.

What cannot run here is said in docs/deploy.md: systemd is not PID 1 on this machine (the units are
checked with `systemd-analyze verify`, not started by systemd), and there is no Docker engine
(`docker-compose config` checks the compose file; the Dockerfile is parsed, not built).
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from farm.base.ports import free_port
from farm.base.settings import CONFIG_ENV, ENV_VARS, Settings
from farm_node.cli import build_parser
from tests.e2e.helpers import wait_for
from tests.prometheus_fixture import required_binary

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "systemd" / "farm-node.service"
TEMPLATE = PACKAGING / "systemd" / "farm-node@.service"
ENV_FILE = PACKAGING / "systemd" / "farm-node.env"
PLIST = PACKAGING / "launchd" / "com.encodeflow.farm-node.plist"
DOCKER = PACKAGING / "docker"
FARM_NODE = Path(sys.executable).with_name("farm-node")  # this checkout's console script
INSTALLED_FARM_NODE = "/opt/encodeflow/venv/bin/farm-node"  # where the docs install it


# -- helpers --------------------------------------------------------------------------------------


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}: keys may repeat (Environment=), so no dict."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(sections, section: str, key: str) -> str:
    values = [v for k, v in sections[section] if k == key]
    assert values, f"{key}= missing from [{section}]"
    return values[-1]


def seconds(timespan: str) -> float:
    """A systemd time span such as 4h, 90min or 1h 30min, in seconds."""
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(h|min|m|s|)\b", timespan):
        total += int(number) * units[unit]
    return total


def env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def exec_start_argv(path: Path, **specifiers: str) -> list[str]:
    """The unit's ExecStart as systemd would run it, with %-specifiers and $FARM_NODE_ARGS expanded."""
    command = unit_value(unit_entries(path), "Service", "ExecStart")
    for letter, value in specifiers.items():
        command = command.replace(f"%{letter}", value)
    argv = []
    for word in shlex.split(command):
        if word == "$FARM_NODE_ARGS":  # unbraced: systemd splits the value into words
            argv.extend(env_file_values(ENV_FILE).get("FARM_NODE_ARGS", "").split())
        else:
            argv.append(word)
    return argv


# -- systemd --------------------------------------------------------------------------------------


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    required_binary("systemd-analyze", "systemd")
    # verify also checks that ExecStart's program exists, so point it at this checkout's farm-node.
    for unit in (UNIT, TEMPLATE):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_FARM_NODE, str(FARM_NODE)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "farm-node.service", "farm-node@9465.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # An unknown key or a bad value is only a warning (exit 0): any output at all is a mistake.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_drains_on_stop_and_only_farm_node_gets_the_sigterm():
    service = unit_entries(UNIT)
    assert unit_value(service, "Service", "KillSignal") == "SIGTERM"
    # FFmpeg shares the unit's control group; a SIGTERM to the whole group would stop it mid-file.
    assert unit_value(service, "Service", "KillMode") == "mixed"
    assert seconds(unit_value(service, "Service", "TimeoutStopSec")) >= 3600
    assert unit_value(service, "Service", "Restart") == "on-failure"
    assert unit_value(service, "Service", "RestartPreventExitStatus") == "2"  # farm-node's usage/settings error
    assert unit_value(service, "Service", "User") not in ("root", "0")
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ):
        assert unit_value(service, "Service", key) == value
    assert "/mnt/encodeflow" in unit_value(service, "Service", "ReadWritePaths")
    # GPU encoders need /dev/dri and /dev/nvidia*.
    assert "PrivateDevices" not in {k for k, _ in service["Service"]}


def test_the_template_unit_differs_from_the_unit_only_in_naming_the_node():
    def comparable(path):
        entries = unit_entries(path)
        return {
            section: [(k, v) for k, v in pairs if k not in ("Description", "ExecStart", "EnvironmentFile")]
            for section, pairs in entries.items()
        }

    assert comparable(TEMPLATE) == comparable(UNIT)
    single = exec_start_argv(UNIT, C="/var/cache")
    several = exec_start_argv(TEMPLATE, C="/var/cache", H="host", i="9465")
    assert [a for a in several if a not in ("--name", "host-9465", "--metrics-port", "9465")] == [
        a.replace("/work", "/work-9465") for a in single
    ]


def test_the_env_file_is_settings_the_node_accepts():
    environ = env_file_values(ENV_FILE)
    settings = Settings.load(environ=environ, config_path=Path("/nonexistent/config.toml"))
    assert settings.redis_url.startswith("redis://") and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.storage_url == "file:///mnt/encodeflow/storage"
    build_parser().parse_args(environ["FARM_NODE_ARGS"].split())


def test_the_template_units_command_line_starts_a_node_that_drains_on_sigterm(tmp_path, redis_url, pg_url):
    """farm-node@<port>.service's ExecStart, run as systemd would run it (minus systemd), on real
    Redis and PostgreSQL: the node comes up healthy on the instance's port and a SIGTERM stops it."""
    port = str(free_port())
    cache = tmp_path / "cache"
    argv = exec_start_argv(TEMPLATE, C=str(cache), H="unit-test", i=port)
    argv[0] = str(FARM_NODE)
    env = dict(
        os.environ,
        **{
            ENV_VARS["data_dir"]: str(tmp_path / "state" / "encodeflow"),
            ENV_VARS["storage_url"]: (tmp_path / "storage").as_uri(),
        },
    )
    log = tmp_path / "node.log"
    with log.open("w") as out:
        node = subprocess.Popen([*argv, "--metrics-host", "127.0.0.1"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def health():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    return response.status, response.read().decode()
            except (urllib.error.URLError, ConnectionError):
                assert node.poll() is None, f"farm-node exited {node.returncode}:\n{log.read_text()}"
                return None

        status, body = wait_for(health, timeout=60, interval=0.5, what="the node's /health")
        assert status == 200 and '"idle"' in body, body
        assert (cache / "encodeflow" / f"work-{port}").is_dir()
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0, log.read_text()
        assert "node unit-test-" + port + " stopped" in log.read_text()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


# -- launchd ---------------------------------------------------------------------------------------


def test_the_launchd_plist_restarts_on_failure_and_drains_as_long_as_the_unit():
    with PLIST.open("rb") as fh:
        plist = plistlib.load(fh)
    assert plist["Label"] == PLIST.stem
    wrapper, program, *flags = plist["ProgramArguments"]
    assert wrapper.endswith("/farm-node-launchd") and program.endswith("/farm-node")
    build_parser().parse_args(flags)
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # a drain (exit 0) stays stopped
    assert plist["ExitTimeOut"] == seconds(unit_value(unit_entries(UNIT), "Service", "TimeoutStopSec"))
    known = set(ENV_VARS.values()) | {CONFIG_ENV, "AWS_SHARED_CREDENTIALS_FILE", "PATH"}
    assert set(plist["EnvironmentVariables"]) <= known
    assert plist["UserName"] != "root"
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        assert plist[key].startswith("/")


LAUNCHD_WRAPPER = PACKAGING / "launchd" / "farm-node-launchd"


def test_under_launchd_a_configuration_error_stays_stopped_and_an_outage_is_retried():
    """launchd restarts any non-zero exit; the wrapper hands it 0 for farm-node's exit 2 only."""
    node = [sys.executable, "-m", "farm_node", "--name", "launchd-test", "--no-metrics"]
    bad_flag = subprocess.run(
        [str(LAUNCHD_WRAPPER), *node, "--concurrency", "lots"], capture_output=True, text=True, timeout=60
    )
    assert bad_flag.returncode == 0 and "--concurrency" in bad_flag.stderr
    env = {**os.environ, ENV_VARS["redis_url"]: f"redis://127.0.0.1:{free_port()}/0"}  # nobody listens
    outage = subprocess.run([str(LAUNCHD_WRAPPER), *node], capture_output=True, text=True, timeout=60, env=env)
    assert outage.returncode == 1 and "Connection refused" in outage.stderr


def test_under_launchd_sigterm_reaches_the_node_which_drains(redis_url, tmp_path):
    log = tmp_path / "node.log"
    wrapper = subprocess.Popen(
        [str(LAUNCHD_WRAPPER), sys.executable, "-m", "farm_node", "--name", "launchd-test", "--no-metrics"],
        stderr=log.open("w"),
    )
    try:
        wait_for(
            lambda: "node launchd-test up" in log.read_text() or wrapper.poll() is not None,
            timeout=60,
            what="the node to start",
        )
        wrapper.send_signal(signal.SIGTERM)  # what `launchctl bootout` sends
        assert wrapper.wait(60) == 0
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert "draining" in log.read_text() and "node launchd-test stopped" in log.read_text()


# -- Docker ----------------------------------------------------------------------------------------


def compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess:
    command = ["docker-compose", "-f", str(DOCKER / "docker-compose.yml")]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    secrets = set(env_file_values(DOCKER / ".env.example"))  # only the env file may set them
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in secrets},
    )


@pytest.fixture
def docker_compose() -> str:
    return required_binary("docker-compose", "docker-compose")


needs_compose = pytest.mark.usefixtures("docker_compose")


@needs_compose
def test_docker_compose_accepts_the_stack_with_the_example_secrets_and_refuses_it_without(tmp_path):
    accepted = compose("config", "-q", env_file=DOCKER / ".env.example")
    assert accepted.returncode == 0, accepted.stderr
    (tmp_path / "empty.env").write_text("")
    missing = compose("config", "-q", env_file=tmp_path / "empty.env")
    assert missing.returncode != 0
    assert "set REDIS_PASSWORD in .env" in missing.stderr


@needs_compose
def test_the_compose_stack_is_configured_for_a_farm():
    result = compose("config", env_file=DOCKER / ".env.example")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    redis_args = services["redis"]["command"]
    for option, value in (
        ("--appendonly", "yes"),
        ("--maxmemory-policy", "noeviction"),
        ("--requirepass", "change-me-redis"),
    ):
        assert redis_args[redis_args.index(option) + 1] == value
    node = services["node"]
    assert node["stop_signal"] == "SIGTERM"
    assert seconds(node["stop_grace_period"]) >= 3600
    assert Path(node["build"]["context"], node["build"]["dockerfile"]) == DOCKER / "Dockerfile.node"
    environ = node["environment"]
    assert environ["ENCODEFLOW_REDIS_URL"] == "redis://:change-me-redis@redis:6379/0"
    Settings.load(environ=environ, config_path=Path("/nonexistent/config.toml"))  # URLs the node accepts
    # Every file the stack mounts is in the repository (compose resolved them to absolute paths).
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_the_stacks_prometheus_config_and_its_rules_pass_promtool(promtool, tmp_path):
    shutil.copy(DOCKER / "prometheus.yml", tmp_path / "prometheus.yml")
    alerts = PACKAGING / "prometheus" / "alerts.yml"  # the rules docker-compose.yml mounts next to it
    assert alerts.exists(), f"{alerts.relative_to(ROOT)} is missing: the stack's Prometheus loads it"
    shutil.copy(alerts, tmp_path / "alerts.yml")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


DOCKERFILE_INSTRUCTIONS = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; comments and directives dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            word, _, rest = text.partition(" ")
            instructions.append((word, rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def test_the_node_dockerfile_copies_only_what_exists_and_runs_a_draining_non_root_node():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.node")
    unknown = [word for word, _ in instructions if word.upper() not in DOCKERFILE_INSTRUCTIONS or word != word.upper()]
    assert unknown == []
    assert instructions[0][0] == "FROM"
    ignore = [
        line
        for line in (DOCKER / "Dockerfile.node.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    sent = {line[1:] for line in ignore if line.startswith("!")}  # the context is "*" minus these
    for word, args in instructions:
        if word == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source in sent, f"COPY {source}: excluded by Dockerfile.node.dockerignore"
    values = {word: args for word, args in instructions}  # the last of each
    assert values["USER"] not in ("root", "0")
    assert values["STOPSIGNAL"] == "SIGTERM"
    assert "desktop" not in " ".join(args for word, args in instructions if word == "RUN")
    port = values["EXPOSE"]
    assert f"127.0.0.1:{port}/health" in values["HEALTHCHECK"]
    assert build_parser().parse_args(shlex.split(values["CMD"].strip("[]").replace(",", " "))).metrics_port == int(port)
