from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig, load_config, parse_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BAD = [
    ("audio: {hop_s: 7.5}", "audio.hop_s: must be > 0 and <= window_s (5.0), got 7.5"),
    ("audio: {hop_s: 0}", "audio.hop_s: must be > 0 and <= window_s (5.0), got 0.0"),
    ("audio: {window_s: -1}", "audio.window_s: input should be greater than 0, got -1"),
    ("audio: {hop_s: '2'}", "audio.hop_s: input should be a valid number, got '2'"),
    ("audio: {bogus: 1}", "audio.bogus: unknown key"),
    ("bogus_section: {}", "bogus_section: unknown key"),
    (
        "audio: {source: radio}",
        "audio.source: input should be 'microphone', 'file' or 'synthetic', got 'radio'",
    ),
    ("audio: {device: 1.5}", "audio.device: expected a string or an integer, got 1.5"),
    ("audio: {source: file}", "audio: source is 'file' but files is empty"),
    (
        "audio: {reopen_backoff: {initial_s: 10, max_s: 1}}",
        "audio.reopen_backoff: max_s must be >= initial_s (10.0), got 1.0",
    ),
    (
        "detection: {threshold: 1.5}",
        "detection.threshold: input should be less than or equal to 1, got 1.5",
    ),
    (
        "detection: {species_thresholds: {amro: -0.1}}",
        "detection.species_thresholds.amro: input should be greater than or equal to 0, got -0.1",
    ),
    ("mqtt: {port: 70000}", "mqtt.port: input should be less than or equal to 65535, got 70000"),
    (
        "mqtt: {topic_prefix: 'a/#'}",
        "mqtt.topic_prefix: must be a non-empty topic without '#', '+' or edge '/', got 'a/#'",
    ),
    ("device_id: 'bad id'", "device_id: must be 1-64 letters, digits, '_', '.', '-', got 'bad id'"),
    (
        "inference: {mode: both}",
        "inference.mode: input should be 'mix_only', 'separated_only' or 'mix_and_separated', "
        "got 'both'",
    ),
    (
        "inference: {num_threads: 0}",
        "inference.num_threads: input should be greater than or equal to 1, got 0",
    ),
    ("- a\n- b", "(top level): expected a mapping of keys, got list"),
    (
        "audio: [1, 2]",
        "audio: input should be a valid dictionary or instance of AudioConfig, got [1, 2]",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_gives_exact_message(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [message]
    assert str(info.value) == f"{path}: {message}"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"audio": {"hop_s": 9.0, "x": 1}, "mqtt": {"port": -1}})
    assert len(info.value.problems) == 3


def test_invalid_yaml_names_line_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("audio:\n  hop_s: [1,\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == AgentConfig()


def _keys(model: type, prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out |= _keys(ann, f"{prefix}{name}.")
    return out


def _yaml_keys(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("species_thresholds",):
            out |= _yaml_keys(v, f"{prefix}{k}.")
    return out


def test_example_config_documents_every_key_and_is_valid() -> None:
    example = ROOT / "config" / "agent.example.yaml"
    config = load_config(example)
    assert config.audio.window_s == 5.0
    documented = _yaml_keys(yaml.safe_load(example.read_text()))
    assert _keys(AgentConfig) == documented


def _float_paths(model: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(YAML path, a non-finite value of the field's shape) for every float in the model."""
    from typing import get_args, get_origin

    from pydantic import BaseModel

    def shape(annotation: Any) -> Any:
        origin = get_origin(annotation)
        if annotation is float:
            return INF
        if origin is list:
            inner = shape(get_args(annotation)[0])
            return None if inner is None else [inner]
        if origin is dict:
            inner = shape(get_args(annotation)[1])
            return None if inner is None else {"x": inner}
        for arg in get_args(annotation):  # Annotated[...], X | None
            found = shape(arg)
            if found is not None:
                return found
        return None

    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _float_paths(sub, (*prefix, name))
        elif (value := shape(field.annotation)) is not None:
            out.append(((*prefix, name), value))
    return out


INF = float("inf")


def test_every_float_key_refuses_inf_and_nan(tmp_path: Path) -> None:
    """.inf/.nan passed every bound and crashed `run` later (issue 24, item 6)."""
    paths = _float_paths(AgentConfig)
    assert len(paths) > 25  # the walk found the model's float keys
    for path, value in paths:
        for text in (".inf", "-.inf", ".nan"):
            yaml_value = {list: f"[{text}]", dict: f"{{x: {text}}}"}.get(type(value), text)
            doc = "".join(f"{'  ' * i}{key}:\n" for i, key in enumerate(path[:-1]))
            doc += f"{'  ' * (len(path) - 1)}{path[-1]}: {yaml_value}\n"
            f = tmp_path / "c.yaml"
            f.write_text(doc)
            with pytest.raises(ConfigError) as err:
                load_config(f)
            dotted = ".".join(path)
            assert any(
                line.startswith(f"{f}: {dotted}") and "finite number" in line
                for line in str(err.value).splitlines()
            ), (doc, str(err.value))


@pytest.mark.parametrize("device_id", ["x\n", "pi-01\n", "a\tb", "pi 01"])
def test_device_id_refuses_a_trailing_newline(device_id: str) -> None:
    with pytest.raises(ConfigError, match="device_id: must be 1-64 letters"):
        parse_config({"device_id": device_id})
    with pytest.raises(ConfigError, match="groups"):
        parse_config({"updates": {"groups": [device_id]}})


def test_topic_prefix_refuses_control_characters() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.topic_prefix: must not hold control"):
        parse_config({"mqtt": {"topic_prefix": "chorus\n"}})


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("audio:\n  hop_s: 2.5\n  window_s: 5.0\n  hop_s: 1.0\ndevice_id: a\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == (
        f"{f}: line 4, column 3: invalid YAML: duplicate key 'hop_s' "
        "(first on line 2, again on line 4)"
    )
    f.write_text("device_id: a\naudio: {}\ndevice_id: b\n")  # top level too
    with pytest.raises(ConfigError, match="duplicate key 'device_id'"):
        load_config(f)
    f.write_text("detection:\n  species_thresholds: {a: 0.5, b: 0.6}\n")  # distinct keys pass
    assert load_config(f).detection.species_thresholds == {"a": 0.5, "b": 0.6}
