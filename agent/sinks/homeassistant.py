"""Home Assistant MQTT discovery (opt-in: ``mqtt.homeassistant.enabled``).

Home Assistant creates entities from retained JSON configs on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` (the convention BirdNET-Go and
Frigate users know). The entities read Chorus's own topics; nothing extra is published for them:

* ``sensor`` last species: common name from ``.../detections``, the rest as attributes;
* ``sensor`` detection count: ``pipeline.detections`` from the retained ``.../status``
  (``total_increasing``: the count restarts with the agent);
* ``binary_sensor`` online: ``.../availability`` (``online`` / ``offline``, the Last Will);
* diagnostic sensors: outbox depth and real-time factor from ``.../status``.
"""

from __future__ import annotations

import json
import re

from agent import __version__
from agent.topics import availability_topic, detections_topic, status_topic


def node_id(device_id: str) -> str:
    """Home Assistant allows only ``[A-Za-z0-9_-]`` in a discovery node id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", device_id)


def discovery_messages(
    discovery_prefix: str, topic_prefix: str, device_id: str
) -> list[tuple[str, bytes]]:
    """``(topic, retained payload)`` for every entity of one device."""
    node = node_id(device_id)
    availability = availability_topic(topic_prefix, device_id)
    status = status_topic(topic_prefix, device_id)
    device = {
        "identifiers": [f"chorus_{node}"],
        "name": f"Chorus {device_id}",
        "manufacturer": "Chorus",
        "model": "Chorus bird recorder",
        "sw_version": __version__,
    }
    common = {
        "device": device,
        "availability_topic": availability,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    entities: list[tuple[str, str, dict[str, object]]] = [
        (
            "sensor",
            "last_species",
            {
                **common,
                "name": "Last species",
                "icon": "mdi:bird",
                "state_topic": detections_topic(topic_prefix, device_id),
                "value_template": "{{ value_json.species.common_name }}",
                "json_attributes_topic": detections_topic(topic_prefix, device_id),
                "json_attributes_template": (
                    "{{ {'species_code': value_json.species.code, "
                    "'scientific_name': value_json.species.scientific_name, "
                    "'confidence': value_json.confidence, "
                    "'start_utc': value_json.start_utc, "
                    "'end_utc': value_json.end_utc} | tojson }}"
                ),
            },
        ),
        (
            "sensor",
            "detections",
            {
                **common,
                "name": "Detections",
                "icon": "mdi:counter",
                "state_topic": status,
                "value_template": "{{ value_json.pipeline.detections }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "detections",
            },
        ),
        (
            "binary_sensor",
            "online",
            {
                "device": device,
                "name": "Online",
                "device_class": "connectivity",
                "state_topic": availability,
                "payload_on": "online",
                "payload_off": "offline",
                "entity_category": "diagnostic",
            },
        ),
        (
            "sensor",
            "outbox_depth",
            {
                **common,
                "name": "Outbox depth",
                "icon": "mdi:tray-full",
                "state_topic": status,
                "value_template": "{{ value_json.outbox.depth }}",
                "state_class": "measurement",
                "unit_of_measurement": "detections",
                "entity_category": "diagnostic",
            },
        ),
        (
            "sensor",
            "real_time_factor",
            {
                **common,
                "name": "Real-time factor",
                "icon": "mdi:speedometer",
                "state_topic": status,
                "value_template": "{{ value_json.pipeline.real_time_factor }}",
                "state_class": "measurement",
                "entity_category": "diagnostic",
            },
        ),
    ]
    out = []
    for component, object_id, config in entities:
        config = {**config, "unique_id": f"chorus_{node}_{object_id}"}
        topic = f"{discovery_prefix}/{component}/{node}/{object_id}/config"
        out.append((topic, json.dumps(config, separators=(",", ":")).encode("utf-8")))
    return out
