r"""Cost of every model preset (params, MACs, LiteRT invoke time, int8 size) beside its test score.

    .venv/bin/python benchmarks/presets.py --threads 1 \
        --json runs/presets.json --markdown runs/presets.md

The cost side of the cost/quality table for a Raspberry Pi budget. For each separator preset
(``modeltools.separation.presets.PRESETS`` except ``tiny``) and each classifier preset
(``config/classifier/*.yaml`` except ``tiny``) it builds the Keras model with random initial
weights (invoke time does not depend on weight values), freezes it the way ``chorus-models
export`` does, converts it to each ``--flavours`` flavour (default ``dynamic`` and ``int8``;
int8 calibrated on random inputs) and times it in LiteRT: one warm-up invoke, then ``--runs``
timed invokes of one 5-s window; median and p95 ms. A flavour that does not convert is recorded
as skipped with the converter's reason.

The separator runs on the waveform (1, 110250); the classifier *member network* on the frontend's
features (1, 501, 160) -> species logits, as shipped (the float frontend is shared by every
member and every preset, so it is not part of a preset's cost). Classifier heads have the label
space of the shipped ensemble (``num_classes`` of ``models/classifier-*/member-*/run.json``;
only the species head is in the network, the other heads only need to exist to build it).

Quality columns come from trained runs only, never estimated: the separator's test MoMi
(``momi_db`` of ``models/separator-*/eval-test.json`` and of any ``--quality-json`` file, matched
on its ``preset``) and the classifier's test CMAP (``models/classifier-*/eval-test.json`` and any
``--classifier-quality-json`` file: the ensemble's and the mean member's, matched on the preset
named in the members' ``run.json``). A preset without a trained run shows "—".

TensorFlow runs on one thread (intra- and inter-op) so the benchmark can share a machine; the
paper preset's int8 conversion alone takes minutes, so the full run takes 10+ minutes. Nothing
is asserted: compare figures from the same machine only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before numpy/TensorFlow load: keep BLAS and TF's own pools to one core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.errors import ChorusError  # noqa: E402
from modeltools.classifier.presets import PRESET_DIR, ClassifierConfig, load_preset  # noqa: E402
from modeltools.export.convert import FLAVOURS, ExportError, convert, freeze  # noqa: E402
from modeltools.separation.presets import PRESETS, SeparatorConfig, count_cost  # noqa: E402

WINDOW_SAMPLES = 110250  # 5 s at 22.05 kHz
FEATURE_SHAPE = (501, 160)  # classifier frontend output per 5-s window (frames, mel bands)
REPRESENTATIVE = 8  # calibration inputs for int8
# Used only when no shipped classifier run is found: the synthetic corpus's taxonomy sizes.
FALLBACK_NUM_CLASSES = {"species": 25, "genus": 13, "family": 7, "order": 4}
DASH = "—"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_invoke(data: bytes, x: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """Median and p95 ms of ``runs`` invokes on ``x`` after one warm-up invoke."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    interp.set_tensor(inp["index"], x)
    interp.invoke()  # warm-up: allocation, XNNPACK weight packing
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def convert_and_time(
    frozen: Any,
    flavours: Sequence[str],
    representative: np.ndarray,
    what: str,
    threads: int,
    runs: int,
) -> dict[str, dict[str, Any]]:
    """Per flavour: size, op kinds and invoke time, or ``{"skipped": reason}``."""
    out: dict[str, dict[str, Any]] = {}
    x = representative[:1]  # one window with the model's batch of 1
    for fl in flavours:
        t0 = time.monotonic()
        try:
            conv = convert(frozen, fl, representative, what)
        except ExportError as exc:
            log(f"  {fl}: skipped: {exc}")
            out[fl] = {"skipped": str(exc)}
            continue
        convert_s = time.monotonic() - t0
        timing = time_invoke(conv.data, x, threads, runs)
        out[fl] = {
            "size_kb": conv.size_bytes / 1000,
            "op_kinds": list(conv.ops),
            "convert_s": round(convert_s, 1),
            **timing,
        }
        log(
            f"  {fl}: {conv.size_bytes / 1000:.0f} kB, converted in {convert_s:.0f} s, "
            f"{timing['median_ms']:.1f} ms median"
        )
    return out


