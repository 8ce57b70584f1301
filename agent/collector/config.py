"""The collector's configuration: one YAML file, validated at start-up like the agent's.

Every problem is one line naming its YAML path (``mqtt.port: input should be less than or
equal to 65535, got 70000``); :func:`load_collector_config` raises
:class:`~agent.errors.ConfigError` holding all of them (the CLI exits 2). Unknown keys are
errors. ``config/collector.example.yaml`` documents every key; a test keeps the two in step.
Command-line options of ``chorus-collector run`` and ``export`` override the file, key by key
(:func:`apply_overrides`), and are validated with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict, Field, field_validator

from agent.config import (
    BackoffConfig,
    MqttTlsConfig,
    PositiveFloat,
    _check_topic_prefix,
    _Section,
    read_yaml,
    validate_mapping,
)


class _CollectorSection(_Section):
    # .inf / .nan pass every gt/le bound; the collector has no key where they mean anything.
    model_config = ConfigDict(allow_inf_nan=False)


class CollectorMqttConfig(_CollectorSection):
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic_prefix: str = "chorus"
    # MQTT 5 shared subscription: collectors of one group split the detections. null = a plain
    # subscription (each collector gets every detection). See docs/mqtt.md before sharing.
    share_group: str | None = None
    client_id: str | None = None  # null = chorus-collector-<hostname>; unique per collector
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    username: str | None = None
    password_env: str = "CHORUS_MQTT_PASSWORD"
    password_file: str | None = None  # wins over password_env; bare name: $CREDENTIALS_DIRECTORY
    tls: MqttTlsConfig = MqttTlsConfig()
    # How long the broker queues detections while this collector is away (MQTT 5 session).
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 24 * 3600
    reconnect_backoff: BackoffConfig = BackoffConfig()

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return _check_topic_prefix(v)

    @field_validator("share_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/#+") or not v.isprintable()):
            raise ValueError(f"must be a non-empty name without '/', '#' or '+', got {v!r}")
        return v


class CollectorStoreConfig(_CollectorSection):
    # SQLite file; null = $STATE_DIRECTORY/collector.sqlite (systemd), else
    # ~/.local/state/chorus/collector.sqlite. Ignored when a PostgreSQL DSN is given.
    sqlite_path: str | None = None
    # PostgreSQL: a DSN (it may hold a password, so never here) from this environment
    # variable, if set and not empty ...
    postgres_dsn_env: str = "CHORUS_COLLECTOR_DSN"
    # ... or from this file (wins): absolute path, or a bare name in $CREDENTIALS_DIRECTORY.
    postgres_dsn_file: str | None = None


class CollectorFileConfig(_CollectorSection):
    """The whole file (``config/collector.example.yaml``)."""

    log_level: str = "INFO"
    mqtt: CollectorMqttConfig = CollectorMqttConfig()
    store: CollectorStoreConfig = CollectorStoreConfig()
    batch_max: Annotated[int, Field(ge=1, le=100_000)] = 500  # messages per transaction
    batch_wait_s: Annotated[float, Field(ge=0, le=10)] = 0.05  # how long a batch may fill
    device_status: bool = True  # also keep each device's availability and last status
    stats_interval_s: PositiveFloat = 60.0  # log the counters this often

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {v!r}")
        return v


def _merge(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, key = path.split(".")
    for name in parents:
        child = data.get(name)
        if not isinstance(child, dict):
            child = data[name] = {}
        data = child
    data[key] = value


def apply_overrides(data: Any, overrides: dict[str, Any]) -> Any:
    """``data`` (parsed YAML) with ``{"mqtt.port": 1884, ...}`` set; None values are skipped."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return data  # parse_collector_config reports it
    for path, value in overrides.items():
        if value is not None:
            _merge(data, path, value)
    return data


def parse_collector_config(data: Any, source: str = "collector config") -> CollectorFileConfig:
    """Validate a mapping (already parsed YAML); raise ConfigError with every problem."""
    return validate_mapping(CollectorFileConfig, data, source)


def load_collector_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> CollectorFileConfig:
    """The file at ``path`` (None: the defaults) with ``overrides`` applied, validated."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "command line"
    return parse_collector_config(apply_overrides(data, overrides or {}), source)


def to_yaml(config: CollectorFileConfig) -> str:
    """The effective configuration as YAML (``check-config --print``)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
