"""The demo model bundle: hand-set plumbing models for the synthetic species of :mod:`agent.demo`.

Nothing here is trained. The separator is a fixed 4-band FIR filterbank followed by the uniform
mixture-consistency projection (ALGORITHMS.md §1.5); each classifier member is a fixed band-energy
detector per demo species. They exist so the agent's whole path (bundle, runtime, separation,
ensemble, detection, sinks) can run end to end before trained models land.

Conversion follows DEPENDENCIES.md §2/§7: static batch, no None-slicing, builtin ops only. The
separator ships as float32 (int8 waveform I/O would cut quiet input to a few levels, §3); the
classifier members are full-integer int8 inside with float32 I/O, like a real quantized member.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.demo import (
    DEMO_SAMPLE_RATE_HZ,
    DEMO_SEPARATOR_EDGES_HZ,
    DEMO_SPECIES,
    NOISE_LEVEL_DBFS,
    demo_labels,
    level_to_amplitude,
    make_demo_soundscape,
    pink_noise,
    synthesize_call,
)
from agent.errors import ChorusError
from agent.models.manifest import LABEL_COLUMNS, load_bundle, write_manifest

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 5 * DEMO_SAMPLE_RATE_HZ  # 110250: 5 s at 22.05 kHz
NUM_SOURCES = 4
SEPARATOR_TAPS = 129
HOP_SAMPLES = 256  # classifier frame hop
# The golden tolerance must pass the int8 members on every kernel set: XNNPACK and the reference
# kernels (and ARM vs x86) may round an int8 step differently, which moves a logit by one output
# step (about 0.065). 0.25 allows ~4 steps; a broken model or runtime misses by far more.
GOLDEN_ATOL = 0.25
GOLDEN_WINDOW_START_S = 17.5  # of make_demo_soundscape(seed=0): four species, two overlapping
CREATED_UTC = "2026-11-25T00:00:00Z"  # fixed so rebuilding reproduces the manifest
MIN_AGENT_VERSION = "0.1.0"  # the first agent that reads format 2 manifests
MIN_LITERT_VERSION = "2.3.0"  # what the models were converted for (DEPENDENCIES.md §3)
# Where a call at the threshold level sits: logit 0. Calls at <= -45 dBFS must land below -2,
# calls at >= -30 dBFS above +2; LOGIT_PER_DB = 0.5 puts them near -3.75 / +3.75.
THRESHOLD_DBFS = -37.5
LOGIT_PER_DB = 0.5
LOGIT_FLOOR = -4.0  # logits are clamped up to this (see build_classifier_model)
_FLOOR = 1e-4  # added before the log so that silence keeps it finite


@dataclass(frozen=True)
class MemberSpec:
    """One hand-set classifier member. Members differ in filter length and smoothing only."""

    file: str
    kernel_samples: int  # band filter length (frequency resolution)
    smooth_frames: int  # moving average over frames before the max over time
    threshold_dbfs: float = THRESHOLD_DBFS


MEMBERS = (
    MemberSpec("classifier_a.tflite", kernel_samples=512, smooth_frames=3),
    MemberSpec("classifier_b.tflite", kernel_samples=384, smooth_frames=4, threshold_dbfs=-38.0),
)


class BuildError(ChorusError):
    """A model could not be built or failed its post-conversion checks."""

    exit_code = 2


def _tf() -> Any:
    """Import TensorFlow lazily (and quietly): the agent side must never pay for it."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


# ---------------------------------------------------------------------------------------------
# Filters (numpy)


