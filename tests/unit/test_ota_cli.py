"""``chorus-models keys generate``, ``bundle sign`` and ``publish --dry-run``, wired as
modeltools.cli wires every command: ``add(sub).set_defaults(_run=run)``."""

from __future__ import annotations

import argparse
import json
import shutil
import stat
from pathlib import Path

import pytest

pytest.importorskip("cryptography")
pytest.importorskip("paho.mqtt")

from test_ota_signing import fake_bundle

from agent.ota.signing import SIGNATURE_NAME
from modeltools.ota import cli as ota_cli
from modeltools.packaging import verify_cli

COMMANDS = [
    (ota_cli.add_keys, ota_cli.run_keys),
    (ota_cli.add_publish, ota_cli.run_publish),
    (ota_cli.add_rollback, ota_cli.run_rollback),
    (ota_cli.add_rollout_status, ota_cli.run_rollout_status),
    (verify_cli.add_bundle_parser, verify_cli.run_bundle),
]


def chorus_models(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="chorus-models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, run in COMMANDS:
        add(sub).set_defaults(_run=run)
    args = parser.parse_args(list(argv))
    return int(args._run(args))


def test_keys_sign_and_dry_run_publish(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = tmp_path / "keys" / "lab.key"
    assert chorus_models("keys", "generate", "--out", str(key)) == 0
    out = capsys.readouterr().out
    assert "ed25519:" in out and stat.S_IMODE(key.stat().st_mode) == 0o600
    bundle = fake_bundle(tmp_path / "b", "1.2.0")
    assert chorus_models("bundle", "sign", str(bundle), "--key", str(key)) == 0
    assert "signed by key" in capsys.readouterr().out
    assert json.loads((bundle / SIGNATURE_NAME).read_text())["algorithm"] == "ed25519"
    archive = tmp_path / "out" / "tiny.tar.gz"
    argv = ["publish", str(bundle), "--key", str(key), "--target", "group:north", "--dry-run"]
    assert chorus_models(*argv, "--archive-out", str(archive)) == 0
    out = capsys.readouterr().out
    assert "packed (dry run) tiny 1.2.0" in out and "chorus/_group/north/cmd/update" in out
    assert archive.is_file()


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = tmp_path / "lab.key"
    chorus_models("keys", "generate", "--out", str(key))
    assert chorus_models("keys", "generate", "--out", str(key)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    unsigned = fake_bundle(tmp_path / "b")
    publish = ["publish", str(unsigned), "--key", str(key), "--dry-run"]
    assert chorus_models(*publish, "--target", "device:pi-1") == 2
    assert "not signed" in capsys.readouterr().err
    assert chorus_models(*publish, "--target", "pi-1") == 2
    assert "--target must be device:<id>" in capsys.readouterr().err
    shutil.copy(key, tmp_path / "loose.key")
    (tmp_path / "loose.key").chmod(0o644)
    assert chorus_models("bundle", "sign", str(unsigned), "--key", str(tmp_path / "loose.key")) == 2
    assert "readable by every user" in capsys.readouterr().err
    assert not (unsigned / SIGNATURE_NAME).exists()


def test_broker_option_mistakes_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    key = tmp_path / "lab.key"
    chorus_models("keys", "generate", "--out", str(key))
    bundle = fake_bundle(tmp_path / "b", "1.2.0")
    chorus_models("bundle", "sign", str(bundle), "--key", str(key))
    capsys.readouterr()
    publish = ["publish", str(bundle), "--key", str(key), "--target", "all"]
    missing = str(tmp_path / "nope.crt")
    cases = [
        (["--broker", "h:1", "--tls-ca", missing], f"--tls-ca: file not found: {missing}"),
        (["--broker", "h:1", "--tls-cert", missing], "--tls-cert and --tls-key go together"),
        (["--broker", "h:99999"], "--broker: port must be 1-65535"),
        (["--broker", "h:1", "--wait", "-1"], "--wait must be >= 0 seconds"),
    ]
    for extra, message in cases:
        assert chorus_models(*publish, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert chorus_models("rollout-status") == 2
    assert "--broker HOST[:PORT] is required" in capsys.readouterr().err
