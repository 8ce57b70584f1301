"""Test-side infrastructure for the MQTT fault scenarios (imported by conftest.py).

* :class:`TcpProxy`: a loopback TCP relay the test can cut ("reset": connections die at once,
  new ones are refused) or black-hole ("blackhole": bytes vanish, nobody is told, as when a
  radio link drops) and restore. Every loop is bounded by a short select timeout and a stop flag.
* :func:`make_tls_files`: a throw-away CA, a broker certificate for 127.0.0.1, and a client
  certificate, made with the ``openssl`` command.
* :class:`PostgresServer`: a private PostgreSQL cluster (initdb + pg_ctl) on a free loopback
  port, run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPENSSL = shutil.which("openssl")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# TCP proxy


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False

    def close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.upstream):
            if s is None:
                continue
            with contextlib.suppress(OSError):
                if reset:  # RST instead of FIN: the peer's next read fails at once
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()


class TcpProxy:
    """Relays 127.0.0.1:<port> to ``target``; ``cut(mode)`` / ``restore()`` simulate faults."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.mode = "up"  # up | reset | blackhole
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._stop = threading.Event()
        self.connections = 0  # accepted while up (reconnects can be counted)
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def cut(self, mode: str = "reset") -> None:
        """``reset``: close every connection with RST and refuse new ones.
        ``blackhole``: keep sockets open but drop every byte; new connections hang."""
        assert mode in ("reset", "blackhole")
        with self._lock:
            self.mode = mode
            pairs = list(self._pairs) if mode == "reset" else []
        for p in pairs:
            p.close(reset=True)

    def restore(self) -> None:
        """Back to relaying. Connections black-holed meanwhile are dropped (their state is
        gone, as after a NAT timeout); clients must reconnect."""
        with self._lock:
            stale = list(self._pairs) if self.mode == "blackhole" else []
            self.mode = "up"
        for p in stale:
            p.close(reset=True)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            pairs = list(self._pairs)
        for p in pairs:
            p.close(reset=False)
        with contextlib.suppress(OSError):
            self._listener.close()
        for t in self._threads:
            t.join(2.0)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                mode = self.mode
            if mode == "reset":
                _Pair(client, None).close(reset=True)
                continue
            upstream = None
            if mode == "up":
                try:
                    upstream = socket.create_connection(self.target, timeout=2.0)
                except OSError:
                    _Pair(client, None).close(reset=True)
                    continue
                self.connections += 1
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            t = threading.Thread(target=self._pump, args=(pair,), daemon=True)
            self._threads.append(t)
            t.start()

    def _pump(self, pair: _Pair) -> None:
        socks = [s for s in (pair.client, pair.upstream) if s is not None]
        try:
            while not self._stop.is_set() and not pair.closed:
                try:
                    readable, _, _ = select.select(socks, [], [], 0.1)
                except (OSError, ValueError):
                    break
                for s in readable:
                    data = s.recv(65536)
                    with self._lock:
                        drop = self.mode != "up"
                    if not data:
                        if drop and s is pair.upstream:
                            socks.remove(s)  # the broker gave up; in a black hole nobody hears
                            break
                        raise ConnectionError("peer closed")
                    if drop or pair.upstream is None:
                        continue  # black hole: the bytes vanish
                    other = pair.upstream if s is pair.client else pair.client
                    other.sendall(data)
        except OSError:
            pass
        finally:
            pair.close(reset=False)
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)


# ---------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: the broker must be refused with it


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA, a broker certificate for 127.0.0.1/localhost and a client certificate (EC P-256)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
            "-subj", f"/CN=chorus test {ca}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder,
        )  # fmt: skip
    for name, cn, usage, san in (
        ("server", "localhost", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("client", "chorus-client", "clientAuth", ""),
    ):
        ext = folder / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\nauthorityKeyIdentifier=keyid\n{san}"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                 f"/CN={cn}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name,
                 cwd=folder)  # fmt: skip
        (folder / f"{name}.key").chmod(0o600)
    return TlsFiles(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
        folder / "other-ca.crt",
    )


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them off PATH)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """A throw-away cluster with trust auth on 127.0.0.1:<port> (user ``chorus``)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="chorus-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root; run it as Debian's 'postgres' user.
            pw = pwd.getpwnam("postgres")  # KeyError: the caller skips
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout_s: float = 60) -> None:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout_s, cwd=self.base,
            **self._run_as,
        )  # fmt: skip
        if proc.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {proc.stderr}\n{log[-2000:]}")

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "chorus", "--auth=trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", opts,
            "-l", str(self.log_path), "-w", "-t", "30", "start",
        )  # fmt: skip

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=chorus dbname={dbname}"

    def new_database(self) -> str:
        """Create an empty database; returns its DSN."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop", timeout_s=30)  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
