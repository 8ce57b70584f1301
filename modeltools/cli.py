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
from typing import Any

from agent.errors import ChorusError
from modeltools.argtypes import comma_list
from modeltools.evaluation import calibrate, real_report
from modeltools.evaluation import cli as evaluation_cli
from modeltools.export import cli as export_cli
from modeltools.ota import cli as ota_cli
from modeltools.packaging import verify_cli
from modeltools.separation.presets import (  # pure Python (no TensorFlow)
    WINDOW_KINDS,
    SeparatorConfigError,
)

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
    p.add_argument(
        "--stems",
        action="store_true",
        help="also write each soundscape's bird stem (<id>.birds.wav) for "
        "train-separator --supervised-weight",
    )
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
        stems=args.stems,
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
    p.add_argument(
        "source",
        type=Path,
        nargs="+",
        help="folder(s) with the recordings (several: one dataset, ids prefixed by folder name); "
        "real audio of ../shared/data obeys its split (shared/docs/REAL-AUDIO.md)",
    )
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
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="how labels are given (unlabelled: none, annotation sidecars ignored)",
    )
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


# ---------------------------------------------------------------------------------------------
# Separator commands (modeltools.separation; docs/separation.md)


def _set_tf_threads(threads: int | None) -> None:
    # The separator commands give TensorFlow as many inter-op as intra-op threads.
    from modeltools.classifier.train import set_threads

    set_threads(threads, inter_op=threads or 1)


def _add_train_separator(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modeltools.separation.presets import BASIS_INITS, MOM_LEVELS, PRESETS

    p = sub.add_parser("train-separator", help="train a MixIT separator (resumable)")
    p.add_argument("--preset", default="edge", choices=sorted(PRESETS), help="(default: edge)")
    p.add_argument(
        "--data", type=Path, action="append", required=True, help="corpus folder (repeatable)"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--steps", type=int, default=10_000, help="total steps (default: 10000)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument(
        "--strategy",
        default="cpu",
        choices=["cpu", "gpu", "mirrored", "auto"],
        help="tf.distribute strategy (default: cpu)",
    )
    p.add_argument("--tpu", default=None, metavar="ADDRESS", help="train on a TPU (TPUStrategy)")
    p.add_argument("--batch-size", type=int, default=None, help="single mixtures per step")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (with --resume: a new rate from the checkpoint on, recorded in "
        "config.json)",
    )
    p.add_argument(
        "--lr-decay-steps",
        type=int,
        default=None,
        help="steps per halving of the learning rate (default: the preset's; resumable)",
    )
    p.add_argument(
        "--example-s",
        type=float,
        default=None,
        help="training crop length in s (default: the preset's; the model is convolutional, "
        "so shorter crops buy more steps per CPU hour and it still runs on 5-s windows)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start a new run from this run's latest weights (fine-tuning; same architecture)",
    )
    p.add_argument(
        "--basis-init",
        choices=BASIS_INITS,
        default=None,
        help="initial analysis/synthesis bases: random (Glorot, the paper's; default) or stft "
        "(a rectified sine-windowed Fourier frame and its exact inverse); both are learned",
    )
    p.add_argument(
        "--mixit-nonempty",
        action="store_true",
        help="train with MixIT assignments that give both mixtures at least one output "
        "(a MoM collapsed onto the louder mixture then still has a gradient); MoMi is unchanged",
    )
    p.add_argument(
        "--supervised-weight",
        type=float,
        default=None,
        metavar="W",
        help="semi-supervised MixIT: add W x a loss against the MoM's known stems (bird stem "
        "and noise bed of each mixture; needs --windows soundscape and a corpus written with "
        "`synth --stems`). Default 0: the paper's unsupervised MixIT",
    )
    p.add_argument(
        "--mom-levels",
        choices=MOM_LEVELS,
        default=None,
        help="levels of the two mixtures in a MoM: natural = x1 + x2 as recorded (SS-mixit; "
        "default), random-peak = each at a random peak level (runs before 2026-12-04)",
    )
    p.add_argument(
        "--windows",
        type=_window_kinds,
        default=None,
        help="recording kinds to draw training and validation mixtures from, comma list of "
        "focal, soundscape, unlabelled (default: all; soundscape matches the test split of a "
        "synthetic corpus)",
    )
    p.add_argument(
        "--real-fraction",
        type=float,
        default=None,
        metavar="F",
        help="fraction of training MoMs drawn from the real (ingested) --data datasets, the "
        "rest from the synthetic corpora (default: one pool of all windows); recorded in "
        "config.json, as are the real files that went in (real_audio)",
    )
    p.add_argument("--checkpoint-every", type=int, default=200, help="(default: 200)")
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=3,
        help="checkpoints kept (default: 3); keep more to choose one by validation MoMi later",
    )
    p.add_argument("--log-every", type=int, default=10, help="(default: 10)")
    p.add_argument("--val-examples", type=int, default=16, help="validation MoMs (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0: auto)")
    return p


def _run_train_separator(args: argparse.Namespace) -> int:
    _set_tf_threads(args.threads)
    from modeltools.separation.presets import get_preset
    from modeltools.separation.train import train, with_overrides

    cfg = with_overrides(
        get_preset(args.preset),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_decay_steps=args.lr_decay_steps,
        example_s=args.example_s,
        mixit_allow_empty=False if args.mixit_nonempty else None,
        mom_levels=args.mom_levels,
        windows=args.windows,
        basis_init=args.basis_init,
        supervised_weight=args.supervised_weight,
        real_fraction=args.real_fraction,
    )
    row = train(
        cfg,
        args.data,
        args.out,
        steps=args.steps,
        resume=args.resume,
        strategy=args.strategy,
        tpu=args.tpu,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
        val_examples=args.val_examples,
        seed=args.seed,
        progress=sys.stderr.isatty(),
        resume_overrides={"learning_rate": args.lr, "lr_decay_steps": args.lr_decay_steps},
        init_from=args.init_from,
    )
    print(f"train-separator: {args.out} at step {row.get('step')}: {row}")
    return 130 if row.get("interrupted") else 0


def _add_pack_separator(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pack-separator",
        help="copy one checkpoint's model weights (no optimizer state) + config into a new run "
        "folder (what the repository ships)",
    )
    p.add_argument("run", type=Path, help="run folder of train-separator")
    p.add_argument("--out", type=Path, required=True, help="new folder")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint prefix, e.g. RUN/checkpoints/ckpt-8000 (default: the latest)",
    )
    p.add_argument(
        "--average",
        type=int,
        default=1,
        metavar="N",
        help="pack the mean weights of the N kept checkpoints that end at --checkpoint "
        "(default: 1, that checkpoint alone)",
    )
    return p


