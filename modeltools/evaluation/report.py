"""Writers for the evaluation report: Markdown (Table-2 style), CSV and JSON.

All three are written from the one result dict of :func:`separate_classify.evaluate`. Markdown
and CSV print numbers with 3 decimals (``n/a`` / ``nan`` where a metric is undefined); JSON
keeps full precision and spells non-finite values as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (strict JSON has no such numbers; Python's ``float()`` reads all three).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modeltools.data.taxonomy import atomic_write_text
from modeltools.evaluation.separate_classify import MIN_POSITIVES

METRICS = ("cmap", "lwlrap", "dprime", "top1")
METRIC_TITLES = {"cmap": "CMAP", "lwlrap": "lwlrap", "dprime": "d′", "top1": "top-1"}
RESULT_COLUMNS = (
    "dataset",
    "labels",
    "status",
    "source",
    "model",
    "variant",
    "segments",
    "labelled_segments",
    "cmap_classes",
    "cmap",
    "lwlrap",
    "dprime",
    "mean_auc",
    "top1",
)
PER_CLASS_COLUMNS = ("dataset", "source", "variant", "species", "positives", "ap", "auc", "dprime")


def fmt(x: Any, missing: str = "n/a") -> str:
    """A metric with 3 decimals; ``missing`` for NaN/None, ``inf``/``-inf`` for infinities."""
    if x is None:
        return missing
    v = float(x)
    if math.isnan(v):
        return missing
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.3f}"


def json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, non-finite floats as strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(result: dict[str, Any], path: Path) -> Path:
    atomic_write_text(path, json.dumps(json_safe(result), indent=1, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# CSV


def result_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One row per dataset x source x variant (one row with empty metrics per unscored set)."""
    rows = []
    for ds in result["datasets"]:
        base = {
            "dataset": ds["name"],
            "labels": ds["labels"],
            "status": ds["status"],
            "segments": str(ds["segments"]),
            "labelled_segments": str(ds["labelled_segments"]),
        }
        if not ds["results"]:
            rows.append({c: base.get(c, "") for c in RESULT_COLUMNS})
            continue
        for r in ds["results"]:
            row = {**base, "source": r["source"], "model": r["model"], "variant": r["variant"]}
            row["cmap_classes"] = str(r["cmap_classes"])
            for k in ("cmap", "lwlrap", "dprime", "mean_auc", "top1"):
                row[k] = fmt(r[k], "nan")
            rows.append({c: row.get(c, "") for c in RESULT_COLUMNS})
    return rows


def per_class_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for ds in result["datasets"]:
        for r in ds["results"]:
            for pc in r["per_class"]:
                rows.append(
                    {
                        "dataset": ds["name"],
                        "source": r["source"],
                        "variant": r["variant"],
                        "species": pc["code"],
                        "positives": str(pc["positives"]),
                        "ap": fmt(pc["ap"], "nan"),
                        "auc": fmt(pc["auc"], "nan"),
                        "dprime": fmt(pc["dprime"], "nan"),
                    }
                )
    return rows


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({c: _cell(row.get(c, "")) for c in columns})
    return buf.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, "nan")
    return str(v)


