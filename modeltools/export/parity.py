"""Parity gate: every TFLite flavour against the Keras model on a fixed evaluation set.

Separator: output SNR of the TFLite sources against the Keras sources (dB, over every sample of
every source of every MoM) and MoMi of each (held-out MoMs of the test split); the *loss* is
Keras MoMi minus TFLite MoMi. Classifier (ensemble): max |logit error|, top-1 agreement with
Keras and CMAP on strongly labelled test segments (mix only); the loss is Keras CMAP minus
TFLite CMAP. A flavour passes when both losses are within the tolerances (defaults: separator
MoMi loss <= 0.5 dB, classifier CMAP loss <= 0.02, ISSUE 6).

The separator's ``input_peak`` (per-window gain: scale the window to that peak, separate,
scale back) is applied with the agent's own ``agent.models.stages.peak_scaled``, because
it is what makes full-int8 waveform I/O usable on quiet windows (DEPENDENCIES.md §7 rule 7).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from agent.models.stages import peak_scaled
from modeltools.export.convert import run_tflite

DEFAULT_MAX_MOMI_LOSS_DB = 0.5
DEFAULT_MAX_CMAP_LOSS = 0.02


@dataclass(frozen=True)
class Tolerances:
    max_momi_loss_db: float = DEFAULT_MAX_MOMI_LOSS_DB
    max_cmap_loss: float = DEFAULT_MAX_CMAP_LOSS


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - est)^2); +inf when identical."""
    ref = np.asarray(reference, np.float64)
    err = np.sum((ref - np.asarray(estimate, np.float64)) ** 2)
    if err == 0:
        return math.inf
    return float(10 * np.log10(np.sum(ref**2) / err))


@dataclass
class SeparatorParity:
    flavour: str
    size_bytes: int
    momi_db: float  # the flavour's own MixIT assignments
    momi_loss_db: float  # Keras MoMi - momi_db
    assignments_changed: int  # MoMs whose loss-chosen assignment differs from Keras's
    momi_same_assignment_db: float  # the flavour's outputs remixed as Keras's were
    momi_same_assignment_loss_db: float  # the gated figure (see separator_parity)
    output_snr_db: float
    invoke_ms: float
    passed: bool
    ops: list[str] = field(default_factory=list)


@dataclass
class ClassifierParity:
    flavour: str
    size_bytes: int  # all members together
    cmap: float
    cmap_loss: float
    lwlrap: float
    top1: float
    max_abs_logit_error: float
    top1_agreement: float
    invoke_ms: float  # per member per window
    passed: bool
    ops: list[str] = field(default_factory=list)


def separator_parity(
    keras_out: np.ndarray,
    tflite_models: dict[str, Any],
    moms: np.ndarray,
    refs: np.ndarray,
    input_peak: float | None,
    tol: Tolerances,
) -> tuple[float, list[SeparatorParity]]:
    """(Keras MoMi, one row per flavour). ``tflite_models``: flavour -> Converted.

    The gate uses the MoMi loss **at Keras's assignments**: each flavour's outputs are remixed
    into the two mixtures the way the Keras outputs were. MoMi with a free assignment is a
    discontinuous function of the outputs: a MoM whose quieter mixture sits near the "no output
    for it" boundary (ALGORITHMS.md §1.8, docs/separation.md "Collapsed MoMs") flips to a silent
    remix (about -80 dB SI-SNR, -34 dB of MoMi for that MoM) on a change far below anything a
    listener or the classifier notices; one flip in 32 MoMs is a 1 dB "loss" even for a flavour
    whose outputs are 46 dB from Keras's. The free-assignment MoMi, its loss and the number of
    changed assignments are reported beside it.
    """
    from modeltools.separation.metrics import momi_breakdown

    ref = momi_breakdown(refs, keras_out, moms)
    ref_momi = float(np.mean(ref["momi_db"]))
    rows = []
    for flavour, conv in tflite_models.items():
        t0 = time.perf_counter()
        out = peak_scaled(lambda a, c=conv: run_tflite(c.data, a), moms, input_peak)
        ms = 1000 * (time.perf_counter() - t0) / len(moms)
        free = momi_breakdown(refs, out, moms)
        m = float(np.mean(free["momi_db"]))
        same = float(np.mean(momi_breakdown(refs, out, moms, mixing=ref["mixing"])["momi_db"]))
        changed = int(np.sum(np.any(free["mixing"] != ref["mixing"], axis=(1, 2))))
        ok = bool(np.all(np.isfinite(out))) and ref_momi - same <= tol.max_momi_loss_db
        rows.append(
            SeparatorParity(
                flavour,
                conv.size_bytes,
                m,
                ref_momi - m,
                changed,
                same,
                ref_momi - same,
                snr_db(keras_out, out),
                ms,
                ok,
                list(conv.ops),
            )
        )
    return ref_momi, rows


def classifier_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from modeltools.classifier.evaluate import species_metrics

    return species_metrics(logits, labels)


