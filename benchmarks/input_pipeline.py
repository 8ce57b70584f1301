"""Benchmark: examples/s of the classifier input pipeline with every augmentation.

Not a test: it prints figures. Target (issue 3): >= 200 five-second examples/s on 2 CPU cores,
so that training is never input-bound.

    python benchmarks/input_pipeline.py                  # builds a small corpus in a temp dir
    python benchmarks/input_pipeline.py --corpus DIR     # an existing `chorus-models synth` corpus
    python benchmarks/input_pipeline.py --cores 2 --batches 60

The process is pinned to ``--cores`` CPUs (os.sched_setaffinity) and TensorFlow's thread pools
are sized to match. Reported: the numpy example function alone (one thread), the full tf.data
classifier pipeline (parallel map, prefetch), and the separator (MixIT) pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _pin(cores: int) -> str:
    if hasattr(os, "sched_setaffinity"):
        avail = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(avail[:cores]))
        return f"pinned to CPUs {sorted(os.sched_getaffinity(0))}"
    return "CPU pinning not available on this OS"


def _corpus(path: Path | None, tmp: Path) -> Path:
    if path is not None:
        return path
    from modeltools.data.corpus import CorpusConfig, write_corpus
    from modeltools.data.recordings import SoundscapeConfig

    out = tmp / "corpus"
    cfg = CorpusConfig(
        n_species=8,
        n_other=2,
        focal_per_species={"train": 4, "val": 0},
        focal_per_other={"train": 2, "val": 0},
        soundscapes={"train": 4, "val": 0, "test": 0},
        noise_clips={"train": 4, "test": 0},
        soundscape=SoundscapeConfig(duration_s=30.0),
    )
    t0 = time.perf_counter()
    write_corpus(out, cfg, shared_data_dir="auto")
    print(f"built a benchmark corpus in {time.perf_counter() - t0:.1f} s: {out}")
    return out


def _rate(it, batches: int, batch_size: int, warmup: int) -> float:
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    print(_pin(args.cores))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from modeltools.data.dataset import read_dataset
    from modeltools.data.examples import ClassifierExamples, SeparatorExamples

    with tempfile.TemporaryDirectory() as tmp:
        root = _corpus(args.corpus, Path(tmp))
        ds = read_dataset(root)
        src = ClassifierExamples([ds], "train", seed=0)
        cfg = src.cfg
        print(
            f"classifier examples: {len(src)} windows; policy: crop {cfg.example_s} s, peak "
            f"U{cfg.peak}, mix p={cfg.mix_p}, noise p={cfg.noise_p} at U{cfg.snr_db} dB, "
            f"noise-only p={cfg.noise_only_p}, mel low-pass p={cfg.lowpass_p}"
        )
        n = 100
        t0 = time.perf_counter()
        for i in range(n):
            src.example(i)
        print(f"numpy example function, 1 thread: {n / (time.perf_counter() - t0):7.1f} ex/s")

        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.cores)
        tf.config.threading.set_inter_op_parallelism_threads(args.cores)
        from modeltools.data.pipeline import classifier_dataset, separator_dataset

        it = iter(classifier_dataset(src, args.batch_size))
        rate = _rate(it, args.batches, args.batch_size, args.warmup)
        verdict = "OK" if rate >= 200 else "BELOW TARGET"
        print(
            f"classifier tf.data pipeline, {args.cores} cores: {rate:7.1f} ex/s "
            f"(5-s examples, batch {args.batch_size}; target >= 200: {verdict})"
        )
        del it
        sep = SeparatorExamples([ds], "train", seed=0)
        it = iter(separator_dataset(sep, 8))
        rate = _rate(it, args.batches, 8, args.warmup)
        print(f"separator tf.data pipeline (MoMs), {args.cores} cores: {rate:7.1f} ex/s")
        del it
    return 0


if __name__ == "__main__":
    sys.exit(main())
