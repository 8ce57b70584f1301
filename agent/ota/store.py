"""The on-device model store: verified bundles, an atomic ``current`` link, crash-loop rollback.

Layout (``updates.store_dir``, default ``<state dir>/models``)::

    models/<name>-<version>/   verified bundles; never written after they land here
    incoming/<request_id>/     transfers in progress: parts/, archive.tar.gz, unpacked/
    current -> models/...      what the agent loads (absent: the configured factory bundle)
    previous -> ...            what a rollback returns to (a store folder or the factory bundle)
    state.json                 pending activation, restart counter, refused versions, ...
    .lock                      flock: the agent and ``chorus-agent models`` never interleave

Crash safety: a bundle is unpacked, fsynced and verified under ``incoming/`` and only then
*renamed* into ``models/`` (one atomic step on one file system). Links are switched by creating
a temporary link and ``os.replace``-ing it over the old one, so ``current`` always names either
the old or the new complete folder, whatever the moment power is lost. ``state.json`` is
written the same way (temp + fsync + rename + fsync of the folder).

Activation order: state ``pending`` (fsync) -> ``previous`` := old -> ``current`` := new (the
commit point). On every start while an activation is pending (not yet confirmed) the restart
counter goes up; beyond ``max_restarts`` the store rolls back before any model is loaded, so a
bundle that crashes the agent (even natively, in the interpreter) costs a bounded number of
restarts. :meth:`ModelStore.startup` also reconciles a state written just before a power cut
with the links that actually exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import BundleError, ChorusError
from agent.models.manifest import MANIFEST_NAME, load_bundle
from agent.ota.transfer import fsync_dir

log = logging.getLogger(__name__)

STATE_SCHEMA = "chorus.ota-state/1"
FACTORY = "factory"


class StoreError(ChorusError):
    """A store operation that cannot be done (nothing to roll back to, unknown version...)."""

    exit_code = 2


@dataclass(frozen=True)
class InstalledVersion:
    name: str
    version: str
    path: Path
    active: bool
    previous: bool
    refused: bool  # rolled back on this device: OTA re-installs need force
    factory: bool = False


@dataclass(frozen=True)
class StartupResult:
    bundle: Path  # what to load
    rolled_back: str | None  # why the store rolled back at this start, if it did
    pending: dict[str, Any] | None  # the activation still on probation, if any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle_identity(path: Path) -> tuple[str, str]:
    """(name, version) from a bundle's manifest, without checking the files."""
    try:
        data = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        return str(data["name"]), str(data["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.name, "?"


class ModelStore:
    """See the module docstring. ``factory_bundle`` is what runs when ``current`` is absent."""

    def __init__(self, root: Path, factory_bundle: Path) -> None:
        self.root = Path(root)
        self.factory = Path(factory_bundle).resolve()
        self.models_dir = self.root / "models"
        self.incoming_dir = self.root / "incoming"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"
        self.state_path = self.root / "state.json"
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    # -- locking and state ----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across threads (re-entrant) and processes (flock)."""
        with self._rlock:
            if self._depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self.models_dir.mkdir(exist_ok=True)
                self.incoming_dir.mkdir(exist_ok=True)
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None

    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if isinstance(state, dict) and state.get("schema") == STATE_SCHEMA:
                return state
            log.warning("%s: not a %s file; starting afresh", self.state_path, STATE_SCHEMA)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:  # cannot happen with atomic writes; survive it
            log.warning("%s unreadable (%s); starting afresh", self.state_path, exc)
        return {"schema": STATE_SCHEMA, "pending": None, "refused_versions": []}

    def write_state(self, state: dict[str, Any]) -> None:
        with self.locked():
            tmp = self.state_path.with_name(f".state.{os.getpid()}.tmp")
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(state, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
            fsync_dir(self.root)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Read the state, let the caller change it, write it back (all under the lock)."""
        with self.locked():
            state = self.read_state()
            yield state
            self.write_state(state)

    # -- links ----------------------------------------------------------------------------

    def _target(self, link: Path) -> Path | None:
        try:
            raw = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        target = Path(raw)
        return (target if target.is_absolute() else self.root / target).resolve()

    def _set_link(self, link: Path, target: Path) -> None:
        target = target.resolve()
        try:
            text = str(target.relative_to(self.root.resolve()))
        except ValueError:
            text = str(target)  # the factory bundle lives outside the store
        tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
        os.symlink(text, tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def _unlink(self, link: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
            fsync_dir(self.root)

    def current(self) -> Path:
        """The bundle the agent should run: ``current``'s target, else the factory bundle."""
        target = self._target(self.current_link)
        return target if target is not None and target.is_dir() else self.factory

    def previous(self) -> Path | None:
        target = self._target(self.previous_link)
        return target if target is not None and target.is_dir() else None

    def is_factory(self, path: Path) -> bool:
        return path.resolve() == self.factory

    # -- install / activate / confirm / roll back --------------------------------------------

    def install(self, unpacked: Path, name: str, version: str) -> Path:
        """Move a verified, fsynced bundle folder from ``incoming/`` into ``models/``."""
        with self.locked():
            dest = self.models_dir / f"{name}-{version}"
            if dest.exists():
                in_use = {self.current().resolve(), *(p.resolve() for p in [self.previous()] if p)}
                if dest.resolve() in in_use:
                    raise StoreError(f"{name} {version} is already installed and in use")
                self._remove_tree(dest)
            os.rename(unpacked, dest)
            fsync_dir(self.models_dir)
            with self.transaction() as state:  # kept by gc() until activated or discarded
                staged = state.setdefault("staged", [])
                if dest.name not in staged:
                    staged.append(dest.name)
            return dest

    def discard(self, path: Path) -> None:
        """Remove an installed bundle that will not be activated (refused by a later check)."""
        with self.locked():
            with self.transaction() as state:
                state["staged"] = [n for n in state.get("staged", []) if n != path.name]
            in_use = {self.current().resolve(), *(p.resolve() for p in [self.previous()] if p)}
            if path.is_dir() and path.resolve() not in in_use:
                self._remove_tree(path)

    def _remove_tree(self, path: Path) -> None:
        # Rename first (atomic), then delete: a power cut never leaves a half-deleted bundle
        # under a name something might load.
        trash = path.with_name(f".trash-{secrets.token_hex(4)}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def activate(self, target: Path, request_id: str | None, reason: str) -> Path:
        """Make ``target`` current (old current becomes previous); pending until confirmed.
        Returns the old current."""
        with self.locked():
            target = target.resolve()
            old = self.current().resolve()
            if old == target:
                raise StoreError(f"{target.name} is already active")
            load_bundle(target)  # never point current at something that does not load
            with self.transaction() as state:
                name, version = bundle_identity(target)
                state["staged"] = [n for n in state.get("staged", []) if n != target.name]
                state["pending"] = {
                    "target": str(target),
                    "from": str(old),
                    "name": name,
                    "version": version,
                    "request_id": request_id,
                    "reason": reason,
                    "restarts": 0,
                    "activated_utc": _now(),
                }
            self._set_link(self.previous_link, old)
            self._set_link(self.current_link, target)  # the commit point
            log.info("activated %s (previous: %s)", target, old)
            return old

    def confirm(self) -> dict[str, Any] | None:
        """End the probation of the pending activation; returns it (None if none)."""
        with self.locked(), self.transaction() as state:
            pending = state.get("pending")
            state["pending"] = None
            if pending:
                state["confirmed"] = {**pending, "confirmed_utc": _now()}
        self.gc()
        return pending

    def rollback(self, reason: str, mark_refused: bool = True) -> Path:
        """Switch ``current`` back to ``previous``; returns the bundle now current."""
        with self.locked():
            back = self.previous()
            if back is None:
                raise StoreError("nothing to roll back to (no previous version)")
            bad = self.current()
            if bad.resolve() == back.resolve():
                raise StoreError("previous and current are the same bundle")
            self._set_link(self.current_link, back)  # the commit point
            with self.transaction() as state:
                state["pending"] = None
                name, version = bundle_identity(bad)
                if mark_refused and not self.is_factory(bad):
                    refused = state.setdefault("refused_versions", [])
                    if {"name": name, "version": version} not in refused:
                        refused.append({"name": name, "version": version})
                state["last_rollback"] = {
                    "from": f"{name} {version}",
                    "to": " ".join(bundle_identity(back)),
                    "reason": reason,
                    "time_utc": _now(),
                }
            self._unlink(self.previous_link)
            log.warning("rolled back to %s: %s", back, reason)
            return back

    def is_refused(self, name: str, version: str) -> bool:
        refused = self.read_state().get("refused_versions", [])
        return {"name": name, "version": version} in refused

    def startup(self, max_restarts: int) -> StartupResult:
        """Call once at agent start, before loading models: reconcile, count the restart,
        roll back a crash loop or a bundle that no longer verifies."""
        with self.locked():
            rolled_back = None
            with self.transaction() as state:
                pending = state.get("pending")
                current = self.current().resolve()
                if pending and str(current) != pending.get("target"):
                    # Power lost between writing the state and switching the link (or a rollback
                    # lost its state write): the link is the truth.
                    log.warning("activation of %s did not complete; dropped", pending["target"])
                    state["pending"] = pending = None
                if pending:
                    pending["restarts"] = int(pending.get("restarts", 0)) + 1
            if pending and pending["restarts"] > max_restarts:
                rolled_back = (
                    f"{pending['name']} {pending['version']} was not confirmed after "
                    f"{pending['restarts'] - 1} restart(s) (crash loop?)"
                )
            elif not self.is_factory(self.current()):
                try:
                    load_bundle(self.current())
                except BundleError as exc:
                    rolled_back = f"the active bundle no longer verifies: {exc}"
            if rolled_back is not None:
                if self.previous() is not None:
                    self.rollback(rolled_back)
                else:  # nothing recorded to go back to: the factory bundle
                    self._unlink(self.current_link)
                    with self.transaction() as state:
                        state["pending"] = None
                pending = None
            return StartupResult(self.current(), rolled_back, pending)

    # -- listing and cleaning -----------------------------------------------------------------

    def versions(self) -> list[InstalledVersion]:
        """Installed bundles (plus the factory bundle), oldest folder name first."""
        current, previous = self.current().resolve(), self.previous()
        prev = previous.resolve() if previous else None
        state = self.read_state()
        refused = state.get("refused_versions", [])
        out = []
        dirs = (
            sorted(p for p in self.models_dir.glob("*") if p.is_dir()) if self.root.exists() else []
        )
        for path in [self.factory, *dirs]:
            if path.name.startswith("."):
                continue
            name, version = bundle_identity(path)
            out.append(
                InstalledVersion(
                    name,
                    version,
                    path,
                    active=path.resolve() == current,
                    previous=path.resolve() == prev,
                    refused={"name": name, "version": version} in refused,
                    factory=path.resolve() == self.factory,
                )
            )
        return out

    def find(self, version: str) -> Path:
        """The installed bundle with ``version`` (or folder name ``<name>-<version>``)."""
        matches = [v.path for v in self.versions() if version in (v.version, v.path.name)]
        if not matches:
            raise StoreError(f"version {version} is not installed (chorus-agent models list)")
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise StoreError(f"version {version} is ambiguous ({names}); give the folder name")
        return matches[0]

    def gc(self, keep_jobs: set[str] | None = None) -> None:
        """Delete bundles that are neither current nor previous, and stale transfers."""
        with self.locked():
            keep = {self.current().resolve()}
            if self.previous() is not None:
                keep.add(self.previous().resolve())  # type: ignore[union-attr]
            # Installed and not yet activated (an update being smoke-tested right now).
            keep |= {(self.models_dir / n).resolve() for n in self.read_state().get("staged", [])}
            for path in self.models_dir.iterdir():
                if path.resolve() not in keep:
                    log.info("removing old bundle %s", path.name)
                    if path.is_dir() and not path.is_symlink():
                        self._remove_tree(path)
                    else:
                        path.unlink()
            if keep_jobs is not None:
                for job in self.incoming_dir.iterdir():
                    if job.name not in keep_jobs:
                        shutil.rmtree(job, ignore_errors=True)
