"""``chorus-collector run`` (subscribe and store), ``export`` (CSV) and ``check-config``.

Settings come from a YAML file (``--config``; ``config/collector.example.yaml`` documents every
key); the options below override it key by key. Secrets never go on the command line or in the
file: the broker password comes from ``--password-file`` (or ``$CREDENTIALS_DIRECTORY``) or an
environment variable, a PostgreSQL DSN with a password from ``--dsn-env`` (default
``$CHORUS_COLLECTOR_DSN``) or ``--dsn-file``. Errors a user can fix end with one line on stderr
and exit code 2.
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
from typing import TYPE_CHECKING, Any

from agent.credentials import mqtt_password, read_secret_file
from agent.errors import ChorusError
from agent.state import default_state_dir

if TYPE_CHECKING:
    from agent.collector.config import CollectorFileConfig
    from agent.collector.store import Store

log = logging.getLogger("agent.collector")

# Command-line option (argparse dest) -> the YAML key it overrides.
_STORE_KEYS = {
    "db": "store.sqlite_path",
    "dsn_env": "store.postgres_dsn_env",
    "dsn_file": "store.postgres_dsn_file",
}
_RUN_KEYS = {
    "host": "mqtt.host",
    "port": "mqtt.port",
    "prefix": "mqtt.topic_prefix",
    "share_group": "mqtt.share_group",
    "client_id": "mqtt.client_id",
    "username": "mqtt.username",
    "password_env": "mqtt.password_env",
    "password_file": "mqtt.password_file",
    "tls_ca": "mqtt.tls.ca_file",
    "tls_cert": "mqtt.tls.cert_file",
    "tls_key": "mqtt.tls.key_file",
    "session_expiry_s": "mqtt.session_expiry_s",
    "stats_interval_s": "stats_interval_s",
    **_STORE_KEYS,
}


def _config(args: argparse.Namespace, keys: dict[str, str]) -> CollectorFileConfig:
    from agent.collector.config import load_collector_config

    overrides = {path: getattr(args, dest, None) for dest, path in keys.items()}
    if (
        getattr(args, "tls", False)
        or getattr(args, "tls_ca", None)
        or getattr(args, "tls_cert", None)
    ):
        overrides["mqtt.tls.enabled"] = True
    return load_collector_config(args.config, overrides)


def _open_store(config: CollectorFileConfig, create: bool) -> Store:
    from agent.collector.store import open_store

    s = config.store
    dsn = None
    if s.postgres_dsn_file:
        dsn = read_secret_file(s.postgres_dsn_file, "store.postgres_dsn_file")
    elif os.environ.get(s.postgres_dsn_env):
        dsn = os.environ[s.postgres_dsn_env]
    if dsn:
        return open_store(dsn=dsn)
    db = Path(s.sqlite_path) if s.sqlite_path else default_state_dir() / "collector.sqlite"
    return open_store(db=db, create=create)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.collector.service import Collector, CollectorConfig

    cfg = _config(args, _RUN_KEYS)
    m = cfg.mqtt
    password = mqtt_password(m.password_file, m.password_env) if m.username else None
    config = CollectorConfig(
        host=m.host,
        port=m.port,
        topic_prefix=m.topic_prefix,
        share_group=m.share_group,
        client_id=m.client_id or f"chorus-collector-{socket.gethostname()}",
        username=m.username,
        password=password,
        tls=m.tls.enabled,
        tls_ca_file=m.tls.ca_file,
        tls_cert_file=m.tls.cert_file,
        tls_key_file=m.tls.key_file,
        keepalive_s=m.keepalive_s,
        session_expiry_s=m.session_expiry_s,
        backoff_initial_s=m.reconnect_backoff.initial_s,
        backoff_max_s=m.reconnect_backoff.max_s,
        batch_max=cfg.batch_max,
        batch_wait_s=cfg.batch_wait_s,
        device_status=cfg.device_status,
    )
    _set_log_level(args, cfg)
    store = _open_store(cfg, create=True)
    collector = Collector(config, store)
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    collector.start()
    try:
        while not stop.wait(cfg.stats_interval_s):
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

    cfg = _config(args, _STORE_KEYS)
    store = _open_store(cfg, create=False)  # a mistyped --db is an error, not a new database
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


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.collector.config import to_yaml

    cfg = _config(args, {})
    print(f"{args.config}: OK")
    if args.print:
        print(to_yaml(cfg), end="")
    return 0


def _set_log_level(args: argparse.Namespace, cfg: CollectorFileConfig) -> None:
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.log_level)


def _add_config_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--config",
        "-c",
        required=required,
        help="collector YAML (config/collector.example.yaml documents every key); "
        "the options below override it",
    )


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="SQLite file (default: $STATE_DIRECTORY or ~/.local/state/chorus)")
    p.add_argument(
        "--dsn-env",
        help="environment variable holding a PostgreSQL DSN; if set, PostgreSQL is used "
        "(default: CHORUS_COLLECTOR_DSN)",
    )
    p.add_argument("--dsn-file", help="file holding a PostgreSQL DSN (not world-readable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chorus-collector", description=__doc__.splitlines()[0])
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: the config's log_level (INFO)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="subscribe to the devices' detections and store them")
    _add_config_arg(s)
    s.add_argument("--host", help="broker (default: localhost)")
    s.add_argument("--port", type=int, help="default: 1883")
    s.add_argument("--prefix", help="topic prefix (default: chorus)")
    s.add_argument(
        "--share-group",
        help="MQTT 5 shared-subscription group: collectors in one group split the load "
        "(default: a plain subscription; see docs/mqtt.md before sharing)",
    )
    s.add_argument("--client-id", help="unique per collector (default: chorus-collector-HOST)")
    s.add_argument("--username")
    s.add_argument("--password-env", help="default: CHORUS_MQTT_PASSWORD")
    s.add_argument("--password-file", help="absolute path, or a name in $CREDENTIALS_DIRECTORY")
    s.add_argument("--tls", action="store_true", help="TLS with the system CAs")
    s.add_argument("--tls-ca", help="CA file (PEM) of the broker's certificate; implies --tls")
    s.add_argument("--tls-cert", help="client certificate (PEM)")
    s.add_argument("--tls-key", help="client key (PEM)")
    s.add_argument(
        "--session-expiry-s",
        type=int,
        help="how long the broker queues detections while this collector is away "
        "(default: 604800, a week)",
    )
    s.add_argument("--stats-interval-s", type=float, help="default: 60")
    _add_store_args(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("export", help="write stored detections as CSV")
    _add_config_arg(s)
    s.add_argument("--out", "-o", required=True, help="CSV file, or - for stdout")
    s.add_argument("--device", help="only this device")
    s.add_argument("--since", help="start_utc >= this (ISO 8601, e.g. 2026-05-01T00:00:00Z)")
    s.add_argument("--until", help="start_utc < this")
    _add_store_args(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("check-config", help="validate a collector config file")
    _add_config_arg(s, required=True)
    s.add_argument("--print", action="store_true", help="also print the effective config")
    s.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level or "INFO",
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
