"""Invoke time and size of every TFLite model in a folder (per flavour), in LiteRT.

    .venv/bin/python benchmarks/flavours.py runs/flavours   # written by export --flavours-dir
    .venv/bin/python benchmarks/flavours.py agent/bundles/default --threads 1 2 --runs 20

Prints a table (file, size, input shape, op kinds, median/p95 ms per invoke at each thread
count) and writes it as JSON (``--json``). One 5-s window per invoke, random input scaled like
audio (peak 0.5); the first invoke (allocation, XNNPACK packing) is a warm-up and not counted.
Nothing is asserted: compare figures from the same machine only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def time_model(path: Path, threads: int, runs: int) -> dict[str, float]:
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    shape = tuple(int(d) for d in inp["shape"])
    x = (0.5 * np.random.default_rng(0).uniform(-1, 1, shape)).astype(np.float32)
    interp.set_tensor(inp["index"], x)
    interp.invoke()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def describe(path: Path) -> dict[str, object]:
    interp = Interpreter(model_path=str(path))
    (inp,) = interp.get_input_details()
    ops = {d["op_name"] for d in interp._get_ops_details()}
    return {
        "file": path.name,
        "size_kb": path.stat().st_size / 1000,
        "input": [int(d) for d in inp["shape"]],
        "op_kinds": len(ops),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="folder with .tflite files")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=10, help="timed invokes per model (default: 10)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    files = sorted(args.folder.glob("*.tflite"))
    if not files:
        p.error(f"{args.folder}: no .tflite files")
    rows = []
    head = f"{'file':<34} {'kB':>7} {'input':>16} {'ops':>4}"
    head += "".join(f" {f'{t}T med':>8} {f'{t}T p95':>8}" for t in args.threads)
    print(f"# {platform.machine()} {platform.processor() or ''}, LiteRT, {args.runs} runs\n{head}")
    for f in files:
        row = describe(f)
        for t in args.threads:
            row[f"{t}t"] = time_model(f, t, args.runs)
        rows.append(row)
        line = f"{f.name:<34} {row['size_kb']:7.0f} {row['input']!s:>16} {row['op_kinds']:4d}"
        for t in args.threads:
            m = row[f"{t}t"]
            line += f" {m['median_ms']:8.1f} {m['p95_ms']:8.1f}"
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
