"""``chorus-models``: the model tools' command line.

One function per subcommand: ``_add_<name>(subparsers)`` declares it, ``_run_<name>(args)`` does
it and returns an exit status. To add a subcommand, write both and list them in ``_COMMANDS``.
Errors a user can act on become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.errors import ChorusError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEMO_BUNDLE_DIR = REPO_ROOT / "agent" / "bundles" / "demo"
DEFAULT_TEST_MODELS_DIR = REPO_ROOT / "tests" / "data" / "models"


def _add_build_demo_bundle(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build-demo-bundle", help="build the hand-set demo model bundle (separator + 2 classifiers)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DEMO_BUNDLE_DIR,
        help="bundle folder to (re)write (default: %(default)s)",
    )
    return p


def _run_build_demo_bundle(args: argparse.Namespace) -> int:
    from modeltools.packaging.demo_bundle import build_demo_bundle

    out = build_demo_bundle(args.out)
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        log.info("  %-28s %9d bytes", f.relative_to(out).as_posix(), f.stat().st_size)
    return 0


def _add_build_test_models(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build-test-models", help="write the tiny .tflite models the runtime tests use"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_TEST_MODELS_DIR,
        help="folder to write them to (default: %(default)s)",
    )
    return p


def _run_build_test_models(args: argparse.Namespace) -> int:
    from modeltools.packaging.demo_bundle import build_test_models

    build_test_models(args.out)
    return 0


# ---------------------------------------------------------------------------------------------
# Data commands (modeltools.data; docs/data.md)


def _add_synth(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "synth",
        help="write a synthetic corpus: focal recordings, annotated soundscapes, noise, taxonomy",
    )
    p.add_argument("--out", type=Path, required=True, help="corpus folder (created/resumed)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    p.add_argument("--species", type=int, default=24, help="target species (default: 24)")
    p.add_argument(
        "--other-species", type=int, default=6, help="out-of-set species (default: %(default)s)"
    )
    p.add_argument(
        "--focal-per-species",
        type=int,
        nargs=2,
        default=(12, 3),
        metavar=("TRAIN", "VAL"),
        help="focal recordings per target species (default: 12 3)",
    )
    p.add_argument(
        "--focal-per-other",
        type=int,
        nargs=2,
        default=(4, 1),
        metavar=("TRAIN", "VAL"),
        help="focal recordings per out-of-set species (default: 4 1)",
    )
    p.add_argument(
        "--soundscapes",
        type=int,
        nargs=3,
        default=(24, 12, 24),
        metavar=("TRAIN", "VAL", "TEST"),
        help="annotated soundscapes per split (default: 24 12 24)",
    )
    p.add_argument(
        "--soundscape-s", type=float, default=60.0, help="soundscape length (default: 60 s)"
    )
    p.add_argument(
        "--noise-clips",
        type=int,
        nargs=2,
        default=(12, 6),
        metavar=("TRAIN", "TEST"),
        help="30-s synthetic noise clips per noise pool (default: 12 6)",
    )
    p.add_argument(
        "--noise-clip-s", type=float, default=30.0, help="length of each noise clip (default: 30)"
    )
    p.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="folder with the real noise recordings (default: $CHORUS_SHARED_DATA or "
        "../shared/data next to the repository)",
    )
    p.add_argument("--no-real-noise", action="store_true", help="synthetic noise beds only")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument(
        "--no-activity", action="store_true", help="skip writing windows.csv (activity detection)"
    )
    p.add_argument(
        "--species-plots",
        type=Path,
        default=None,
        help="also write one spectrogram PNG per species",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="regenerate a corpus made with other settings"
    )
    return p


def _run_synth(args: argparse.Namespace) -> int:
    from modeltools.data.corpus import CorpusConfig, write_corpus
    from modeltools.data.dataset import read_dataset
    from modeltools.data.recordings import SoundscapeConfig

    cfg = CorpusConfig(
        seed=args.seed,
        n_species=args.species,
        n_other=args.other_species,
        focal_per_species=dict(zip(("train", "val"), args.focal_per_species, strict=True)),
        focal_per_other=dict(zip(("train", "val"), args.focal_per_other, strict=True)),
        soundscapes=dict(zip(("train", "val", "test"), args.soundscapes, strict=True)),
        noise_clips=dict(zip(("train", "test"), args.noise_clips, strict=True)),
        noise_clip_s=args.noise_clip_s,
        soundscape=SoundscapeConfig(duration_s=args.soundscape_s),
    )
    if args.shared_data is not None and not args.shared_data.is_dir():
        raise ChorusError(f"synth: --shared-data {args.shared_data}: no such folder")
    shared = None if args.no_real_noise else (args.shared_data or "auto")
    root = write_corpus(
        args.out,
        cfg,
        shared_data_dir=shared,
        workers=args.workers,
        activity=not args.no_activity,
        overwrite=args.overwrite,
    )
    ds = read_dataset(root)
    if args.species_plots:
        from modeltools.data.plots import plot_species
        from modeltools.data.species import make_world

        plot_species(make_world(cfg.n_species, cfg.n_other, cfg.seed), args.species_plots)
    hours = sum(r.duration_s for r in ds.recordings) / 3600
    size_mb = sum((root / r.path).stat().st_size for r in ds.recordings) / 1e6
    log.info(
        "synth: %s: %d recordings, %.2f h, %.0f MB, %d soundscape segments, %d species",
        root,
        len(ds.recordings),
        hours,
        size_mb,
        len(ds.segments),
        len(ds.taxonomy),
    )
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modeltools.data.ingest import LAYOUTS

    p = sub.add_parser(
        "ingest", help="decode/resample a folder of recordings into a dataset (manifest + WAV)"
    )
    p.add_argument("source", type=Path, help="folder with the recordings")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (created/resumed)")
    p.add_argument(
        "--metadata",
        type=Path,
        default=None,
        help="Xeno-Canto style metadata CSV (default: SOURCE/metadata.csv if present)",
    )
    p.add_argument(
        "--taxonomy", type=Path, default=None, help="label table every label must map to"
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="how labels are given")
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "hash"),
        default="train",
        help="split of every file, or 'hash' (stable by path; see --val-fraction)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument(
        "--kind",
        choices=("unlabelled", "noise"),
        default="unlabelled",
        help="kind of files that have no labels (default: %(default)s)",
    )
    p.add_argument("--name", default="", help="dataset name (default: the folder name)")
    return p


def _run_ingest(args: argparse.Namespace) -> int:
    from modeltools.data.ingest import IngestOptions, ingest

    res = ingest(
        args.source,
        args.out,
        IngestOptions(
            layout=args.layout,
            metadata=args.metadata,
            taxonomy=args.taxonomy,
            split=args.split,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            unlabelled_kind=args.kind,
            name=args.name,
        ),
    )
    kinds: dict[str, int] = {}
    for r in res.recordings:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    hours = sum(r.duration_s for r in res.recordings) / 3600
    print(
        f"ingest: {res.skips.summary(res.written, 'recordings')}; "
        f"{', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; {hours:.2f} h -> {res.root}"
    )
    return 0


def _add_activity(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "activity",
        help="find training windows (the paper's peak finder) in a dataset or audio files",
    )
    p.add_argument(
        "inputs", type=Path, nargs="+", help="a dataset folder, or audio files / folders"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="windows CSV (default: DATASET/windows.csv)"
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["focal"],
        help="dataset recording kinds to process (default: focal)",
    )
    p.add_argument("--interval-s", type=float, default=6.0, help="window length (default: 6)")
    p.add_argument("--max-windows", type=int, default=5, help="per recording (default: 5)")
    p.add_argument(
        "--check-birdnet",
        type=Path,
        default=None,
        help="BirdNET detections CSV to compare the windows with",
    )
    p.add_argument(
        "--check-species", default="", help="species (scientific or common name) to compare"
    )
    p.add_argument("--check-min-confidence", type=float, default=0.5)
    return p


def _run_activity(args: argparse.Namespace) -> int:
    from modeltools.data.dataset import MANIFEST_NAME, read_dataset
    from modeltools.data.windows import windows_for_dataset, windows_for_files

    first = args.inputs[0]
    if len(args.inputs) == 1 and (first / MANIFEST_NAME).is_file():
        ds = read_dataset(first)
        windows, skips = windows_for_dataset(
            ds, args.kinds, args.interval_s, args.max_windows, args.out
        )
        out = args.out or first / "windows.csv"
        sr = ds.sample_rate_hz
    else:
        if args.out is None:
            raise ChorusError("activity: --out is required for loose audio files")
        windows, skips = windows_for_files(
            args.inputs, args.out, interval_s=args.interval_s, max_windows=args.max_windows
        )
        out, sr = args.out, 22050
    n_recs = len({w.path for w in windows})
    print(f"activity: {len(windows)} windows from {n_recs} recordings, {len(skips)} skipped")
    print(f"activity: wrote {out}")
    if args.check_birdnet:
        from modeltools.data.agreement import compare, read_detections

        if not args.check_species:
            raise ChorusError("activity: --check-species is needed with --check-birdnet")
        det = read_detections(args.check_birdnet, args.check_species, args.check_min_confidence)
        res = compare(windows, det, sr)
        for name, (agree, total) in sorted(res.per_file.items()):
            print(f"  {name}: {agree}/{total} windows agree")
        print(f"activity vs BirdNET ({args.check_species}): {res.summary()}")
    return 0


def _add_fetch_xc(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "fetch-xc", help="download Xeno-Canto recordings + metadata.csv (API v3, key required)"
    )
    p.add_argument(
        "--species", nargs="+", default=[], help='scientific names, e.g. "Vermivora chrysoptera"'
    )
    p.add_argument(
        "--taxonomy",
        type=Path,
        default=None,
        help="or: fetch every target species of this taxonomy CSV",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("XC_API_KEY", ""),
        help="Xeno-Canto API key (default: $XC_API_KEY)",
    )
    p.add_argument("--out", type=Path, required=True, help="download folder (resumable)")
    p.add_argument("--max-per-species", type=int, default=250)
    p.add_argument(
        "--min-quality", default="C", choices=("A", "B", "C", "D", "E"), help="lowest XC rating"
    )
    p.add_argument("--query", default="", help="extra XC search tags, e.g. 'type:song'")
    p.add_argument(
        "--rate-limit-s", type=float, default=1.0, help="seconds between requests (default: 1)"
    )
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--api-url", default=None, help=argparse.SUPPRESS)  # tests: a local server
    return p


def _run_fetch_xc(args: argparse.Namespace) -> int:
    from modeltools.data.taxonomy import read_taxonomy
    from modeltools.data.xeno_canto import API_URL, FetchOptions, PoliteClient, fetch

    species = list(args.species)
    if args.taxonomy:
        species += [s.scientific_name for s in read_taxonomy(args.taxonomy).targets]
    if not species:
        raise ChorusError("fetch-xc: give --species or --taxonomy")
    opts = FetchOptions(
        api_key=args.api_key,
        max_per_species=args.max_per_species,
        min_quality=args.min_quality,
        extra_query=args.query,
        api_url=args.api_url or API_URL,
    )
    client = PoliteClient(
        min_interval_s=args.rate_limit_s, retries=args.retries, secrets=[args.api_key]
    )
    n, skips = fetch(species, args.out, opts, client)
    print(f"fetch-xc: {skips.summary(n, 'recordings')} -> {args.out}/metadata.csv")
    return 0


Adder = Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
Runner = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[Adder, Runner]] = [
    (_add_build_demo_bundle, _run_build_demo_bundle),
    (_add_build_test_models, _run_build_test_models),
    (_add_synth, _run_synth),
    (_add_ingest, _run_ingest),
    (_add_activity, _run_activity),
    (_add_fetch_xc, _run_fetch_xc),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="chorus-models", description="Chorus model tools (training side)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in _COMMANDS:
        add(sub).set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit status (0 ok, 2 error)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args))
    except ChorusError as exc:
        print(f"chorus-models: error: {exc}", file=sys.stderr)
    except ModuleNotFoundError as exc:
        print(
            f"chorus-models: error: {exc.name} is not installed "
            "(install the train extra: pip install 'chorus[train]')",
            file=sys.stderr,
        )
    except OSError as exc:
        print(f"chorus-models: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
