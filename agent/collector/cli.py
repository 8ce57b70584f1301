"""``chorus-collector run`` (subscribe and store) and ``chorus-collector export`` (CSV).

Secrets never go on the command line: the broker password comes from ``--password-file`` (or
``$CREDENTIALS_DIRECTORY``) or an environment variable, a PostgreSQL DSN with a password from
``--dsn-env`` (default ``$CHORUS_COLLECTOR_DSN``) or ``--dsn-file``. Errors a user can fix end
with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from agent.credentials import mqtt_password, read_secret_file
from agent.errors import ChorusError
from agent.state import default_state_dir

log = logging.getLogger("agent.collector")


def _store_from_args(args: argparse.Namespace) -> Any:
    from agent.collector.store import open_store

    dsn = None
    if args.dsn_file:
        dsn = read_secret_file(args.dsn_file, "--dsn-file")
    elif os.environ.get(args.dsn_env):
        dsn = os.environ[args.dsn_env]
    if dsn:
        return open_store(dsn=dsn)
    return open_store(db=args.db or default_state_dir() / "collector.sqlite")


def cmd_run(args: argparse.Namespace) -> int:
    from agent.collector.service import Collector, CollectorConfig

    password = None
    if args.username:
        password = mqtt_password(args.password_file, args.password_env)
    config = CollectorConfig(
        host=args.host,
        port=args.port,
        topic_prefix=args.prefix,
        share_group=args.share_group,
        client_id=args.client_id or f"chorus-collector-{socket.gethostname()}",
        username=args.username,
        password=password,
        tls=bool(args.tls_ca or args.tls_cert or args.tls),
        tls_ca_file=args.tls_ca,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        session_expiry_s=args.session_expiry_s,
    )
    store = _store_from_args(args)
    collector = Collector(config, store)
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    collector.start()
    try:
        while not stop.wait(args.stats_interval_s):
            log.info("collector: %s", collector.stats())
    finally:
        collector.stop()
        store.close()
    st = collector.stats()
    log.info(
        "stopped: %d received, %d stored, %d duplicate(s), %d rejected %s",
        st.received,
        st.stored,
        st.duplicates,
        st.rejected,
        st.rejected_by_reason or "",
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from agent.collector.store import export_csv

    store = _store_from_args(args)
    filters = {"device": args.device, "since": args.since, "until": args.until}
    try:
        if args.out == "-":
            n = export_csv(store, sys.stdout, **filters)
        else:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8", newline="") as fh:
                n = export_csv(store, fh, **filters)
    finally:
        store.close()
    print(f"exported {n} detection(s) to {args.out}", file=sys.stderr)
    return 0


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="SQLite file (default: $STATE_DIRECTORY or ~/.local/state/chorus)")
    p.add_argument(
        "--dsn-env",
        default="CHORUS_COLLECTOR_DSN",
        help="environment variable holding a PostgreSQL DSN; if set, PostgreSQL is used "
        "(default: CHORUS_COLLECTOR_DSN)",
    )
    p.add_argument("--dsn-file", help="file holding a PostgreSQL DSN (not world-readable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chorus-collector", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="subscribe to the devices' detections and store them")
    s.add_argument("--host", default="localhost")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--prefix", default="chorus", help="topic prefix (default: chorus)")
    s.add_argument(
        "--share-group",
        help="MQTT 5 shared-subscription group: collectors in one group split the load "
        "(default: a plain subscription; see docs/mqtt.md before sharing)",
    )
    s.add_argument("--client-id", help="unique per collector (default: chorus-collector-HOST)")
    s.add_argument("--username")
    s.add_argument("--password-env", default="CHORUS_MQTT_PASSWORD")
    s.add_argument("--password-file", help="absolute path, or a name in $CREDENTIALS_DIRECTORY")
    s.add_argument("--tls", action="store_true", help="TLS with the system CAs")
    s.add_argument("--tls-ca", help="CA file (PEM) of the broker's certificate; implies --tls")
    s.add_argument("--tls-cert", help="client certificate (PEM)")
    s.add_argument("--tls-key", help="client key (PEM)")
    s.add_argument(
        "--session-expiry-s",
        type=int,
        default=7 * 24 * 3600,
        help="how long the broker queues detections while this collector is away",
    )
    s.add_argument("--stats-interval-s", type=float, default=60.0)
    _add_store_args(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("export", help="write stored detections as CSV")
    s.add_argument("--out", "-o", required=True, help="CSV file, or - for stdout")
    s.add_argument("--device", help="only this device")
    s.add_argument("--since", help="start_utc >= this (ISO 8601, e.g. 2026-05-01T00:00:00Z)")
    s.add_argument("--until", help="start_utc < this")
    _add_store_args(s)
    s.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        return int(args.func(args))
    except ChorusError as exc:
        for line in str(exc).splitlines():
            print(f"chorus-collector: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
