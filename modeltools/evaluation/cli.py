"""``chorus-models evaluate``: the separate + classify report (docs/evaluation.md).

Registered in :mod:`modeltools.cli` as ``(add_evaluate, run_evaluate)``.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modeltools.evaluation.separate_classify import EvaluationError

log = logging.getLogger(__name__)


def add_evaluate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="separate + classify report (Table 2: mix only / separation only / mix + "
        "separation) of a bundle, with plots",
    )
    p.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    p.add_argument(
        "--data", type=Path, nargs="+", required=True, help="corpus folder(s); one table each"
    )
    p.add_argument("--out", type=Path, required=True, help="report folder (created)")
    p.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the Markdown report here (image links relative to it)",
    )
    p.add_argument("--split", default="test", help="segments of this split (default: test)")
    p.add_argument("--limit", type=int, default=None, help="at most N segments per dataset")
    p.add_argument("--threads", type=int, default=0, help="LiteRT/TensorFlow threads (0: all CPUs)")
    keras = p.add_argument_group("Keras runs (optional, same three variants)")
    keras.add_argument(
        "--classifier", type=Path, nargs="+", default=[], help="classifier run(s) / member parent"
    )
    keras.add_argument("--separator", type=Path, default=None, help="separator run folder")
    keras.add_argument("--weights", choices=("best", "final"), default="best")
    tables = p.add_argument_group("Tables 1 and 3 (optional)")
    tables.add_argument(
        "--separator-variant",
        type=Path,
        action="append",
        default=[],
        metavar="RUN",
        help="separator run for Table 1 (MoMi at its rate and at 16 kHz; repeatable)",
    )
    tables.add_argument("--moms", type=int, default=32, help="MoMs per Table-1 run (default: 32)")
    tables.add_argument(
        "--ablation",
        type=Path,
        action="append",
        default=[],
        metavar="RUN",
        help="classifier run (or member parent) for Table 3, mix only (repeatable)",
    )
    real = p.add_argument_group("real recordings")
    real.add_argument(
        "--real", action="store_true", help="also evaluate on the shared real recordings"
    )
    real.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="their folder (default: $CHORUS_SHARED_DATA or ../shared/data next to the repo)",
    )
    real.add_argument(
        "--birdnet-min-confidence",
        type=float,
        default=0.5,
        help="BirdNET pseudo-label threshold (default: 0.5)",
    )
    plots = p.add_argument_group("figures")
    plots.add_argument(
        "--figures", type=int, default=4, help="Figure-1 segments (default: 4; 0: none)"
    )
    plots.add_argument("--no-plots", action="store_true", help="no PNG figures at all")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise EvaluationError(f"--limit must be >= 1, got {args.limit}")
    if args.figures < 0 or args.moms < 1 or args.threads < 0:
        raise EvaluationError("--figures and --threads must be >= 0 and --moms >= 1")
    if not 0.0 <= args.birdnet_min_confidence <= 1.0:
        raise EvaluationError("--birdnet-min-confidence must be in [0, 1]")
    if args.separator is not None and not args.classifier:
        raise EvaluationError("--separator (a Keras run) needs --classifier runs to score it")
    if args.shared_data is not None and not args.shared_data.is_dir():
        raise EvaluationError(f"--shared-data {args.shared_data}: no such folder")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this report (options that differ from the defaults)."""
    parts = ["chorus-models", "evaluate", "--bundle", str(args.bundle), "--data"]
    parts += [str(d) for d in args.data] + ["--out", str(args.out)]
    if args.markdown:
        parts += ["--markdown", str(args.markdown)]
    if args.split != "test":
        parts += ["--split", args.split]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    if args.classifier:
        parts += ["--classifier", *map(str, args.classifier)]
    if args.separator:
        parts += ["--separator", str(args.separator)]
    if args.weights != "best":
        parts += ["--weights", args.weights]
    for run in args.separator_variant:
        parts += ["--separator-variant", str(run)]
    if args.separator_variant and args.moms != 32:
        parts += ["--moms", str(args.moms)]
    for run in args.ablation:
        parts += ["--ablation", str(run)]
    if args.real:
        parts.append("--real")
        if args.shared_data:
            parts += ["--shared-data", str(args.shared_data)]
        if args.birdnet_min_confidence != 0.5:
            parts += ["--birdnet-min-confidence", f"{args.birdnet_min_confidence:g}"]
    if args.no_plots:
        parts.append("--no-plots")
    elif args.figures != 4:
        parts += ["--figures", str(args.figures)]
    return shlex.join(parts)


