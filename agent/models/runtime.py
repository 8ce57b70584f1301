"""Thin wrapper over the TFLite interpreter: load, pick a delegate, run with float in and out.

This is the only module that touches the interpreter library. Runtimes are tried in order:
``ai-edge-litert`` (preferred: loads everything TF 2.21 converts), ``tflite-runtime`` (legacy
fallback; cannot load many quantized models from new converters, DEPENDENCIES.md §3), and last
``tensorflow.lite`` when only TensorFlow is installed (a workstation convenience; the device
install never has TensorFlow, and it is imported lazily and only if the other two are missing).

Quantized models: inputs are quantized and outputs dequantized here with each tensor's
scale/zero-point, so every caller sees float32.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BundleError, RuntimeUnavailableError

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"


@dataclass(frozen=True)
class RuntimeLib:
    name: str
    interpreter_cls: Any
    load_delegate: Any


_RUNTIME: RuntimeLib | None = None


def runtime_library() -> RuntimeLib:
    """Find an installed TFLite runtime (cached). Raises RuntimeUnavailableError if none."""
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    for name, module in (
        ("ai-edge-litert", "ai_edge_litert.interpreter"),
        ("tflite-runtime", "tflite_runtime.interpreter"),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        _RUNTIME = RuntimeLib(name, mod.Interpreter, mod.load_delegate)
        return _RUNTIME
    try:  # last resort, never on a device install (see module docstring)
        tf = importlib.import_module("tensorflow")
    except ImportError:
        raise RuntimeUnavailableError(
            "no TFLite runtime installed: pip install 'ai-edge-litert>=2.3' "
            "(or install Chorus with the 'agent' extra)"
        ) from None
    log.warning("using tensorflow.lite as the TFLite runtime; install ai-edge-litert on devices")
    _RUNTIME = RuntimeLib(
        "tensorflow.lite", tf.lite.Interpreter, tf.lite.experimental.load_delegate
    )
    return _RUNTIME


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float  # 0.0 for float tensors
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype != np.float32 and self.scale != 0.0


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        tuple(int(d) for d in detail["shape"]),
        np.dtype(detail["dtype"]),
        float(scale),
        int(zero_point),
    )


class TFLiteModel:
    """One single-input, single-output TFLite model, float32 in and out.

    ``accelerator="edgetpu"`` loads ``edgetpu_path`` (the Edge TPU-compiled twin) with the
    libedgetpu delegate and fails clearly when either is missing.
    """

    def __init__(
        self,
        path: str | Path,
        num_threads: int = 1,
        accelerator: str = "cpu",
        edgetpu_path: str | Path | None = None,
    ) -> None:
        lib = runtime_library()
        self.path = Path(path)
        delegates = []
        if accelerator == "edgetpu":
            if edgetpu_path is None:
                raise BundleError(
                    f"{self.path.name}: accelerator is 'edgetpu' but the bundle has no Edge TPU "
                    "model for it (set inference.accelerator: cpu)"
                )
            self.path = Path(edgetpu_path)
            try:
                delegates = [lib.load_delegate(EDGETPU_LIBRARY)]
            except (ValueError, OSError, RuntimeError) as exc:
                raise RuntimeUnavailableError(
                    f"Edge TPU delegate {EDGETPU_LIBRARY} could not be loaded ({exc}); install "
                    "libedgetpu1-std and plug in the Coral, or set inference.accelerator: cpu"
                ) from None
        elif accelerator != "cpu":
            raise ValueError(f"unknown accelerator {accelerator!r}")
        if not self.path.is_file():
            raise BundleError(f"{self.path}: model file not found")
        try:
            # XNNPACK is the default CPU delegate of all three runtimes; num_threads feeds it.
            self._interp = lib.interpreter_cls(
                model_path=str(self.path),
                num_threads=num_threads,
                experimental_delegates=delegates or None,
            )
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{self.path}: not a loadable TFLite model ({first})") from None
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{self.path}: expected 1 input and 1 output, "
                f"found {len(inputs)} and {len(outputs)}"
            )
        self._in_index = inputs[0]["index"]
        self._out_index = outputs[0]["index"]
        self.input = _spec(inputs[0])
        self.output = _spec(outputs[0])
        self.runtime = lib.name

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one inference. ``x`` must have the input shape; returns float32 output."""
        if tuple(x.shape) != self.input.shape:
            raise ValueError(
                f"{self.path.name}: input shape {x.shape}, model wants {self.input.shape}"
            )
        self._interp.set_tensor(self._in_index, quantize(x, self.input))
        self._interp.invoke()
        return dequantize(self._interp.get_tensor(self._out_index), self.output)


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the tensor's dtype with round-to-nearest and saturation."""
    if not spec.quantized:
        return np.asarray(x, dtype=spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.rint(np.asarray(x, dtype=np.float32) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if not spec.quantized:
        return np.asarray(y, dtype=np.float32)
    return ((y.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)
