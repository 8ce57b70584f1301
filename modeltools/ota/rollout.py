"""A roll-out's state per device, read from the devices' retained ``models/state`` topics.

Every agent publishes each transition of its update state machine, retained, on
``<prefix>/<device>/models/state`` (``chorus.models.state/1``, docs/ota.md), with the groups it
follows. So the broker holds, per device, its latest state: which request, which bundle, what
is active, and the reason of a refusal or rollback. ``chorus-models rollout-status`` reads those
(and the target's retained announcement, which names the request); ``chorus-models publish
--wait`` follows them live after publishing. Nothing here asks a device anything.

Which devices a target addresses is known from the retained states too: ``device:<id>`` that
one, ``group:<name>`` the devices reporting that group, ``all`` every device that has reported;
a device that never reported a state is unknown until it does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.errors import ChorusError

STATE_SCHEMA = "chorus.models.state/1"
FINAL_STATES = ("confirmed", "refused", "rolled_back")
FAILED_STATES = ("refused", "rolled_back")
WAITING = "waiting"  # addressed, no state for this request (yet)
NO_STATE = "no state"  # addressed, never reported any state


class RolloutError(ChorusError):
    """The roll-out cannot be read (no retained announcement, bad request id)."""

    exit_code = 2


def state_filter(prefix: str) -> str:
    """The topic filter of every device's model state."""
    return f"{prefix}/+/models/state"


def _bundle_text(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return f"{value['name']} {value.get('version')}"
    return None


@dataclass(frozen=True)
class DeviceState:
    """One ``chorus.models.state/1`` message."""

    device: str
    state: str
    request_id: str | None
    bundle: str | None  # "name version" of the update the state is about
    active: str | None  # "name version" running on the device
    time_utc: str | None
    reason: str | None
    groups: tuple[str, ...] | None  # None: an agent that does not report them

    @classmethod
    def parse(cls, prefix: str, topic: str, payload: bytes) -> DeviceState | None:
        """The state on ``<prefix>/<device>/models/state``; None for anything else."""
        parts = topic[len(prefix) + 1 :].split("/")
        if (
            not topic.startswith(prefix + "/")
            or len(parts) != 3
            or parts[1:] != ["models", "state"]
        ):
            return None
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
            return None
        groups = doc.get("groups")
        rid = doc.get("request_id")
        return cls(
            device=parts[0],
            state=str(doc.get("state")),
            request_id=rid if isinstance(rid, str) else None,
            bundle=_bundle_text(doc.get("bundle")),
            active=_bundle_text(doc.get("active")),
            time_utc=doc.get("time_utc") if isinstance(doc.get("time_utc"), str) else None,
            reason=doc.get("reason") if isinstance(doc.get("reason"), str) else None,
            groups=tuple(str(g) for g in groups) if isinstance(groups, list) else None,
        )


def latest_states(
    prefix: str, messages: Iterable[tuple[str, bytes]], request_id: str | None = None
) -> dict[str, DeviceState]:
    """The last state per device in ``messages`` (in order), only of ``request_id`` if given."""
    out: dict[str, DeviceState] = {}
    for topic, payload in messages:
        s = DeviceState.parse(prefix, topic, payload)
        if s is not None and request_id in (None, s.request_id):
            out[s.device] = s
    return out


def addressed(target: str, roster: dict[str, DeviceState]) -> set[str]:
    """The devices ``target`` names, as far as their retained states tell."""
    kind, _, name = target.partition(":")
    if kind == "device":
        return {name}
    if kind == "group":
        return {d for d, s in roster.items() if s.groups is not None and name in s.groups}
    return set(roster)


@dataclass(frozen=True)
class RolloutRow:
    device: str
    state: str  # a state machine state, WAITING or NO_STATE
    bundle: str | None
    active: str | None
    time_utc: str | None
    reason: str | None


@dataclass(frozen=True)
class Rollout:
    """Per device, where it stands with one request (or, without a request, its latest)."""

    target: str | None
    topic: str | None
    request_id: str | None
    bundle: str | None
    rows: list[RolloutRow]

    @property
    def failed(self) -> list[RolloutRow]:
        """Devices that refused the request or rolled it back."""
        return [r for r in self.rows if r.state in FAILED_STATES]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "topic": self.topic,
            "request_id": self.request_id,
            "bundle": self.bundle,
            "devices": [r.__dict__ for r in self.rows],
        }


