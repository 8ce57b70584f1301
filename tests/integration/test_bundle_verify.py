"""Bundle verification with the real LiteRT interpreter: verify_bundle, `chorus-agent
check-bundle` and `chorus-models bundle verify`, on the shipped demo bundle and broken copies."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import BundleError
from agent.models.golden import smoke_test
from agent.models.manifest import MANIFEST_NAME, load_bundle, write_manifest
from agent.models.runtime import TFLiteModel, list_ops
from agent.models.stages import RuntimeOptions, load_models
from agent.models.verify import verify_bundle
from modeltools.packaging.verify_cli import add_bundle_parser, run_bundle

pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "agent" / "bundles" / "demo"
MODELS = ROOT / "tests" / "data" / "models"
TWO_OUTPUTS = MODELS / "two_outputs.tflite"  # x (1, 8) -> logits 2x (1, 8), embedding sum (1, 1)
FLEX = MODELS / "flex_op.tflite"  # same logits through Flex string ops
AFFINE = MODELS / "affine_int8io.tflite"  # int8 (1, 16) -> (1, 16), y = 0.5 x + 0.25


def _copy_demo(tmp_path: Path) -> Path:
    dst = tmp_path / "demo"
    shutil.copytree(DEMO, dst)
    return dst


def _flip_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _tiny_bundle(tmp_path: Path, model: Path = TWO_OUTPUTS, **changes: Any) -> Path:
    """A one-member classifier bundle over an (1, 8) model that has two outputs; the manifest
    picks ``logits``. The golden input is a float WAV, expected logits are 2x."""
    import soundfile

    root = tmp_path / "tiny"
    (root / "golden").mkdir(parents=True)
    shutil.copy(model, root / "clf.tflite")
    rows = "".join(f"sp{i},Avis {i},Bird {i}\n" for i in range(8))
    (root / "labels.csv").write_text("species_code,scientific_name,common_name\n" + rows)
    x = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
    soundfile.write(root / "golden" / "input.wav", x, 8000, subtype="FLOAT")
    np.savez(root / "golden" / "expected.npz", **{"tiny/0": 2 * x})
    fields: dict[str, Any] = {
        "name": "tiny",
        "version": "1.0.0",
        "sample_rate_hz": 8000,
        "window_samples": 8,
        "separator": None,
        "classifiers": [
            {
                "name": "tiny",
                "members": [{"file": "clf.tflite"}],
                "labels": "labels.csv",
                "output": "logits",
            }
        ],
        "golden": {"input": "golden/input.wav", "expected": "golden/expected.npz", "atol": 1e-6},
    }
    fields.update(changes)
    write_manifest(root, fields)
    return root


def _bundle_cli(argv: list[str]) -> int:
    """`chorus-models bundle ...` as modeltools.cli wires it: add_fn(sub), then run_fn(args)."""
    parser = argparse.ArgumentParser(prog="chorus-models")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bundle_parser(sub).set_defaults(_run=run_bundle)
    args = parser.parse_args(argv)
    return int(args._run(args))


# ---------------------------------------------------------------------------------------------
# verify_bundle


def test_demo_bundle_verifies() -> None:
    report = verify_bundle(DEMO)
    assert report.passed and report.error is None
    assert (report.name, report.format_version) == ("chorus-demo", 2)
    assert report.runtime.startswith("ai-edge-litert")
    by_rel = {f.rel: f for f in report.files}
    assert set(by_rel) == set(load_bundle(DEMO).manifest.files)
    for rel in ("separator.tflite", "classifier_a.tflite", "classifier_b.tflite"):
        f = by_rel[rel]
        assert f.sha256_ok and f.size_bytes == (DEMO / rel).stat().st_size
        assert f.op_count is not None and f.op_count >= len(f.op_names) > 0
        assert f.invoke_ms is not None and f.invoke_ms >= 0
        assert "CONV_2D" in f.op_names and "DELEGATE" not in f.op_names
    assert "QUANTIZE" in by_rel["classifier_a.tflite"].op_names  # int8 inside
    assert by_rel["separator.tflite"].role == "separator"
    assert by_rel["labels.csv"].op_count is None and by_rel["labels.csv"].invoke_ms is None
    assert report.golden.startswith("smoke test passed (3 outputs")
    text = report.format()
    assert text.endswith("PASS") and "classifier demo member 1" in text
    print(text)


def test_tampered_copy_fails_with_one_line(tmp_path: Path) -> None:
    bundle = _copy_demo(tmp_path)
    _flip_byte(bundle / "classifier_a.tflite")
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"{bundle}: classifier_a.tflite does not match its sha256 in the manifest (corrupt?)"
    )
    report = verify_bundle(bundle, raise_on_error=False)
    assert not report.passed and report.error == message
    assert report.format().endswith(f"FAIL: {message}")


def test_flex_ops_are_refused_before_loading(tmp_path: Path) -> None:
    assert list_ops(FLEX) == ["FlexAsString", "FlexStringToNumber", "MUL"]
    bundle = _tiny_bundle(tmp_path, model=FLEX)
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle)
    assert str(info.value) == (
        f"{bundle}: clf.tflite uses ops that are not TFLite builtins: FlexAsString, "
        "FlexStringToNumber (Flex/SELECT_TF_OPS or custom ops; the device runtime cannot run "
        "them; convert with builtin ops only)"
    )


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    bundle = _tiny_bundle(tmp_path)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["classifiers"][0]["output"] = "embedding"  # (1, 1), but the label table has 8 rows
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(
        BundleError, match=r"clf\.tflite: output shape is \[1, 1\] but the manifest"
    ):
        verify_bundle(bundle)


def test_unlisted_file_is_a_note_and_the_parity_report_is_read(tmp_path: Path) -> None:
    bundle = _tiny_bundle(tmp_path)
    (bundle / "parity.json").write_text(json.dumps({"passed": True, "max_abs_error": 1e-6}))
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    (bundle / MANIFEST_NAME).unlink()
    write_manifest(bundle, {**data, "parity": "parity.json"})
    (bundle / "stray.txt").write_text("dropped here after signing")
    report = verify_bundle(bundle)
    assert report.passed
    assert "stray.txt is not listed in the manifest (not verified; ignored)" in report.notes
    assert "parity report parity.json: 2 entries, passed" in report.notes
    assert {f.rel for f in report.files} == {
        "clf.tflite",
        "labels.csv",
        "golden/input.wav",
        "golden/expected.npz",
        "parity.json",
    }

    (bundle / "parity.json").write_text(json.dumps({"passed": False}))
    (bundle / MANIFEST_NAME).unlink()
    write_manifest(bundle, {**data, "parity": "parity.json"})
    with pytest.raises(BundleError, match="the export failed its parity check"):
        verify_bundle(bundle)


def test_min_litert_is_enforced(tmp_path: Path) -> None:
    bundle = _tiny_bundle(tmp_path, runtime={"min_litert": "99.0.0"})
    with pytest.raises(BundleError, match=r"needs ai-edge-litert >= 99\.0\.0 \(this is 2\."):
        verify_bundle(bundle)
    ok = _tiny_bundle(tmp_path / "ok", runtime={"min_litert": "2.0.0"})
    assert verify_bundle(ok).passed


# ---------------------------------------------------------------------------------------------
# Named outputs and the golden smoke test (WAV input, rtol)


def test_model_output_is_picked_by_name() -> None:
    x = np.linspace(-1, 1, 8, dtype=np.float32)[np.newaxis]
    with pytest.raises(BundleError, match="expected 1 input and 1 output, found 1 and 2"):
        TFLiteModel(TWO_OUTPUTS)
    logits = TFLiteModel(TWO_OUTPUTS, output_name="logits")
    assert {"logits", "embedding"} <= set(logits.output_names)
    np.testing.assert_allclose(logits.run(x), 2 * x, rtol=1e-6)
    embedding = TFLiteModel(TWO_OUTPUTS, output_name="embedding")
    np.testing.assert_allclose(embedding.run(x), [[0.0]], atol=1e-6)
    with pytest.raises(BundleError, match=r"no output named 'scores' \(outputs: .*logits"):
        TFLiteModel(TWO_OUTPUTS, output_name="scores")


def test_named_output_bundle_classifies_and_passes_its_wav_golden(tmp_path: Path) -> None:
    bundle = load_bundle(_tiny_bundle(tmp_path))
    models = load_models(bundle, RuntimeOptions(), use_separator=False)
    (clf,) = models.classifiers
    x = np.full((2, 8), 0.25, np.float32)
    np.testing.assert_allclose(clf.classify(x), 2 * x, rtol=1e-6)
    assert smoke_test(models).startswith("smoke test passed (1 outputs")


def test_golden_tolerance_uses_rtol(tmp_path: Path) -> None:
    root = _tiny_bundle(tmp_path)
    x = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
    np.savez(root / "golden" / "expected.npz", **{"tiny/0": 2 * x * 1.01})  # 1 % off
    data = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).unlink()
    write_manifest(root, data)
    models = load_models(load_bundle(root), RuntimeOptions(), use_separator=False)
    with pytest.raises(BundleError, match=r"smoke test failed: tiny/0 differs .* by 0\.01 "):
        smoke_test(models)
    (root / MANIFEST_NAME).unlink()
    write_manifest(root, {**data, "golden": {**data["golden"], "rtol": 0.02}})
    models = load_models(load_bundle(root), RuntimeOptions(), use_separator=False)
    assert "<= 1e-06 + 0.02 * |expected|" in smoke_test(models)


def test_stereo_or_wrong_rate_golden_wav_is_refused(tmp_path: Path) -> None:
    import soundfile

    root = _tiny_bundle(tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    for audio, rate, message in (
        (np.zeros((8, 2), np.float32), 8000, "golden WAV must be mono"),
        (np.zeros(8, np.float32), 16000, "golden WAV is at 16000 Hz, the bundle runs at 8000"),
    ):
        soundfile.write(root / "golden" / "input.wav", audio, rate, subtype="FLOAT")
        (root / MANIFEST_NAME).unlink()
        write_manifest(root, data)
        with pytest.raises(BundleError, match=message):
            verify_bundle(root)


def test_features_classifier_runs_its_frontend_once_per_channel(tmp_path: Path) -> None:
    """input "features": frontend (1, 16) -> (1, 16), then each member on those features.
    Both are the affine test model, y = 0.5 x + 0.25, so a member's logits are 0.25 x + 0.375."""
    root = tmp_path / "features"
    root.mkdir()
    for name in ("frontend.tflite", "member_a.tflite", "member_b.tflite"):
        shutil.copy(AFFINE, root / name)
    rows = "".join(f"sp{i},Avis {i},Bird {i}\n" for i in range(16))
    (root / "labels.csv").write_text("species_code,scientific_name,common_name\n" + rows)
    write_manifest(
        root,
        {
            "name": "features",
            "version": "0.1.0",
            "sample_rate_hz": 8000,
            "window_samples": 16,
            "classifiers": [
                {
                    "name": "feat",
                    "members": [{"file": "member_a.tflite"}, {"file": "member_b.tflite"}],
                    "labels": "labels.csv",
                    "input": "features",
                    "frontend_model": {"file": "frontend.tflite"},
                    "frontend": {"kind": "affine test frontend"},
                }
            ],
        },
    )
    models = load_models(load_bundle(root), RuntimeOptions(), use_separator=False)
    (clf,) = models.classifiers
    assert clf.frontend is not None
    calls: list[int] = []
    real_run = clf.frontend.run
    clf.frontend.run = lambda x: (calls.append(1), real_run(x))[1]
    x = np.linspace(-0.8, 0.8, 3 * 16, dtype=np.float32).reshape(3, 16)
    logits = clf.member_logits(x)
    assert len(calls) == 3  # one frontend run per channel, shared by both members
    assert logits.shape == (2, 3, 16)
    np.testing.assert_allclose(logits[0], 0.25 * x + 0.375, atol=0.03)
    report = verify_bundle(root)
    by_rel = {f.rel: f for f in report.files}
    assert by_rel["frontend.tflite"].role == "classifier feat frontend"
    assert by_rel["frontend.tflite"].invoke_ms is not None
    assert report.golden == "no golden data in the bundle; smoke test skipped"


