"""systemd: the units verify and are hardened, the collector unit's command line runs,
sd_notify speaks the real protocol, install.sh is idempotent."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from mqtt_helpers import RawPublisher, make_detection, wait_until

from agent import sdnotify

if TYPE_CHECKING:
    from conftest import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("chorus-agent.service", "chorus-collector.service")
MAX_EXPOSURE = 3.0  # systemd-analyze security: "OK" is below 4.0


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify also checks that ExecStart's program exists: point the install prefix at stubs;
    # every other line is verified exactly as shipped.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("chorus-agent", "chorus-collector"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    text = (ROOT / "systemd" / unit).read_text()
    assert "/opt/chorus/venv/bin/" in text
    (tmp_path / unit).write_text(text.replace("/opt/chorus/venv/bin/", f"{bindir}/"))
    proc = subprocess.run(
        [exe, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_is_at_most_3(unit: str) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    proc = subprocess.run(
        [exe, "security", "--offline=true", "--no-pager", str(ROOT / "systemd" / unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, proc.stdout


def _unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def _expand(word: str, env: dict[str, str]) -> str:
    """systemd's ``${NAME}`` expansion in ExecStart (an unknown name fails the test)."""
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)


def test_collector_unit_command_line_runs_and_stores(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """ExecStart exactly as shipped, with the directories systemd would give it and the
    example config as install.sh writes it (only the broker's port changed)."""
    text = (ROOT / "systemd" / "chorus-collector.service").read_text()
    (exec_start,) = _unit_values(text, "ExecStart")
    etc, state, creds = tmp_path / "etc", tmp_path / "state", tmp_path / "credentials"
    for d in (etc, state, creds):
        d.mkdir(mode=0o750)
    env = {**os.environ, "CONFIGURATION_DIRECTORY": str(etc), "STATE_DIRECTORY": str(state),
           "CREDENTIALS_DIRECTORY": str(creds)}  # fmt: skip
    env.pop("CHORUS_COLLECTOR_DSN", None)
    for assignment in _unit_values(text, "Environment"):
        name, value = assignment.split("=", 1)
        env[name] = value
    for credential in _unit_values(text, "LoadCredential"):
        (creds / credential.split(":", 1)[0]).write_text("")
    argv = [_expand(w, env) for w in shlex.split(exec_start)]
    assert argv[0] == "/opt/chorus/venv/bin/chorus-collector"
    argv[0] = str(Path(sys.executable).with_name("chorus-collector"))
    config = yaml.safe_load((ROOT / "config" / "collector.example.yaml").read_text())
    config["mqtt"].update(host=mosquitto_broker.host, port=mosquitto_broker.port)
    (etc / "collector.yaml").write_text(yaml.safe_dump(config))

    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    db = state / "collector.sqlite"
    try:
        assert wait_until(
            lambda: proc.poll() is not None or any("collector subscribed" in x for x in lines),
            15.0,
        )
        assert proc.poll() is None, "".join(lines)
        pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
        for i in range(3):
            pub.publish("chorus/field-01/detections", json.dumps(make_detection(i).to_payload()))
        pub.close()

        def stored() -> int:
            from agent.collector.store import SqliteStore

            store = SqliteStore(db, create=False)
            try:
                return store.count()
            finally:
                store.close()

        assert wait_until(lambda: db.exists() and stored() == 3, 15.0), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)  # the unit's KillSignal
        proc.wait(timeout=30)
        reader.join(5.0)
    assert proc.returncode == 0, "".join(lines)
    assert "3 stored, 0 duplicate(s), 0 rejected" in "".join(lines)
    assert stat.S_IMODE(db.stat().st_mode) & 0o137 == 0  # at most 0640


def test_agent_unit_has_the_required_settings() -> None:
    text = (ROOT / "systemd" / "chorus-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StartLimitBurst=",
        "User=chorus",
        "SupplementaryGroups=audio",
        "StateDirectory=chorus",
        "ConfigurationDirectory=chorus",
        "LoadCredential=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ReadWritePaths=/var/lib/chorus",
    ):
        assert line in text, line


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    else:
        name = f"chorus-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sock.settimeout(2.0)
    yield sock
    sock.close()


