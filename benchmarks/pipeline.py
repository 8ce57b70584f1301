"""Per-stage cost of the agent pipeline, whole-pipeline real-time factor and peak RSS.

    .venv/bin/python benchmarks/pipeline.py                        # shipped default bundle
    .venv/bin/python benchmarks/pipeline.py --bundle DIR --threads 1 2 --json out.json
    .venv/bin/python benchmarks/pipeline.py --peer-birdnet BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite

Stages (median and p95 ms per 5-s window, the agent's own objects on real audio: the shipped
demo soundscape): resample 48 kHz -> 22.05 kHz, separator, classifier frontend (per channel),
classifier members (per member per channel), channel combination, JSONL sink. Then
``chorus-agent analyze`` as a subprocess on a long file (the demo soundscape repeated, default
600 s) in mix-only and mix + separation modes, hop = window = 5 s: wall time / audio time and the
process's peak RSS (``wait4``; it holds the whole file). Then ``chorus-agent run`` streaming
``--soak-s`` seconds of audio (default 2 h, not paced): the agent's resident memory while
streaming, sampled every 0.5 s, its peak and its growth over the run. ``--peer-birdnet`` times
a user-supplied BirdNET V2.4 TFLite file (3-s windows at 48 kHz) in the same run so ratios, not
absolute times, are compared. Never shipped; nothing downloaded. Prints a table; ``--json``
writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the agent does (agent/__init__.py)

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.app import DEFAULT_BUNDLE  # noqa: E402
from agent.audio.resample import resample  # noqa: E402
from agent.demo_run import DEMO_SOUNDSCAPE  # noqa: E402
from agent.detection.combine import combine_channels  # noqa: E402
from agent.models.manifest import load_bundle  # noqa: E402
from agent.models.stages import Classifier, RuntimeOptions, load_models  # noqa: E402


def _timed(fn: Callable[[], object], runs: int) -> dict[str, float]:
    fn()  # warm-up
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95))}


def stage_times(bundle: Path, threads: int, runs: int) -> dict[str, dict[str, float]]:
    models = load_models(load_bundle(bundle), RuntimeOptions(num_threads=threads))
    audio, sr = sf.read(DEMO_SOUNDSCAPE, dtype="float32")
    n = models.window_samples
    window = audio[n : 2 * n]
    x48 = resample(window, sr, 48000)
    out: dict[str, dict[str, float]] = {}
    out["resample 48k->22.05k"] = _timed(lambda: resample(x48, 48000, sr), runs)
    channels = window[np.newaxis]
    if models.separator is not None:
        sep = models.separator
        out["separator"] = _timed(lambda: sep.separate(window), runs)
        channels = np.vstack([window[np.newaxis], sep.separate(window)])
    clf = models.classifiers[0]
    assert isinstance(clf, Classifier)
    feats = window[np.newaxis]
    if clf.native is not None:
        nat = clf.native
        out["frontend, numpy (per channel)"] = _timed(lambda: nat.features(window), runs)
        feats = nat.features(window)
    if clf.frontend is not None:
        fe = clf.frontend
        out["frontend, tflite (per channel)"] = _timed(lambda: fe.run(window[np.newaxis]), runs)
        feats = fe.run(window[np.newaxis])
    member = clf.members[0]
    out["classifier member (per channel)"] = _timed(lambda: member.run(feats), runs)
    out[f"classifier, {len(clf.members)} members x {len(channels)} channels"] = _timed(
        lambda: clf.classify(channels), max(3, runs // 3)
    )
    logits = clf.classify(channels)
    mix_only = clf.mix_only_indices
    out["combine"] = _timed(lambda: combine_channels(logits, "mix_and_separated", mix_only), runs)
    out["jsonl sink (one detection)"] = _jsonl_time(runs)
    return out


def _jsonl_time(runs: int) -> dict[str, float]:
    from datetime import UTC, datetime

    from agent.detection.types import Detection
    from agent.sinks.files import JsonlSink

    t = datetime.now(UTC)
    det = Detection(
        "x",
        "X x",
        "X",
        0.9,
        2.2,
        t,
        t,
        0.0,
        5.0,
        "mix",
        "bench",
        "bench",
        "0",
        "bench",
        "file:bench.wav",
    )
    with tempfile.TemporaryDirectory() as tmp:
        sink = JsonlSink(Path(tmp) / "d.jsonl")
        res = _timed(lambda: sink.emit(det), runs)
        sink.close()
    return res


def pipeline_run(bundle: Path, mode: str, threads: int, long_s: float) -> dict[str, float]:
    """``chorus-agent analyze`` on a long file as a child process: RTF and peak RSS."""
    audio, sr = sf.read(DEMO_SOUNDSCAPE, dtype="float32")
    reps = int(np.ceil(long_s * sr / len(audio)))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        sf.write(wav, np.tile(audio, reps)[: int(long_s * sr)], sr, subtype="PCM_16")
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "device_id": "bench",
                    "audio": {"hop_s": 5.0},
                    "inference": {"bundle": str(bundle), "num_threads": threads, "mode": mode},
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "agent",
            "analyze",
            str(wav),
            "--config",
            str(cfg),
            "--out",
            str(Path(tmp) / "out"),
            "--no-progress",
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode() if proc.stderr else ""
        if status != 0:
            raise SystemExit(f"analyze failed ({status}): {err[-500:]}")
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
    inner = summary.get("wall_s") or summary.get("pipeline", {}).get("wall_s")
    return {
        "audio_s": long_s,
        "process_wall_s": wall,
        "rtf_process": wall / long_s,
        "rtf_pipeline": (inner / long_s) if inner else float("nan"),
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def _memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a live process in MB, or None once it is gone (Linux /proc)."""
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(line.split()[1]) / 1024
    except OSError:
        return None
    if len(found) < 2:
        return None
    return found["VmRSS"], found["VmHWM"]