# ---------------------------------------------------------------------------------------------
# The two commands


def test_chorus_agent_check_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    assert main(["check-bundle", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "smoke test passed" in out and "classifier_a.tflite" in out

    bundle = _copy_demo(tmp_path)
    _flip_byte(bundle / "separator.tflite")
    assert main(["check-bundle", str(bundle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"chorus-agent: error: {bundle}: separator.tflite does not match its sha256 in the "
        "manifest (corrupt?)"
    ]


def test_chorus_models_bundle_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _bundle_cli(["bundle", "verify", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("PASS") and "smoke test passed" in out

    tampered = _copy_demo(tmp_path / "t")
    _flip_byte(tampered / "golden" / "input.npy", offset=1000)
    truncated = _copy_demo(tmp_path / "s")
    (truncated / "labels.csv").write_text("species_code\n")
    missing = _copy_demo(tmp_path / "m")
    (missing / "classifier_b.tflite").unlink()
    future = _copy_demo(tmp_path / "f")
    data = json.loads((future / MANIFEST_NAME).read_text())
    (future / MANIFEST_NAME).write_text(json.dumps({**data, "format_version": 7}))
    cases = [
        (tampered, "golden/input.npy does not match its sha256"),
        (truncated, "labels.csv does not match its sha256 in the manifest: it is 13 bytes"),
        (missing, "classifier_b.tflite is listed in the manifest but missing"),
        (future, "format_version 7 is not supported by this agent (supports 1 and 2)"),
    ]
    for bundle, needle in cases:
        assert _bundle_cli(["bundle", "verify", str(bundle)]) == 2, bundle
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"chorus-models: error: {bundle}"), lines
        assert needle in lines[0], lines
        assert captured.out == ""


def test_bundle_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _bundle_cli(["bundle"])
    assert info.value.code == 2
    assert "verify" in capsys.readouterr().err
