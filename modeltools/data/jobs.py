"""Bookkeeping shared by the data commands: resume journal, skip log, progress bars.

* :class:`Journal` — an append-only JSON-lines file of finished work items. A command that is
  interrupted and run again skips every item the journal records whose output still exists,
  so re-runs are cheap and resumable. A torn last line (crash mid-write) is ignored.
* :class:`SkipLog` — bad input is skipped with **one** warning line per item and counted by
  reason; :meth:`SkipLog.summary` is the closing line.
* :func:`progress` — a tqdm bar on a terminal, silent in logs and tests.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")


class Journal:
    """Records of finished items, keyed by a string, persisted as JSON lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.records[str(rec["key"])] = rec["value"]
                    except (ValueError, KeyError, TypeError):
                        log.debug("%s: ignoring a torn journal line", self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def add(self, key: str, value: dict[str, Any]) -> None:
        """Record ``key`` as done (flushed and fsynced: a crash cannot lose a finished item)."""
        self.records[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "value": value}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def discard(self) -> None:
        """Forget everything (used when the settings changed)."""
        self.records.clear()
        self.path.unlink(missing_ok=True)


class SkipLog:
    """One warning line per skipped item, counted by reason for the closing summary."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.items: list[tuple[str, str]] = []
        self._log = logger or log

    def skip(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        self.items.append((reason, message))
        self._log.warning("skipped: %s", message)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def summary(self, done: int, what: str = "files") -> str:
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"{done} {what} written, {len(self)} skipped" + (f" ({parts})" if parts else "")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar when stderr is a terminal (tqdm's ``disable=None``)."""
    yield from tqdm(items, desc=desc, total=total, unit="file", disable=None, leave=False)
