"""``chorus-models keys generate``, ``chorus-models publish``, ``chorus-models rollback``.

Each command is a pair ``add_<name>(sub) -> parser`` / ``run_<name>(args) -> int`` for
``modeltools.cli._COMMANDS``. Mistakes a user can act on print one line
``chorus-models: error: ...`` and return 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

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
# publish / rollback


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="HOST[:PORT] of the MQTT broker (port 1883 by default)")
    p.add_argument(
        "--target", required=True, help="device:<id>, group:<name> (staged roll-out) or all"
    )
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key that signs")
    p.add_argument("--prefix", default="chorus", help="topic prefix (default: %(default)s)")
    p.add_argument("--username", help="broker user name")
    p.add_argument(
        "--password-env",
        default="CHORUS_MQTT_PASSWORD",
        help="environment variable holding the password (default: %(default)s)",
    )
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM): connect with TLS")
    p.add_argument("--timeout-s", type=float, default=60.0, help="ack timeout (default: 60)")


def _broker(args: argparse.Namespace) -> dict:
    from modeltools.ota.publish import PublishError

    if not args.broker:
        raise PublishError("--broker HOST[:PORT] is required (or use --dry-run)")
    host, _, port = args.broker.rpartition(":") if ":" in args.broker else (args.broker, "", "")
    try:
        port_number = int(port) if port else 1883
    except ValueError:
        raise PublishError(f"--broker: not HOST[:PORT]: {args.broker!r}") from None
    return {
        "host": host,
        "port": port_number,
        "username": args.username,
        "password": os.environ.get(args.password_env) if args.username else None,
        "tls_ca": args.tls_ca,
        "prefix": args.prefix,
        "target": args.target,
        "timeout_s": args.timeout_s,
    }


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
    return p


def _publish(args: argparse.Namespace) -> int:
    from modeltools.ota.publish import publish_update, update_topic_for

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
        **broker,
    )
    how = f"URL {args.url}" if args.url else f"{r.chunks} chunk(s) of <= {r.chunk_bytes} bytes"
    verb = "packed (dry run)" if args.dry_run else "published"
    print(
        f"{verb} {r.name} {r.version} as request {r.request_id} on {r.topic}: "
        f"{r.archive_bytes} bytes, {how}, sha256 {r.sha256[:16]}..., {r.elapsed_s:.2f} s"
        + (f"; cleared {r.cleared} old retained chunk(s)" if r.cleared else "")
    )
    if args.archive_out:
        print(f"archive: {args.archive_out}")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    return _guard(_publish, args)


def add_rollback(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rollback", help="tell devices to go back to their previous bundle (signed command)"
    )
    _broker_args(p)
    return p


def _rollback(args: argparse.Namespace) -> int:
    from modeltools.ota.publish import publish_rollback

    broker = _broker(args)
    rid = publish_rollback(args.key, **broker)
    print(f"published rollback request {rid} to {args.target}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    return _guard(_rollback, args)