def _reset_keras() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


# -- separators -------------------------------------------------------------------------------


def separator_representative() -> np.ndarray:
    """8 windows of white noise at peak 0.5 (the agent's input peak)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((REPRESENTATIVE, WINDOW_SAMPLES))
    x *= 0.5 / np.max(np.abs(x), axis=1, keepdims=True)
    return x.astype(np.float32)


def bench_separator(
    cfg: SeparatorConfig, flavours: Sequence[str], threads: int, runs: int
) -> dict[str, Any]:
    from modeltools.separation.model import build_separator

    cost = count_cost(cfg)
    model = build_separator(cfg, num_samples=WINDOW_SAMPLES)
    frozen = freeze(lambda w: model(w, training=False), (1, WINDOW_SAMPLES))
    row: dict[str, Any] = {
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "params": cost["params"],
        "keras_params": int(model.count_params()),
        "macs": cost["macs"],
        "frames": cost["frames"],
        "flavours": convert_and_time(
            frozen, flavours, separator_representative(), f"separator {cfg.name}", threads, runs
        ),
    }
    _reset_keras()
    return row


def separator_quality(extra: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Test MoMi by preset: ``models/separator-*/eval-test.json``, then ``extra`` (wins)."""
    out: dict[str, dict[str, Any]] = {}
    for path in [*sorted(ROOT.glob("models/separator-*/eval-test.json")), *extra]:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ChorusError(f"{path}: cannot read a separator score: {exc}") from None
        if "preset" not in d or "momi_db" not in d:
            raise ChorusError(f"{path}: no 'preset' and 'momi_db' (not an eval-separator file)")
        out[d["preset"]] = {
            "momi_db": float(d["momi_db"]),
            "step": d.get("step"),
            "split": d.get("split"),
            "source": _rel(Path(path)),
        }
    return out


# -- classifiers ------------------------------------------------------------------------------


def shipped_num_classes() -> tuple[dict[str, int], str]:
    """The label space of the first shipped classifier member (else a documented fallback)."""
    for run in sorted(ROOT.glob("models/classifier-*/member-*/run.json")):
        return dict(json.loads(run.read_text())["num_classes"]), _rel(run)
    return dict(FALLBACK_NUM_CLASSES), "fallback (no shipped classifier run)"


def bench_classifier(
    cfg: ClassifierConfig,
    num_classes: dict[str, int],
    flavours: Sequence[str],
    threads: int,
    runs: int,
) -> dict[str, Any]:
    from modeltools.classifier.model import build_classifier, count_macs
    from modeltools.export.bundle import classifier_network

    # Same path as `chorus-models export`: the member network shares the built model's layers.
    model = build_classifier(cfg, num_classes)
    net = classifier_network(cfg, num_classes, model)
    frozen = freeze(lambda f: net(f, training=False), (1, *FEATURE_SHAPE))
    rep = np.random.default_rng(0).standard_normal((REPRESENTATIVE, *FEATURE_SHAPE))
    width, depth = cfg.scaling
    row: dict[str, Any] = {
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "width": width,
        "depth": depth,
        "num_classes": num_classes,
        "params": int(net.count_params()),  # with BatchNorm statistics
        "trainable_params": int(sum(np.prod(w.shape) for w in net.trainable_weights)),
        "macs": count_macs(net, include_frontend=False)["network"],
        "flavours": convert_and_time(
            frozen, flavours, rep.astype(np.float32), f"classifier {cfg.name}", threads, runs
        ),
    }
    _reset_keras()
    return row