def _real_sets(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    from modeltools.data.noise import default_shared_data_dir
    from modeltools.evaluation.real import real_sets

    if not args.real:
        return [], {"status": "not requested"}
    shared = args.shared_data or default_shared_data_dir()
    if shared is None:
        log.warning("evaluate: --real: no shared data folder found; real audio not evaluated")
        return [], {
            "status": "absent",
            "message": "no shared data folder ($CHORUS_SHARED_DATA or ../shared/data); "
            "real audio not evaluated",
        }
    sets = real_sets(shared, args.birdnet_min_confidence, args.limit)
    return sets, {"status": "found", "path": str(shared), "sets": [s.name for s in sets]}


def _tf_threads(args: argparse.Namespace) -> None:
    """Limit TensorFlow's threads before it runs any op (Keras runs need it; Figure 1's PCEN
    uses it when it is installed)."""
    keras = bool(args.classifier or args.separator_variant or args.ablation)
    if not (keras or (not args.no_plots and args.figures > 0)):
        return
    try:
        from modeltools.classifier.train import set_threads

        set_threads(args.threads)
    except ModuleNotFoundError:
        if keras:
            raise
        # Figure 1 is skipped then (figures._figure1 says so); the report does not need TF.


def _figures(ev: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        log.warning("evaluate: matplotlib is not installed (train extra): no figures")
        return []
    from modeltools.evaluation.figures import make_figures

    return make_figures(ev, args.out, args.figures)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation and write the reports; 0 on success."""
    import os

    from modeltools.evaluation.report import write_reports
    from modeltools.evaluation.separate_classify import (
        classifier_ablations,
        corpus_sets,
        evaluate,
        separator_variants,
    )

    _check(args)
    threads = args.threads or os.cpu_count() or 1
    _tf_threads(args)
    progress = sys.stderr.isatty()
    corpus = corpus_sets(args.data, args.split, args.limit)
    real, real_info = _real_sets(args)
    ev = evaluate(
        args.bundle,
        corpus,
        real,
        classifier_runs=args.classifier,
        separator_run=args.separator,
        weights=args.weights,
        threads=threads,
        progress=progress,
    )
    result = {
        "command": _command(args),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "split": args.split,
        "limit": args.limit,
        **ev.result,
        "real_data": real_info,
    }
    if args.separator_variant:
        result["separator_variants"] = separator_variants(
            args.separator_variant, args.data, args.split, args.moms
        )
    if args.ablation:
        result["classifier_ablations"] = classifier_ablations(
            args.ablation, corpus, args.weights, progress
        )
    ev.result = result
    if not args.no_plots:
        result["figures"] = _figures(ev, args)
    paths = write_reports(result, args.out, args.markdown)
    _print_summary(result)
    print(f"evaluate: wrote {', '.join(str(p) for p in paths[:1])} and {len(paths) - 1} more")
    return 0


def _print_summary(result: dict[str, Any]) -> None:
    from modeltools.evaluation.report import fmt

    for ds in result["datasets"]:
        weak = " [WEAK LABELS: BirdNET pseudo-labels]" if ds["labels"] == "weak" else ""
        print(f"{ds['name']}{weak}: {ds['segments']} segments")
        if ds["status"] == "not_scored":
            print(f"  not scored: {ds['message']}")
            continue
        print(f"  {'model':<16} {'variant':<17} {'CMAP':>6} {'lwlrap':>6} {'d′':>6} {'top-1':>6}")
        for r in ds["results"]:
            vals = " ".join(f"{fmt(r[k]):>6}" for k in ("cmap", "lwlrap", "dprime", "top1"))
            print(f"  {r['source']:<16} {r['variant_title']:<17} {vals}")
    if any(math.isnan(r["cmap"]) for ds in result["datasets"] for r in ds["results"]):
        print("  (n/a: no species with >= 5 positives, or no labelled segment)")
