"""On-device smoke test: run every model of a bundle on its golden input, compare to expected.

The OTA update path runs this before switching bundles; ``chorus-agent check-bundle`` and
``chorus-models bundle verify`` run it by hand. A bundle without golden data passes with a note
(nothing to compare).

The golden input is one window at the bundle's rate: a float32 ``.npy`` of shape (N,) or a mono
``.wav``. The expected outputs (``.npz``) are what the *stages* return for it, so a separator
with ``input_peak`` is compared after its scaling back, in input units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import BundleError
from agent.models.stages import Classifier, LoadedModels


@dataclass(frozen=True)
class GoldenResult:
    """Per output key ("separator", "<classifier>/<member>"): the largest absolute error."""

    max_abs_error: dict[str, float]
    atol: float
    rtol: float

    @property
    def worst(self) -> float:
        return max(self.max_abs_error.values(), default=0.0)

    def summary(self) -> str:
        tol = f"{self.atol:g}" + (f" + {self.rtol:g} * |expected|" if self.rtol else "")
        return (
            f"smoke test passed ({len(self.max_abs_error)} outputs, max abs error "
            f"{self.worst:.2g} <= {tol})"
        )


def read_golden_input(path: Path, sample_rate_hz: int) -> np.ndarray:
    """The golden window as float32: a .npy array, or a mono .wav at ``sample_rate_hz``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        if suffix == ".wav":
            import soundfile

            x, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
            if x.ndim != 1:
                raise BundleError(f"{path}: golden WAV must be mono, it has {x.shape[1]} channels")
            if rate != sample_rate_hz:
                raise BundleError(
                    f"{path}: golden WAV is at {rate} Hz, the bundle runs at {sample_rate_hz} Hz"
                )
            return np.asarray(x, dtype=np.float32)
    except (OSError, ValueError, RuntimeError) as exc:  # soundfile raises RuntimeError subclasses
        raise BundleError(f"{path}: golden input unreadable: {exc}") from None
    raise BundleError(f"{path}: golden input must be a .npy or .wav file")


def run_golden(models: LoadedModels) -> GoldenResult | None:
    """Run the loaded models on the golden input; raise BundleError at the first output that
    differs by more than ``atol + rtol * |expected|``. None if the bundle has no golden data."""
    bundle = models.bundle
    golden = bundle.manifest.golden
    if golden is None:
        return None
    x = read_golden_input(bundle.file(golden.input_file), models.sample_rate_hz)
    try:
        with np.load(bundle.file(golden.expected_file), allow_pickle=False) as npz:
            expected = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle.path}: golden data unreadable: {exc}") from None
    if x.shape != (models.window_samples,):
        raise BundleError(
            f"{bundle.path}: golden input has shape {x.shape}, expected ({models.window_samples},)"
        )
    outputs: dict[str, np.ndarray] = {}
    if models.separator is not None:
        outputs["separator"] = models.separator.separate(x)
    for clf in models.classifiers:
        if not isinstance(clf, Classifier):  # another backend (BirdNET): not part of the bundle
            continue
        for e, logits in enumerate(clf.member_logits(x[np.newaxis])):
            outputs[f"{clf.name}/{e}"] = logits[0]
    errors: dict[str, float] = {}
    for key, out in outputs.items():
        if key not in expected:
            raise BundleError(f"{bundle.path}: golden data has no expected output for {key!r}")
        want = expected[key].astype(np.float32)
        if want.shape != out.shape:
            raise BundleError(
                f"{bundle.path}: golden {key!r} has shape {want.shape}, model gives {out.shape}"
            )
        diff = np.abs(out - want)
        excess = diff - (golden.atol + golden.rtol * np.abs(want))
        if not np.all(excess <= 0):  # also catches NaN outputs
            tol = f"{golden.atol:g}" + (f" + {golden.rtol:g} * |expected|" if golden.rtol else "")
            raise BundleError(
                f"{bundle.path}: smoke test failed: {key} differs from the golden "
                f"output by {float(np.max(diff)):.3g} (tolerance {tol})"
            )
        errors[key] = float(np.max(diff))
    return GoldenResult(errors, golden.atol, golden.rtol)


def smoke_test(models: LoadedModels) -> str:
    """Raise BundleError if any model's output on the golden input is out of tolerance;
    return a one-line summary."""
    result = run_golden(models)
    if result is None:
        return "no golden data in the bundle; smoke test skipped"
    return result.summary()