def classifier_quality(extra: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Test CMAP by preset from ensemble eval files (``models/classifier-*/eval-test.json``)."""
    out: dict[str, dict[str, Any]] = {}
    for path in [*sorted(ROOT.glob("models/classifier-*/eval-test.json")), *extra]:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ChorusError(f"{path}: cannot read a classifier score: {exc}") from None
        members = [k for k in d if k not in ("ensemble", "mean_member")]
        presets = {_member_preset(path.parent, m) for m in members}
        presets.discard(None)
        if len(presets) != 1 or "ensemble" not in d:
            raise ChorusError(
                f"{path}: need an 'ensemble' score and members of one preset (found {presets})"
            )
        out[presets.pop()] = {
            "ensemble_cmap": float(d["ensemble"]["cmap"]),
            "mean_member_cmap": float(d["mean_member"]["cmap"]) if "mean_member" in d else None,
            "members": len(members),
            "source": _rel(path),
        }
    return out


def _member_preset(folder: Path, member: str) -> str | None:
    """Preset of a member named in an eval file (path from the repo root, cwd or ``folder``)."""
    for run_dir in (ROOT / member, Path.cwd() / member, folder / Path(member).name):
        if (run_dir / "run.json").is_file():
            return str(json.loads((run_dir / "run.json").read_text())["config"]["name"])
    return None


# -- tables -----------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _ms(fl: dict[str, Any] | None) -> str:
    if fl is None:
        return DASH
    if "skipped" in fl:
        return "skipped"
    return f"{fl['median_ms']:.1f} ({fl['p95_ms']:.1f})"


def _kb(fl: dict[str, Any] | None) -> str:
    return DASH if fl is None or "skipped" in fl else f"{fl['size_kb']:.0f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _size_flavour(flavours: Sequence[str]) -> str:
    return "int8" if "int8" in flavours else flavours[-1]


def separator_table(rows: list[dict[str, Any]], flavours: Sequence[str]) -> str:
    size_fl = _size_flavour(flavours)
    head = ["preset", "basis len/hop", "coeffs", "bottleneck/hidden", "blocks", "norm"]
    head += ["activation", "params", "MACs/5 s (M)"]
    head += [f"{fl} ms med (p95)" for fl in flavours]
    head += [f"{size_fl} size kB", "test MoMi dB"]
    body = []
    for r in rows:
        c = r["config"]
        q = r.get("quality")
        body.append(
            [
                f"`{r['preset']}`",
                f"{c['window']}/{c['hop']}",
                str(c["num_coeffs"]),
                f"{c['bottleneck']}/{c['hidden']}",
                f"{c['repeats']}×{c['blocks_per_repeat']}",
                c["norm"],
                c["activation"],
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:,.0f}",
                *[_ms(r["flavours"].get(fl)) for fl in flavours],
                _kb(r["flavours"].get(size_fl)),
                f"{q['momi_db']:.2f}" if q else f"{DASH} (not trained)",
            ]
        )
    return _table(head, body)


def classifier_table(rows: list[dict[str, Any]], flavours: Sequence[str]) -> str:
    size_fl = _size_flavour(flavours)
    head = ["preset", "backbone", "width × depth", "embedding", "params", "MACs/5 s (M)"]
    head += [f"{fl} ms med (p95)" for fl in flavours]
    head += [f"{size_fl} size kB", "test CMAP"]
    body = []
    for r in rows:
        q = r.get("quality")
        if q:
            score = f"{q['ensemble_cmap']:.3f} (ensemble of {q['members']})"
            if q["mean_member_cmap"] is not None:
                score += f", {q['mean_member_cmap']:.3f} (member mean)"
        else:
            score = f"{DASH} (not trained)"
        body.append(
            [
                f"`{r['preset']}`",
                r["config"]["backbone"],
                f"{r['width']:g} × {r['depth']:g}",
                str(r["config"]["embedding_dim"]),
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:,.0f}",
                *[_ms(r["flavours"].get(fl)) for fl in flavours],
                _kb(r["flavours"].get(size_fl)),
                score,
            ]
        )
    return _table(head, body)


def skipped_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The converter's reason for every skipped flavour (it names the model and flavour)."""
    return [v["skipped"] for r in rows for v in r["flavours"].values() if "skipped" in v]


# -- main -------------------------------------------------------------------------------------


def _limit_tf_threads() -> Any:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def run(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    seps = args.separators or [n for n in PRESETS if n != "tiny"]
    sep_cfgs = []
    for name in seps:
        if name not in PRESETS:
            raise ChorusError(f"unknown separator preset {name!r} (known: {', '.join(PRESETS)})")
        sep_cfgs.append(PRESETS[name])
    clss = args.classifiers or sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "tiny")
    cls_cfgs = [load_preset(n) for n in clss]
    sep_q = separator_quality(args.quality_json)
    cls_q = classifier_quality(args.classifier_quality_json)
    num_classes, classes_from = shipped_num_classes()
    tf = _limit_tf_threads()  # after the cheap checks: a typo does not wait for TensorFlow

    sep_rows = []
    for cfg in sep_cfgs:
        log(f"separator {cfg.name}")
        row = bench_separator(cfg, args.flavours, args.threads, args.runs)
        row["quality"] = sep_q.get(cfg.name)
        sep_rows.append(row)
    cls_rows = []
    for cfg in cls_cfgs:
        log(f"classifier {cfg.name}")
        row = bench_classifier(cfg, num_classes, args.flavours, args.threads, args.runs)
        row["quality"] = cls_q.get(cfg.name)
        cls_rows.append(row)
    return {
        "machine": {
            "arch": platform.machine(),
            "processor": platform.processor(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": {"tensorflow": tf.__version__, "ai-edge-litert": version("ai-edge-litert")},
        "threads": args.threads,
        "runs": args.runs,
        "flavours": list(args.flavours),
        "window_samples": WINDOW_SAMPLES,
        "classifier_input": [1, *FEATURE_SHAPE],
        "classifier_num_classes_from": classes_from,
        "separators": sep_rows,
        "classifiers": cls_rows,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--separators", nargs="+", metavar="NAME", help="default: all but tiny")
    p.add_argument("--classifiers", nargs="+", metavar="NAME", help="default: all but tiny")
    p.add_argument("--flavours", nargs="+", choices=FLAVOURS, default=["dynamic", "int8"])
    p.add_argument("--threads", type=int, default=1, help="LiteRT threads (default: 1)")
    p.add_argument("--runs", type=int, default=10, help="timed invokes per model (default: 10)")
    p.add_argument(
        "--quality-json",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="more eval-separator JSON files (preset, momi_db)",
    )
    p.add_argument(
        "--classifier-quality-json",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="more eval-classifier ensemble JSON files (next to their member-* runs)",
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--markdown", type=Path, default=None, help="write the two tables here")
    args = p.parse_args()
    if args.runs < 1 or args.threads < 1:
        p.error("--runs and --threads must be >= 1")
    try:
        result = run(args)
    except ChorusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sep_table = separator_table(result["separators"], args.flavours)
    cls_table = classifier_table(result["classifiers"], args.flavours)
    m = result["machine"]
    cpu = " ".join(x for x in (m["arch"], m["processor"]) if x)
    print(f"# {cpu}, {m['cpus']} CPUs, LiteRT, {args.threads} thread(s), {args.runs} runs\n")
    print(f"Separator presets (waveform 1 x {WINDOW_SAMPLES} -> sources)\n\n{sep_table}\n")
    print(f"Classifier presets (member network, features 1 x 501 x 160 -> logits)\n\n{cls_table}\n")
    for note in skipped_notes(result["separators"]) + skipped_notes(result["classifiers"]):
        print(f"skipped: {note}")
    tables = f"{sep_table}\n\n{cls_table}\n"
    for path, text in ((args.json, json.dumps(result, indent=1) + "\n"), (args.markdown, tables)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
