"""``chorus-models calibrate-combination``: choose a bundle's channel-combination policy.

The policy (:class:`agent.detection.combine.CombinationPolicy`: which separated channels the
classifier hears, how much say they get, which near-silent ones are skipped) is chosen on the
**training-allowed** real audio only: the benchmark's recipe (clips with noise at four SNRs,
pairs, noise alone; :func:`modeltools.evaluation.real_benchmark.build_examples` with
``split="calibration"``) built from ``scikit-maad/``, ``birdvox-tests/``, ``librosa-data/``,
``bigsoundbank-cc0-animals/`` and the first halves of the noise files. The evaluation-only
folders that ``benchmark-separation`` scores are never read.

Every policy of a small grid is scored as the benchmark scores a mode: recall of the labelled
species at *matched false alarms* (false positives per example <= mix-only's at the default
threshold). The winner must also keep false positives at the default threshold within 1.5x
mix-only's; of equals, the one with fewer false positives at the default threshold wins (then
the simpler: the paper's max first). It is written into the
bundle's manifest under ``combination.<backend>`` with what it was chosen on, and the agent
applies it by default (``inference.combination: bundle``).

Registered in :mod:`modeltools.cli` as ``(add_calibrate, run_calibrate)``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shlex
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.detection.combine import PAPER_MAX, CombinationPolicy
from modeltools.evaluation.separate_classify import EvaluationError

log = logging.getLogger(__name__)

GRID_CHANNELS = ("sources", "remixes")
GRID_WEIGHTS = (1.0, 0.75, 0.5, 0.25)
GRID_OFFSETS = (0.0, -0.5, -1.0, -2.0)
GRID_GATES = (0.0, 0.05)
GRID_SUPPORT = (None, -4.0, -2.0, -1.0)  # min_mix_logit
MAX_FP_RATIO = 1.5  # false positives at the default threshold, relative to mix-only


def grid() -> list[CombinationPolicy]:
    """The candidate policies, simplest first (the paper's max is the first)."""
    out = [PAPER_MAX]
    for ch, sup, w, off, g in itertools.product(
        GRID_CHANNELS, GRID_SUPPORT, GRID_WEIGHTS, GRID_OFFSETS, GRID_GATES
    ):
        p = CombinationPolicy(
            channels=ch, weight=w, offset=off, gate_rms_ratio=g, min_mix_logit=sup
        )
        if p != PAPER_MAX:
            out.append(p)
    return out


def add_calibrate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``calibrate-combination``."""
    p = sub.add_parser(
        "calibrate-combination",
        help="choose a bundle's channel-combination policy for a classifier backend on "
        "training-allowed real audio (never the benchmark) and write it into the bundle",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder to calibrate")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write a calibrated copy of the bundle here")
    where.add_argument("--in-place", action="store_true", help="rewrite --bundle's manifest")
    p.add_argument(
        "--birdnet-dir",
        type=Path,
        required=True,
        help="folder with BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite and its labels (the "
        "classifier calibrated for, and the reference of the truth)",
    )
    p.add_argument("--shared-data", type=Path, default=None, help="(default: ../shared/data)")
    p.add_argument("--version", default=None, help="new bundle version (default: unchanged)")
    p.add_argument("--report", type=Path, default=None, help="also write every policy's score")
    p.add_argument("--threads", type=int, default=1, help="LiteRT threads (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="noise segment draw (default: 0)")
    return p


def score_policies(
    bank: Any, examples: list, threshold: float, policies: list[CombinationPolicy]
) -> list[dict[str, Any]]:
    """Recall at matched false alarms (and the default-threshold figures) of each policy."""
    from modeltools.evaluation import real_benchmark as rb
    from modeltools.evaluation import real_run as rr
    from modeltools.evaluation.real_report import CURVE_FLOOR

    sc = rr.scoring(bank, examples)
    truth, labelled = sc.truth, sc.labelled
    ref = rb.score_mode(
        sc.table("mix_only"), examples, truth, labelled, threshold, None, CURVE_FLOOR
    )
    budget = {k: v["default"]["fp_per_example"] for k, v in ref["conditions"].items()}
    rows = [{"policy": "mix_only", **_figures(ref)}]
    for p in policies:
        table = sc.table("mix_and_separated", p)
        res = rb.score_mode(table, examples, truth, labelled, threshold, budget, CURVE_FLOOR)
        rows.append({"policy": p.as_dict(), **_figures(res)})
    return rows


def _figures(res: dict[str, Any]) -> dict[str, Any]:
    a = res["conditions"]["all"]
    return {
        "recall_matched": a["matched"]["recall"],
        "recall_default": a["default"]["recall"],
        "fp_default": a["default"]["fp_per_example"],
        "precision_default": a["default"]["precision"],
        "recall_matched_snr-5": res["conditions"].get("snr-5", {}).get("matched", {}).get("recall"),
    }


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(mix-only row, winning row)``: the best recall at matched false alarms among policies
    within the false-positive bound; of equals, the one with the fewest false positives at the
    default threshold (precision first), then the earliest (simplest) in the grid."""
    mix, candidates = rows[0], rows[1:]
    bound = MAX_FP_RATIO * mix["fp_default"] + 1e-9
    ok = [r for r in candidates if r["fp_default"] <= bound] or candidates[:1]
    best = max(
        ok,
        key=lambda r: (round(r["recall_matched"], 6), -round(r["fp_default"], 6), -ok.index(r)),
    )
    return mix, best


def run_calibrate(args: argparse.Namespace) -> int:
    from agent.app import build_models
    from agent.models.manifest import MANIFEST_NAME, load_bundle, write_manifest
    from modeltools.evaluation import real_benchmark as rb
    from modeltools.evaluation import real_run as rr
    from modeltools.evaluation.real_report import _birdnet_files, _shared

    shared = _shared(args.shared_data)
    model, labels = _birdnet_files(args.birdnet_dir)
    bundle = load_bundle(args.bundle)  # refuse a broken bundle before any work
    if bundle.manifest.separator is None:
        raise EvaluationError(f"{args.bundle}: bundle has no separator: nothing to combine")
    config = rr.agent_config("birdnet", args.bundle, model, labels, args.threads)
    clips, examples = rb.build_examples(shared, seed=args.seed, split="calibration")
    log.info(
        "%d calibration clips, %d examples (training-allowed audio)", len(clips), len(examples)
    )
    rr.reference_truth(examples, model, labels, args.threads)
    models = build_models(config)
    bank = rr.channel_bank(models, examples, progress=sys.stderr.isatty())
    policies = grid()
    rows = score_policies(bank, examples, config.detection.threshold, policies)
    mix, best = choose(rows)
    chosen = CombinationPolicy(**best["policy"])
    calibration = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "chorus-models " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None,
        "audio": "training-allowed real audio (shared/docs/REAL-AUDIO.md): "
        + ", ".join(sorted({c.rel.split("/")[0] for c in clips})),
        "clips": len(clips),
        "examples": len(examples),
        "policies_tried": len(policies),
        "threshold": config.detection.threshold,
        "recall_matched": round(best["recall_matched"], 4),
        "mix_only_recall": round(mix["recall_matched"], 4),
        "fp_default": round(best["fp_default"], 4),
        "mix_only_fp_default": round(mix["fp_default"], 4),
    }
    target = args.bundle
    if args.out is not None:
        if args.out.exists():
            raise EvaluationError(f"--out {args.out}: already exists")
        shutil.copytree(args.bundle, args.out)
        target = args.out
    data = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    data.setdefault("combination", {})["birdnet"] = {
        **{k: v for k, v in chosen.as_dict().items() if k != "calibration"},
        "calibration": calibration,
    }
    if args.version:
        data["version"] = args.version
    write_manifest(target, data)
    if args.report:
        args.report.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(
        f"calibrate-combination: mix only: recall {mix['recall_matched']:.2f} at "
        f"{mix['fp_default']:.2f} FP/example; chosen {chosen.as_dict()}: recall at matched "
        f"false alarms {best['recall_matched']:.2f}, {best['fp_default']:.2f} FP/example at "
        f"the default threshold ({len(policies)} policies, {len(examples)} examples)"
    )
    print(f"calibrate-combination: wrote {target / MANIFEST_NAME}")
    return 0
