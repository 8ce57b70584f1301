"""The update smoke test, run in a fresh interpreter so a bad model cannot take the agent down.

``python -m agent.ota.smoke BUNDLE --threads N --budget-ms B`` runs, in order:

1. :func:`agent.models.verify.verify_bundle`: sizes and sha256, builtin ops only, every model
   loads with the shapes the manifest promises, the golden smoke test within tolerance;
2. every model on the golden input (or, without golden data, a fixed noise window): no NaN or
   Inf anywhere (a NaN that fails the golden test is reported as NaN, not as a tolerance miss);
3. the latency of one full window (separator + every classifier on every channel, as the
   pipeline runs it): the median of 3 runs after a warm-up must be within the budget.

It prints one JSON line ``{"ok": ..., "reason": ..., "latency_ms": ..., "golden": ...}``. The
agent (:func:`run_smoke_test`) runs it with a timeout; a crash, a hang or a refusal all refuse
the update with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BundleError, ChorusError


class SmokeTestError(BundleError):
    """The bundle failed its smoke test (or the test crashed or timed out)."""


@dataclass(frozen=True)
class SmokeResult:
    latency_ms: float
    golden: str


def _window(models: Any) -> np.ndarray:
    from agent.models.golden import read_golden_input

    golden = models.bundle.manifest.golden
    if golden is not None:
        x = read_golden_input(models.bundle.file(golden.input_file), models.sample_rate_hz)
        if x.shape == (models.window_samples,):
            return x
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(0.0, 0.05, models.window_samples), -1, 1).astype(np.float32)


def _run_window(models: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every stage's output on window ``x``, as the pipeline computes them."""
    from agent.models.stages import Classifier

    outputs: dict[str, np.ndarray] = {}
    channels = x[np.newaxis]
    if models.separator is not None:
        sources = models.separator.separate(x)
        outputs["separator"] = sources
        channels = np.concatenate([channels, sources], axis=0)
    for clf in models.classifiers:
        if isinstance(clf, Classifier):
            for e, logits in enumerate(clf.member_logits(channels)):
                outputs[f"{clf.name}/{e}"] = logits
        else:
            outputs[clf.name] = clf.classify(channels)
    return outputs


def _nonfinite(models: Any) -> str | None:
    x = _window(models)
    try:
        outputs = _run_window(models, x)
    except FloatingPointError as exc:  # a stage refuses to pass its own NaN/Inf on
        return f"{exc} on the test window"
    for key, out in outputs.items():
        if not np.all(np.isfinite(out)):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            return f"{key} outputs NaN/Inf ({bad} of {np.size(out)} values) on the test window"
    return None


def smoke_check(bundle_dir: Path, num_threads: int, budget_ms: float) -> dict[str, Any]:
    """Steps 1-3 of the module docstring, in this process; never raises for a bad bundle."""
    from agent.models.manifest import load_bundle
    from agent.models.stages import RuntimeOptions, load_models
    from agent.models.verify import verify_bundle

    report = verify_bundle(bundle_dir, num_threads=num_threads, raise_on_error=False)
    try:
        bundle = load_bundle(bundle_dir)
        models = load_models(
            bundle, RuntimeOptions(num_threads), use_separator=bundle.manifest.separator is not None
        )
    except ChorusError as exc:
        return {"ok": False, "reason": report.error or str(exc)}
    nan = _nonfinite(models)
    if nan is not None:
        return {"ok": False, "reason": nan}
    if not report.passed:
        return {"ok": False, "reason": report.error}
    x = _window(models)
    _run_window(models, x)  # warm-up (XNNPACK set-up)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        _run_window(models, x)
        times.append((time.perf_counter() - t0) * 1e3)
    latency_ms = float(np.median(times))
    if latency_ms > budget_ms:
        return {
            "ok": False,
            "reason": f"too slow: {latency_ms:.1f} ms per window, the budget is {budget_ms:g} ms",
            "latency_ms": latency_ms,
        }
    return {"ok": True, "reason": None, "latency_ms": latency_ms, "golden": report.golden}


def run_smoke_test(
    bundle_dir: Path, *, num_threads: int, budget_ms: float, timeout_s: float
) -> SmokeResult:
    """Run the smoke test in a fresh interpreter; SmokeTestError with the reason if it fails."""
    cmd = [
        sys.executable,
        "-m",
        "agent.ota.smoke",
        str(bundle_dir),
        "--threads",
        str(num_threads),
        "--budget-ms",
        str(budget_ms),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SmokeTestError(f"smoke test did not finish within {timeout_s:g} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        how = (
            f"was killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exited with status {proc.returncode}"
        )
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        raise SmokeTestError(f"smoke test crashed: the test interpreter {how}: {tail}")
    result = json.loads(lines[-1])
    if not result.get("ok"):
        raise SmokeTestError(f"smoke test: {result.get('reason')}")
    return SmokeResult(float(result["latency_ms"]), str(result.get("golden", "")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.ota.smoke")
    p.add_argument("bundle", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-ms", type=float, required=True)
    args = p.parse_args(argv)
    with contextlib.suppress(OSError):
        os.nice(10)  # the live pipeline runs beside this test: it keeps the CPU first
    print(json.dumps(smoke_check(args.bundle, args.threads, args.budget_ms)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
