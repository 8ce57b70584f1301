"""JSON Schemas (draft 2020-12) of every MQTT message kind; docs/mqtt.md explains them.

The files ship with the package. :func:`load_schema` needs nothing else; :func:`validator`
needs ``jsonschema`` (the ``collector`` and ``dev`` extras), which the device never imports.

A schema cannot see what JSON itself leaves loose: Python's decoder takes ``NaN`` and
``Infinity``, turns ``1e400`` into infinity and a ``"\\ud800"`` escape into a lone surrogate,
none of which a database can store. :func:`parse_message` decodes a message as I-JSON
(RFC 7493) instead, so a subscriber validates only what it can keep.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS = {
    "detection": "detection.schema.json",
    "status": "status.schema.json",
    "availability": "availability.schema.json",
    "command-update": "command-update.schema.json",
    "command-rollback": "command-rollback.schema.json",
    "command-reply": "command-reply.schema.json",
}
# RFC 3339 with a mandatory zone: fromisoformat alone would also take local times.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


_SURROGATE = re.compile("[\ud800-\udfff]")


class MessageError(ValueError):
    """A message is not I-JSON; ``reason`` is one word (``not_utf8``, ``not_json``,
    ``not_finite``, ``bad_unicode``), ``detail`` says where."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _reject_constant(name: str) -> float:
    raise MessageError("not_finite", f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MessageError("not_finite", f"{text[:40]} is beyond a 64-bit float")
    return value


def _check_unicode(value: Any) -> None:
    """Raise MessageError for a string (or key) holding a lone surrogate, at any depth."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and not v.isascii() and _SURROGATE.search(v):
            raise MessageError("bad_unicode", f"a string holds a lone surrogate: {v[:40]!r}")


def parse_message(payload: bytes) -> Any:
    """Decode an MQTT payload as I-JSON (RFC 7493): UTF-8, finite numbers only (no ``NaN``,
    ``Infinity`` or float overflow), no lone surrogates. Raises :class:`MessageError`."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError("not_utf8", str(exc)) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except MessageError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int of > 4300 digits
        raise MessageError("not_json", str(exc)[:200]) from None
    _check_unicode(value)
    return value


def load_schema(kind: str) -> dict[str, Any]:
    """The parsed schema of one message kind (a key of :data:`SCHEMAS`)."""
    if kind not in SCHEMAS:
        raise KeyError(f"no schema for {kind!r}; known: {', '.join(SCHEMAS)}")
    text = resources.files(__name__).joinpath(SCHEMAS[kind]).read_text(encoding="utf-8")
    return dict(json.loads(text))


def is_rfc3339(value: object) -> bool:
    """True for an RFC 3339 date-time with a time zone (``format: date-time``)."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return not isinstance(value, str)  # the format keyword ignores non-strings
    try:
        # ... and one that has a UTC equivalent (9999-12-31T23:59-23:00 has none).
        datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return True


@cache
def validator(kind: str) -> Any:
    """A ``jsonschema`` validator for one kind, with ``date-time`` formats checked."""
    import jsonschema

    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(is_rfc3339)
    schema = load_schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=checker)
