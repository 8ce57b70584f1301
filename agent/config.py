"""One typed configuration, loaded from YAML and validated at start-up.

Every problem is reported as one line naming its YAML path, e.g.
``audio.hop_s: must be > 0 and <= window_s (5.0), got 7.5``; :func:`load_config` raises
:class:`~agent.errors.ConfigError` holding all of them (the CLI exits 2). Unknown keys are errors.
``config/agent.example.yaml`` documents every key; a test keeps the two in step.

Numbers must be finite (``.inf`` or ``.nan`` is an error in every field: a bound of infinity is
spelled ``null`` where a key allows none), and a key given twice in one mapping is an error
naming the key and both lines, never a silent "last one wins".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError

# Used with fullmatch: "$" would also match before a final newline ("x\n" passed).
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Section(BaseModel):
    # strict: YAML already gives typed values; "5" for a number is a mistake, not a number.
    # allow_inf_nan=False: YAML's .inf/.nan pass every gt/le bound and fail later, at run time.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


PositiveFloat = Annotated[float, Field(gt=0)]


class BackoffConfig(_Section):
    initial_s: PositiveFloat = 1.0
    max_s: PositiveFloat = 60.0

    @model_validator(mode="after")
    def _order(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s must be >= initial_s ({self.initial_s}), got {self.max_s}")
        return self


class SyntheticConfig(_Section):
    """A generated test signal: tone bursts over a noise floor."""

    duration_s: PositiveFloat | None = 60.0  # null = endless
    tone_hz: list[Annotated[float, Field(gt=0)]] = [2000.0]
    burst_s: PositiveFloat = 1.0
    period_s: PositiveFloat = 4.0
    noise_dbfs: Annotated[float, Field(le=0)] = -50.0
    tone_dbfs: Annotated[float, Field(le=0)] = -20.0
    seed: int = 0


class AudioConfig(_Section):
    source: Literal["microphone", "file", "synthetic"] = "microphone"
    # microphone
    device: str | int | None = None  # input device name (substring) or index; null = default
    capture_rate_hz: Annotated[int, Field(gt=0)] | None = None  # null = the device's native rate
    input_channels: Annotated[int, Field(ge=1, le=64)] = 1  # channels opened; mixed to mono
    block_s: Annotated[float, Field(gt=0, le=1.0)] = 0.1  # audio callback period
    queue_s: Annotated[float, Field(gt=0)] = 30.0  # bounded capture queue, in seconds of audio
    reopen_backoff: BackoffConfig = BackoffConfig()
    # file
    files: list[str] = []
    realtime: bool = True  # pace file playback at real time (false: as fast as possible)
    loop: bool = False  # restart the file list at the end (soak tests)
    # synthetic
    synthetic: SyntheticConfig = SyntheticConfig()
    # windowing
    window_s: PositiveFloat = 5.0
    hop_s: float = 2.5

    @field_validator("hop_s")
    @classmethod
    def _hop(cls, v: float, info: ValidationInfo) -> float:
        window = info.data.get("window_s", 5.0)
        if not 0 < v <= window:
            raise ValueError(f"must be > 0 and <= window_s ({window}), got {v}")
        return v

    @model_validator(mode="after")
    def _files_present(self) -> AudioConfig:
        if self.source == "file" and not self.files:
            raise ValueError("source is 'file' but files is empty")
        return self


class InferenceConfig(_Section):
    bundle: str | None = None  # model bundle folder; null = the shipped default bundle
    num_threads: Annotated[int, Field(ge=1, le=64)] = 2
    accelerator: Literal["cpu", "edgetpu"] = "cpu"
    # Classifier frontend (STFT, mel, PCEN, whitening): "native" computes it in numpy when the
    # bundle describes a frontend the agent knows (about 3x cheaper); "tflite" runs the
    # bundle's frontend model.
    frontend: Literal["native", "tflite"] = "native"
    # Which channels vote (ALGORITHMS.md §2.7): the original audio, the separated channels,
    # or both (the paper's best); the max over the chosen channels wins.
    mode: Literal["mix_only", "separated_only", "mix_and_separated"] = "mix_and_separated"
    # How separated channels vote with the mix in mix_and_separated: "bundle" = the bundle's
    # calibrated policy for the classifier backend (the paper's max if it carries none);
    # "max" = always the paper's max over the mix and the separator's outputs.
    combination: Literal["bundle", "max"] = "bundle"


Probability = Annotated[float, Field(ge=0, le=1)]


class DetectionConfig(_Section):
    threshold: Probability = 0.5  # on sigmoid(logit)
    species_thresholds: dict[str, Probability] = {}  # species_code -> threshold
    include: list[str] = []  # species codes; empty = all
    exclude: list[str] = []
    merge: bool = True  # join consecutive overlapping windows of a species into one event
    max_event_s: PositiveFloat = 60.0  # close a merged event after this long (live streams)


class OutputsConfig(_Section):
    jsonl: str | None = None  # append one JSON detection per line
    csv: str | None = None


class BirdNetConfig(_Section):
    """A user-supplied BirdNET-Analyzer V2.4-format model (never shipped by Chorus)."""

    model: str | None = None  # .tflite, input [1, 144000] at 48 kHz
    labels: str | None = None  # "Scientific name_Common name" per line
    sensitivity: Annotated[float, Field(ge=0.5, le=1.5)] = 1.0  # BirdNET >= 2.0: logit shift
    overlap_s: Annotated[float, Field(ge=0, lt=3.0)] = 1.0  # min overlap of 3-s sub-windows


class LocationFilterConfig(_Section):
    """BirdNET meta-model species filter for the place in ``location`` and the week."""

    enabled: bool = False
    meta_model: str | None = None  # MData .tflite: [1, 3] (lat, lon, week) -> [1, C]
    labels: str | None = None  # the meta-model's labels; null = classifier.birdnet.labels
    week: int | None = None  # 1..48 (BirdNET weeks), -1 = all year; null = each window's date
    threshold: Probability = 0.03  # minimum occurrence score to keep a species

    @field_validator("week")
    @classmethod
    def _week(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and not 1 <= v <= 48:
            raise ValueError(f"must be 1..48 or -1 (all year), got {v}")
        return v


class ClassifierConfig(_Section):
    # chorus: the bundle's classifiers; birdnet: a BirdNET-format model behind our separator.
    backend: Literal["chorus", "birdnet"] = "chorus"
    birdnet: BirdNetConfig = BirdNetConfig()
    location_filter: LocationFilterConfig = LocationFilterConfig()

    @model_validator(mode="after")
    def _paths(self) -> ClassifierConfig:
        problems = []
        if self.backend == "birdnet" and not (self.birdnet.model and self.birdnet.labels):
            problems.append("backend 'birdnet' needs birdnet.model and birdnet.labels")
        lf = self.location_filter
        if lf.enabled and not lf.meta_model:
            problems.append("location_filter.enabled needs location_filter.meta_model")
        if lf.enabled and not (lf.labels or self.birdnet.labels):
            problems.append(
                "location_filter.enabled needs location_filter.labels (or birdnet.labels)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MqttTlsConfig(_Section):
    """TLS to the broker. Key files must not be readable by other users (checked at start-up)."""

    enabled: bool = False
    ca_file: str | None = None  # PEM CA bundle that signed the broker's certificate; null = system
    cert_file: str | None = None  # client certificate (PEM), when the broker requires one
    key_file: str | None = None  # its private key (PEM)

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class HomeAssistantConfig(_Section):
    enabled: bool = False  # publish retained MQTT discovery configs for Home Assistant
    discovery_prefix: str = "homeassistant"

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return _check_topic_prefix(v)


def _check_topic_prefix(v: str) -> str:
    if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
        raise ValueError(f"must be a non-empty topic without '#', '+' or edge '/', got {v!r}")
    if any(not c.isprintable() for c in v):
        raise ValueError(f"must not hold control characters (newline, tab, NUL...), got {v!r}")
    return v


class MqttConfig(_Section):
    enabled: bool = False
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic_prefix: str = "chorus"
    client_id: str | None = None  # null = "chorus-<device_id>"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    username: str | None = None
    password_env: str = "CHORUS_MQTT_PASSWORD"  # the password is read from this env variable
    # ... or from this file (wins over password_env): an absolute path, or a bare name looked up
    # in $CREDENTIALS_DIRECTORY (systemd LoadCredential=). Refused if other users can read it.
    password_file: str | None = None
    qos: Literal[0, 1, 2] = 1
    tls: MqttTlsConfig = MqttTlsConfig()
    reconnect_backoff: BackoffConfig = BackoffConfig()  # exponential, with jitter
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 100  # published, not yet acknowledged
    # The outbox: every detection is committed here before anything else and deleted only when
    # the broker acknowledges it. null = $STATE_DIRECTORY/outbox.sqlite (systemd), else
    # ~/.local/state/chorus/outbox.sqlite.
    outbox_path: str | None = None
    outbox_max_rows: Annotated[int, Field(ge=1)] = 100_000  # oldest pruned (and counted) beyond
    outbox_max_age_s: PositiveFloat | None = 2_592_000.0  # 30 days; null = no age limit
    outbox_fsync: bool = True  # fsync every commit (survives power loss, not only crashes)
    # The disk floor: below this many free bytes on the outbox's file system the outbox stops
    # growing and prunes its oldest rows (counted) to make room for new ones; 0 = no floor.
    outbox_min_free_bytes: Annotated[int, Field(ge=0)] = 32 * 1024 * 1024
    status_interval_s: PositiveFloat = 60.0  # retained heartbeat on <prefix>/<device>/status
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return _check_topic_prefix(v)


class LocationConfig(_Section):
    """Where the recorder stands; added to every MQTT detection when both are set."""

    latitude_deg: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude_deg: Annotated[float, Field(ge=-180, le=180)] | None = None

    @model_validator(mode="after")
    def _both(self) -> LocationConfig:
        if (self.latitude_deg is None) != (self.longitude_deg is None):
            raise ValueError("latitude_deg and longitude_deg must be given together")
        return self


class HealthConfig(_Section):
    # Prometheus text metrics on http://127.0.0.1:<port>/metrics; null = off.
    prometheus_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # A wall-clock step larger than this (NTP after a boot without RTC) re-anchors timestamps.
    clock_jump_tolerance_s: PositiveFloat = 2.0


class ClipsConfig(_Section):
    """Audio of each detection (the mix and the winning channel), with retention."""

    enabled: bool = False
    dir: str | None = None  # null = <state directory>/clips
    format: Literal["flac", "wav"] = "flac"
    max_age_days: PositiveFloat = 30.0
    max_total_mb: PositiveFloat = 1000.0
    min_free_mb: Annotated[float, Field(ge=0)] = 500.0  # hard floor of free disk space


class StorageConfig(_Section):
    clips: ClipsConfig = ClipsConfig()


class UpdatesConfig(_Section):
    """Over-the-air model updates (docs/ota.md): signed bundles announced over MQTT."""

    enabled: bool = False
    # Public keys whose signatures this device accepts: PEM files or "ed25519:<base64>".
    trusted_keys: list[str] = []
    groups: list[str] = []  # roll-out groups: also follow <prefix>/_group/<group>/cmd/update
    store_dir: str | None = None  # null = <state directory>/models
    confirm_windows: Annotated[int, Field(ge=1)] = 60  # healthy windows before confirming
    max_restarts: Annotated[int, Field(ge=0)] = 3  # unconfirmed restarts before rolling back
    latency_budget_ms: PositiveFloat | None = None  # per window; null = half of audio.hop_s
    smoke_timeout_s: PositiveFloat = 300.0
    max_chunk_bytes: Annotated[int, Field(ge=1024)] = 1_048_576  # larger chunks are refused
    max_bundle_bytes: Annotated[int, Field(ge=1024)] = 268_435_456  # archive size limit
    transfer_timeout_s: PositiveFloat = 86_400.0  # give up an incomplete transfer after this
    allow_downgrade: bool = False  # accept older versions without the announcement's force

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not _DEVICE_ID.fullmatch(g):
                raise ValueError(f"group must be 1-64 letters, digits, '_', '.', '-', got {g!r}")
        return v

    @model_validator(mode="after")
    def _keys(self) -> UpdatesConfig:
        if self.enabled and not self.trusted_keys:
            raise ValueError("enabled needs at least one entry in trusted_keys")
        return self


class AgentConfig(_Section):
    device_id: str = "chorus-dev"  # used in MQTT topics and every detection
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    audio: AudioConfig = AudioConfig()
    inference: InferenceConfig = InferenceConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    detection: DetectionConfig = DetectionConfig()
    outputs: OutputsConfig = OutputsConfig()
    mqtt: MqttConfig = MqttConfig()
    location: LocationConfig = LocationConfig()
    health: HealthConfig = HealthConfig()
    storage: StorageConfig = StorageConfig()
    updates: UpdatesConfig = UpdatesConfig()

    @field_validator("device_id")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_ID.fullmatch(v):
            raise ValueError(f"must be 1-64 letters, digits, '_', '.', '-', got {v!r}")
        return v

    @model_validator(mode="after")
    def _filter_needs_location(self) -> AgentConfig:
        if self.classifier.location_filter.enabled and self.location.latitude_deg is None:
            raise ValueError(
                "classifier.location_filter needs location.latitude_deg and location.longitude_deg"
            )
        if self.updates.enabled and not self.mqtt.enabled:
            raise ValueError("updates.enabled needs mqtt.enabled (updates arrive over MQTT)")
        return self


_UNION_TAG = re.compile(
    r"^(str|int|float|bool|none|constrained-\w+|list\[.*\]|dict\[.*\]|function-\w+\[.*\])$"
)
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true/false",
    "none_required": "null",
    "int_from_float": "an integer",
    "finite_number": "a finite number",
}


def _format_error(loc: str, err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{loc}: {msg}"  # our own messages already say what was given
    return f"{loc}: {msg[0].lower() + msg[1:]}, got {err['input']!r}"


def _format_errors(exc: ValidationError) -> list[str]:
    """One line per YAML path; a union's per-member errors become one "expected A or B" line."""
    grouped: dict[str, list[Any]] = {}
    for err in exc.errors():
        parts = [str(p) for p in err["loc"] if not _UNION_TAG.match(str(p))]
        grouped.setdefault(".".join(parts) or "(top level)", []).append(err)
    lines = []
    for loc, errs in grouped.items():
        if len(errs) > 1 and all(e["type"] in _TYPE_WORDS for e in errs):
            wanted = " or ".join(dict.fromkeys(_TYPE_WORDS[e["type"]] for e in errs))
            lines.append(f"{loc}: expected {wanted}, got {errs[0]['input']!r}")
        else:
            lines.append(_format_error(loc, errs[0]))
    return lines


_M = TypeVar("_M", bound=BaseModel)


def validate_mapping(model: type[_M], data: Any, source: str) -> _M:
    """Validate a mapping (already parsed YAML) as ``model``; raise ConfigError with every
    problem, one line each with its YAML path (shared by the agent's and the collector's
    config files)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"(top level): expected a mapping of keys, got {type(data).__name__}"], source
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source) from None


def parse_config(data: Any, source: str = "config") -> AgentConfig:
    """Validate a mapping (already parsed YAML); raise ConfigError with every problem."""
    return validate_mapping(AgentConfig, data, source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]}, again on line {line})",
                    key_node.start_mark,
                )
            if isinstance(key, str):
                seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of a config file (a key given twice is an error); ConfigError with one
    line naming the file if it cannot be read or parsed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found"], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], str(p)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(p)) from None


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a YAML file. Raises ConfigError (never a traceback for user mistakes)."""
    return parse_config(read_yaml(path), str(path))


def to_yaml(config: AgentConfig) -> str:
    """The effective configuration as YAML (``check-config --print``)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
