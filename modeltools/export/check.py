"""``chorus-models parity BUNDLE``: the bundle's own .tflite files against their Keras runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.models.stages import peak_scaled
from modeltools.export.convert import Converted, ExportError, model_ops
from modeltools.export.parity import (
    SeparatorParity,
    Tolerances,
    classifier_parity,
    report_dict,
    separator_parity,
)


def _converted(path: Path, flavour: str) -> Converted:
    data = path.read_bytes()
    return Converted(flavour, data, model_ops(data))


def bundle_parity(
    bundle_dir: str | Path,
    data: list[Path],
    separator_run: Path | None = None,
    classifier_runs: list[Path] | None = None,
    eval_moms: int = 32,
    eval_segments: int = 120,
    tolerances: Tolerances | None = None,
) -> dict[str, Any]:
    """Parity report of the bundle's models (``passed`` says whether every model is in
    tolerance). Runs default to the ``provenance`` the export wrote into the manifest."""
    from agent.models.manifest import MANIFEST_NAME, load_bundle
    from modeltools.classifier.ensemble import load_member, member_dirs
    from modeltools.classifier.evaluate import predict_logits, segment_set
    from modeltools.data.dataset import read_dataset
    from modeltools.export import bundle as exp
    from modeltools.separation.train import load_run

    tol = tolerances or Tolerances()
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    raw = json.loads((bundle.path / MANIFEST_NAME).read_text())
    prov = raw.get("provenance") or {}
    runtime = raw.get("runtime") or {}
    datasets = [read_dataset(d) for d in data]
    meta: dict[str, Any] = {"bundle": str(bundle.path), "version": m.version}

    sep_ref: float | None = None
    sep_rows: list[SeparatorParity] = []
    if m.separator is not None:
        run = separator_run or Path((prov.get("separator") or {}).get("run", ""))
        if not str(run) or not Path(run).is_dir():
            raise ExportError(f"{bundle.path}: no separator run given and none in the manifest")
        model, _, _ = load_run(run)
        flavour = runtime.get("separator_flavour", "bundle")
        conv = _converted(bundle.file(m.separator.model.file), flavour)
        peak = getattr(m.separator, "input_peak", None)
        moms, refs = exp.eval_moms(datasets, eval_moms)
        ref_out = peak_scaled(
            lambda a: exp.keras_in_batches(lambda b: model(b, training=False), a), moms, peak
        )
        sep_ref, sep_rows = separator_parity(ref_out, {flavour: conv}, moms, refs, peak, tol)

    cls_runs = classifier_runs or [Path(p) for p in (prov.get("classifier") or {}).get("runs", [])]
    if not cls_runs:
        raise ExportError(f"{bundle.path}: no classifier runs given and none in the manifest")
    spec = m.classifiers[0]
    runs = member_dirs(cls_runs)
    if len(runs) != len(spec.members):
        raise ExportError(
            f"{bundle.path}: {len(spec.members)} members in the bundle but {len(runs)} runs given"
        )
    audio, labels = segment_set(datasets, "test", limit=eval_segments)
    keras_logits = [predict_logits(load_member(r)[0], audio)["species"] for r in runs]
    flavour = runtime.get("classifier_flavour", "bundle")
    convs = [_converted(bundle.file(mf.file), flavour) for mf in spec.members]
    frontend = (
        _converted(bundle.file(spec.frontend_model.file), "float32")
        if spec.frontend_model is not None
        else None
    )
    cls_ref, cls_rows = classifier_parity(
        keras_logits, {flavour: convs}, audio, labels, tol, frontend
    )
    report = report_dict(sep_ref, sep_rows, cls_ref, cls_rows, tol, meta)
    report["passed"] = all(r.passed for r in sep_rows) and all(r.passed for r in cls_rows)
    report["finite"] = bool(all(np.isfinite(r.cmap) for r in cls_rows))
    return report