def _lowpass(cutoff_hz: float, taps: int, sample_rate_hz: int) -> np.ndarray:
    """Hamming-windowed sinc low-pass with unit DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2.0 * cutoff_hz / sample_rate_hz * n) * np.hamming(taps)
    return h / h.sum()


def separator_kernel(
    taps: int = SEPARATOR_TAPS, sample_rate_hz: int = DEMO_SAMPLE_RATE_HZ
) -> np.ndarray:
    """(taps, 4) band filters: a low-pass, two band-passes (differences of low-passes) and a
    high-pass (delta minus a low-pass). They are complementary: the 4 filters sum to a delta,
    so the bands add back up to the input even before the mixture-consistency projection."""
    lows = [_lowpass(f, taps, sample_rate_hz) for f in DEMO_SEPARATOR_EDGES_HZ]
    delta = np.zeros(taps)
    delta[(taps - 1) // 2] = 1.0
    bands = [lows[0], lows[1] - lows[0], lows[2] - lows[1], delta - lows[2]]
    return np.stack(bands, axis=1)


def classifier_filterbank(
    kernel_samples: int, sample_rate_hz: int = DEMO_SAMPLE_RATE_HZ
) -> np.ndarray:
    """(kernel_samples, 2*C) quadrature band-pass pairs, one pair per demo species.

    Columns 2c and 2c+1 are a Hann-windowed sinc low-pass (half the species' bandwidth)
    modulated by cos and sin at the species' centre: |cos out| + |sin out| follows the band's
    envelope (between 1 and sqrt(2) times it) whatever the phase of the call.
    """
    t = (np.arange(kernel_samples) - (kernel_samples - 1) / 2) / sample_rate_hz
    window = np.hanning(kernel_samples)
    cols = []
    for sp in DEMO_SPECIES:
        half_bw_hz = 0.5 * (sp.band_hz[1] - sp.band_hz[0])
        proto = np.sinc(2.0 * half_bw_hz * t) * window
        proto /= proto.sum()  # unit gain at the centre frequency after modulation (x2 below)
        cols += [
            2.0 * proto * np.cos(2 * np.pi * sp.centre_hz * t),
            2.0 * proto * np.sin(2 * np.pi * sp.centre_hz * t),
        ]
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------------------------------
# Keras models


def build_separator_model() -> Any:
    """(1, N) waveform -> (1, 4, N) band channels that sum to the input."""
    keras = _tf().keras
    ops = keras.ops
    mix = keras.Input((WINDOW_SAMPLES,), batch_size=1, name="waveform")
    x = ops.expand_dims(mix, -1)  # (1, N, 1)
    bands = keras.layers.Conv1D(
        NUM_SOURCES, SEPARATOR_TAPS, padding="same", use_bias=False, name="bands"
    )
    est = ops.transpose(bands(x), (0, 2, 1))  # (1, N, 4) -> (1, 4, N)
    # Uniform mixture consistency: est + (mix - sum(est)) / M, so channels sum to the mix.
    residual = mix - ops.sum(est, axis=1)  # (1, N)
    out = est + ops.expand_dims(residual, 1) * (1.0 / NUM_SOURCES)  # (1, 4, N)
    model = keras.Model(mix, out, name="demo_separator")
    bands.set_weights([separator_kernel()[:, None, :].astype(np.float32)])  # (taps, 1, 4)
    return model


def build_classifier_model(
    member: MemberSpec, scale: np.ndarray | None = None, bias: np.ndarray | None = None
) -> Any:
    """(1, N) waveform -> (1, C) logits: max(scale * log(max_t smooth(envelope) + 1e-4) + bias,
    LOGIT_FLOOR), one band envelope per species.

    Without ``scale``/``bias`` the output is the unfloored log feature (used for calibration).
    The envelope uses abs, not square: in int8 a square halves the dB range a tensor can hold,
    and a -30 dBFS call must stay well above one quantization step.
    """
    keras = _tf().keras
    ops = keras.ops
    n_cls = len(DEMO_SPECIES)
    wave = keras.Input((WINDOW_SAMPLES,), batch_size=1, name="waveform")
    x = ops.expand_dims(wave, -1)  # (1, N, 1)
    fb = keras.layers.Conv1D(
        2 * n_cls,
        member.kernel_samples,
        strides=HOP_SAMPLES,
        padding="valid",
        use_bias=False,
        name="filterbank",
    )
    x = ops.abs(fb(x))  # (1, F, 2C)
    pairs = keras.layers.Conv1D(n_cls, 1, use_bias=False, name="pair_sum")
    x = pairs(x)  # (1, F, C) envelope per species
    x = keras.layers.AveragePooling1D(member.smooth_frames, strides=1, name="smooth")(x)
    x = ops.max(x, axis=1)  # (1, C)
    x = ops.log(x + _FLOOR)
    affine = keras.layers.Dense(n_cls, name="affine")
    logits = affine(x)  # (1, C)
    if scale is not None:
        # Below the floor the envelope is within a few int8 steps of zero, where one step moves
        # the log by whole logits and kernels (XNNPACK vs reference, x86 vs ARM) may disagree by
        # one step: flooring keeps absent species at one exact value (golden test stays stable).
        logits = ops.maximum(logits, LOGIT_FLOOR)
    model = keras.Model(wave, logits, name="demo_classifier")
    fb.set_weights([classifier_filterbank(member.kernel_samples)[:, None, :].astype(np.float32)])
    pair_w = np.zeros((1, 2 * n_cls, n_cls), np.float32)
    for c in range(n_cls):
        pair_w[0, 2 * c : 2 * c + 2, c] = 1.0
    pairs.set_weights([pair_w])
    s = np.ones(n_cls) if scale is None else scale
    b = np.zeros(n_cls) if bias is None else bias
    affine.set_weights([np.diag(s).astype(np.float32), b.astype(np.float32)])
    return model


def _call_window(code: str, level_dbfs: float, seed: int) -> np.ndarray:
    """A 5 s window: one 1 s call of ``code`` at ``level_dbfs`` in the middle, over demo noise."""
    rng = np.random.default_rng(seed)
    x = pink_noise(WINDOW_SAMPLES, NOISE_LEVEL_DBFS, rng)
    call = synthesize_call(code, 1.0, DEMO_SAMPLE_RATE_HZ, rng) * level_to_amplitude(level_dbfs)
    i0 = 2 * DEMO_SAMPLE_RATE_HZ
    x[i0 : i0 + call.shape[0]] += call
    return x.astype(np.float32)


def calibrate_member(member: MemberSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (scale, bias) so a call at the member's threshold gets logit 0 and the logit
    moves LOGIT_PER_DB per dB: the float feature of each species is measured on its own calls."""
    feature_model = build_classifier_model(member)
    n_cls = len(DEMO_SPECIES)
    feats = np.zeros(n_cls)
    for c, sp in enumerate(DEMO_SPECIES):
        wins = np.stack([_call_window(sp.code, member.threshold_dbfs, 1000 + k) for k in range(4)])
        out = np.concatenate([feature_model(w[None], training=False).numpy() for w in wins])
        feats[c] = float(np.median(out[:, c]))
    # log(envelope) moves ln(10)/20 per dB, so scale = LOGIT_PER_DB / (ln(10)/20).
    scale = np.full(n_cls, LOGIT_PER_DB * 20.0 / np.log(10.0))
    return scale, -scale * feats


# ---------------------------------------------------------------------------------------------
# Conversion and checks


def representative_windows() -> list[np.ndarray]:
    """Calibration input for int8: 5 s windows (hop 5 s) of two demo soundscapes not used for
    the golden window or the tests' accuracy figures, plus one full-scale 100 Hz tone.

    The tone sets the input range to [-1, 1], so no legal waveform clips at the input QUANTIZE;
    it lies outside every detector band, so the detector tensors keep the finer ranges of the
    demo audio (a louder in-band call saturates there, which only pins its logit high).
    """
    wins = []
    for seed in (101, 102):
        audio = make_demo_soundscape(60.0, DEMO_SAMPLE_RATE_HZ, seed=seed).audio
        wins += [
            audio[i : i + WINDOW_SAMPLES]
            for i in range(0, audio.shape[0] - WINDOW_SAMPLES + 1, WINDOW_SAMPLES)
        ]
    t_s = np.arange(WINDOW_SAMPLES) / DEMO_SAMPLE_RATE_HZ
    wins.append(np.sin(2 * np.pi * 100.0 * t_s).astype(np.float32))
    return wins


def _convert(
    model: Any, calibration: Sequence[np.ndarray] | None = None, io_type: Any = None
) -> bytes:
    """Keras -> .tflite bytes: float32, or full int8 (float or ``io_type`` I/O) with calibration."""
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:

        def dataset() -> Iterator[list[np.ndarray]]:
            for w in calibration:
                yield [np.asarray(w, np.float32)[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type is not None:
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    # Keras' export prints "Saved artifact ..." and TF logs asset paths at INFO: keep the CLI's
    # output to our own progress lines.
    tf_log = logging.getLogger("tensorflow")
    old_level = tf_log.level
    tf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises many types; all mean the same thing here
        raise BuildError(f"{model.name}: TFLite conversion failed: {exc}") from exc
    finally:
        tf_log.setLevel(old_level)


def _interpreter(model: bytes | Path, delegates: bool = True) -> Any:
    """An allocated ai_edge_litert interpreter; ``delegates=False`` skips XNNPACK (whose
    partitions would hide the real ops behind a DELEGATE node)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs: dict[str, Any] = {"num_threads": 1}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, Path):
        interp = Interpreter(model_path=str(model), **kwargs)
    else:
        interp = Interpreter(model_content=model, **kwargs)
    interp.allocate_tensors()
    return interp


def check_ops(model: bytes, name: str, full_int8: bool) -> list[str]:
    """Refuse flex/custom ops; with ``full_int8`` also refuse any op computing in float other
    than the QUANTIZE/DEQUANTIZE at the float I/O. Returns the op names."""
    interp = _interpreter(model, delegates=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    names = []
    for op in interp._get_ops_details():  # no public API for the op list
        op_name = str(op["op_name"])
        names.append(op_name)
        if op_name.startswith("Flex") or op_name in ("CUSTOM", "DELEGATE"):
            raise BuildError(f"{name}: op {op_name} is not a TFLite builtin (flex/SELECT_TF?)")
        if full_int8 and op_name not in ("QUANTIZE", "DEQUANTIZE"):
            floats = [
                tensors[i]["name"]
                for i in (*op["inputs"], *op["outputs"])
                if i >= 0 and tensors[i]["dtype"] == np.float32
            ]
            if floats:
                raise BuildError(
                    f"{name}: op {op_name} runs in float ({floats[0]}); "
                    "expected a full-integer model"
                )
    return names


def run_tflite(model: bytes | Path, x: np.ndarray) -> np.ndarray:
    """Run a single-input model on ``x`` (batch of 1 added) with ai_edge_litert; float I/O."""
    interp = _interpreter(model)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], np.asarray(x, inp["dtype"])[None])
    interp.invoke()
    return np.asarray(interp.get_tensor(out["index"])[0])


# ---------------------------------------------------------------------------------------------
# The bundle


def _write_labels(path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LABEL_COLUMNS)
        for lab in demo_labels():
            w.writerow([getattr(lab, c) for c in LABEL_COLUMNS])


def golden_window() -> np.ndarray:
    """The golden input: 5 s of make_demo_soundscape(seed=0) from GOLDEN_WINDOW_START_S."""
    audio = make_demo_soundscape(60.0, DEMO_SAMPLE_RATE_HZ, seed=0).audio
    i0 = round(GOLDEN_WINDOW_START_S * DEMO_SAMPLE_RATE_HZ)
    return np.ascontiguousarray(audio[i0 : i0 + WINDOW_SAMPLES], np.float32)


def _manifest_fields() -> dict[str, Any]:
    return {
        "name": "chorus-demo",
        "version": "0.1.0",
        "description": (
            "Demo bundle of hand-set plumbing models, NOT trained: a fixed 4-band FIR separator "
            "and two fixed band-energy detectors (int8) for the six synthetic species of "
            "agent.demo. Use it to exercise the agent end to end, never to identify real birds."
        ),
        "created_utc": CREATED_UTC,
        "min_agent_version": MIN_AGENT_VERSION,
        "runtime": {
            "interpreter": "tflite-builtins",
            "min_litert": MIN_LITERT_VERSION,
            "flavour": "float32 separator, int8 classifiers",
        },
        "sample_rate_hz": DEMO_SAMPLE_RATE_HZ,
        "window_samples": WINDOW_SAMPLES,
        "separator": {"file": "separator.tflite", "edgetpu_file": None, "num_sources": NUM_SOURCES},
        "classifiers": [
            {
                "name": "demo",
                "members": [{"file": m.file} for m in MEMBERS],
                "labels": "labels.csv",
                "input": "waveform",
                # The members compute their features in-model; recorded for reference.
                "frontend": {
                    "kind": "in-model quadrature filterbank",
                    "bands": len(DEMO_SPECIES),
                    "hop_samples": HOP_SAMPLES,
                    "kernel_samples": [m.kernel_samples for m in MEMBERS],
                },
            }
        ],
        "golden": {
            "input": "golden/input.npy",
            "expected": "golden/expected.npz",
            "atol": GOLDEN_ATOL,
        },
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed zip timestamps, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def _check_golden_tolerance(
    model: bytes, name: str, golden_in: np.ndarray, expected: np.ndarray
) -> None:
    """The golden atol must cover a few int8 output steps, and the reference kernels (no
    XNNPACK) must reproduce the expected logits within it."""
    interp = _interpreter(model, delegates=False)
    out = interp.get_output_details()[0]
    step = max(
        float(t["quantization"][0])
        for t in interp.get_tensor_details()
        if t["dtype"] == np.int8 and tuple(t["shape"]) == tuple(out["shape"])
    )
    if 3 * step > GOLDEN_ATOL:
        raise BuildError(f"{name}: golden atol {GOLDEN_ATOL} is under 3 output steps ({step:.4f})")
    interp.set_tensor(interp.get_input_details()[0]["index"], golden_in[None])
    interp.invoke()
    diff = float(np.max(np.abs(interp.get_tensor(out["index"])[0] - expected)))
    if diff > GOLDEN_ATOL:
        raise BuildError(
            f"{name}: reference kernels differ from XNNPACK by {diff:.4f} on the "
            "golden input (more than the golden atol)"
        )


def build_demo_bundle(out_dir: str | Path) -> Path:
    """Build the demo bundle into ``out_dir`` (replaced if it exists) and return its path.

    Deterministic: fixed weights, fixed calibration data and a fixed created_utc, so a rebuild
    with the same TensorFlow version reproduces the files byte for byte.
    """
    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())
    ):
        raise BuildError(f"{out}: exists and is not a model bundle; refusing to replace it")
    tf = _tf()
    tf.keras.utils.set_random_seed(0)
    # Build next to the target and swap in at the end: a failed build leaves the old bundle.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / "golden").mkdir()
        golden_in = golden_window()
        expected: dict[str, np.ndarray] = {}

        log.info("separator: converting (float32)")
        sep = _convert(build_separator_model())
        check_ops(sep, "separator.tflite", full_int8=False)
        (tmp / "separator.tflite").write_bytes(sep)
        expected["separator"] = run_tflite(sep, golden_in).astype(np.float32)

        calibration = representative_windows()
        for j, member in enumerate(MEMBERS):
            log.info(
                "%s: calibrating and converting (int8, %d windows)", member.file, len(calibration)
            )
            scale, bias = calibrate_member(member)
            content = _convert(build_classifier_model(member, scale, bias), calibration)
            check_ops(content, member.file, full_int8=True)
            (tmp / member.file).write_bytes(content)
            expected[f"demo/{j}"] = run_tflite(content, golden_in).astype(np.float32)
            _check_golden_tolerance(content, member.file, golden_in, expected[f"demo/{j}"])

        _write_labels(tmp / "labels.csv")
        with (tmp / "golden" / "input.npy").open("wb") as f:
            np.save(f, golden_in, allow_pickle=False)
        _write_npz(tmp / "golden" / "expected.npz", expected)
        write_manifest(tmp, _manifest_fields())
        load_bundle(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("demo bundle written to %s", out)
    return out


# ---------------------------------------------------------------------------------------------
# Tiny test models for the runtime wrapper's tests


def build_test_models(out_dir: str | Path) -> list[Path]:
    """Write ``affine_int8io.tflite``: int8 (1, 16) -> int8 (1, 16), y = 0.5 * x + 0.25 for x in
    [-1, 1], full int8 with int8 input/output types (checks scale/zero-point handling)."""
    tf = _tf()
    keras = tf.keras
    tf.keras.utils.set_random_seed(0)
    x = keras.Input((16,), batch_size=1, name="x")
    y = keras.layers.Rescaling(0.5, offset=0.25, name="affine")(x)
    model = keras.Model(x, y, name="affine_int8io")
    # Calibration covers [-1, 1] exactly (endpoints included) so the ranges are predictable.
    ramp = np.linspace(-1.0, 1.0, 16 * 8, dtype=np.float32).reshape(8, 16)
    content = _convert(model, list(ramp), io_type=tf.int8)
    check_ops(content, "affine_int8io.tflite", full_int8=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "affine_int8io.tflite"
    path.write_bytes(content)
    log.info("wrote %s (%d bytes)", path, len(content))
    from modeltools.packaging.birdnet_test_models import build_birdnet_test_models

    return [path, *build_birdnet_test_models(out), *build_verify_test_models(out)]


def build_verify_test_models(out_dir: str | Path) -> list[Path]:
    """Write two tiny models for the bundle-verification tests, float32 (1, 8) input:

    * ``two_outputs.tflite``: outputs ``logits`` = 2 x (1, 8) and ``embedding`` = sum(x) (1, 1),
      for picking a classifier output by name;
    * ``flex_op.tflite``: the same through a string round trip (AsString, StringToNumber), which
      needs Flex (SELECT_TF_OPS) ops that the device runtime cannot run.
    """
    tf = _tf()
    spec = tf.TensorSpec([1, 8], tf.float32, name="x")
    module_base: Any = tf.Module

    class TwoOutputs(module_base):
        @tf.function(input_signature=[spec])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"logits": 2.0 * x, "embedding": tf.reduce_sum(x, axis=1, keepdims=True)}

    class FlexOp(module_base):
        @tf.function(input_signature=[spec])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"logits": 2.0 * tf.strings.to_number(tf.strings.as_string(x))}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, module, flex in (("two_outputs", TwoOutputs(), False), ("flex_op", FlexOp(), True)):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [module.serve.get_concrete_function()], module
        )
        if flex:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS,
                tf.lite.OpsSet.SELECT_TF_OPS,
            ]
        tf_log = logging.getLogger("tensorflow")
        old_level = tf_log.level
        tf_log.setLevel(logging.WARNING)  # keep TF's "Assets written" lines out of the CLI
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                content = bytes(converter.convert())
        finally:
            tf_log.setLevel(old_level)
        path = out / f"{name}.tflite"
        path.write_bytes(content)
        log.info("wrote %s (%d bytes)", path, len(content))
        paths.append(path)
    return paths
