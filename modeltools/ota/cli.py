"""``chorus-models keys generate``, ``publish``, ``rollback`` and ``rollout-status``.

Each command is a pair ``add_<name>(sub) -> parser`` / ``run_<name>(args) -> int`` for
``modeltools.cli._COMMANDS``. Mistakes a user can act on print one line
``chorus-models: error: ...`` and return 2; ``publish --wait`` and ``rollout-status`` return 1
when a device refused the update or rolled it back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import ChorusError
from agent.ota.announce import DEFAULT_CHUNK_BYTES


def _guard(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return run(args)
    except ChorusError as exc:
        print(f"chorus-models: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
# keys


def add_keys(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("keys", help="Ed25519 signing keys for model bundles (OTA updates)")
    actions = p.add_subparsers(dest="keys_action", required=True)
    g = actions.add_parser(
        "generate", help="write a new private key (mode 0600) and its public key (.pub)"
    )
    g.add_argument("--out", type=Path, required=True, help="private key file, e.g. keys/lab.key")
    g.add_argument("--pub", type=Path, help="public key file (default: --out with suffix .pub)")
    return p


def _keys(args: argparse.Namespace) -> int:
    from agent.ota.signing import generate_key, inline_public_key, load_public_key

    kid, pub = generate_key(args.out, args.pub)
    print(f"private key: {args.out} (keep it off the devices and out of the repository)")
    print(f"public key:  {pub}")
    print(f"key id:      {kid}")
    print(f"for updates.trusted_keys: {inline_public_key(load_public_key(str(pub)))}")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    return _guard(_keys, args)


# ---------------------------------------------------------------------------------------------
# publish / rollback / rollout-status


def _connection_args(p: argparse.ArgumentParser, timeout_s: float) -> None:
    p.add_argument("--broker", help="HOST[:PORT] of the MQTT broker (port 1883 by default)")
    p.add_argument("--prefix", default="chorus", help="topic prefix (default: %(default)s)")
    p.add_argument("--username", help="broker user name")
    p.add_argument(
        "--password-env",
        default="CHORUS_MQTT_PASSWORD",
        help="environment variable holding the password (default: %(default)s)",
    )
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM): connect with TLS")
    p.add_argument(
        "--tls-cert", type=Path, help="client certificate (PEM), for a mutual-TLS broker"
    )
    p.add_argument("--tls-key", type=Path, help="private key of --tls-cert (not world-readable)")
    p.add_argument("--timeout-s", type=float, default=timeout_s, help="connect/ack timeout, s")


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", required=True, help="device:<id>, group:<name> (staged roll-out) or all"
    )
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key that signs")
    _connection_args(p, 60.0)


def _broker(args: argparse.Namespace, *, with_target: bool = True) -> dict:
    from modeltools.ota.publish import PublishError

    if not args.broker:
        hint = " (or use --dry-run)" if hasattr(args, "dry_run") else ""
        raise PublishError(f"--broker HOST[:PORT] is required{hint}")
    host, _, port = args.broker.rpartition(":") if ":" in args.broker else (args.broker, "", "")
    try:
        port_number = int(port) if port else 1883
    except ValueError:
        raise PublishError(f"--broker: not HOST[:PORT]: {args.broker!r}") from None
    if not 0 < port_number < 65536:
        raise PublishError(f"--broker: port must be 1-65535, got {port_number}")
    broker = {
        "host": host,
        "port": port_number,
        "username": args.username,
        "password": os.environ.get(args.password_env) if args.username else None,
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "prefix": args.prefix,
        "timeout_s": args.timeout_s,
    }
    if with_target:
        broker["target"] = args.target
    return broker


def add_publish(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "publish", help="send a signed bundle to devices over MQTT (or announce a URL)"
    )
    p.add_argument("bundle", type=Path, help="signed bundle folder (chorus-models bundle sign)")
    _broker_args(p)
    p.add_argument(
        "--chunk-bytes",
        type=int,
        default=DEFAULT_CHUNK_BYTES,
        help="MQTT chunk size; keep it under the broker's message size limit "
        "(default: %(default)s)",
    )
    p.add_argument("--url", help="announce this HTTP(S) URL instead of sending chunks")
    p.add_argument("--archive-out", type=Path, help="also write the archive here (for --url)")
    p.add_argument("--force", action="store_true", help="allow a downgrade or a re-install")
    p.add_argument("--dry-run", action="store_true", help="pack and sign, publish nothing")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="then follow the devices' state for up to S seconds (until each addressed device "
        "confirmed, refused or rolled back); exit 1 if any refused or none answered",
    )
    return p


def _publish(args: argparse.Namespace) -> int:
    from modeltools.ota.publish import publish_update, update_topic_for
    from modeltools.ota.rollout import format_rollout

    if args.dry_run:
        broker = {"host": "", "port": 0, "prefix": args.prefix, "target": args.target}
        update_topic_for(args.prefix, args.target)  # a bad target fails even in a dry run
    else:
        broker = _broker(args)
    r = publish_update(
        args.bundle,
        args.key,
        chunk_bytes=args.chunk_bytes,
        url=args.url,
        force=args.force,
        archive_out=args.archive_out,
        dry_run=args.dry_run,
        wait_s=0.0 if args.dry_run else args.wait,
        **broker,
    )
    how = f"URL {args.url}" if args.url else f"{r.chunks} chunk(s) of <= {r.chunk_bytes} bytes"
    verb = "packed (dry run)" if args.dry_run else "published"
    print(
        f"{verb} {r.name} {r.version} as request {r.request_id} on {r.topic}: "
        f"{r.archive_bytes} bytes, {how}, sha256 {r.sha256[:16]}..., {r.elapsed_s:.2f} s"
        + (f"; cleared {r.cleared} old retained chunk(s)" if r.cleared else ""),
        flush=True,
    )
    if args.archive_out:
        print(f"archive: {args.archive_out}")
    if r.rollout is None:
        return 0
    print(format_rollout(r.rollout))
    answered = [row for row in r.rollout.rows if row.state != "waiting"]
    if r.rollout.failed or not answered:
        why = (
            f"{len(r.rollout.failed)} device(s) refused or rolled back request {r.request_id}"
            if r.rollout.failed
            else f"no device reported on request {r.request_id} within {args.wait:g} s"
        )
        print(f"chorus-models: {why}", file=sys.stderr)
        return 1
    return 0


def run_publish(args: argparse.Namespace) -> int:
    return _guard(_publish, args)


def add_rollback(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rollback", help="tell devices to go back to their previous bundle (signed command)"
    )
    _broker_args(p)
    return p


def _connection(args: argparse.Namespace) -> Any:
    from modeltools.ota.publish import Broker

    b = _broker(args, with_target=False)
    del b["prefix"]
    return Broker(**b)


def _rollback(args: argparse.Namespace) -> int:
    from modeltools.ota.publish import publish_rollback

    rid = publish_rollback(args.key, _connection(args), target=args.target, prefix=args.prefix)
    print(f"published rollback request {rid} to {args.target}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    return _guard(_rollback, args)


def add_rollout_status(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rollout-status",
        help="per device: the state of a roll-out (announced ... confirmed, refused + reason)",
    )
    p.add_argument(
        "--target",
        help="device:<id>, group:<name> or all: the roll-out announced there (default: every "
        "device's latest state)",
    )
    p.add_argument("--request", help="this request id (default: the target's latest)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _connection_args(p, 30.0)
    return p


def _rollout_status(args: argparse.Namespace) -> int:
    from modeltools.ota.publish import read_rollout
    from modeltools.ota.rollout import format_rollout

    rollout = read_rollout(
        _connection(args), prefix=args.prefix, target=args.target, request_id=args.request
    )
    if args.json:
        print(json.dumps(rollout.to_json(), indent=2))
    else:
        print(format_rollout(rollout))
    return 1 if rollout.failed else 0


def run_rollout_status(args: argparse.Namespace) -> int:
    return _guard(_rollout_status, args)