def classifier_parity(
    keras_logits: Sequence[np.ndarray],
    tflite_members: dict[str, list[Any]],
    audio: np.ndarray,
    labels: np.ndarray,
    tol: Tolerances,
    frontend: Any = None,
) -> tuple[dict[str, Any], list[ClassifierParity]]:
    """(Keras ensemble scores, one row per flavour). ``tflite_members``: flavour -> [Converted].

    With ``frontend`` (a Converted float model waveform -> features), the members take the
    features, as in the bundle: the frontend runs once per window and feeds every member.
    """
    from modeltools.classifier.ensemble import ensemble_logits

    ref = ensemble_logits(list(keras_logits))
    ref_scores: dict[str, Any] = dict(classifier_scores(ref, labels))
    # CMAP needs classes with >= 5 positives; a tiny evaluation set may have none, and then
    # the gate falls back to lwlrap (defined whenever any example is labelled).
    gate = "cmap" if math.isfinite(ref_scores["cmap"]) else "lwlrap"
    ref_scores["gate_metric"] = gate
    rows = []
    inputs = audio if frontend is None else run_tflite(frontend.data, audio)
    for flavour, convs in tflite_members.items():
        t0 = time.perf_counter()
        outs = [run_tflite(c.data, inputs) for c in convs]
        ms = 1000 * (time.perf_counter() - t0) / (len(audio) * len(convs))
        ens = ensemble_logits(outs)
        s = classifier_scores(ens, labels)
        loss = ref_scores[gate] - s[gate]
        ok = bool(np.all(np.isfinite(ens))) and loss <= tol.max_cmap_loss
        rows.append(
            ClassifierParity(
                flavour,
                sum(c.size_bytes for c in convs),
                s["cmap"],
                loss,
                s["lwlrap"],
                s["top1"],
                float(np.max(np.abs(ens - ref))),
                float(np.mean(np.argmax(ens[:, 1:], 1) == np.argmax(ref[:, 1:], 1))),
                ms,
                ok,
                sorted({op for c in convs for op in c.ops}),
            )
        )
    return ref_scores, rows


def report_dict(
    sep_ref: float | None,
    sep_rows: list[SeparatorParity],
    cls_ref: dict[str, float] | None,
    cls_rows: list[ClassifierParity],
    tol: Tolerances,
    meta: dict[str, Any],
) -> dict[str, Any]:
    return {
        "tolerances": asdict(tol),
        **meta,
        "separator": None
        if sep_ref is None
        else {"keras_momi_db": sep_ref, "flavours": [asdict(r) for r in sep_rows]},
        "classifier": None
        if cls_ref is None
        else {"keras": cls_ref, "flavours": [asdict(r) for r in cls_rows]},
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The parity report as Markdown tables (what a researcher reads before a push)."""
    tol = report["tolerances"]
    lines = ["# Parity report", ""]
    sel = report.get("selected", {})
    if sel:
        lines += [
            f"Shipped: separator **{sel.get('separator')}**, "
            f"classifier **{sel.get('classifier')}**.",
            "",
        ]
    sep = report.get("separator")
    if sep:
        lines += [
            f"## Separator ({report.get('separator_eval', '')})",
            "",
            f"Keras MoMi: {sep['keras_momi_db']:.2f} dB; tolerance: MoMi loss at Keras's "
            f'assignments <= {tol["max_momi_loss_db"]} dB. "free": each flavour\'s own '
            "MixIT assignments (a MoM near the collapse boundary can flip on a tiny change; "
            "docs/export.md).",
            "",
            "| flavour | size (kB) | MoMi loss, Keras's assignments (dB) | MoMi, free (dB) "
            "| MoMi loss, free (dB) | assignments changed | output SNR vs Keras (dB) "
            "| ms / window | pass |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        n = report.get("separator_eval_moms", "")
        for r in sep["flavours"]:
            same = r.get("momi_same_assignment_loss_db", r["momi_loss_db"])
            changed = r.get("assignments_changed")
            lines.append(
                f"| {r['flavour']} | {r['size_bytes'] / 1000:.0f} | {same:+.2f} | "
                f"{r['momi_db']:.2f} | {r['momi_loss_db']:+.2f} | "
                f"{'—' if changed is None else changed}{f' / {n}' if n else ''} | "
                f"{r['output_snr_db']:.1f} | {r['invoke_ms']:.0f} | "
                f"{'yes' if r['passed'] else 'NO'} |"
            )
        lines.append("")
    cls = report.get("classifier")
    if cls:
        k = cls["keras"]
        lines += [
            f"## Classifier ensemble ({report.get('classifier_eval', '')})",
            "",
            f"Keras: CMAP {k['cmap']:.3f}, lwlrap {k['lwlrap']:.3f}, top-1 {k['top1']:.3f}; "
            f"tolerance: CMAP loss <= {tol['max_cmap_loss']}.",
            "",
            "| flavour | size (kB, all members) | CMAP | CMAP loss | lwlrap | top-1 | "
            "max logit error | top-1 agreement | ms / member / window | pass |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cls["flavours"]:
            lines.append(
                f"| {r['flavour']} | {r['size_bytes'] / 1000:.0f} | {r['cmap']:.3f} | "
                f"{r['cmap_loss']:+.3f} | {r['lwlrap']:.3f} | {r['top1']:.3f} | "
                f"{r['max_abs_logit_error']:.3f} | {r['top1_agreement']:.3f} | "
                f"{r['invoke_ms']:.0f} | {'yes' if r['passed'] else 'NO'} |"
            )
        lines.append("")
    tpu = report.get("edgetpu")
    if tpu:
        lines += ["## Edge TPU", ""] + [f"- {k}: {v}" for k, v in tpu.items()] + [""]
    skipped = report.get("skipped", {})
    if skipped:
        lines += ["## Flavours that could not be converted", ""]
        lines += [f"- {k}: {v}" for k, v in skipped.items()]
        lines.append("")
    return "\n".join(lines)
