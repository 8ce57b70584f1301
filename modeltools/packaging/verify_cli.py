"""``chorus-models bundle ...``: model bundle commands.

``bundle verify DIR`` runs :func:`agent.models.verify.verify_bundle` (the same check the device
runs, LiteRT only) and prints its report; a bad bundle gives one error line and exit status 2.
``bundle sign DIR --key KEY`` writes ``DIR/signature.json``: the Ed25519 signature of the exact
``manifest.json`` bytes (docs/ota.md); the manifest covers every other file by sha256.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.errors import ChorusError


def add_bundle_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bundle`` with its actions under ``sub``; returns the ``bundle`` parser."""
    p = sub.add_parser("bundle", help="model bundle tools: verify or sign a bundle folder")
    actions = p.add_subparsers(dest="bundle_action", required=True)
    v = actions.add_parser(
        "verify",
        help="check every file's size and sha256, builtin ops only, shapes, golden smoke test",
    )
    v.add_argument("dir", type=Path, help="bundle folder (holds manifest.json)")
    v.add_argument("--threads", type=int, default=1, help="interpreter threads (default: 1)")
    v.set_defaults(_bundle_run=_run_verify)
    s = actions.add_parser(
        "sign", help="sign manifest.json with an Ed25519 key (writes signature.json)"
    )
    s.add_argument("dir", type=Path, help="bundle folder (holds manifest.json)")
    s.add_argument(
        "--key", type=Path, required=True, help="private key (chorus-models keys generate)"
    )
    s.set_defaults(_bundle_run=_run_sign)
    return p


def _run_sign(args: argparse.Namespace) -> int:
    from agent.ota.signing import load_private_key, read_bundle_signature, sign_bundle

    out = sign_bundle(args.dir, load_private_key(args.key))
    print(f"{out}: signed by key {read_bundle_signature(args.dir)['key_id']}")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from agent.models.verify import verify_bundle

    print(verify_bundle(args.dir, num_threads=args.threads).format())
    return 0


def run_bundle(args: argparse.Namespace) -> int:
    """Run the chosen ``bundle`` action: 0 on success; on a bad bundle one line
    ``chorus-models: error: DIR: what is wrong`` on stderr and 2."""
    try:
        return int(args._bundle_run(args))
    except ChorusError as exc:
        message = " ".join(str(exc).split("\n"))
        where = str(getattr(args, "dir", "") or "")
        if where and not message.startswith(where):
            message = f"{where}: {message}"
        print(f"chorus-models: error: {message}", file=sys.stderr)
        return 2
