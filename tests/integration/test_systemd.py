"""systemd: the units verify, sd_notify speaks the real protocol, install.sh is idempotent."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sdnotify

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("chorus-agent.service", "chorus-collector.service")


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


def test_install_script_rejects_unknown_options(tmp_path: Path) -> None:
    proc = _run_install(tmp_path, "--bogus")
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
