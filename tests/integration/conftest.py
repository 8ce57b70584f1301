"""Integration fixtures: a real mosquitto broker on a free local port, and a collecting subscriber.

The broker runs from a temporary config (one 127.0.0.1 listener, no persistence unless asked,
optional TLS, log to a file) and can be stopped (or killed) and started again on the same port
to simulate an outage. Every broker and subscriber a test creates is shut down at teardown,
whatever the test did. The fault scenarios add a TCP proxy, TLS files and a PostgreSQL server
(see fault_tools.py).
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_tools import (
    OPENSSL,
    PostgresServer,
    TcpProxy,
    TlsFiles,
    find_pg_bin,
    make_tls_files,
)

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
START_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One mosquitto process under test control. ``start()``/``stop()`` may be repeated."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        passwords: dict[str, str] | None = None,
        *,
        persistence: bool = False,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
    ) -> None:
        assert MOSQUITTO is not None
        self.persistence = persistence
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._password_file: Path | None = None
        if passwords is not None:
            self._password_file = workdir / "passwd"
            self._password_file.write_text("")
            self._password_file.chmod(0o600)
            for user, password in passwords.items():
                subprocess.run(
                    [str(MOSQUITTO_PASSWD), "-b", str(self._password_file), user, password],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )

    def _write_config(self) -> None:
        lines = [f"listener {self.port} {self.host}"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.persistence:
            # Sessions and queued messages survive a restart (autosaved every second, and at
            # a clean stop): what a production broker in front of collectors should do.
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += [
            "max_queued_messages 1000000",  # default 1000: a long outage would drop messages
            "log_dest stderr",
            "log_type all",
        ]
        # Run as the current user: as root, mosquitto would otherwise switch to the 'mosquitto'
        # user, which cannot read a password file in our temp folder. (No passwd entry, as in
        # some containers: keep the default.)
        with contextlib.suppress(KeyError, OSError):
            lines.append(f"user {getpass.getuser()}")
        if self._password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self._password_file}"]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, pick_new_port_on_clash: bool = False) -> None:
        """Start mosquitto and wait (bounded) until its port accepts connections."""
        if self.running:
            return
        for _attempt in range(3):
            self._write_config()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(MOSQUITTO), "-c", str(self.conf_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # exited: most likely the port was taken meanwhile
                if port_open(self.host, self.port):
                    return
                time.sleep(0.02)
            self.stop()
            if not pick_new_port_on_clash:
                break
            self.port = free_port(self.host)
        raise RuntimeError(
            f"mosquitto did not start on {self.host}:{self.port}:\n{self.log_text()[-2000:]}"
        )

    def saves(self) -> int:
        """How often mosquitto has saved its in-memory database (persistence)."""
        return self.log_text().count("Saving in-memory database")

    def wait_for_save(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the next autosave: what exists now survives a SIGKILL."""
        before = self.saves()
        deadline = time.monotonic() + timeout_s
        while self.saves() <= before:
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto did not autosave")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, nothing saved since the last autosave."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL); its clients see the connection drop."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """``make(passwords=None, start=True, *, persistence=False, tls=None,
    require_client_cert=False)`` -> a broker on a free 127.0.0.1 port."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    brokers: list[MosquittoBroker] = []

    def make(
        passwords: dict[str, str] | None = None, start: bool = True, **options: Any
    ) -> MosquittoBroker:
        if passwords is not None and MOSQUITTO_PASSWD is None:
            pytest.skip("mosquitto_passwd is not installed")
        broker = MosquittoBroker(tmp_path / f"broker{len(brokers)}", passwords, **options)
        brokers.append(broker)
        if start:
            broker.start(pick_new_port_on_clash=True)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto_broker(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A running anonymous broker, killed at teardown."""
    return mosquitto_factory()


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MessageCollector:
    """A paho subscriber that records every message on ``topic`` (re-subscribes on reconnect)."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list[ReceivedMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if not rc.is_failure:
                client.subscribe(topic, qos=qos)

        def on_subscribe(client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
            if rcs and not rcs[0].is_failure:
                self._subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self._cond:
                self.messages.append(
                    ReceivedMessage(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
                )
                self._cond.notify_all()

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = on_message
        self._client.connect(host, port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.close()
            raise TimeoutError(f"subscriber could not subscribe to {topic} on {host}:{port}")

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedMessage]:
        """Wait (bounded) until ``count`` messages arrived; return all received so far."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def mqtt_subscriber() -> Iterator[Callable[..., MessageCollector]]:
    """``subscribe(broker, topic, qos=1, username=None, password=None)`` -> MessageCollector."""
    collectors: list[MessageCollector] = []

    def subscribe(
        broker: MosquittoBroker,
        topic: str,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
    ) -> MessageCollector:
        c = MessageCollector(broker.host, broker.port, topic, qos, username, password)
        collectors.append(c)
        return c

    yield subscribe
    for c in collectors:
        c.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """``proxy(host, port)`` -> a TcpProxy to that address the test can cut; closed after."""
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        p = TcpProxy(host, port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA, a broker certificate for 127.0.0.1 and a client certificate."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on a free loopback port, for the whole session."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the collector extra)")
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    try:
        server = PostgresServer(bin_dir)
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture
def collector_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make(broker, store=None, **CollectorConfig keys)`` -> a started Collector storing into
    ``store`` (default: a new SQLite file); every collector is stopped at teardown."""
    from agent.collector.service import Collector, CollectorConfig
    from agent.collector.store import SqliteStore

    made: list[tuple[Any, Any]] = []

    def make(broker: MosquittoBroker, store: Any = None, **keys: Any) -> Any:
        if store is None:
            store = SqliteStore(tmp_path / f"collector{len(made)}.sqlite")
        keys.setdefault("client_id", f"collector-{len(made)}-{uuid.uuid4().hex[:6]}")
        keys.setdefault("backoff_initial_s", 0.2)
        keys.setdefault("backoff_max_s", 1.0)
        config = CollectorConfig(host=broker.host, port=broker.port, **keys)
        collector = Collector(config, store)
        collector.start()
        made.append((collector, store))
        assert collector.subscribed.wait(10.0), "collector did not subscribe"
        return collector

    yield make
    for collector, store in made:
        collector.stop(timeout_s=5.0)
        store.close()


# ---------------------------------------------------------------------------------------------
# The OTA harness's fixtures (test_ota.py, test_ota_agent.py; the harness is ota_harness.py)


@pytest.fixture(scope="module")
def audio() -> Any:
    """The OTA tests' demo soundscape (150 s, seed 3), one per test module."""
    from ota_harness import demo_audio

    return demo_audio()


@pytest.fixture(scope="module")
def baseline(audio: Any) -> Any:
    """The demo bundle's detections on ``audio`` without any update machinery."""
    from ota_harness import baseline_detections

    return baseline_detections(audio)


@pytest.fixture
def running(
    mosquitto_broker: Any, tmp_path: Path, audio: Any, mqtt_subscriber: Callable
) -> Iterator[Callable[..., Any]]:
    """``running(**updates)`` starts a RunningAgent on ``audio``; all are stopped at the end."""
    from ota_harness import agents

    with agents(mosquitto_broker, tmp_path, audio, mqtt_subscriber) as start:
        yield start
