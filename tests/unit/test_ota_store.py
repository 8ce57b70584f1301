"""The model store: atomic switch, power loss at every step, crash-loop rollback, the
``chorus-agent models`` command (agent/ota/store.py, agent/cli.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytest.importorskip("cryptography")

from test_ota_signing import fake_bundle

from agent.cli import main as agent_main
from agent.models.manifest import load_bundle
from agent.ota.signing import generate_key, inline_public_key, load_public_key
from agent.ota.store import ModelStore, StoreError, bundle_identity


class PowerCut(BaseException):
    """Raised instead of a file-system step: nothing after it runs, like a power cut."""


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", fake_bundle(tmp_path / "factory", "1.0.0"))


def _incoming(store: ModelStore, tmp_path: Path, version: str) -> Path:
    """A verified bundle, unpacked under incoming/ as the updater leaves it."""
    store.incoming_dir.mkdir(parents=True, exist_ok=True)
    return fake_bundle(store.incoming_dir / f"job-{version}" / "unpacked", version)


def _install(store: ModelStore, tmp_path: Path, version: str) -> Path:
    return store.install(_incoming(store, tmp_path, version), "tiny", version)


def _version(path: Path) -> str:
    return bundle_identity(path)[1]


def test_activate_confirm_keeps_current_and_previous(store: ModelStore, tmp_path: Path) -> None:
    assert store.current() == store.factory  # nothing installed: the configured bundle
    v11 = _install(store, tmp_path, "1.1.0")
    store.activate(v11, "r1", "test")
    assert _version(store.current()) == "1.1.0" and store.previous() == store.factory
    assert store.read_state()["pending"]["request_id"] == "r1"
    assert os.readlink(store.current_link) == "models/tiny-1.1.0"  # relative: store can move
    store.confirm()
    v12 = _install(store, tmp_path, "1.2.0")
    store.activate(v12, "r2", "test")
    store.confirm()
    assert store.read_state()["pending"] is None
    # Confirming cleans up: only current (1.2.0) and previous (1.1.0) stay.
    assert sorted(p.name for p in store.models_dir.iterdir()) == ["tiny-1.1.0", "tiny-1.2.0"]
    assert _version(store.previous()) == "1.1.0"  # type: ignore[arg-type]


def test_a_bundle_installed_but_not_yet_activated_survives_cleanup(
    store: ModelStore, tmp_path: Path
) -> None:
    store.activate(_install(store, tmp_path, "1.1.0"), "r1", "test")
    staged = _install(store, tmp_path, "1.2.0")  # being smoke-tested...
    store.confirm()  # ...while the previous update is confirmed (which cleans up)
    assert staged.is_dir()
    store.discard(staged)  # refused by the smoke test
    assert not staged.exists() and store.read_state()["staged"] == []
    store.discard(store.current())  # in use: never removed
    assert _version(store.current()) == "1.1.0"


def test_rollback_returns_to_previous_and_remembers(store: ModelStore, tmp_path: Path) -> None:
    store.activate(_install(store, tmp_path, "1.1.0"), "r1", "test")
    back = store.rollback("window errors")
    assert back == store.factory and store.current() == store.factory
    assert store.previous() is None and store.read_state()["pending"] is None
    assert store.is_refused("tiny", "1.1.0")
    assert store.read_state()["last_rollback"]["reason"] == "window errors"
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback("again")


def test_installed_version_in_use_is_not_replaced(store: ModelStore, tmp_path: Path) -> None:
    store.activate(_install(store, tmp_path, "1.1.0"), "r1", "test")
    with pytest.raises(StoreError, match="already installed and in use"):
        _install(store, tmp_path, "1.1.0")
    with pytest.raises(StoreError, match="already active"):
        store.activate(store.current(), None, "again")


def test_crash_loop_rolls_back_after_max_restarts(store: ModelStore, tmp_path: Path) -> None:
    store.activate(_install(store, tmp_path, "1.1.0"), "r1", "test")
    for restart in (1, 2, 3):  # the agent keeps dying before confirming
        result = ModelStore(store.root, store.factory).startup(max_restarts=3)
        assert result.rolled_back is None and _version(result.bundle) == "1.1.0"
        assert result.pending is not None and result.pending["restarts"] == restart
    result = ModelStore(store.root, store.factory).startup(max_restarts=3)
    assert (
        result.rolled_back is not None and "not confirmed after 3 restart(s)" in result.rolled_back
    )
    assert result.bundle == store.factory and store.is_refused("tiny", "1.1.0")
    # Back on a healthy bundle, later starts count nothing.
    assert ModelStore(store.root, store.factory).startup(max_restarts=3).rolled_back is None


def test_a_current_bundle_that_no_longer_verifies_is_rolled_back(
    store: ModelStore, tmp_path: Path
) -> None:
    store.activate(_install(store, tmp_path, "1.1.0"), "r1", "test")
    store.confirm()
    (store.current() / "clf.tflite").write_bytes(b"bit rot")
    result = store.startup(max_restarts=3)
    assert result.rolled_back is not None and "no longer verifies" in result.rolled_back
    assert result.bundle == store.factory


def _cut_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Let ``steps`` atomic file-system steps (rename, replace, symlink) happen, then cut."""
    done = [0]
    for name in ("replace", "rename", "symlink"):
        real = getattr(os, name)

        def step(*args: object, _real: Callable = real, **kw: object) -> object:
            if done[0] >= steps:
                raise PowerCut
            done[0] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, step)


