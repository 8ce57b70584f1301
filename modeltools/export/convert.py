"""Keras -> TFLite in five flavours, builtin ops only (ALGORITHMS.md §5, DEPENDENCIES.md §2, §7).

Flavours:

``float32``  the frozen graph as is.
``float16``  weights stored as float16 (dequantised at load; same arithmetic as float32).
``dynamic``  dynamic-range quantisation: int8 weights, float activations (no calibration).
``int8``     full-integer weights and activations, calibrated on a representative set; input and
             output stay float (QUANTIZE/DEQUANTIZE at the edges), and ops without an int8 kernel
             (RFFT2D, COMPLEX_ABS of the classifier's STFT) stay float -- a hybrid model that
             LiteRT runs.
``int16x8``  int16 activations, int8 weights, where the converter supports every op (it does not
             for PRELU, so the separator usually cannot have it; the export records why).

Every model is converted from a *frozen* concrete function with a static batch of 1: resource
variables become constants, so the learnable scalar scales fold into the adjacent kernels and
no VAR_HANDLE/READ_VARIABLE op survives. Only ``TFLITE_BUILTINS`` (and the int8/int16 builtin
sets) are allowed -- never ``SELECT_TF_OPS`` -- so an op that would need the Flex delegate (which
the device does not have) fails the conversion; :func:`check_ops` double-checks the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import ChorusError

log = logging.getLogger(__name__)

FLAVOURS = ("float32", "float16", "dynamic", "int8", "int16x8")
# int8/int16x8 need a representative set; this many windows is plenty for min/max calibration.
MIN_REPRESENTATIVE = 4


class ExportError(ChorusError):
    """A model or input that cannot be exported (one message; exit status 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Converted:
    flavour: str
    data: bytes
    ops: tuple[str, ...]  # distinct op names in the flatbuffer

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def check_representative(windows: np.ndarray, what: str = "representative set") -> np.ndarray:
    """Refuse an empty, non-finite or silent calibration set (int8 scales would be garbage).

    ``windows``: ``(n, ...)`` model inputs (waveforms or features), one row per window.
    """
    w = np.asarray(windows, dtype=np.float32)
    if w.ndim < 2 or w.shape[0] == 0:
        raise ExportError(f"{what} is empty (need at least {MIN_REPRESENTATIVE} windows)")
    if w.shape[0] < MIN_REPRESENTATIVE:
        raise ExportError(
            f"{what} has {w.shape[0]} windows; need at least {MIN_REPRESENTATIVE} for calibration"
        )
    if not np.all(np.isfinite(w)):
        raise ExportError(f"{what} holds NaN or infinite values")
    peaks = np.max(np.abs(w.reshape(w.shape[0], -1)), axis=1)
    if np.all(peaks < 1e-4):
        raise ExportError(f"{what} is silent (every window peaks below -80 dBFS)")
    return w


def freeze(fn: Callable[[Any], Any], input_shape: tuple[int, ...]) -> Any:
    """A frozen concrete function of ``fn`` with one static float32 input."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec(list(input_shape), tf.float32, name="waveform")
    concrete = tf.function(fn, input_signature=[spec]).get_concrete_function()
    return convert_variables_to_constants_v2(concrete)


def model_ops(data: bytes) -> tuple[str, ...]:
    """Distinct op names of a .tflite flatbuffer (as LiteRT reports them)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    return tuple(sorted({d["op_name"] for d in interp._get_ops_details()}))


def check_ops(ops: tuple[str, ...], what: str) -> None:
    """Refuse Flex (TensorFlow) ops and custom ops: the device has neither."""
    bad = [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]
    if bad:
        raise ExportError(
            f"{what}: ops the device cannot run (no Flex delegate on the agent): {', '.join(bad)}"
        )


def convert(
    frozen: Any,
    flavour: str,
    representative: np.ndarray | None = None,
    what: str = "model",
) -> Converted:
    """Convert a frozen concrete function to ``flavour`` (see the module docstring)."""
    import tensorflow as tf

    if flavour not in FLAVOURS:
        raise ExportError(f"unknown flavour {flavour!r} (known: {', '.join(FLAVOURS)})")
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if flavour != "float32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if flavour == "float16":
        conv.target_spec.supported_types = [tf.float16]
    if flavour in ("int8", "int16x8"):
        if representative is None:
            raise ExportError(f"{what}: {flavour} needs a representative set")
        rep = check_representative(representative, f"{what}: representative set")

        def gen() -> Iterator[list[np.ndarray]]:
            for row in rep:
                yield [row[np.newaxis, :]]

        conv.representative_dataset = gen
        if flavour == "int8":
            # Builtins listed too: the STFT's RFFT2D/COMPLEX_ABS have no int8 kernel and stay
            # float (a hybrid model); everything else gets int8 kernels.
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
        else:
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
    try:
        data = conv.convert()
    except Exception as exc:  # the converter raises ConverterError / RuntimeError / ValueError
        text = str(exc).strip()
        # MLIR errors read "...<stdin>:5:1: error: 'tf.Svd' op is neither a custom op nor..."
        reason = text.split("error:", 1)[1] if "error:" in text else text
        reason = reason.strip().splitlines()[0] if reason.strip() else type(exc).__name__
        raise ExportError(f"{what}: {flavour} conversion failed: {reason[:300]}") from None
    ops = model_ops(data)
    check_ops(ops, f"{what} ({flavour})")
    log.info("%s %s: %d bytes, %d op kinds", what, flavour, len(data), len(ops))
    return Converted(flavour, data, ops)


def run_tflite(data: bytes, inputs: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Outputs of a single-input, single-output model on each row of ``inputs`` (float)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=num_threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    res = []
    for row in np.asarray(inputs, dtype=np.float32):
        interp.set_tensor(inp["index"], row[np.newaxis, :])
        interp.invoke()
        res.append(interp.get_tensor(out["index"])[0].copy())
    return np.stack(res)
