"""JSON Schemas (draft 2020-12) of every MQTT message kind; docs/mqtt.md explains them.

The files ship with the package. :func:`load_schema` needs nothing else; :func:`validator`
needs ``jsonschema`` (the ``collector`` and ``dev`` extras), which the device never imports.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
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
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
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