def test_power_loss_at_any_step_leaves_old_or_new_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = fake_bundle(tmp_path / "factory", "1.0.0")
    outcomes = set()
    for steps in range(20):
        root = tmp_path / f"store{steps}"
        store = ModelStore(root, factory)
        store.activate(store.install(_incoming(store, tmp_path, "1.1.0"), "tiny", "1.1.0"), "", "")
        store.confirm()
        unpacked = _incoming(store, tmp_path, "1.2.0")
        with monkeypatch.context() as m:
            _cut_after(m, steps)
            try:
                store.activate(store.install(unpacked, "tiny", "1.2.0"), "r2", "update")
                finished = True
            except PowerCut:
                finished = False
        rebooted = ModelStore(root, factory)  # power back: a fresh process
        result = rebooted.startup(max_restarts=3)
        version = _version(result.bundle)
        assert version in ("1.1.0", "1.2.0"), (steps, version)
        load_bundle(result.bundle)  # never half-written
        if version == "1.1.0":
            assert result.pending is None  # an activation that did not commit is forgotten
        else:
            assert result.pending is not None and result.pending["version"] == "1.2.0"
        outcomes.add(version)
        if finished:  # every step of install + activate was cut once
            break
    else:
        pytest.fail("install + activate never finished")
    assert outcomes == {"1.1.0", "1.2.0"}  # both sides of the commit point were exercised


def _config(tmp_path: Path, store: ModelStore) -> Path:
    _, pub = generate_key(tmp_path / "k.key")
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inference": {"bundle": str(store.factory)},
                "mqtt": {"enabled": True},
                "updates": {
                    "enabled": True,
                    "trusted_keys": [inline_public_key(load_public_key(str(pub)))],
                    "store_dir": str(store.root),
                },
            }
        )
    )
    return path


def test_models_command_lists_activates_and_rolls_back(
    store: ModelStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_config(tmp_path, store))
    _install(store, tmp_path, "1.1.0")
    assert agent_main(["models", "list", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("* tiny 1.0.0") and "factory" in lines[0]
    assert lines[1].startswith("  tiny 1.1.0")
    assert agent_main(["models", "activate", "1.1.0", "--config", config]) == 0
    assert "restart the agent" in capsys.readouterr().out
    assert _version(store.current()) == "1.1.0"
    agent_main(["models", "list", "--config", config])
    out = capsys.readouterr().out
    assert "* tiny 1.1.0" in out and "unconfirmed" in out
    assert agent_main(["models", "rollback", "--config", config]) == 0
    assert store.current() == store.factory
    assert agent_main(["models", "activate", "9.9.9", "--config", config]) == 2
    assert "not installed" in capsys.readouterr().err


def test_models_command_needs_updates_enabled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_main(["models", "list"]) == 2
    assert "updates.enabled" in capsys.readouterr().err


def test_store_survives_being_moved(store: ModelStore, tmp_path: Path) -> None:
    store.activate(_install(store, tmp_path, "1.1.0"), "r1", "test")
    moved = tmp_path / "moved"
    shutil.move(store.root, moved)
    assert _version(ModelStore(moved, store.factory).current()) == "1.1.0"
