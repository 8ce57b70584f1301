"""``chorus-models benchmark-separation``: the real-audio separate + classify benchmark.

Implements shared/docs/REAL-AUDIO.md (see :mod:`modeltools.evaluation.real_benchmark`) for any
bundle and classifier backend (the bundle's own, or a BirdNET V2.4 file), every inference mode
plus the oracle row, and writes ``benchmark.json``, ``benchmark.md`` (or ``--markdown``, e.g.
``docs/results-real.md``) and ``recall_vs_fp.png`` (recall against false positives per example,
one curve per mode). The reference classifier of the protocol's truth is always BirdNET V2.4.

Registered in :mod:`modeltools.cli` as ``(add_benchmark, run_benchmark)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.detection.combine import channel_names
from modeltools.evaluation.separate_classify import EvaluationError

log = logging.getLogger(__name__)

MODE_TITLES = {
    "mix_only": "mix only",
    "separated_only": "separation only",
    "mix_and_separated": "mix + separation (the bundle's policy, the default)",
    "paper_max": "mix + separation (max, the paper's rule)",
    "oracle": "oracle: mix + true components (ceiling)",
}
CURVE_FLOOR = 0.01  # scores below this are never reported (the "low threshold" of step 4)
ENERGY_GATES = (0.02, 0.05, 0.1, 0.2, 0.5)  # a source "carries energy" above this x mix RMS


def add_benchmark(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``benchmark-separation``."""
    p = sub.add_parser(
        "benchmark-separation",
        help="real-audio separate + classify benchmark (shared/docs/REAL-AUDIO.md): recall at "
        "matched false alarms per inference mode, with an oracle row",
    )
    p.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="the shared real audio (default: $CHORUS_SHARED_DATA or ../shared/data)",
    )
    p.add_argument(
        "--birdnet-dir",
        type=Path,
        required=True,
        help="folder with BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite and its labels file (the "
        "reference classifier; also the classifier under test with --backend birdnet)",
    )
    p.add_argument(
        "--backend",
        choices=("birdnet", "chorus"),
        default="birdnet",
        help="classifier under test: a BirdNET V2.4 file or the bundle's own (default: birdnet)",
    )
    p.add_argument("--bundle", type=Path, default=None, help="bundle (default: the shipped one)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="an agent config to start from (its detection "
        "threshold is the default threshold of the table)",
    )
    p.add_argument("--out", type=Path, required=True, help="report folder (created)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the Markdown here")
    p.add_argument(
        "--momi",
        action="store_true",
        help="also MoMi of the separator on MoMs of evaluation-only recordings (needs TensorFlow)",
    )
    p.add_argument("--threads", type=int, default=1, help="LiteRT threads (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="noise segment draw (default: 0)")
    return p


def _birdnet_files(folder: Path) -> tuple[Path, Path]:
    model = folder / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
    labels = folder / "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
    missing = [p.name for p in (model, labels) if not p.is_file()]
    if missing:
        raise EvaluationError(f"--birdnet-dir {folder}: missing {', '.join(missing)}")
    return model, labels


def _shared(arg: Path | None) -> Path:
    from modeltools.data.noise import default_shared_data_dir

    shared = arg or default_shared_data_dir()
    if shared is None or not (Path(shared) / "MANIFEST.csv").is_file():
        raise EvaluationError(
            f"{shared or '../shared/data'}: not the shared real audio (no MANIFEST.csv); "
            "pass --shared-data"
        )
    return Path(shared)


def run_benchmark(args: argparse.Namespace) -> int:
    from agent.app import build_models
    from agent.config import load_config
    from modeltools.evaluation import real_benchmark as rb
    from modeltools.evaluation import real_run as rr

    shared = _shared(args.shared_data)
    model, labels = _birdnet_files(args.birdnet_dir)
    base = load_config(args.config) if args.config else None
    config = rr.agent_config(args.backend, args.bundle, model, labels, args.threads, base)
    clips, examples = rb.build_examples(shared, seed=args.seed)
    log.info("%d clips, %d examples; reference truth with BirdNET V2.4", len(clips), len(examples))
    rr.reference_truth(examples, model, labels, args.threads)
    models = build_models(config)
    bank = rr.channel_bank(models, examples, progress=sys.stderr.isatty())
    report = benchmark_report(bank, examples, clips, config.detection.threshold, models.combination)
    report["bundle"] = {
        "name": models.bundle.manifest.name,
        "version": models.bundle.manifest.version,
        "path": str(models.bundle.path),
    }
    report["backend"] = args.backend
    report["command"] = "chorus-models " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None
    report["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    if args.momi and models.separator is not None:
        from modeltools.evaluation.real_momi import real_momi

        report["momi"] = real_momi(models, clips, shared, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    png = plot_curves(report, args.out / "recall_vs_fp.png")
    md_path = args.markdown or args.out / "benchmark.md"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    rel_png = os.path.relpath(png, md_path.parent) if png else None
    md_path.write_text(markdown(report, rel_png), encoding="utf-8")
    print(summary_lines(report))
    print(f"benchmark-separation: wrote {args.out / 'benchmark.json'}, {md_path}")
    return 0


def benchmark_report(
    bank: Any, examples: list, clips: list, threshold: float, policy: Any = None
) -> dict[str, Any]:
    """Score every mode of ``bank`` (a :class:`~modeltools.evaluation.real_run.ChannelBank`)
    under the combination ``policy`` (the agent's; default the paper's max), plus the paper's
    max when the policy differs, and the oracle."""
    from agent.detection.combine import PAPER_MAX
    from modeltools.evaluation import real_benchmark as rb
    from modeltools.evaluation import real_run as rr

    policy = policy or PAPER_MAX
    sc = rr.scoring(bank, examples)
    truth, labelled = sc.truth, sc.labelled
    modes = [m for m in rr.PRODUCT_MODES if m == "mix_only" or bank.num_sources]
    if bank.num_sources and not policy.is_paper_max:
        modes.append(rr.PAPER)
    modes.append(rr.ORACLE)
    tables = {
        m: sc.table("mix_and_separated", PAPER_MAX) if m == rr.PAPER else sc.table(m, policy)
        for m in modes
    }
    ref = rb.score_mode(tables["mix_only"], examples, truth, labelled, threshold, None, CURVE_FLOOR)
    budget = {k: v["default"]["fp_per_example"] for k, v in ref["conditions"].items()}
    results = {}
    for m in modes:
        res = (
            ref
            if m == "mix_only"
            else rb.score_mode(tables[m], examples, truth, labelled, threshold, budget, CURVE_FLOOR)
        )
        res["curve"] = _vertices(rb.curve(tables[m].scores, truth, labelled, CURVE_FLOOR))
        kind = "sources" if m in (rr.PAPER, rr.ORACLE) else policy.channels
        names = channel_names(bank.num_sources, kind)
        if m == rr.ORACLE:
            names = ["mix"] + [f"true{j}" for j in range(max(len(x.components) for x in examples))]
        res["winners"] = _winner_counts(tables[m], truth, threshold, names)
        results[m] = res
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.condition] = counts.get(ex.condition, 0) + 1
    energy = {}
    if bank.num_sources:
        ratios = bank.energy_ratios()  # (E, M)
        energy = {
            f"{g:g}": round(float(np.mean(np.sum(ratios >= g, axis=1))), 2) for g in ENERGY_GATES
        }
    return {
        "protocol": "shared/docs/REAL-AUDIO.md",
        "channels_with_energy": energy,
        "threshold": threshold,
        "classifier": bank.classifier.name,
        "policy": policy.as_dict(),
        "clips": [c.__dict__ for c in clips],
        "examples": counts,
        "labelled_total": int(labelled.sum()),
        "modes": results,
    }


def _vertices(points: list) -> list[tuple[float, float, float]]:
    """``(threshold, recall, FP per example)`` where the step curve turns: the highest threshold
    (fewest false positives) of each recall level, thresholds descending, plus the last point,
    so the JSON stays small."""
    out: list[tuple[float, float, float]] = []
    for i, o in enumerate(points):
        if i == 0 or o.recall != points[i - 1].recall or i == len(points) - 1:
            out.append((round(o.threshold, 5), round(o.recall, 4), round(o.fp_per_example, 4)))
    return out


def _winner_counts(table: Any, truth: np.ndarray, threshold: float, names: list[str]) -> dict:
    """Detections at the default threshold per winning channel: true and false."""
    det = table.scores >= threshold
    out = {}
    for k, name in enumerate(names):
        won = det & (table.winners == k)
        if won.any():
            out[name] = {"true": int(np.sum(won & truth)), "false": int(np.sum(won & ~truth))}
    return out


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def summary_lines(report: dict[str, Any]) -> str:
    lines = []
    for m, res in report["modes"].items():
        a = res["conditions"]["all"]
        lines.append(
            f"{MODE_TITLES.get(m, m):42s} recall {_f(a['default']['recall'])}  FP/example "
            f"{_f(a['default']['fp_per_example'])}  precision {_f(a['default']['precision'])}  "
            f"recall at matched false alarms {_f(a['matched']['recall'])}"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any], png: str | None) -> str:
    """The report as Markdown (what docs/results-real.md holds)."""
    from modeltools.evaluation.real_benchmark import CONDITIONS

    t = report["threshold"]
    bundle = report.get("bundle", {})
    ex = report["examples"]
    out = [
        "# Real-audio separate + classify benchmark",
        "",
        f"Protocol: `{report['protocol']}` (binding). Generated {report.get('date', '')} by:",
        "",
        "```sh",
        str(report.get("command") or "chorus-models benchmark-separation ..."),
        "```",
        "",
        f"- Bundle: **{bundle.get('name')} {bundle.get('version')}**; classifier under test: "
        f"**{report['classifier']}** (backend `{report.get('backend')}`); the truth's reference "
        "classifier is BirdNET V2.4 on the clean clips (>= 0.3) plus the labelled species.",
        f"- {len(report['clips'])} clips from the evaluation-only folders; "
        f"{sum(ex.values())} five-second examples: "
        + ", ".join(f"{k} {v}" for k, v in ex.items())
        + f"; {report['labelled_total']} labelled species occurrences.",
        f"- Default threshold {t:g}. *Matched false alarms*: for each mode the lowest threshold "
        "whose false positives per example are <= mix-only's at the default threshold (per "
        "condition: against mix-only's on that condition).",
        "",
        "| mode | recall @default | FP / example @default | precision @default | recall at "
        "matched false alarms (threshold) |",
        "|---|---|---|---|---|",
    ]
    for m, res in report["modes"].items():
        a = res["conditions"]["all"]
        d, mt = a["default"], a["matched"]
        out.append(
            f"| {MODE_TITLES.get(m, m)} | {_f(d['recall'])} | {_f(d['fp_per_example'])} | "
            f"{_f(d['precision'])} | **{_f(mt['recall'])}** ({_f(mt['threshold'], 3)}) |"
        )
    out += [
        "",
        "Per condition: recall @default / at matched false alarms; FP per example @default.",
        "",
    ]
    conds = [c for c in CONDITIONS if c in report["modes"]["mix_only"]["conditions"]]
    out.append("| mode | " + " | ".join(conds) + " |")
    out.append("|---|" + "---|" * len(conds))
    for m, res in report["modes"].items():
        cells = []
        for c in conds:
            r = res["conditions"][c]
            if c == "noise":
                cells.append(f"FP {_f(r['default']['fp_per_example'])}")
            else:
                cells.append(
                    f"{_f(r['default']['recall'])} / {_f(r['matched']['recall'])}; "
                    f"FP {_f(r['default']['fp_per_example'])}"
                )
        out.append(f"| {MODE_TITLES.get(m, m)} | " + " | ".join(cells) + " |")
    out += ["", "Detections at the default threshold by winning channel (true / false):", ""]
    for m, res in report["modes"].items():
        w = ", ".join(f"{k} {v['true']}/{v['false']}" for k, v in res["winners"].items())
        out.append(f"- {MODE_TITLES.get(m, m)}: {w or 'none'}")
    if report.get("channels_with_energy"):
        e = report["channels_with_energy"]
        out += [
            "",
            "Over-separation: separated channels per example whose RMS is at least a fraction "
            "of the mix's — " + ", ".join(f">= {k}: {v}" for k, v in e.items()) + ".",
        ]
    pol = report.get("policy")
    if pol:
        shown = json.dumps({k: v for k, v in pol.items() if k != "calibration"})
        where = pol.get("calibration", {}).get("audio")
        out += [
            "",
            f"The bundle's combination policy for this backend: `{shown}`"
            + (f" (calibrated on {where})." if where else " (no calibration recorded)."),
        ]
    if "momi" in report:
        mo = report["momi"]
        out += [
            "",
            "## Separator MoMi on real evaluation-only recordings",
            "",
            f"{mo['moms']} MoMs ({mo['what']}): mean **{_f(mo['mean_db'])} dB**, median "
            f"{_f(mo['median_db'])} dB, {mo['collapsed']} collapsed. For comparison: the "
            "paper reports 10.5 dB on Xeno-Canto; our synthetic test MoMs: docs/separation.md.",
        ]
    if png:
        out += ["", f"![recall against false positives per example]({png})"]
    out += [
        "",
        "Clips: "
        + "; ".join(
            f"{c['rel']} @ {c['chunk_start_s']:g} s ({c['common_name']})" for c in report["clips"]
        ),
        "",
    ]
    return "\n".join(out)


def plot_curves(report: dict[str, Any], path: Path) -> Path | None:
    """Recall against false positives per example, one curve per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        log.warning("matplotlib not installed: no %s", path)
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for m, res in report["modes"].items():
        pts = res["curve"]
        if not pts:
            continue
        fp = [p[2] for p in pts]
        rec = [p[1] for p in pts]
        line = ax.step(fp, rec, where="post", label=MODE_TITLES.get(m, m))[0]
        d = res["conditions"]["all"]["default"]
        ax.plot([d["fp_per_example"]], [d["recall"]], "o", color=line.get_color())
    budget = report["modes"]["mix_only"]["conditions"]["all"]["default"]["fp_per_example"]
    ax.axvline(budget, color="#999999", ls="--", lw=1, label="mix-only FP at default threshold")
    ax.set_xlabel("false positives per example")
    ax.set_ylabel("recall of the labelled species")
    ax.set_xlim(0, max(1.0, 2.5 * budget))
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Real-audio benchmark (dots: default threshold)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
