"""``chorus-models export`` and ``chorus-models parity`` (registered in :mod:`modeltools.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modeltools.argtypes import comma_list
from modeltools.export.convert import FLAVOURS, ExportError
from modeltools.export.parity import DEFAULT_MAX_CMAP_LOSS, DEFAULT_MAX_MOMI_LOSS_DB, Tolerances

_flavours = comma_list(FLAVOURS, "flavour")


def _add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="corpus folder for calibration and evaluation (repeatable)",
    )
    p.add_argument("--eval-moms", type=int, default=32, help="test MoMs for MoMi (default: 32)")
    p.add_argument(
        "--eval-segments",
        type=int,
        default=120,
        help="labelled test segments for CMAP (default: 120)",
    )
    p.add_argument(
        "--max-momi-loss",
        type=float,
        default=DEFAULT_MAX_MOMI_LOSS_DB,
        help=f"dB (default: {DEFAULT_MAX_MOMI_LOSS_DB})",
    )
    p.add_argument(
        "--max-cmap-loss",
        type=float,
        default=DEFAULT_MAX_CMAP_LOSS,
        help=f"(default: {DEFAULT_MAX_CMAP_LOSS})",
    )
    p.add_argument("--threads", type=int, default=0, help="TF threads (0: default)")


def add_export(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="convert trained runs to TFLite flavours, gate on parity, write a model bundle",
    )
    p.add_argument("--separator", type=Path, default=None, help="train-separator run folder")
    p.add_argument(
        "--classifier",
        type=Path,
        nargs="+",
        required=True,
        help="train-classifier run folder(s) or a folder of member-k runs",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument(
        "--flavours",
        type=_flavours,
        default=FLAVOURS,
        help=f"comma list to convert and compare (default: {','.join(FLAVOURS)})",
    )
    p.add_argument(
        "--separator-flavour",
        default="int8",
        choices=FLAVOURS,
        help="flavour shipped in the bundle (default: int8)",
    )
    p.add_argument(
        "--classifier-flavour",
        default="int8",
        choices=FLAVOURS,
        help="flavour shipped in the bundle (default: int8)",
    )
    p.add_argument(
        "--input-peak",
        type=float,
        default=0.5,
        help="separator per-window gain: scale each window to this peak (0: off; default 0.5)",
    )
    p.add_argument(
        "--representative", type=int, default=32, help="calibration windows (default: 32)"
    )
    p.add_argument(
        "--weights",
        choices=("best", "final"),
        default="best",
        help="classifier weights (default: best validation CMAP)",
    )
    p.add_argument("--name", default="chorus-edge", help="bundle name (default: chorus-edge)")
    p.add_argument("--version", default="1.0.0", help="bundle semantic version (default: 1.0.0)")
    p.add_argument("--description", default="", help="free text for the manifest")
    p.add_argument(
        "--flavours-dir",
        type=Path,
        default=None,
        help="also write every flavour's .tflite here (for benchmarks)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    _add_gate_options(p)
    return p


def run_export(args: argparse.Namespace) -> int:
    from modeltools.classifier.train import set_threads
    from modeltools.export.bundle import ExportOptions, export
    from modeltools.export.parity import report_markdown

    set_threads(args.threads)
    if args.input_peak is not None and not 0 <= args.input_peak <= 1:
        raise ExportError(f"--input-peak must be in [0, 1], got {args.input_peak}")
    opts = ExportOptions(
        separator_run=args.separator,
        classifier_runs=list(args.classifier),
        data=list(args.data),
        out=args.out,
        flavours=args.flavours,
        separator_flavour=args.separator_flavour,
        classifier_flavour=args.classifier_flavour,
        input_peak=args.input_peak or None,
        representative=args.representative,
        eval_moms=args.eval_moms,
        eval_segments=args.eval_segments,
        tolerances=Tolerances(args.max_momi_loss, args.max_cmap_loss),
        name=args.name,
        version=args.version,
        description=args.description,
        flavours_dir=args.flavours_dir,
        force=args.force,
        which=args.weights,
    )
    report = export(opts)
    print(report_markdown(report))
    print(f"export: wrote {args.out}")
    return 0


def add_parity(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "parity", help="re-check a bundle's TFLite models against the Keras runs they came from"
    )
    p.add_argument("bundle", type=Path, help="bundle folder written by export")
    p.add_argument(
        "--separator",
        type=Path,
        default=None,
        help="separator run (default: the manifest's provenance)",
    )
    p.add_argument(
        "--classifier",
        type=Path,
        nargs="+",
        default=None,
        help="classifier runs (default: the manifest's provenance)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    _add_gate_options(p)
    return p


def run_parity(args: argparse.Namespace) -> int:
    from modeltools.classifier.train import set_threads
    from modeltools.export.check import bundle_parity
    from modeltools.export.parity import report_markdown

    set_threads(args.threads)
    report = bundle_parity(
        args.bundle,
        data=list(args.data),
        separator_run=args.separator,
        classifier_runs=args.classifier,
        eval_moms=args.eval_moms,
        eval_segments=args.eval_segments,
        tolerances=Tolerances(args.max_momi_loss, args.max_cmap_loss),
    )
    print(report_markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if not report["passed"]:
        print(f"parity: {args.bundle}: FAILED (see the tables above)")
        return 2
    print(f"parity: {args.bundle}: passed")
    return 0
