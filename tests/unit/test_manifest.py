"""The bundle manifest (format 2): writing, reading, format 1 compatibility and every refusal."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import agent
from agent.errors import BundleError
from agent.models.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    FileEntry,
    load_bundle,
    parse_version,
    sha256_file,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "agent" / "bundles" / "demo"
LABELS = "species_code,scientific_name,common_name\nsp0,Avis prima,First\nsp1,Avis secunda,Second\n"


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "tiny",
        "version": "1.2.3",
        "created_utc": "2026-11-25T00:00:00Z",
        "min_agent_version": "0.1.0",
        "runtime": {"interpreter": "tflite-builtins", "min_litert": "2.3.0", "flavour": "int8"},
        "sample_rate_hz": 8000,
        "window_samples": 16,
        "separator": {"file": "sep.tflite", "num_sources": 2, "input_peak": 0.5},
        "classifiers": [
            {
                "name": "birds",
                "members": [{"file": "clf.tflite"}],
                "labels": "labels.csv",
                "frontend": {"mel_bands": 64, "hop_s": 0.01, "range_hz": [150, 3500]},
                "output": "logits",
            }
        ],
        "golden": {"input": "golden/input.wav", "expected": "golden/expected.npz", "atol": 0.1},
        "parity": "parity.json",
    }
    fields.update(changes)
    return fields


def _bundle(tmp_path: Path, **changes: Any) -> Path:
    """A bundle of placeholder files (load_bundle never opens the models) written as format 2."""
    root = tmp_path / "bundle"
    (root / "golden").mkdir(parents=True)
    (root / "sep.tflite").write_bytes(b"separator bytes")
    (root / "clf.tflite").write_bytes(b"classifier bytes" * 10)
    (root / "labels.csv").write_text(LABELS)
    (root / "golden" / "input.wav").write_bytes(b"RIFF placeholder")
    (root / "golden" / "expected.npz").write_bytes(b"npz placeholder")
    (root / "parity.json").write_text('{"passed": true}')
    write_manifest(root, _fields(**changes))
    return root


def _edit(root: Path, mutate: Any) -> None:
    data = json.loads((root / MANIFEST_NAME).read_text())
    mutate(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def _refused(root: Path, message: str) -> str:
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(root)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_format_2_round_trip(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    assert (data["format"], data["format_version"]) == ("chorus-bundle", 2)
    assert FORMAT_VERSION == 2
    assert data["files"]["clf.tflite"] == {
        "sha256": sha256_file(root / "clf.tflite"),
        "size": 160,
    }
    assert MANIFEST_NAME not in data["files"]
    m = load_bundle(root).manifest
    assert m.format_version == 2
    assert m.files["labels.csv"] == FileEntry(sha256_file(root / "labels.csv"), len(LABELS))
    assert m.min_agent_version == "0.1.0"
    assert m.runtime == {"interpreter": "tflite-builtins", "min_litert": "2.3.0", "flavour": "int8"}
    assert m.parity_file == "parity.json"
    assert m.separator is not None and m.separator.input_peak == 0.5
    (clf,) = m.classifiers
    assert clf.frontend == {"mel_bands": 64, "hop_s": 0.01, "range_hz": [150, 3500]}
    assert clf.output_name == "logits"
    assert [lab.species_code for lab in clf.labels] == ["sp0", "sp1"]
    assert m.golden is not None and (m.golden.atol, m.golden.rtol) == (0.1, 0.0)


def test_optional_fields_default_to_absent(tmp_path: Path) -> None:
    fields = _fields(
        golden={
            "input": "golden/input.wav",
            "expected": "golden/expected.npz",
            "atol": 0.1,
            "rtol": 0.01,
        }
    )
    for key in ("min_agent_version", "runtime", "parity"):
        del fields[key]
    fields["separator"] = {"file": "sep.tflite", "num_sources": 2}
    fields["classifiers"][0] = {
        k: v for k, v in fields["classifiers"][0].items() if k not in ("frontend", "output")
    }
    root = _bundle(tmp_path)
    (root / MANIFEST_NAME).unlink()
    write_manifest(root, fields)
    m = load_bundle(root).manifest
    assert (m.min_agent_version, m.runtime, m.parity_file) == (None, {}, None)
    assert m.separator is not None and m.separator.input_peak is None
    assert (m.classifiers[0].frontend, m.classifiers[0].output_name) == ({}, None)
    assert m.golden is not None and m.golden.rtol == 0.01


def test_format_1_bundle_still_loads(tmp_path: Path) -> None:
    root = _bundle(tmp_path)

    def to_v1(d: dict[str, Any]) -> None:
        d["format_version"] = 1
        d["files"] = {rel: e["sha256"] for rel, e in d["files"].items()}

    _edit(root, to_v1)
    m = load_bundle(root).manifest
    assert m.format_version == 1
    assert all(e.size is None for e in m.files.values())
    # Hashes are still checked in format 1.
    (root / "clf.tflite").write_bytes(b"x" * 160)
    _refused(root, "clf.tflite does not match its sha256")


def test_format_1_digest_must_be_hex(tmp_path: Path) -> None:
    root = _bundle(tmp_path)

    def to_v1(d: dict[str, Any]) -> None:
        d["format_version"] = 1
        d["files"] = {rel: e["sha256"] for rel, e in d["files"].items()}
        d["files"]["labels.csv"] = "z" * 64

    _edit(root, to_v1)
    _refused(root, r"files\.labels\.csv: expected a sha256 hex digest")


@pytest.mark.parametrize("version", [3, 0, 99])
def test_unknown_format_version_is_refused(tmp_path: Path, version: int) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d.update(format_version=version))
    text = _refused(root, f"format_version {version} is not supported by this agent")
    assert "supports 1 and 2" in text
    assert ("upgrade the agent" in text) == (version > FORMAT_VERSION)


def test_one_flipped_byte_fails_the_hash(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    data = bytearray((root / "clf.tflite").read_bytes())
    data[7] ^= 0x01
    (root / "clf.tflite").write_bytes(bytes(data))
    _refused(root, r"clf\.tflite does not match its sha256 in the manifest \(corrupt\?\)")
    # A caller that skips hashing (cheap checks only) still loads it: the size is right.
    assert load_bundle(root, verify_hashes=False).manifest.name == "tiny"


def test_truncated_file_fails_the_size_check(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / "clf.tflite").write_bytes((root / "clf.tflite").read_bytes()[:100])
    text = _refused(root, "clf.tflite does not match its sha256")
    assert "100 bytes, the manifest says 160 (truncated or altered)" in text
    with pytest.raises(BundleError, match="truncated or altered"):  # sizes need no hashing
        load_bundle(root, verify_hashes=False)


def test_missing_file(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / "golden" / "expected.npz").unlink()
    _refused(root, "golden/expected.npz is listed in the manifest but missing")


@pytest.mark.parametrize(
    "rel", ["../x", "/etc/passwd", "a/../../x", "./labels.csv", "a\\b", "", MANIFEST_NAME]
)
def test_paths_outside_the_bundle_are_refused(tmp_path: Path, rel: str) -> None:
    root = _bundle(tmp_path)
    entry = {"sha256": "0" * 64, "size": 1}
    _edit(root, lambda d: d["files"].update({rel: entry}))
    _refused(root, "paths must be relative and stay inside the bundle")


def test_symlink_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of any bundle")
    root = _bundle(tmp_path)
    os.symlink(outside, root / "link.txt")
    (root / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"link\.txt links outside the bundle"):
        write_manifest(root, _fields())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["files"]["labels.csv"].pop("size"), r"files\.labels\.csv\.size: missing"),
        (lambda d: d["files"]["labels.csv"].update(size=-1), r"size: must be >= 0, got -1"),
        (lambda d: d["files"]["labels.csv"].update(size="554"), "size: expected int, got str"),
        (lambda d: d["files"]["labels.csv"].update(sha256="AB" * 32), "64 lowercase hex"),
        (lambda d: d["files"].update({"labels.csv": "ab" * 32}), "expected an object, got str"),
        (lambda d: d.update(version="v1"), "version: expected a semantic version like 1.2.3"),
        (lambda d: d.update(created_utc="yesterday"), "created_utc: expected an ISO 8601"),
        (lambda d: d.update(runtime={"threads": [1, 2]}), r"runtime\.threads: expected a string"),
        (lambda d: d.update(runtime="int8"), "runtime: expected dict/NoneType, got str"),
        (
            lambda d: d["classifiers"][0].update(frontend={"mel": {"bands": 64}}),
            r"classifiers\[0\]\.frontend\.mel: expected a string, number or boolean",
        ),
        (lambda d: d["classifiers"][0].update(output=3), r"output: expected str/NoneType"),
        (lambda d: d["golden"].update(input="golden/input.txt"), "must be a .npy or .wav"),
        (lambda d: d["golden"].update(rtol=-0.1), r"golden\.rtol: must be a finite number >= 0"),
        (lambda d: d.update(parity=7), "parity: expected str/NoneType, got int"),
    ],
)
def test_invalid_fields_name_the_problem(tmp_path: Path, mutate: Any, message: str) -> None:
    root = _bundle(tmp_path)
    _edit(root, mutate)
    text = _refused(root, message)
    assert text.startswith(str(root))


def test_features_input_needs_a_frontend_model(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / "frontend.tflite").write_bytes(b"frontend bytes")
    clf = _fields()["classifiers"][0]
    (root / MANIFEST_NAME).unlink()
    features = {**clf, "input": "features", "frontend_model": {"file": "frontend.tflite"}}
    write_manifest(root, _fields(classifiers=[features]))
    (spec,) = load_bundle(root).manifest.classifiers
    assert spec.input_kind == "features"
    assert spec.frontend_model is not None and spec.frontend_model.file == "frontend.tflite"

    _edit(root, lambda d: d["classifiers"][0].pop("frontend_model"))
    _refused(root, r"classifiers\[0\]\.frontend_model: required with input 'features'")
    _edit(root, lambda d: d["classifiers"][0].update(frontend_model={"file": "frontend.tflite"}))
    _edit(root, lambda d: d["classifiers"][0].update(input="waveform"))
    _refused(root, r"frontend_model: only used with input 'features'")
    _edit(root, lambda d: d["classifiers"][0].update(input="spectrogram"))
    _refused(root, r"classifiers\[0\]\.input: unsupported kind 'spectrogram'")
    _edit(root, lambda d: d["classifiers"][0].update(input="features"))
    _edit(root, lambda d: d["files"].pop("frontend.tflite"))
    _refused(root, r"frontend\.tflite is used but not listed in files")


def test_parity_report_must_be_listed(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d["files"].pop("parity.json"))
    _refused(root, "parity.json is used but not listed in files")
    # write_manifest lists every file, so naming one that does not exist is the writer's error.
    (root / "parity.json").unlink()
    (root / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"parity\.json is used but not listed in files"):
        write_manifest(root, _fields())


@pytest.mark.parametrize("peak", [0, 0.0, -0.5, 1.5, "0.5", True])
def test_input_peak_out_of_range_is_refused(tmp_path: Path, peak: Any) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d["separator"].update(input_peak=peak))
    _refused(root, r"separator\.input_peak: ")


@pytest.mark.parametrize("peak", [1, 1.0, 1e-3, None])
def test_input_peak_in_range_is_accepted(tmp_path: Path, peak: Any) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d["separator"].update(input_peak=peak))
    sep = load_bundle(root).manifest.separator
    assert sep is not None and sep.input_peak == (None if peak is None else float(peak))


def test_min_agent_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d.update(min_agent_version="999.0.0"))
    text = _refused(root, "needs chorus-agent >= 999.0.0")
    assert f"(this is {agent.__version__})" in text
    for older in ("0.0.1", agent.__version__):
        _edit(root, lambda d, v=older: d.update(min_agent_version=v))
        assert load_bundle(root).manifest.min_agent_version == older
    # A development build compares by its release numbers.
    monkeypatch.setattr(agent, "__version__", "0.3.0.dev1")
    _edit(root, lambda d: d.update(min_agent_version="0.3.0"))
    load_bundle(root)
    _edit(root, lambda d: d.update(min_agent_version="0.3.1"))
    _refused(root, r"needs chorus-agent >= 0\.3\.1 \(this is 0\.3\.0\.dev1\)")


@pytest.mark.parametrize("bad", ["1.2", "v1.2.3", "1.2.3-rc1", "latest", 1])
def test_malformed_min_agent_version_is_refused(tmp_path: Path, bad: Any) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d.update(min_agent_version=bad))
    _refused(root, "min_agent_version: expected")


def test_parse_version() -> None:
    assert parse_version("1.22.3") == (1, 22, 3)
    assert parse_version("1.2.3-rc.1+build5") == (1, 2, 3)
    assert parse_version("01.2.3") is None
    assert parse_version("1.2") is None


def test_write_manifest_replaces_reserved_keys(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    write_manifest(root, _fields(format_version=1, files={"x": "y"}, format="other"))
    data = json.loads((root / MANIFEST_NAME).read_text())
    assert (data["format"], data["format_version"]) == ("chorus-bundle", 2)
    assert "x" not in data["files"] and "clf.tflite" in data["files"]


def test_shipped_demo_bundle_is_format_2() -> None:
    m = load_bundle(DEMO).manifest
    assert m.format_version == 2
    assert all(e.size == (DEMO / rel).stat().st_size for rel, e in m.files.items())
    assert m.min_agent_version is not None and m.runtime["interpreter"] == "tflite-builtins"


# ---------------------------------------------------------------------------------------------
# input_peak through the demo bundle's (linear) separator, with the real interpreter


@pytest.fixture(scope="module")
def demo_separators() -> tuple[Any, Any]:
    pytest.importorskip("ai_edge_litert")
    from agent.models.stages import RuntimeOptions, Separator

    bundle = load_bundle(DEMO)
    spec = bundle.manifest.separator
    assert spec is not None and spec.input_peak is None
    plain = Separator(bundle, spec, RuntimeOptions())
    scaled = Separator(bundle, replace(spec, input_peak=0.9), RuntimeOptions())
    return plain, scaled


def test_input_peak_scales_the_window_and_keeps_the_mixture(demo_separators: Any) -> None:
    from agent.demo import make_demo_soundscape

    plain, scaled = demo_separators
    n = scaled.spec.window_samples
    audio = make_demo_soundscape(10.0, seed=3).audio[:n]
    x = (audio / np.max(np.abs(audio)) * 1e-3).astype(np.float32)  # a quiet window: -60 dBFS
    seen: list[float] = []
    real_run = scaled.model.run
    scaled.model.run = lambda w: (seen.append(float(np.max(np.abs(w)))), real_run(w))[1]
    try:
        y = scaled.separate(x)
        silent = scaled.separate(np.zeros(n, np.float32))
    finally:
        del scaled.model.run
    assert seen[0] == pytest.approx(0.9, rel=1e-6)  # the model saw the window at input_peak
    assert seen[1] == 0.0  # a silent window runs unscaled
    assert y.shape == (plain.num_sources, n) and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and np.all(silent == 0.0)
    # Scaled back: the channels sum to the (quiet) input and match the unscaled run, since the
    # demo separator is linear.
    assert np.max(np.abs(y.sum(axis=0) - x)) < 1e-5 * 1e-3
    np.testing.assert_allclose(y, plain.separate(x), rtol=0, atol=1e-5 * 1e-3)
    assert np.max(np.abs(y)) > 1e-5  # not a trivially zero output


def test_combination_policy_per_backend_is_read(tmp_path: Path) -> None:
    from agent.detection.combine import PAPER_MAX

    root = _bundle(tmp_path)
    policy = {"channels": "remixes", "weight": 0.6, "offset": -1, "gate_rms_ratio": 0.05}
    policy["min_mix_logit"] = -2
    _edit(root, lambda d: d.update(combination={"birdnet": {**policy, "calibration": {"n": 3}}}))
    m = load_bundle(root).manifest
    got = m.combination_for("birdnet")
    assert (got.channels, got.weight, got.offset, got.gate_rms_ratio) == (
        "remixes",
        0.6,
        -1.0,
        0.05,
    )
    assert got.min_mix_logit == -2.0 and got.calibration == {"n": 3}
    assert m.combination_for("chorus") == PAPER_MAX  # no policy for this backend: the max


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"birdnet": {"channels": "pairs"}}, r"combination\.birdnet\.channels: expected one of"),
        ({"birdnet": {"weight": 0}}, r"combination\.birdnet\.weight: must be in \(0, 1\]"),
        ({"birdnet": {"weight": "0.5"}}, r"combination\.birdnet\.weight: expected float"),
        ({"birdnet": {"offset": 25.0}}, r"combination\.birdnet\.offset: must be within"),
        ({"birdnet": {"gate_rms_ratio": 1.0}}, r"gate_rms_ratio: must be in \[0, 1\)"),
        ({"birdnet": {"gain": 1.0}}, r"combination\.birdnet\.gain: unknown key"),
        ({"birdnet": {"min_mix_logit": 30}}, r"combination\.birdnet\.min_mix_logit: must be null"),
        ({"perch": {}}, r"combination\.perch: unknown backend"),
        ({"birdnet": []}, r"combination\.birdnet: expected dict"),
    ],
)
def test_bad_combination_policy_is_refused(tmp_path: Path, policy: Any, message: str) -> None:
    root = _bundle(tmp_path)
    _edit(root, lambda d: d.update(combination=policy))
    _refused(root, message)