def soak_run(bundle: Path, mode: str, threads: int, audio_s: float) -> dict[str, float]:
    """``chorus-agent run`` streaming the demo soundscape (file source, not paced) for
    ``audio_s`` seconds of audio: resident memory sampled every 0.5 s, peak RSS, growth.

    Growth compares the median RSS over the last 10 % of the run with the median over
    10-20 % (after the models are loaded and every buffer has been touched once).
    """
    copies = max(1, int(np.ceil(audio_s / 60.0)))  # the demo soundscape is 60 s
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "soak.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "device_id": "bench",
                    "log_level": "WARNING",
                    "audio": {
                        "source": "file",
                        "files": [str(DEMO_SOUNDSCAPE)] * copies,
                        "realtime": False,
                        "hop_s": 5.0,
                    },
                    "inference": {"bundle": str(bundle), "num_threads": threads, "mode": mode},
                    "outputs": {"jsonl": str(Path(tmp) / "detections.jsonl")},
                }
            )
        )
        cmd = [sys.executable, "-m", "agent", "run", "--config", str(cfg)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[float] = []
        peak = float("nan")
        while proc.poll() is None:
            mem = _memory_mb(proc.pid)
            if mem is not None:
                samples.append(mem[0])
                peak = mem[1]  # the kernel's high-water mark: catches peaks between samples
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({proc.returncode}): {err[-500:]}")
        lines = (Path(tmp) / "detections.jsonl").read_text().count("\n")
    n = len(samples)
    early = samples[n // 10 : max(n // 10 + 1, n // 5)]
    late = samples[-max(1, n // 10) :]
    warm, end = float(np.median(early)), float(np.median(late))
    return {
        "audio_s": copies * 60.0,
        "wall_s": wall,
        "rtf_process": wall / (copies * 60.0),
        "rss_samples": n,
        "rss_warm_mb": warm,
        "rss_end_mb": end,
        "rss_growth_pct": 100 * (end - warm) / warm,
        "peak_rss_mb": peak,
        "detections": lines,
    }


def birdnet_time(path: Path, threads: int, runs: int) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    audio, sr = sf.read(DEMO_SOUNDSCAPE, dtype="float32")
    x = resample(audio[: 3 * sr], sr, 48000)[: int(inp["shape"][-1])]
    x = np.pad(x, (0, int(inp["shape"][-1]) - len(x)))[np.newaxis].astype(np.float32)

    def run() -> None:
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    res = _timed(run, runs)
    res["ms_per_audio_s"] = res["median_ms"] / 3.0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=20, help="timed repetitions per stage")
    p.add_argument("--long-s", type=float, default=600.0, help="analyze file length (s)")
    p.add_argument(
        "--soak-s",
        type=float,
        default=7200.0,
        help="audio seconds streamed through chorus-agent run for the RSS soak (0: skip)",
    )
    p.add_argument("--no-pipeline", action="store_true", help="stage timings only")
    p.add_argument("--peer-birdnet", type=Path, default=None, help="BirdNET V2.4 .tflite file")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    result: dict[str, object] = {"machine": platform.machine(), "bundle": str(args.bundle)}
    print(f"# {platform.machine()}, bundle {args.bundle}, {args.runs} runs per stage")
    for t in args.threads:
        stages = stage_times(args.bundle, t, args.runs)
        result[f"stages_{t}t"] = stages
        print(f"\n## stages, {t} thread(s)\n{'stage':<44} {'median ms':>10} {'p95 ms':>8}")
        for name, r in stages.items():
            print(f"{name:<44} {r['median_ms']:10.2f} {r['p95_ms']:8.2f}")
    if args.peer_birdnet:
        bn = birdnet_time(args.peer_birdnet, 1, args.runs)
        result["birdnet_1t"] = bn
        print(
            f"\nBirdNET (1 thread): {bn['median_ms']:.1f} ms per 3-s window "
            f"= {bn['ms_per_audio_s']:.2f} ms per audio second"
        )
    if not args.no_pipeline:
        print(f"\n## chorus-agent analyze, {args.long_s:.0f} s file, hop 5 s")
        print(f"{'mode':<20} {'threads':>7} {'RTF':>8} {'ms/audio s':>11} {'peak RSS MB':>12}")
        for mode in ("mix_only", "mix_and_separated"):
            for t in args.threads:
                r = pipeline_run(args.bundle, mode, t, args.long_s)
                result[f"analyze_{mode}_{t}t"] = r
                rtf = r["rtf_pipeline"] if np.isfinite(r["rtf_pipeline"]) else r["rtf_process"]
                print(f"{mode:<20} {t:7d} {rtf:8.4f} {1000 * rtf:11.2f} {r['peak_rss_mb']:12.0f}")
                if args.peer_birdnet and t == 1:
                    ratio = 1000 * rtf / result["birdnet_1t"]["ms_per_audio_s"]  # type: ignore[index]
                    print(f"{'':<20} {'':>7} {'':>8} = {ratio:.2f} x BirdNET")
    if not args.no_pipeline and args.soak_s > 0:
        t = args.threads[0]
        print(f"\n## chorus-agent run, {args.soak_s / 3600:.2f} h of audio streamed, {t} thread(s)")
        print(
            f"{'mode':<20} {'RTF':>8} {'RSS warm MB':>12} {'RSS end MB':>11} {'growth %':>9} "
            f"{'peak MB':>8}"
        )
        for mode in ("mix_only", "mix_and_separated"):
            r = soak_run(args.bundle, mode, t, args.soak_s)
            result[f"soak_{mode}_{t}t"] = r
            print(
                f"{mode:<20} {r['rtf_process']:8.4f} {r['rss_warm_mb']:12.0f} "
                f"{r['rss_end_mb']:11.0f} {r['rss_growth_pct']:9.1f} {r['peak_rss_mb']:8.0f}"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
