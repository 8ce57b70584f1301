"""Evaluation figures (PNG, matplotlib with the Agg backend; both in the ``train`` extra).

* per-class AP bars, one group per species, one bar per Table-2 variant;
* precision-recall curves of the most frequent species, one line per variant;
* the paper's Figure 1: the PCEN mel spectrogram of a mixture above those of its separated
  channels (one colour map per channel), the legends giving the ensemble logit of every true
  species on each channel. PCEN is the classifier frontend's own definition
  (:func:`modeltools.classifier.frontend.melspec` + :func:`~.frontend.pcen`, TensorFlow).

Nothing here runs at import time; matplotlib and TensorFlow are imported by the functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio.resample import resample
from modeltools.evaluation.report import fmt
from modeltools.evaluation.separate_classify import (
    BUNDLE_SOURCE,
    SET_RATE_HZ,
    VARIANT_TITLES,
    ChannelLogits,
    EvalSet,
    Evaluation,
    combined_scores,
    fit_window,
    match_classes,
)

log = logging.getLogger(__name__)

VARIANT_COLOURS = {
    "mix_only": "#7f7f7f",
    "separated_only": "#1f77b4",
    "mix_and_separated": "#d62728",
}
CHANNEL_CMAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "YlOrBr", "PuRd", "GnBu")
CHANNEL_COLOURS = ("#2171b5", "#d94801", "#238b45", "#6a51a3", "#cb181d", "#cc4c02", "#ce1256")
DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def plot_per_class_ap(entry: dict[str, Any], source: str, path: Path) -> Path | None:
    """Bars of per-species AP (species with >= 5 positives) for each variant of ``source``."""
    results = [r for r in entry["results"] if r["source"] == source]
    if not results:
        return None
    codes = [
        pc["code"]
        for pc in results[0]["per_class"]
        if any(np.isfinite(_pc(r, pc["code"])["ap"]) for r in results)
    ]
    if not codes:
        return None
    plt = _pyplot()
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(min(14.0, max(5.0, 0.4 * len(codes) + 1.5)), 3.4))
    x = np.arange(len(codes))
    for v, r in enumerate(results):
        ap = [_pc(r, c)["ap"] for c in codes]
        ax.bar(
            x + (v - (len(results) - 1) / 2) * width,
            np.nan_to_num(ap),
            width,
            color=VARIANT_COLOURS.get(r["variant"]),
            label=f"{r['variant_title']} (CMAP {fmt(r['cmap'])})",
        )
    ax.set_xticks(x, codes, rotation=60 if len(codes) > 8 else 0, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.set_title(f"{entry['name']}: per-species AP, {source}", fontsize=9, loc="left", pad=18)
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(results))
    fig.tight_layout()
    return _save(fig, path, plt)


def _pc(result: dict[str, Any], code: str) -> dict[str, Any]:
    return next(pc for pc in result["per_class"] if pc["code"] == code)


def plot_pr_curves(es: EvalSet, ch: ChannelLogits, path: Path, top: int = 4) -> Path | None:
    """Precision-recall curves of the ``top`` most frequent scored species, every variant."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    pairs = match_classes(ch.classes, es.classes)
    freq = sorted(
        ((int(es.labels[:, j].sum()), i, j) for i, j in pairs), key=lambda t: (-t[0], t[2])
    )
    chosen = [t for t in freq if t[0] > 0][:top]
    if not chosen:
        return None
    scores = {v: combined_scores(ch, v) for v in ch.variants}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.0 * len(chosen), 3.0), squeeze=False)
    for ax, (n_pos, i, j) in zip(axes[0], chosen, strict=True):
        y = es.labels[:, j]
        for v, s in scores.items():
            if y.all():  # no negatives: the curve is a single point at precision 1
                continue
            p, r, _ = precision_recall_curve(y, s[:, i])
            ap = average_precision_score(y, s[:, i])
            ax.step(
                r, p, where="post", color=VARIANT_COLOURS[v], label=f"{VARIANT_TITLES[v]} {ap:.2f}"
            )
        ax.set_title(f"{es.classes[j].code} ({n_pos} positives)", fontsize=8)
        ax.set_xlabel("recall", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=6, loc="lower left", title="AP", title_fontsize=6)
    axes[0][0].set_ylabel("precision", fontsize=8)
    fig.suptitle(f"{es.name}: precision-recall, {ch.source}", fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    return _save(fig, path, plt)


def pcen_images(channels: np.ndarray, sample_rate_hz: int = SET_RATE_HZ) -> np.ndarray:
    """(K, N) waveforms -> (K, frames, 160) PCEN mel images (the classifier's frontend)."""
    from modeltools.classifier import frontend as fe

    x = channels
    if sample_rate_hz != fe.SAMPLE_RATE_HZ:
        x = np.stack([resample(c, sample_rate_hz, fe.SAMPLE_RATE_HZ) for c in channels])
    return np.asarray(fe.pcen(fe.melspec(x.astype(np.float32))))


def select_examples(es: EvalSet, ch: ChannelLogits, n: int) -> list[int]:
    """Segments for Figure 1: most labelled (scorable) species first, then the largest mean gain
    of the true species' logit from mix only to mix + separation; one per recording first."""
    pairs = match_classes(ch.classes, es.classes)
    if n <= 0 or not pairs or ch.logits.shape[1] < 2:
        return []
    mi, dj = [i for i, _ in pairs], [j for _, j in pairs]
    y = es.labels[:, dj]
    mix = ch.logits[:, 0, mi]
    best = ch.logits[:, :, mi].max(axis=1)
    count = y.sum(axis=1)
    gain = np.where(y, best - mix, 0).sum(axis=1) / np.maximum(count, 1)
    order = [k for k in np.lexsort((-gain, -count)) if count[k] > 0]
    recording = [name.split(" @ ")[0] for name in es.segment_names]
    chosen: list[int] = []
    for k in order:  # one segment per recording first
        if recording[k] not in {recording[c] for c in chosen}:
            chosen.append(int(k))
        if len(chosen) == n:
            return chosen
    chosen += [int(k) for k in order if k not in chosen][: n - len(chosen)]
    return chosen


def plot_separation_example(
    channels: np.ndarray,
    sample_rate_hz: int,
    logits: np.ndarray,
    true_codes: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """Figure 1 for one segment: ``channels`` (K, N) = mix then sources; ``logits`` (K, T) the
    ensemble logits of the ``T`` true species on each channel."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    images = pcen_images(channels, sample_rate_hz)
    vmax = float(np.percentile(images, 99.5)) or 1.0
    k = len(channels)
    fig, axes = plt.subplots(k, 1, figsize=(9.5, 1.35 * k + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    dur_s = channels.shape[1] / sample_rate_hz
    winner = logits.argmax(axis=0) if logits.size else np.zeros(0, int)
    for c, ax in enumerate(axes):
        cmap = "Greys" if c == 0 else CHANNEL_CMAPS[(c - 1) % len(CHANNEL_CMAPS)]
        colour = "#404040" if c == 0 else CHANNEL_COLOURS[(c - 1) % len(CHANNEL_COLOURS)]
        ax.imshow(
            images[c].T,
            origin="lower",
            aspect="auto",
            cmap=cmap,
            vmin=0.0,
            vmax=vmax,
            extent=(0.0, dur_s, 0, images.shape[2]),
        )
        ax.set_ylabel("mel", fontsize=7)
        ax.tick_params(labelsize=7)
        name = "mixture" if c == 0 else f"separated channel {c - 1}"
        ax.set_title(name, fontsize=8, loc="left", color=colour)
        if c == 0:
            labels = [
                f"{code}: mix {logits[0, t]:+.2f}, mix+sep {logits[:, t].max():+.2f}"
                for t, code in enumerate(true_codes)
            ]
        else:
            labels = [
                f"{code}: {logits[c, t]:+.2f}" + (" ★" if winner[t] == c else "")
                for t, code in enumerate(true_codes)
            ]
        if labels:
            handles = [Patch(color=colour) for _ in labels]
            ax.legend(
                handles,
                labels,
                fontsize=6,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                title="logit",
                title_fontsize=6,
            )
    axes[-1].set_xlabel("s", fontsize=8)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def make_figures(ev: Evaluation, out_dir: Path, examples: int = 4) -> list[dict[str, Any]]:
    """Every figure of the report, written under ``out_dir/figures``; returns their entries
    (``kind``, ``dataset``, ``source``, ``path`` relative to ``out_dir``, ``caption``)."""
    fig_dir = out_dir / "figures"
    out: list[dict[str, Any]] = []

    def add(kind: str, dataset: str, source: str, path: Path | None, caption: str) -> None:
        if path is not None:
            rel = path.relative_to(out_dir).as_posix()
            out.append(
                {
                    "kind": kind,
                    "dataset": dataset,
                    "source": source,
                    "path": rel,
                    "caption": caption,
                }
            )

    by_name = {es.name: es for es in ev.sets}
    for entry in ev.result["datasets"]:
        es = by_name[entry["name"]]
        for source in dict.fromkeys(r["source"] for r in entry["results"]):
            stem = f"{slug(entry['name'])}_{slug(source)}"
            add(
                "per_class_ap",
                entry["name"],
                source,
                plot_per_class_ap(entry, source, fig_dir / f"{stem}_ap.png"),
                f"Per-species AP on {entry['name']}, {source}",
            )
            ch = ev.logits[(entry["name"], source)]
            add(
                "pr_curves",
                entry["name"],
                source,
                plot_pr_curves(es, ch, fig_dir / f"{stem}_pr.png"),
                f"Precision-recall of the most frequent species on {entry['name']}, {source}",
            )
    add_examples = _figure1(ev, fig_dir, examples)
    for dataset, path, caption in add_examples:
        add("separation_example", dataset, BUNDLE_SOURCE, path, caption)
    return out


def _figure1(ev: Evaluation, fig_dir: Path, n: int) -> list[tuple[str, Path, str]]:
    """Figure 1 for ``n`` segments of the first scored set the bundle separated."""
    sep = ev.models.separator
    if sep is None or n <= 0:
        return []
    try:
        import tensorflow  # noqa: F401  (the PCEN frontend)
    except ModuleNotFoundError:
        log.warning("Figure 1 needs TensorFlow for the PCEN frontend (train extra): skipped")
        return []
    for entry in ev.result["datasets"]:
        ch = ev.logits.get((entry["name"], BUNDLE_SOURCE))
        if ch is None or entry["status"] != "scored":
            continue
        es = next(s for s in ev.sets if s.name == entry["name"])
        pairs = match_classes(ch.classes, es.classes)
        out: list[tuple[str, Path, str]] = []
        for k in select_examples(es, ch, n):
            mix = fit_window(
                es.audio()[k : k + 1], ev.models.sample_rate_hz, ev.models.window_samples
            )[0]
            channels = np.concatenate([mix[np.newaxis], sep.separate(mix)], axis=0)
            true = [(i, es.classes[j].code) for i, j in pairs if es.labels[k, j]]
            logits = ch.logits[k][:, [i for i, _ in true]]
            title = f"{es.name}: {es.segment_names[k]}; true: {', '.join(c for _, c in true)}"
            path = fig_dir / f"figure1_{len(out)}.png"
            plot_separation_example(
                channels, ev.models.sample_rate_hz, logits, [c for _, c in true], path, title
            )
            out.append((es.name, path, f"Figure 1: {es.segment_names[k]}"))
        return out
    return []