def _rows(
    devices: Iterable[str], latest: dict[str, DeviceState], request_id: str | None
) -> list[RolloutRow]:
    rows = []
    for d in sorted(devices):
        s = latest.get(d)
        if s is None:
            rows.append(RolloutRow(d, NO_STATE, None, None, None, "no model state reported"))
        elif request_id is not None and s.request_id != request_id:
            last = f"last: {s.state} of request {s.request_id}"
            rows.append(RolloutRow(d, WAITING, None, s.active, s.time_utc, last))
        else:
            rows.append(RolloutRow(d, s.state, s.bundle, s.active, s.time_utc, s.reason))
    return rows


def build_rollout(
    prefix: str,
    target: str | None,
    topic: str | None,
    request_id: str | None,
    announcement: bytes | None,
    messages: dict[str, bytes],
) -> Rollout:
    """The roll-out from the retained messages (see :func:`modeltools.ota.publish.read_rollout`)."""
    bundle = None
    if announcement:
        try:
            doc = json.loads(announcement)
            announced_rid, bundle = str(doc["request_id"]), _bundle_text(doc["bundle"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise RolloutError(f"the retained message on {topic} is not an announcement") from None
        request_id = request_id or announced_rid
    elif target is not None and request_id is None:
        raise RolloutError(
            f"no retained announcement on {topic}: nothing is being rolled out to {target} "
            "(or it was cleared); give --request ID"
        )
    latest = latest_states(prefix, messages.items())
    devices = addressed(target, latest) if target is not None else set(latest)
    if request_id is not None:
        devices |= {d for d, s in latest.items() if s.request_id == request_id}
        if bundle is None:
            bundle = next((s.bundle for s in latest.values() if s.request_id == request_id), None)
    return Rollout(target, topic, request_id, bundle, _rows(devices, latest, request_id))


def wait_for_states(
    received: Callable[[], list[tuple[str, bytes]]],
    prefix: str,
    request_id: str,
    target: str,
    roster: list[tuple[str, bytes]],
    wait_s: float,
    topic: str | None = None,
    bundle: str | None = None,
    poll_s: float = 0.1,
) -> Rollout:
    """Follow the states of ``request_id`` until every addressed device reached a final state
    (confirmed, refused, rolled back) or ``wait_s`` passed. ``received()``: the state messages
    so far; ``roster``: the retained states before publishing (who is addressed)."""
    expected = addressed(target, latest_states(prefix, roster))
    deadline = time.monotonic() + wait_s
    while True:
        mine = latest_states(prefix, list(received()), request_id)
        devices = expected | set(mine)
        settled = all(d in mine and mine[d].state in FINAL_STATES for d in devices)
        if (devices and settled) or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    rows = [
        r if r.state != NO_STATE else RolloutRow(r.device, WAITING, None, None, None, "no answer")
        for r in _rows(devices, mine, request_id)
    ]
    return Rollout(target, topic, request_id, bundle, rows)


def format_rollout(rollout: Rollout) -> str:
    """A table, one device a line, and a summary line."""
    head = ["DEVICE", "STATE", "BUNDLE", "ACTIVE", "TIME", "REASON"]
    lines = [
        [r.device, r.state, r.bundle or "-", r.active or "-", r.time_utc or "-", r.reason or ""]
        for r in rollout.rows
    ]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    out = []
    if rollout.request_id is not None:
        what = f"{rollout.bundle}, " if rollout.bundle else ""
        where = f" to {rollout.target} ({rollout.topic})" if rollout.target else ""
        out.append(f"roll-out of {what}request {rollout.request_id}{where}")
    for row in [head, *lines]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        out.append("  ".join(cells).rstrip())
    counts = ", ".join(f"{n} {s}" for s, n in sorted(rollout.counts().items()))
    out.append(f"{len(rollout.rows)} device(s)" + (f": {counts}" if counts else ""))
    return "\n".join(out)
