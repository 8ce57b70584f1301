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
    op_resolver_type: Any = None  # the library's OpResolverType enum, where it has one


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
        _RUNTIME = RuntimeLib(
            name, mod.Interpreter, mod.load_delegate, getattr(mod, "OpResolverType", None)
        )
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
        "tensorflow.lite",
        tf.lite.Interpreter,
        tf.lite.experimental.load_delegate,
        getattr(tf.lite.experimental, "OpResolverType", None),
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
    """One single-input TFLite model, float32 in and out.

    The model must have a single output, unless ``output_name`` picks one of several (by
    signature output name, e.g. ``"logits"``, or by tensor name). ``accelerator="edgetpu"`` loads
    ``edgetpu_path`` (the Edge TPU-compiled twin) with the libedgetpu delegate and fails clearly
    when either is missing.
    """

    def __init__(
        self,
        path: str | Path,
        num_threads: int = 1,
        accelerator: str = "cpu",
        edgetpu_path: str | Path | None = None,
        output_name: str | None = None,
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
        if len(inputs) != 1 or (len(outputs) != 1 and output_name is None):
            raise BundleError(
                f"{self.path}: expected 1 input and 1 output, "
                f"found {len(inputs)} and {len(outputs)}"
                + ("; a bundle picks one with classifiers[].output" * (len(inputs) == 1))
            )
        names = self._output_names(outputs)
        self.output_names = tuple(names)
        if output_name is None:
            out = outputs[0]
        elif output_name in names:
            out = next(d for d in outputs if d["index"] == names[output_name])
        else:
            raise BundleError(
                f"{self.path}: no output named {output_name!r} "
                f"(outputs: {', '.join(sorted(names))})"
            )
        self._in_index = inputs[0]["index"]
        self._out_index = out["index"]
        self.input = _spec(inputs[0])
        self.output = _spec(out)
        self.runtime = lib.name

    def _output_names(self, outputs: list[dict[str, Any]]) -> dict[str, int]:
        """Output name -> tensor index: the signature's names ("logits") where the model has
        exactly one signature (converters name tensors "StatefulPartitionedCall:1"), then the
        tensor names."""
        names: dict[str, int] = {}
        indices = {d["index"] for d in outputs}
        try:
            signatures = list(self._interp.get_signature_list())
            if len(signatures) == 1:
                runner = self._interp.get_signature_runner(signatures[0])
                for name, detail in runner.get_output_details().items():
                    if detail["index"] in indices:
                        names[name] = int(detail["index"])
        except (AttributeError, ValueError, RuntimeError):  # old runtimes: tensor names only
            pass
        for d in outputs:
            names.setdefault(str(d["name"]), int(d["index"]))
        return names

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one inference. ``x`` must have the input shape; returns float32 output."""
        if tuple(x.shape) != self.input.shape:
            raise ValueError(
                f"{self.path.name}: input shape {x.shape}, model wants {self.input.shape}"
            )
        self._interp.set_tensor(self._in_index, quantize(x, self.input))
        self._interp.invoke()
        return dequantize(self._interp.get_tensor(self._out_index), self.output)


def list_ops(path: str | Path) -> list[str] | None:
    """The op of every node of a .tflite file, as the runtime names it: builtins by their
    enum name (``CONV_2D``), custom ops by their custom name (Flex ops: ``Flex<TF op>``).

    The model is read without allocating tensors or applying delegates (XNNPACK would hide ops
    behind ``DELEGATE`` nodes), so this works on models that cannot run here. Returns None when
    the runtime has no op listing (it is not public API; LiteRT and tf.lite have it).
    """
    lib = runtime_library()
    kwargs: dict[str, Any] = {"num_threads": 1}
    if lib.op_resolver_type is not None:
        kwargs["experimental_op_resolver_type"] = (
            lib.op_resolver_type.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        interp = lib.interpreter_cls(model_path=str(path), **kwargs)
        details = interp._get_ops_details()
    except AttributeError:
        return None
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: not a loadable TFLite model ({first})") from None
    return [str(op["op_name"]) for op in details]


def builtin_op_names() -> frozenset[str] | None:
    """Every TFLite builtin op name, from LiteRT's schema; None if it is not available."""
    try:
        schema = importlib.import_module("ai_edge_litert.schema_py_generated")
    except ImportError:
        return None
    enum = schema.BuiltinOperator
    return frozenset(k for k, v in vars(enum).items() if k.isupper() and isinstance(v, int))


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
