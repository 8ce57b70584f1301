"""On-device smoke test: run every model of a bundle on its golden input, compare to expected.

The OTA update path runs this before switching bundles; ``chorus-agent check-bundle`` runs it
by hand. A bundle without golden data passes with a note (nothing to compare).
"""

from __future__ import annotations

import numpy as np

from agent.errors import BundleError
from agent.models.stages import Classifier, LoadedModels


def smoke_test(models: LoadedModels) -> str:
    """Raise BundleError if any model's output on the golden input differs by more than atol."""
    bundle = models.bundle
    golden = bundle.manifest.golden
    if golden is None:
        return "no golden data in the bundle; smoke test skipped"
    try:
        x = np.load(bundle.file(golden.input_file)).astype(np.float32)
        expected = dict(np.load(bundle.file(golden.expected_file)))
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
    worst = 0.0
    for key, out in outputs.items():
        if key not in expected:
            raise BundleError(f"{bundle.path}: golden data has no expected output for {key!r}")
        if expected[key].shape != out.shape:
            raise BundleError(
                f"{bundle.path}: golden {key!r} has shape {expected[key].shape}, "
                f"model gives {out.shape}"
            )
        err = float(np.max(np.abs(out - expected[key])))
        if not err <= golden.atol:
            raise BundleError(
                f"{bundle.path}: smoke test failed: {key} differs from the golden "
                f"output by {err:.3g} (tolerance {golden.atol:g})"
            )
        worst = max(worst, err)
    return (
        f"smoke test passed ({len(outputs)} outputs, max abs error {worst:.2g} <= {golden.atol:g})"
    )