def test_notify_sends_the_datagram(notify_socket: socket.socket) -> None:
    assert sdnotify.notify(ready=1, status="listening")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening"


def test_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify(ready=1) is False


def test_watchdog_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 30.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t


def test_watchdog_pings_at_most_every_third_of_the_interval(notify_socket: socket.socket) -> None:
    clock = FakeClock()
    dog = sdnotify.Watchdog(interval_s=3.0, monotonic=clock.monotonic)
    for step in range(10):  # a window every 0.5 s for 5 s
        clock.t = step * 0.5
        dog.alive()
    assert dog.pings == 5  # at t = 0, 1, 2, 3, 4
    assert [notify_socket.recv(64) for _ in range(5)] == [b"WATCHDOG=1"] * 5


def _run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "systemd" / "install.sh"), "--root", str(root), "--no-venv", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_install_script_is_idempotent_and_keeps_user_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = _run_install(root)
    assert first.returncode == 0, first.stderr
    etc = root / "etc" / "chorus"
    assert (root / "etc/systemd/system/chorus-agent.service").read_text() == (
        ROOT / "systemd/chorus-agent.service"
    ).read_text()
    assert "device_id:" in (etc / "agent.yaml").read_text()
    assert stat.S_IMODE((etc / "mqtt-password").stat().st_mode) == 0o600
    assert (root / "var/lib/chorus").is_dir()
    before = _snapshot(root)
    assert _run_install(root).returncode == 0
    assert _snapshot(root) == before  # a second run changes nothing
    (etc / "agent.yaml").write_text("device_id: my-recorder\n")
    assert _run_install(root).returncode == 0
    assert (etc / "agent.yaml").read_text() == "device_id: my-recorder\n"  # never overwritten

    assert _run_install(root, "--uninstall").returncode == 0
    assert not (root / "etc/systemd/system/chorus-agent.service").exists()
    assert (etc / "agent.yaml").exists()  # config and state kept
    assert _run_install(root, "--purge").returncode == 0
    assert not etc.exists() and not (root / "var/lib/chorus").exists()


def test_install_script_collector_role(tmp_path: Path) -> None:
    from agent.collector.config import load_collector_config

    root = tmp_path / "root"
    first = _run_install(root, "--collector")
    assert first.returncode == 0, first.stderr
    etc = root / "etc" / "chorus"
    unit = root / "etc/systemd/system/chorus-collector.service"
    assert unit.read_text() == (ROOT / "systemd/chorus-collector.service").read_text()
    config = etc / "collector.yaml"
    assert load_collector_config(config).store.sqlite_path is None  # -> $STATE_DIRECTORY
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    for credential in _unit_values(unit.read_text(), "LoadCredential"):
        source = Path(root, credential.split(":", 1)[1].lstrip("/"))
        assert stat.S_IMODE(source.stat().st_mode) == 0o600, source  # present: the unit starts
    assert not (etc / "agent.yaml").exists()  # a server: no recorder config
    before = _snapshot(root)
    assert _run_install(root, "--collector").returncode == 0
    assert _snapshot(root) == before
    config.write_text("mqtt: {host: broker.example}\n")
    assert _run_install(root, "--collector").returncode == 0
    assert config.read_text() == "mqtt: {host: broker.example}\n"  # never overwritten


def test_collector_extra_is_all_the_collector_needs() -> None:
    """The collector imports and validates its config with the base install plus the
    ``collector`` extra: nothing of the agent extra (audio, TFLite, signatures)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in extras["collector"]}
    assert {"paho-mqtt", "jsonschema", "psycopg"} <= names
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'sounddevice', 'ai_edge_litert', 'tflite_runtime',\n"
        "                                  'cryptography', 'tensorflow'}:\n"
        "            raise ImportError('agent extra: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import agent.collector.service, agent.collector.store, agent.collector.config\n"
        "from agent.collector.cli import main\n"
        "sys.exit(main(['check-config', '--config', 'config/collector.example.yaml']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


def test_install_script_rejects_unknown_options(tmp_path: Path) -> None:
    proc = _run_install(tmp_path, "--bogus")
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
