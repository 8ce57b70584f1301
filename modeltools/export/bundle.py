"""``chorus-models export``: trained runs -> TFLite flavours -> parity gate -> a model bundle.

Steps (each logged):

1. load the separator run (latest checkpoint) and the classifier members (best weights);
2. draw the representative set (train-split windows of the corpora; for the classifier also the
   Keras separator's channels of those windows, since the classifier runs on both) and the
   evaluation sets (held-out MoMs and labelled segments of the test split);
3. convert every requested flavour (:mod:`.convert`), run it, score it (:mod:`.parity`);
4. refuse if a *selected* flavour misses the tolerances; otherwise write the bundle into a
   temporary folder next to ``out`` (models, labels, golden WAV + expected outputs, parity
   report, manifest), verify it with the agent's own loader and smoke test, and rename it into
   place -- so a failed export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.models.stages import peak_scaled
from modeltools.export.convert import (
    FLAVOURS,
    Converted,
    ExportError,
    convert,
    freeze,
    run_tflite,
)
from modeltools.export.parity import (
    SeparatorParity,
    Tolerances,
    classifier_parity,
    report_dict,
    separator_parity,
)
from modeltools.export.writer import (
    WINDOW_SAMPLES,
    labels_csv,
    write_bundle,
    write_flavours,
)

log = logging.getLogger(__name__)

FEATURE_SHAPE = (501, 160)  # frontend output per 5-s window (frames, mel bands)


@dataclass
class ExportOptions:
    separator_run: Path | None
    classifier_runs: list[Path]
    data: list[Path]
    out: Path
    flavours: tuple[str, ...] = FLAVOURS
    separator_flavour: str = "int8"
    classifier_flavour: str = "int8"
    input_peak: float | None = 0.5
    representative: int = 32
    eval_moms: int = 32
    eval_segments: int = 120
    tolerances: Tolerances = field(default_factory=Tolerances)
    name: str = "chorus-edge"
    version: str = "1.0.0"
    description: str = ""
    flavours_dir: Path | None = None
    force: bool = False
    seed: int = 0
    which: str = "best"


def _representative(datasets: Sequence[Any], n: int, seed: int) -> np.ndarray:
    """``n`` single 5-s windows of the train split, each at a random peak level.

    Random levels on purpose: the calibration then covers quiet and loud windows (the
    classifier sees raw levels; the separator's input is peak-scaled anyway), and it stays the
    calibration set the shipped bundle was made with (docs/export.md).
    """
    from modeltools.data.examples import SeparatorConfig, SeparatorExamples

    cfg = SeparatorConfig(levels="random-peak")
    src = SeparatorExamples(datasets, "train", cfg=cfg, seed=seed + 7919)
    return np.stack([src.example(i)["mixtures"][0] for i in range(n)]).astype(np.float32)


def eval_moms(datasets: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    from modeltools.data.examples import SeparatorExamples

    src = SeparatorExamples(datasets, "test", seed=1234)  # the eval-separator seed
    exs = [src.example(i) for i in range(n)]
    return np.stack([e["mom"] for e in exs]), np.stack([e["mixtures"] for e in exs])


def keras_in_batches(fn: Any, x: np.ndarray, batch: int = 4) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)])


def _convert_all(
    frozen: Any, flavours: Sequence[str], rep: np.ndarray, what: str, skipped: dict[str, str]
) -> dict[str, Converted]:
    out = {}
    for fl in flavours:
        t0 = time.monotonic()
        try:
            out[fl] = convert(frozen, fl, rep, what)
        except ExportError as exc:
            skipped[f"{what} {fl}"] = str(exc)
            log.warning("%s", exc)
            continue
        log.info("%s %s converted in %.1f s", what, fl, time.monotonic() - t0)
    return out


def export(opts: ExportOptions) -> dict[str, Any]:
    """Run the export; returns the parity report (also written into the bundle)."""
    from modeltools.classifier.ensemble import load_member, member_dirs
    from modeltools.classifier.evaluate import predict_logits, segment_set
    from modeltools.data.dataset import read_dataset
    from modeltools.separation.train import load_run

    if opts.out.exists() and not opts.force:
        raise ExportError(f"{opts.out} exists; pass --force to replace it")
    for fl in (opts.separator_flavour, opts.classifier_flavour):
        if fl not in opts.flavours:
            raise ExportError(f"selected flavour {fl!r} is not among --flavours")
    if not opts.classifier_runs:
        raise ExportError("at least one --classifier run is required")
    from modeltools.data.real_split import check_datasets

    datasets = [read_dataset(d) for d in opts.data]
    # The representative set reads train windows: no evaluation-only real audio (REAL-AUDIO.md).
    real_audio = check_datasets(datasets, "the int8 representative set", splits=("train",))
    taxonomy = datasets[0].taxonomy
    skipped: dict[str, str] = {}
    rep = _representative(datasets, opts.representative, opts.seed)
    from modeltools.export.convert import check_representative

    check_representative(rep)
    meta: dict[str, Any] = {
        "created_utc": _now(),
        "flavours": list(opts.flavours),
        "representative_real_audio": real_audio,
    }

    # -- separator --------------------------------------------------------------------------
    sep_ref: float | None = None
    sep_rows: list[SeparatorParity] = []
    sep_models: dict[str, Converted] = {}
    sep_keras = None
    sep_cfg = None
    if opts.separator_run is not None:
        model, sep_cfg, step = load_run(opts.separator_run)
        log.info("separator %s (%s) at step %d", opts.separator_run, sep_cfg.name, step)
        frozen = freeze(lambda w: model(w, training=False), (1, WINDOW_SAMPLES))
        sep_rep = peak_scaled(lambda a: a, rep, opts.input_peak)  # what the model will see
        sep_models = _convert_all(frozen, opts.flavours, sep_rep, "separator", skipped)
        moms, refs = eval_moms(datasets, opts.eval_moms)

        def keras_sep(a: np.ndarray) -> np.ndarray:
            return keras_in_batches(lambda b: model(b, training=False), a)

        sep_keras = keras_sep
        ref_out = peak_scaled(keras_sep, moms, opts.input_peak)
        sep_ref, sep_rows = separator_parity(
            ref_out, sep_models, moms, refs, opts.input_peak, opts.tolerances
        )
        meta["separator_eval"] = f"{opts.eval_moms} MoMs of the test split, 5 s"
        meta["separator_eval_moms"] = len(moms)
        meta["separator_source"] = {
            "run": str(opts.separator_run),
            "step": step,
            "preset": sep_cfg.name,
        }

    # -- classifier members -----------------------------------------------------------------
    runs = member_dirs(opts.classifier_runs)
    cls_rep = rep
    if sep_keras is not None:  # the classifier also runs on separated channels
        chans = peak_scaled(sep_keras, rep[: max(4, len(rep) // 4)], opts.input_peak)
        cls_rep = np.concatenate([rep, chans.reshape(-1, WINDOW_SAMPLES)])
    audio, labels = segment_set(datasets, "test", limit=opts.eval_segments)
    keras_logits, member_models, species_classes, channel_norm = [], [], None, None
    frontend, cls_rep_feats = None, None
    for run in runs:
        model, cfg = load_member(run, opts.which)
        meta_run = json.loads((run / "run.json").read_text())
        classes = meta_run["labels"]["species"]
        if species_classes is not None and classes != species_classes:
            raise ExportError(f"{run}: species classes differ from the other members")
        if channel_norm is not None and cfg.channel_norm != channel_norm:
            raise ExportError(f"{run}: channel_norm differs from the other members")
        species_classes, channel_norm = classes, cfg.channel_norm
        if len(classes) != labels.shape[1]:
            raise ExportError(
                f"{run}: {len(classes)} species classes but the corpus has {labels.shape[1]}"
            )
        keras_logits.append(predict_logits(model, audio)["species"])
        if frontend is None:
            frontend, cls_rep_feats = _frontend(cfg.channel_norm, cls_rep, skipped)
        net = classifier_network(cfg, meta_run["num_classes"], model)
        frozen = freeze(lambda f, m=net: m(f, training=False), (1, *FEATURE_SHAPE))
        member_models.append(
            _convert_all(frozen, opts.flavours, cls_rep_feats, f"classifier {run.name}", skipped)
        )
    flavours_ok = [f for f in opts.flavours if all(f in m for m in member_models)]
    cls_models = {f: [m[f] for m in member_models] for f in flavours_ok}
    cls_ref, cls_rows = classifier_parity(
        keras_logits, cls_models, audio, labels, opts.tolerances, frontend
    )
    meta["classifier_eval"] = (
        f"{len(audio)} labelled 5-s segments of the test split, mix only, {len(runs)} member(s)"
    )
    meta["classifier_source"] = {
        "runs": [str(r) for r in runs],
        "weights": opts.which,
        "channel_norm": channel_norm,
    }
    meta["selected"] = {
        "separator": opts.separator_flavour if opts.separator_run else None,
        "classifier": opts.classifier_flavour,
    }
    meta["skipped"] = skipped
    report = report_dict(sep_ref, sep_rows, cls_ref, cls_rows, opts.tolerances, meta)

    if opts.flavours_dir is not None:
        write_flavours(opts.flavours_dir, sep_models, cls_models, report, frontend)

    # -- the gate -----------------------------------------------------------------------------
    problems = []
    if opts.separator_run is not None:
        row = next((r for r in sep_rows if r.flavour == opts.separator_flavour), None)
        if row is None:
            why = skipped.get(f"separator {opts.separator_flavour}", "not converted")
            problems.append(f"separator {opts.separator_flavour}: {why}")
        elif not row.passed:
            problems.append(
                f"separator {row.flavour}: MoMi loss {row.momi_same_assignment_loss_db:.2f} dB "
                f"(at the Keras model's assignments) > {opts.tolerances.max_momi_loss_db} dB"
                if math.isfinite(row.momi_same_assignment_loss_db)
                else f"separator {row.flavour}: non-finite outputs"
            )
    crow = next((r for r in cls_rows if r.flavour == opts.classifier_flavour), None)
    if crow is None:
        problems.append(f"classifier {opts.classifier_flavour}: not converted for every member")
    elif not crow.passed:
        problems.append(
            f"classifier {crow.flavour}: CMAP loss {crow.cmap_loss:.3f} > "
            f"{opts.tolerances.max_cmap_loss}"
        )
    if problems:
        raise ExportError("parity gate failed, no bundle written: " + "; ".join(problems))

    assert species_classes is not None
    write_bundle(
        opts,
        sep_models.get(opts.separator_flavour) if opts.separator_run else None,
        sep_cfg.num_sources if sep_cfg else 0,
        frontend,
        [m[opts.classifier_flavour] for m in member_models],
        labels_csv(taxonomy, species_classes),
        audio,
        report,
    )
    return report


def _frontend(
    channel_norm: bool, windows: np.ndarray, skipped: dict[str, str]
) -> tuple[Converted, np.ndarray]:
    """The float32 frontend model (shared by every member) and its features of ``windows``.

    The frontend (STFT, mel, PCEN, whitening) stays float: RFFT2D has no int8 kernel and the
    whitening's data-dependent division fails in int8 (ALGORITHMS.md §5); splitting it off also
    lets the agent compute it once per channel for all ensemble members.
    """
    from modeltools.classifier import frontend as fe

    frozen = freeze(lambda w: fe.features(w, None, channel_norm=channel_norm), (1, WINDOW_SAMPLES))
    conv = convert(frozen, "float32", None, "frontend")
    return conv, run_tflite(conv.data, windows)


def classifier_network(cfg: Any, num_classes: dict[str, int], model: Any) -> Any:
    """Features (1, 501, 160) -> species logits, sharing the trained model's layers."""
    import keras

    from modeltools.classifier.model import build_classifier

    export_model = build_classifier(cfg, num_classes, batch_size=1, training_inputs=False)
    export_model.set_weights(model.get_weights())
    return keras.Model(
        export_model.get_layer("image").input,
        export_model.get_layer("species_logits").output,
        name=f"{export_model.name}_network",
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