def write_csvs(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``results.csv``, ``per_class.csv`` and, when present, the Table 1 / Table 3 CSVs."""
    paths = [out_dir / "results.csv", out_dir / "per_class.csv"]
    atomic_write_text(paths[0], _csv(result_rows(result), RESULT_COLUMNS))
    atomic_write_text(paths[1], _csv(per_class_rows(result), PER_CLASS_COLUMNS))
    for key in ("separator_variants", "classifier_ablations"):
        rows = result.get(key) or []
        if rows:
            paths.append(out_dir / f"{key}.csv")
            atomic_write_text(paths[-1], _csv(rows, list(rows[0])))
    return paths


# ---------------------------------------------------------------------------------------------
# Markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _link(path: str, out_dir: Path, markdown_dir: Path) -> str:
    return Path(os.path.relpath(out_dir / path, markdown_dir)).as_posix()


def _bundle_lines(result: dict[str, Any]) -> list[str]:
    b = result["bundle"]
    sep = b["separator"]
    sep_text = (
        f"separator with {sep['num_sources']} channels"
        + (f" (input peak {sep['input_peak']:g})" if sep["input_peak"] else "")
        if sep
        else "no separator (mix only)"
    )
    clf = "; ".join(
        f"classifier `{c['name']}` ({c['members']} member{'s' * (c['members'] != 1)}, "
        f"{c['labels']} labels)"
        for c in b["classifiers"]
    )
    flav = ", ".join(f"{k}: {v}" for k, v in b.get("runtime", {}).items() if "flavour" in k)
    lines = [
        f"* Bundle: **{b['name']} {b['version']}** (`{b['path']}`): {sep_text}; {clf}"
        + (f"; {flav}" if flav else "")
        + ". Run through the agent's own TFLite stages (LiteRT).",
    ]
    k = result.get("keras")
    if k:
        sep_run = f", separator `{k['separator_run']}`" if k["separator_run"] else ""
        lines.append(
            f"* Keras: classifier runs {', '.join(f'`{r}`' for r in k['classifier_runs'])} "
            f"({k['weights']} weights){sep_run}."
        )
    return lines


METRIC_NOTE = (
    "CMAP: mean average precision over the species with >= {n} positive segments; lwlrap: "
    "label-weighted label-ranking average precision; d′: √2·Φ⁻¹(mean ROC-AUC over species with "
    "positives and negatives); top-1: fraction of labelled segments whose highest-scoring "
    "species is present. Variants: *mix only* (the unseparated mix), *separation only* (per "
    "species, the max logit over the separated channels), *mix + separation* (the max over the "
    "mix and the separated channels). Definitions: docs/evaluation.md, docs/metrics.md."
)


def markdown_report(result: dict[str, Any], out_dir: Path, markdown_dir: Path | None = None) -> str:
    """The report; figure links are relative to ``markdown_dir`` (default: ``out_dir``)."""
    md_dir = markdown_dir or out_dir
    lines = ["# Separate + classify evaluation", ""]
    lines += _bundle_lines(result)
    if result.get("command"):
        lines.append(f"* Command: `{result['command']}`")
    if result.get("created_utc"):
        lines.append(f"* Generated {result['created_utc']}; split `{result.get('split', '')}`.")
    lines += ["", METRIC_NOTE.format(n=result["min_positives"]), ""]
    lines += _summary(result)
    figures = result.get("figures") or []
    for ds in result["datasets"]:
        lines += _dataset_section(ds, figures, out_dir, md_dir)
    lines += _figure1_section(figures, out_dir, md_dir)
    lines += _table1(result.get("separator_variants") or [])
    lines += _table3(result.get("classifier_ablations") or [])
    return "\n".join(lines).rstrip() + "\n"


def _summary(result: dict[str, Any]) -> list[str]:
    scored = [d for d in result["datasets"] if d["results"]]
    if not scored:
        return []
    keys: list[tuple[str, str]] = []
    for ds in scored:
        for r in ds["results"]:
            if (r["source"], r["variant"]) not in keys:
                keys.append((r["source"], r["variant"]))
    header = [
        "Model",
        "Variant",
        *(d["name"] + (" (weak labels)" if d["labels"] == "weak" else "") for d in scored),
    ]
    rows = []
    for source, variant in keys:
        row = [source, _variant_title(result, variant)]
        for ds in scored:
            r = _find(ds, source, variant)
            row.append(fmt(r["cmap"]) if r else "–")
        rows.append(row)
    return ["## CMAP summary (Table 2)", "", *_table(header, rows, "ll" + "r" * len(scored)), ""]


def _variant_title(result: dict[str, Any], variant: str) -> str:
    for ds in result["datasets"]:
        for r in ds["results"]:
            if r["variant"] == variant:
                return str(r["variant_title"])
    return variant


def _find(ds: dict[str, Any], source: str, variant: str) -> dict[str, Any] | None:
    return next(
        (r for r in ds["results"] if r["source"] == source and r["variant"] == variant), None
    )


def _dataset_section(
    ds: dict[str, Any], figures: list[dict[str, Any]], out_dir: Path, md_dir: Path
) -> list[str]:
    lines = [f"## {ds['name']}", ""]
    if ds["labels"] == "weak":
        lines += [
            "> **Weak labels.** These labels are another model's output (pseudo-labels), not "
            "ground truth: the numbers measure agreement with that model, not accuracy.",
            "",
        ]
    lines.append(f"* Labels: {ds['label_source']}.")
    lines.append(f"* {ds['segments']} segments of 5 s, {ds['labelled_segments']} with a label.")
    for note in ds.get("notes", []):
        lines.append(f"* {note}.")
    if ds["status"] == "not_scored":
        lines += ["", f"**Not scored:** {ds['message']}.", ""]
        return lines
    n_scored, n_all = len(ds["scored_species"]), len(ds["species"])
    lines.append(
        f"* Species scored: {n_scored} of the {n_all} in the labels (those in the bundle's label "
        f"table); positives: "
        + ", ".join(f"{c} {ds['positives'][c]}" for c in ds["scored_species"])
        + "."
    )
    if n_scored < 2:
        lines.append(
            "* lwlrap and top-1 are n/a: they rank the scored species against each other, "
            "so with one species they would be 1 by construction."
        )
    if any(r["cmap_classes"] == 0 for r in ds["results"]):
        lines.append(f"* CMAP is n/a: no scored species has >= {MIN_POSITIVES} positive segments.")
    lines.append("")
    rows = [
        [
            r["source"],
            r["variant_title"],
            *(fmt(r[k]) for k in METRICS),
            str(r["cmap_classes"]),
        ]
        for r in ds["results"]
    ]
    header = ["Model", "Variant", *(METRIC_TITLES[k] for k in METRICS), "CMAP species"]
    lines += _table(header, rows, "llrrrrr")
    lines.append("")
    for fig in figures:
        if fig["dataset"] == ds["name"] and fig["kind"] in ("per_class_ap", "pr_curves"):
            lines += [f"![{fig['caption']}]({_link(fig['path'], out_dir, md_dir)})", ""]
    return lines


def _figure1_section(figures: list[dict[str, Any]], out_dir: Path, md_dir: Path) -> list[str]:
    figs = [f for f in figures if f["kind"] == "separation_example"]
    if not figs:
        return []
    lines = [
        "## Separated channels (Figure 1)",
        "",
        "PCEN mel spectrogram of the mixture (top) and of each separated channel (one colour "
        "per channel); the legend gives the bundle's ensemble logit of every true species on "
        "that channel, and the mix + separation logit (max over channels) on the mixture.",
        "",
    ]
    for fig in figs:
        lines += [f"![{fig['caption']}]({_link(fig['path'], out_dir, md_dir)})", ""]
    return lines


def _table1(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    header = ["Run", "Preset", "Rate (Hz)", "Basis (ms)", "Sources", "Train crop (s)", "Step"]
    header += ["MoMi (dB)", "median", "MoMi @16 kHz"]
    body = [
        [
            f"`{r['run']}`",
            str(r["preset"]),
            str(r["sample_rate_hz"]),
            f"{r['basis_window_ms']:.2f}/{r['basis_hop_ms']:.2f}",
            str(r["num_sources"]),
            f"{r['example_s']:g}",
            str(r["step"]),
            fmt(r["momi_db"]),
            fmt(r["momi_median_db"]),
            fmt(r["momi_16k_db"]),
        ]
        for r in rows
    ]
    return [
        "## Separator variants (Table 1)",
        "",
        f"MoMi on {rows[0]['moms']} held-out mixtures of mixtures per run.",
        "",
        *_table(header, body, "llrlrrrrrr"),
        "",
    ]


def _table3(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    header = ["Run", "Dataset", "Preset", "Members", "Taxonomy loss", "Low-pass", "Channel norm"]
    header += [METRIC_TITLES[k] for k in METRICS]
    body = [
        [
            f"`{r['run']}`",
            r["dataset"],
            str(r["preset"]),
            str(r["members"]),
            f"{r['taxonomy_weight']:g}",
            "yes" if r["lowpass"] else "no",
            "yes" if r["channel_norm"] else "no",
            *(fmt(r[k]) for k in METRICS),
        ]
        for r in rows
    ]
    return [
        "## Classifier ablations (Table 3, Keras, mix only)",
        "",
        *_table(header, body, "lllrlll" + "r" * len(METRICS)),
        "",
    ]


def write_reports(
    result: dict[str, Any], out_dir: Path, markdown: Path | None = None
) -> list[Path]:
    """``report.md``, ``results.json`` and the CSVs in ``out_dir``; also ``markdown``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.md"]
    atomic_write_text(paths[0], markdown_report(result, out_dir))
    paths.append(write_json(result, out_dir / "results.json"))
    paths += write_csvs(result, out_dir)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(markdown, markdown_report(result, out_dir, markdown.parent))
        paths.append(markdown)
    return paths
