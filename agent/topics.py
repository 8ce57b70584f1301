"""The MQTT topic layout, in one place (docs/mqtt.md describes it for people).

Per device, under a configurable prefix (default ``chorus``)::

    <prefix>/<device>/detections      QoS 1, one JSON detection per message
    <prefix>/<device>/availability    retained "online" / "offline" (offline is the Last Will)
    <prefix>/<device>/status          retained JSON heartbeat
    <prefix>/<device>/cmd/<command>   commands to one device (the OTA issue implements them)
    <prefix>/<device>/reply/<command> the device's answers to commands
    <prefix>/<device>/models/state    retained JSON: the model-update state machine (OTA)

Commands to many devices use levels no device id can take (a device id starts with a letter
or digit): ``<prefix>/_group/<group>/cmd/<command>`` and ``<prefix>/_all/cmd/<command>``.
A roll-out *target* names one of the three: ``device:<id>``, ``group:<name>`` or ``all``
(:func:`target_command_topic`); signed OTA commands carry it (docs/ota.md).
"""

from __future__ import annotations

import re

DEVICE_KINDS = ("detections", "availability", "status")
COMMANDS = ("update", "rollback")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is one topic level without '/', '+', '#'; else ValueError."""
    if not device_id or any(c in device_id for c in "/+#"):
        raise ValueError(f"device_id must be one topic level without '/', '+', '#': {device_id!r}")
    return device_id


def device_topic(prefix: str, device_id: str, kind: str) -> str:
    """``<prefix>/<device_id>/<kind>``."""
    return f"{prefix}/{check_device_id(device_id)}/{kind}"


def detections_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, "detections")


def availability_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, "availability")


def status_topic(prefix: str, device_id: str) -> str:
    return device_topic(prefix, device_id, "status")


def command_topic(prefix: str, device_id: str, command: str) -> str:
    return device_topic(prefix, device_id, f"cmd/{command}")


def reply_topic(prefix: str, device_id: str, command: str) -> str:
    return device_topic(prefix, device_id, f"reply/{command}")


def models_state_topic(prefix: str, device_id: str) -> str:
    """``<prefix>/<device_id>/models/state``: retained, one message per update transition."""
    return device_topic(prefix, device_id, "models/state")


def group_command_topic(prefix: str, group: str, command: str) -> str:
    if not _DEVICE_ID.match(group):
        raise ValueError(f"group must be 1-64 letters, digits, '_', '.', '-': {group!r}")
    return f"{prefix}/_group/{group}/cmd/{command}"


def fleet_command_topic(prefix: str, command: str) -> str:
    return f"{prefix}/_all/cmd/{command}"


def target_command_topic(prefix: str, target: str, command: str) -> str:
    """The command topic of a roll-out target (``device:<id>``, ``group:<name>``, ``all``).

    Raises ValueError naming what is wrong with ``target``.
    """
    kind, sep, name = target.partition(":")
    if sep and name and kind == "device":
        return command_topic(prefix, name, command)
    if sep and name and kind == "group":
        return group_command_topic(prefix, name, command)
    if target == "all":
        return fleet_command_topic(prefix, command)
    raise ValueError(f"must be device:<id>, group:<name> or all, got {target!r}")


def parse_device_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(device_id, kind)`` for ``<prefix>/<device>/<kind>`` with a known kind, else None."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or parts[1] not in DEVICE_KINDS or not _DEVICE_ID.match(parts[0]):
        return None
    return parts[0], parts[1]
