"""One typed configuration, loaded from YAML and validated at start-up.

Every problem is reported as one line naming its YAML path, e.g.
``audio.hop_s: must be > 0 and <= window_s (5.0), got 7.5``; :func:`load_config` raises
:class:`~agent.errors.ConfigError` holding all of them (the CLI exits 2). Unknown keys are errors.
``config/agent.example.yaml`` documents every key; a test keeps the two in step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

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

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Section(BaseModel):
    # strict: YAML already gives typed values; "5" for a number is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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
    # Which channels vote (ALGORITHMS.md §2.7): the original audio, the separated channels,
    # or both (the paper's best); the max over the chosen channels wins.
    mode: Literal["mix_only", "separated_only", "mix_and_separated"] = "mix_and_separated"


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


class MqttConfig(_Section):
    enabled: bool = False
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic_prefix: str = "chorus"
    client_id: str | None = None  # null = "chorus-<device_id>"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    username: str | None = None
    password_env: str = "CHORUS_MQTT_PASSWORD"  # the password is read from this env variable
    qos: Literal[0, 1, 2] = 1

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"must be a non-empty topic without '#', '+' or edge '/', got {v!r}")
        return v


class AgentConfig(_Section):
    device_id: str = "chorus-dev"  # used in MQTT topics and every detection
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    audio: AudioConfig = AudioConfig()
    inference: InferenceConfig = InferenceConfig()
    detection: DetectionConfig = DetectionConfig()
    outputs: OutputsConfig = OutputsConfig()
    mqtt: MqttConfig = MqttConfig()

    @field_validator("device_id")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_ID.match(v):
            raise ValueError(f"must be 1-64 letters, digits, '_', '.', '-', got {v!r}")
        return v


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


def parse_config(data: Any, source: str = "config") -> AgentConfig:
    """Validate a mapping (already parsed YAML); raise ConfigError with every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"(top level): expected a mapping of keys, got {type(data).__name__}"], source
        )
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source) from None


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a YAML file. Raises ConfigError (never a traceback for user mistakes)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found"], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(p)) from None
    return parse_config(data, str(p))


def to_yaml(config: AgentConfig) -> str:
    """The effective configuration as YAML (``check-config --print``)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
