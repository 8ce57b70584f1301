"""The TFLite wrapper and stages with real interpreters and real model files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BundleError
from agent.models.golden import smoke_test
from agent.models.manifest import load_bundle, write_manifest
from agent.models.runtime import TFLiteModel, dequantize, quantize
from agent.models.stages import RuntimeOptions, load_models

ROOT = Path(__file__).resolve().parents[2]
AFFINE = ROOT / "tests" / "data" / "models" / "affine_int8io.tflite"
DEMO = ROOT / "agent" / "bundles" / "demo"


def test_int8_io_model_sees_float_in_and_out() -> None:
    model = TFLiteModel(AFFINE)
    assert model.input.dtype == np.int8 and model.input.quantized
    assert model.output.dtype == np.int8 and model.output.quantized
    x = np.linspace(-1, 1, 16, dtype=np.float32)[np.newaxis]
    y = model.run(x)
    assert y.dtype == np.float32
    # y = 0.5 x + 0.25, within one quantization step of input and output.
    tol = 0.5 * model.input.scale + model.output.scale
    np.testing.assert_allclose(y, 0.5 * x + 0.25, atol=tol)


def test_quantize_rounds_and_saturates() -> None:
    from agent.models.runtime import TensorSpec

    spec = TensorSpec((3,), np.dtype(np.int8), 0.5, 10)
    q = quantize(np.array([0.24, 100.0, -100.0]), spec)
    assert q.tolist() == [10, 127, -128]
    np.testing.assert_allclose(dequantize(q, spec), [0.0, 58.5, -69.0])


def test_wrong_input_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="model wants"):
        TFLiteModel(AFFINE).run(np.zeros((1, 8), np.float32))


def test_garbage_model_file_gives_bundle_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(BundleError, match="not a loadable TFLite model"):
        TFLiteModel(bad)


# LiteRT's Delegate.__del__ raises on a delegate that failed to load; that is its bug, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_edgetpu_without_delegate_is_a_clear_error() -> None:
    from agent.errors import RuntimeUnavailableError

    with pytest.raises(BundleError, match="no Edge TPU model"):
        TFLiteModel(AFFINE, accelerator="edgetpu")
    with pytest.raises(RuntimeUnavailableError, match="libedgetpu"):
        TFLiteModel(AFFINE, accelerator="edgetpu", edgetpu_path=AFFINE)


def _copy_demo(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(DEMO, dst)
    return dst


def _rewrite(bundle: Path, **changes: object) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    fields = {k: v for k, v in data.items() if k not in ("format", "format_version", "files")}
    fields.update(changes)
    (bundle / "manifest.json").unlink()
    write_manifest(bundle, fields)


def test_shipped_bundle_loads_and_passes_its_smoke_test() -> None:
    models = load_models(load_bundle(DEMO), RuntimeOptions(num_threads=1))
    assert models.separator is not None and models.separator.num_sources == 4
    assert "smoke test passed" in smoke_test(models)


def test_shape_mismatch_with_manifest_is_refused(tmp_path: Path) -> None:
    bundle = _copy_demo(tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    sep = {**data["separator"], "num_sources": 8}
    _rewrite(bundle, separator=sep)
    with pytest.raises(
        BundleError,
        match=r"separator.tflite: output shape is \[1, 4, 110250\] "
        r"but the manifest implies \[1, 8, 110250\]",
    ):
        load_models(load_bundle(bundle), RuntimeOptions())


def test_label_count_mismatch_is_refused(tmp_path: Path) -> None:
    bundle = _copy_demo(tmp_path)
    labels = (bundle / "labels.csv").read_text().splitlines()
    (bundle / "labels.csv").write_text("\n".join(labels[:-1]) + "\n")
    _rewrite(bundle)
    with pytest.raises(BundleError, match=re.escape("classifier_a.tflite: output shape")):
        load_models(load_bundle(bundle), RuntimeOptions())


def test_tampered_file_fails_hash_check(tmp_path: Path) -> None:
    bundle = _copy_demo(tmp_path)
    with (bundle / "classifier_b.tflite").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match=re.escape("classifier_b.tflite does not match")):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("window_samples"), "window_samples: missing"),
        (lambda d: d.update(sample_rate_hz="22050"), "sample_rate_hz: expected int, got str"),
        (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
        (lambda d: d.update(classifiers=[]), "at least one classifier is required"),
        (lambda d: d["files"].pop("labels.csv"), "labels.csv is used but not listed in files"),
    ],
)
def test_invalid_manifest_names_the_problem(tmp_path: Path, mutate, message: str) -> None:
    bundle = _copy_demo(tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    mutate(data)
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_missing_bundle_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="model bundle folder not found"):
        load_bundle(tmp_path / "nope")
    bundle = _copy_demo(tmp_path)
    (bundle / "separator.tflite").unlink()
    with pytest.raises(BundleError, match=re.escape("separator.tflite is listed")):
        load_bundle(bundle)