def _run_pack_separator(args: argparse.Namespace) -> int:
    from modeltools.separation.train import pack_run

    out, step = pack_run(args.run, args.out, args.checkpoint, args.average)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    mean = f", mean of the last {args.average} checkpoints" if args.average > 1 else ""
    print(f"pack-separator: {out} (step {step}{mean}, {size / 1e6:.2f} MB)")
    return 0


_window_kinds = comma_list(WINDOW_KINDS, "window kind")


def _add_eval_separator(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modeltools.separation.presets import MOM_LEVELS

    p = sub.add_parser("eval-separator", help="MoMi of a trained separator on held-out MoMs")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="run folder of train-separator")
    what.add_argument(
        "--oracle",
        type=int,
        default=None,
        metavar="SAMPLES",
        help="score ideal ratio masks (STFT of SAMPLES samples) instead of a model: the upper "
        "bound the same MoMs leave to mask-based separation",
    )
    p.add_argument(
        "--data", type=Path, action="append", required=True, help="corpus folder (repeatable)"
    )
    p.add_argument("--split", default="test", help="split to draw MoMs from (default: test)")
    p.add_argument("--examples", type=int, default=64, help="MoMs to score (default: 64)")
    p.add_argument("--seed", type=int, default=1234, help="MoM seed (default: 1234)")
    p.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0: auto)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--resample-hz", type=int, default=None, help="score at this rate (e.g. 16000)")
    p.add_argument("--write-examples", type=Path, default=None, help="folder for WAVs + PNGs")
    p.add_argument(
        "--mom-levels",
        choices=MOM_LEVELS,
        default="natural",
        help="natural: MoM = x1 + x2 as recorded (SS-mixit; default); random-peak: each "
        "mixture at a random peak level first (the protocol of evaluations before 2026-12-04)",
    )
    p.add_argument(
        "--windows",
        type=_window_kinds,
        default=None,
        help="recording kinds to draw mixtures from, comma list of focal, soundscape, "
        "unlabelled (default: all; e.g. soundscape to select checkpoints on what the test "
        "split of a synthetic corpus holds)",
    )
    p.add_argument(
        "--birds",
        action="store_true",
        help="score bird-vs-noise separation of single soundscape windows instead of MoMi: "
        "SI-SNRi of the birds against the corpus' bird stems (needs `synth --stems`)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="score checkpoint ckpt-STEP")
    which.add_argument(
        "--all-checkpoints",
        action="store_true",
        help="score every kept checkpoint (model selection: use with --split val)",
    )
    return p


def _print_birds(res: dict[str, Any]) -> None:
    def db(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f} dB"

    print(
        f"eval-separator: {res['preset']} step {res['step']}: bird SI-SNRi "
        f"{db(res['bird_sisnri_db'])} (median {db(res['bird_sisnri_median_db'])}) on "
        f"{res['examples'] - res['without_birds']} {res['split']} soundscape windows with birds "
        f"({res['without_birds']} without); birds lost in {res['birds_lost']} "
        f"(without them {db(res['bird_sisnri_not_lost_db'])}); noise-bed SI-SNRi "
        f"{db(res['noise_sisnri_db'])}; input bird SNR median {db(res['input_bird_snr_median_db'])}"
    )


def _print_momi(res: dict[str, Any]) -> None:
    what = (
        f"oracle ratio masks, {res['oracle_window']}-sample STFT"
        if res["step"] is None
        else f"{res['preset']} step {res['step']}"
    )
    print(
        f"eval-separator: {what}: MoMi {res['momi_db']:.2f} dB "
        f"(median {res['momi_median_db']:.2f}) on {res['examples']} {res['split']} MoMs "
        f"({res['mom_levels']} levels; {'+'.join(res['windows'])} "
        f"windows) at {res['sample_rate_hz']} Hz; "
        f"{res['collapsed']} collapsed"
    )
    for r in res["by_level_gap"]:
        m = "—" if r["momi_db"] is None else f"{r['momi_db']:.2f} dB"
        print(
            f"  level gap {r['level_gap']:<10} {r['examples']:3d} MoMs  MoMi {m:>9}  "
            f"collapsed {r['collapsed']}"
        )


def _run_eval_separator(args: argparse.Namespace) -> int:
    _set_tf_threads(args.threads)
    import json

    from modeltools.separation.evaluate import (
        evaluate_birds,
        evaluate_checkpoints,
        evaluate_oracle,
        evaluate_run,
    )
    from modeltools.separation.train import CKPT_DIR

    if args.oracle is not None and (args.step is not None or args.all_checkpoints):
        raise SeparatorConfigError(
            "--oracle scores ratio masks, not checkpoints: drop --step / --all-checkpoints"
        )
    if args.birds and (
        args.oracle is not None
        or args.all_checkpoints
        or args.resample_hz
        or args.write_examples
        or args.windows
        or args.mom_levels != "natural"
    ):
        raise SeparatorConfigError(
            "--birds scores one checkpoint on soundscape windows at the model's rate: drop "
            "--oracle / --all-checkpoints / --resample-hz / --write-examples / --windows / "
            "--mom-levels"
        )

    common = {
        "split": args.split,
        "num_examples": args.examples,
        "seed": args.seed,
        "resample_hz": args.resample_hz,
        "progress": sys.stderr.isatty(),
        "mom_levels": args.mom_levels,
        "windows": args.windows,
    }
    step = args.step
    ckpt = args.checkpoint / CKPT_DIR / f"ckpt-{step}" if step is not None else None
    out: Any
    if args.oracle is not None:
        try:
            out = evaluate_oracle(
                args.data, args.oracle, examples_dir=args.write_examples, **common
            )
        except ValueError as exc:
            raise SeparatorConfigError(str(exc)) from None
        _print_momi(out)
    elif args.birds:
        out = evaluate_birds(
            args.checkpoint,
            args.data,
            split=args.split,
            num_examples=args.examples,
            seed=args.seed,
            checkpoint=ckpt,
            progress=sys.stderr.isatty(),
        )
        _print_birds(out)
    elif args.all_checkpoints:
        results = evaluate_checkpoints(args.checkpoint, args.data, **common)
        for res in results:
            _print_momi(res)
        best = max(results, key=lambda r: r["momi_db"])
        print(
            f"eval-separator: best on {args.split}: step {best['step']} "
            f"(MoMi {best['momi_db']:.2f} dB)"
        )
        out = {"best_step": best["step"], "checkpoints": results}
    else:
        out = evaluate_run(
            args.checkpoint, args.data, examples_dir=args.write_examples, checkpoint=ckpt, **common
        )
        _print_momi(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# Classifier commands (modeltools.classifier; docs/classifier.md)


def _add_train_classifier(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train-classifier", help="train (or resume) the bird classifier")
    p.add_argument("--preset", default="edge", help="paper | b1 | b2 | edge | tiny | a YAML path")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="dataset folder(s)")
    p.add_argument("--out", type=Path, required=True, help="run folder (created/resumed)")
    p.add_argument("--steps", type=int, default=None, help="total steps (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--seed", type=int, default=0, help="seed (member k uses seed + k)")
    p.add_argument("--members", type=int, default=1, help="ensemble members (OUT/member-k)")
    p.add_argument("--strategy", default="cpu", help="cpu | gpu | tpu | default")
    p.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: default)")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch")
    p.add_argument("--eval-every", type=int, default=None, help="override (0: no validation)")
    p.add_argument("--no-taxonomy-loss", action="store_true", help="ablation: species head only")
    p.add_argument("--no-lowpass", action="store_true", help="ablation: no low-pass augmentation")
    p.add_argument(
        "--no-channel-norm", action="store_true", help="ablation: no two-stage whitening"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _run_train_classifier(args: argparse.Namespace) -> int:
    from modeltools.classifier.presets import load_preset
    from modeltools.classifier.train import RunOptions, train_members
    from modeltools.data.dataset import read_dataset

    overrides: dict = {"batch_size": args.batch_size, "eval_every": args.eval_every}
    if args.no_taxonomy_loss:
        overrides["taxonomy_weight"] = 0.0
    if args.no_lowpass:
        overrides["lowpass"] = False
    if args.no_channel_norm:
        overrides["channel_norm"] = False
    cfg = load_preset(args.preset, **overrides)
    datasets = [read_dataset(d) for d in args.data]
    opts = RunOptions(
        out=args.out,
        steps=args.steps,
        resume=args.resume,
        seed=args.seed,
        strategy=args.strategy,
        threads=args.threads,
        progress=not args.no_progress,
    )
    for k, res in enumerate(train_members(cfg, datasets, opts, args.members)):
        print(f"train-classifier: member {k}: {res}")
    return 0


def _add_eval_classifier(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval-classifier", help="CMAP/lwlrap/top-1 of classifier runs and their ensemble"
    )
    p.add_argument(
        "--checkpoint", type=Path, nargs="+", required=True, help="run folder(s) / member parents"
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="dataset folder(s)")
    p.add_argument("--split", default="test", help="segments of this split (default: test)")
    p.add_argument("--weights", choices=("best", "final"), default="best")
    p.add_argument("--limit", type=int, default=None, help="evaluate on at most N segments")
    p.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def _run_eval_classifier(args: argparse.Namespace) -> int:
    import json

    from modeltools.classifier.ensemble import ensemble_logits, load_member, member_dirs
    from modeltools.classifier.evaluate import predict_logits, segment_set, species_metrics
    from modeltools.classifier.train import set_threads
    from modeltools.data.dataset import read_dataset

    set_threads(args.threads)
    datasets = [read_dataset(d) for d in args.data]
    audio, labels = segment_set(datasets, args.split, args.limit)
    results, member_logits = {}, []
    for run in member_dirs(args.checkpoint):
        model, _ = load_member(run, args.weights)
        logits = predict_logits(model, audio)["species"]
        member_logits.append(logits)
        results[str(run)] = species_metrics(logits, labels)
    if len(member_logits) > 1:
        results["ensemble"] = species_metrics(ensemble_logits(member_logits), labels)
        keys = ("cmap", "lwlrap", "top1")
        results["mean_member"] = {
            k: sum(results[str(r)][k] for r in member_dirs(args.checkpoint)) / len(member_logits)
            for k in keys
        }
    print(f"eval-classifier: {len(labels)} {args.split} segments (mix-only)")
    print(f"{'model':<48} {'CMAP':>7} {'lwlrap':>7} {'top-1':>7}")
    for name, m in results.items():
        print(f"{name:<48} {m['cmap']:7.3f} {m['lwlrap']:7.3f} {m['top1']:7.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
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
    (_add_train_separator, _run_train_separator),
    (_add_eval_separator, _run_eval_separator),
    (_add_pack_separator, _run_pack_separator),
    (_add_train_classifier, _run_train_classifier),
    (_add_eval_classifier, _run_eval_classifier),
    (export_cli.add_export, export_cli.run_export),
    (export_cli.add_parity, export_cli.run_parity),
    (verify_cli.add_bundle_parser, verify_cli.run_bundle),
    (evaluation_cli.add_evaluate, evaluation_cli.run_evaluate),
    (real_report.add_benchmark, real_report.run_benchmark),
    (calibrate.add_calibrate, calibrate.run_calibrate),
    (ota_cli.add_keys, ota_cli.run_keys),
    (ota_cli.add_publish, ota_cli.run_publish),
    (ota_cli.add_rollback, ota_cli.run_rollback),
    (ota_cli.add_rollout_status, ota_cli.run_rollout_status),
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
