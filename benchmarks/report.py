"""Run the benchmark suite and regenerate the measured tables of ``docs/performance.md``.

    .venv/bin/python benchmarks/report.py                      # everything, real sizes (~25 min)
    .venv/bin/python benchmarks/report.py --peer-birdnet BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite
    .venv/bin/python benchmarks/report.py --skip presets mqtt  # keep those tables from --work
    .venv/bin/python benchmarks/report.py --from-json --dry-run  # re-render only, print it

Runs ``pipeline.py`` (stage times, ``chorus-agent analyze`` RTF and peak RSS, the streaming soak
of ``chorus-agent run``), ``flavours.py`` (every .tflite of ``--flavours-dir``), ``presets.py``
(preset cost beside trained quality) and ``mqtt_bench.py --only latency`` as child processes with
this Python, each writing its figures into ``--work`` (default ``runs/perf/``). Then renders
Markdown tables, checks the issue's targets, and writes the result between the markers
``<!-- measured:begin -->`` and ``<!-- measured:end -->`` of ``docs/performance.md`` (nothing
outside them changes) and to ``<work>/performance-measured.md``. A skipped part keeps the figures
an earlier run left in ``--work``, marked as such. Nothing is asserted: a missed target is a
"fail" row in the table, not a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
PARTS = ("pipeline", "soak", "flavours", "presets", "mqtt")
MODES = ("mix_only", "mix_and_separated")
# modeltools.export.convert.FLAVOURS, repeated so rendering needs no modeltools import.
FLAVOURS = ("float32", "float16", "dynamic", "int8", "int16x8")
DASH = "—"

# The targets.
RTF_MAX = 0.03  # full pipeline (mix + separated), 1 thread
PEAK_RSS_MAX_MB = 150.0  # streaming soak, mix + separated
HOP_S = 5.0  # detection latency p95 must stay within one hop
RSS_GROWTH_MAX_PCT = 5.0
# Fewer RSS samples (0.5 s apart) than this and the soak's "warm" window falls in model loading.
MIN_SOAK_SAMPLES = 40
# Cost per audio second relative to BirdNET V2.4 at 1 thread.
MIX_ONLY_MAX_X_BIRDNET = 0.7  # issue 11: mix-only cost <= 0.7x BirdNET per audio second
FULL_MAX_X_BIRDNET = 3.0


class StepFailed(Exception):
    """A benchmark child process exited non-zero."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- running ----------------------------------------------------------------------------------


def commands(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    """The child command of each part to run (options the user left out: the script's default)."""
    py = sys.executable
    runs = ["--runs", str(args.runs)] if args.runs else []
    threads = [str(t) for t in args.threads]
    cmds: dict[str, list[str]] = {}
    if "pipeline" not in args.skip:
        soak_s = 0.0 if "soak" in args.skip else args.soak_s
        cmd = [py, str(BENCH / "pipeline.py"), "--bundle", str(args.bundle.resolve())]
        cmd += ["--threads", *threads, "--long-s", f"{args.long_s:g}", "--soak-s", f"{soak_s:g}"]
        cmd += [*runs, "--json", str(work / "pipeline.json")]
        if args.peer_birdnet:
            cmd += ["--peer-birdnet", str(args.peer_birdnet.resolve())]
        cmds["pipeline"] = cmd
    if "flavours" not in args.skip and args.flavours_dir.is_dir():
        cmd = [py, str(BENCH / "flavours.py"), str(args.flavours_dir.resolve())]
        cmds["flavours"] = [
            *cmd,
            "--threads",
            *threads,
            *runs,
            "--json",
            str(work / "flavours.json"),
        ]
    if "presets" not in args.skip:
        # One LiteRT thread: presets.py is built to share a machine (TensorFlow on one core too).
        cmd = [py, str(BENCH / "presets.py"), "--threads", str(args.threads[0]), *runs]
        cmds["presets"] = [*cmd, "--json", str(work / "presets.json")]
        cmds["presets"] += ["--markdown", str(work / "presets.md")]
    if "mqtt" not in args.skip:
        cmd = [py, str(BENCH / "mqtt_bench.py"), "--only", "latency"]
        if args.latency_s:
            cmd += ["--duration-s", f"{args.latency_s:g}"]
        cmds["mqtt"] = cmd
    return cmds


def run_step(name: str, cmd: list[str], work: Path) -> str:
    """Run one benchmark; echo its stdout to stderr as progress; return the stdout."""
    log(f"running {Path(cmd[1]).name} ... ({' '.join(cmd[2:])})")
    err_path = work / f"{name}.stderr.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    lines: list[str] = []
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log(f"  | {line.rstrip()}")
        proc.wait()
    out = "".join(lines)
    (work / f"{name}.stdout.txt").write_text(out)
    if proc.returncode != 0:
        tail = err_path.read_text().strip().splitlines()[-15:]
        raise StepFailed(
            f"{Path(cmd[1]).name} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            + "\n".join(f"  {x}" for x in tail)
        )
    log(f"{Path(cmd[1]).name} done in {(time.monotonic() - t0) / 60:.1f} min")
    return out


def parse_latency(stdout: str) -> dict[str, Any]:
    """The figures ``mqtt_bench.py --only latency`` prints (it writes no JSON)."""
    out: dict[str, Any] = {}
    m = re.search(r"(\d+) detections from (\d+) windows \(real-time factor ([\d.]+)\)", stdout)
    if m:
        out.update(detections=int(m[1]), windows=int(m[2]), rtf=float(m[3]))
    num = r"\s+p50\s+([\d.]+) ms\s+p95\s+([\d.]+) ms\s+max\s+([\d.]+) ms"
    for key, label in (
        ("end_to_puback", r"window end -> PUBACK"),
        ("end_to_commit", r"window end -> outbox commit"),
        ("commit_to_puback", r"outbox commit -> PUBACK"),
    ):
        m = re.search(label + num, stdout)
        if m:
            out[key] = {"p50_ms": float(m[1]), "p95_ms": float(m[2]), "max_ms": float(m[3])}
    m = re.search(r"stream, (\d+) s", stdout)
    if m:
        out["duration_s"] = float(m[1])
    return out


def bundle_meta(bundle: Path) -> dict[str, str]:
    try:
        man = json.loads((bundle / "manifest.json").read_text())
        return {"name": str(man["name"]), "version": str(man["version"])}
    except (OSError, ValueError, KeyError):
        return {"name": bundle.name, "version": "?"}


def machine_meta(args: argparse.Namespace) -> dict[str, Any]:
    try:
        litert = version("ai-edge-litert")
    except PackageNotFoundError:
        litert = "not installed"
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "litert": litert,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "bundle_path": str(args.bundle.resolve()),
        "bundle": bundle_meta(args.bundle),
        "threads": args.threads,
        "long_s": args.long_s,
        "soak_s": args.soak_s,
        "runs": args.runs,
        "peer_birdnet": args.peer_birdnet.name if args.peer_birdnet else None,
    }


OUTPUTS = {
    "pipeline": ["pipeline.json"],
    "flavours": ["flavours.json"],
    "presets": ["presets.json", "presets.md"],
    "mqtt": ["mqtt.json"],
}


def run_all(args: argparse.Namespace, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "meta.json").write_text(json.dumps(machine_meta(args), indent=1) + "\n")
    cmds = commands(args, work)
    if "flavours" not in args.skip and "flavours" not in cmds:
        log(f"note: {args.flavours_dir} does not exist: no flavours table")
        (work / "flavours.json").unlink(missing_ok=True)
    for name, cmd in cmds.items():
        for f in OUTPUTS[name]:  # a failed run must not leave an earlier run's figures behind
            (work / f).unlink(missing_ok=True)
        out = run_step(name, cmd, work)
        if name == "mqtt":
            (work / "mqtt.json").write_text(json.dumps(parse_latency(out), indent=1) + "\n")


# -- rendering --------------------------------------------------------------------------------


def _num(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return format(x, fmt)


def _ms(x: Any) -> str:
    """Milliseconds with about three significant digits."""
    if x is None or not math.isfinite(x):
        return DASH
    return format(x, ".0f" if x >= 100 else ".1f" if x >= 10 else ".2f" if x >= 1 else ".3f")


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _load(work: Path, name: str) -> Any:
    path = work / name
    return json.loads(path.read_text()) if path.is_file() else None


def _thread_keys(d: dict[str, Any], prefix: str) -> list[int]:
    found = (re.fullmatch(rf"{prefix}(\d+)t", k) for k in d)
    return sorted(int(m[1]) for m in found if m)


def _rtf(r: dict[str, Any]) -> float:
    """The pipeline's own RTF where ``summary.json`` had it, else the process's (as pipeline.py)."""
    inner = r.get("rtf_pipeline")
    return float(inner) if inner is not None and math.isfinite(inner) else float(r["rtf_process"])


def stages_section(pipe: dict[str, Any]) -> str:
    threads = _thread_keys(pipe, "stages_")
    if not threads:
        return "Not measured (pipeline.py ran without stage timings)."
    names: list[str] = []
    for t in threads:
        names += [n for n in pipe[f"stages_{t}t"] if n not in names]
    head = ["stage"] + [
        f"{t} thread{'s' * (t > 1)}: {q}" for t in threads for q in ("median", "p95")
    ]
    rows = []
    for n in names:
        row = [n]
        for t in threads:
            r = pipe[f"stages_{t}t"].get(n)
            row += [_ms(r["median_ms"]), _ms(r["p95_ms"])] if r else [DASH, DASH]
        rows.append(row)
    return "ms per 5-s window (demo soundscape):\n\n" + _table(head, rows)


def analyze_section(pipe: dict[str, Any]) -> str:
    rows, audio_s = [], None
    for mode in MODES:
        for t in _thread_keys(pipe, f"analyze_{mode}_"):
            r = pipe[f"analyze_{mode}_{t}t"]
            audio_s = r["audio_s"]
            rtf = _rtf(r)
            rows.append(
                [mode, str(t), f"{rtf:.4f}", _ms(1000 * rtf), _num(r["peak_rss_mb"], ".0f")]
            )
    if not rows:
        return "Not measured (pipeline.py ran with `--no-pipeline`)."
    head = ["mode", "threads", "RTF", "ms per audio s", "peak RSS MB"]
    return (
        f"`chorus-agent analyze` on a {audio_s:.0f}-s file, hop 5 s (RTF: the pipeline's wall "
        "time / audio time; peak RSS of the whole process, which holds the file):\n\n"
        + _table(head, rows)
    )


def soak_rows(pipe: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    return [
        (mode, t, pipe[f"soak_{mode}_{t}t"])
        for mode in MODES
        for t in _thread_keys(pipe, f"soak_{mode}_")
    ]


def soak_section(pipe: dict[str, Any]) -> str:
    rows = [
        [
            mode,
            str(t),
            f"{r['audio_s'] / 3600:.2f}",
            f"{r['rtf_process']:.4f}",
            _num(r["rss_warm_mb"], ".0f"),
            _num(r["rss_end_mb"], ".0f"),
            _num(r["rss_growth_pct"], "+.1f"),
            _num(r["peak_rss_mb"], ".0f"),
        ]
        for mode, t, r in soak_rows(pipe)
    ]
    if not rows:
        return "Not measured (`--soak-s 0` or `--skip soak`)."
    head = ["mode", "threads", "audio h", "RTF", "RSS warm MB", "RSS end MB", "growth %", "peak MB"]
    return (
        "`chorus-agent run` streaming the demo soundscape from files, not paced; resident memory "
        "sampled every 0.5 s (warm: median over 10–20 % of the run, end: over the last 10 %; "
        "peak: the kernel's high-water mark):\n\n" + _table(head, rows)
    )


def _split_flavour(stem: str) -> tuple[str, str]:
    for fl in FLAVOURS:
        if stem.endswith(f"_{fl}"):
            return stem[: -len(fl) - 1], fl
    return stem, DASH


def flavours_section(rows: list[dict[str, Any]] | None, note: str) -> str:
    if rows is None:
        return note
    threads = sorted({t for r in rows for t in _thread_keys(r, "")})
    order = {fl: i for i, fl in enumerate(FLAVOURS)}
    parsed = sorted(
        ((*_split_flavour(Path(r["file"]).stem), r) for r in rows),
        key=lambda x: (x[0], order.get(x[1], len(order))),
    )
    head = ["model", "flavour", "size kB", "op kinds"]
    head += [f"{t}T {q} ms" for t in threads for q in ("median", "p95")]
    body = []
    for model, fl, r in parsed:
        row = [model, fl, f"{r['size_kb']:.0f}", str(r["op_kinds"])]
        for t in threads:
            m = r.get(f"{t}t")
            row += [_ms(m["median_ms"]), _ms(m["p95_ms"])] if m else [DASH, DASH]
        body.append(row)
    return "One 5-s window per invoke, LiteRT, after one warm-up invoke:\n\n" + _table(head, body)


def presets_section(work: Path) -> str:
    data, md_path = _load(work, "presets.json"), work / "presets.md"
    if data is None or not md_path.is_file():
        return "Not measured (`--skip presets`)."
    tables = [t for t in md_path.read_text().strip().split("\n\n") if t.strip()]
    sep, cls = [*tables, "", ""][:2]
    notes = [
        v["skipped"]
        for key in ("separators", "classifiers")
        for r in data.get(key, [])
        for v in r["flavours"].values()
        if "skipped" in v
    ]
    text = (
        f"Random weights, LiteRT {data['threads']} thread(s), {data['runs']} timed invokes; "
        "quality from trained runs only.\n\n"
        f"Separator presets (waveform 1 × {data['window_samples']} → sources):\n\n{sep}\n\n"
        f"Classifier presets (member network, features 1 × 501 × 160 → logits):\n\n{cls}"
    )
    if notes:
        text += "\n\n" + "\n".join(f"* skipped: {n}" for n in notes)
    return text


def latency_section(lat: dict[str, Any] | None) -> str:
    if lat is None:
        return "Not measured (`--skip mqtt`)."
    if "end_to_puback" not in lat:
        return "No detection was acknowledged by the broker: latency not measured."
    labels = {
        "end_to_puback": "window end → broker PUBACK",
        "end_to_commit": "window end → outbox commit",
        "commit_to_puback": "outbox commit → PUBACK",
    }
    rows = [
        [label, _ms(lat[k]["p50_ms"]), _ms(lat[k]["p95_ms"]), _ms(lat[k]["max_ms"])]
        for k, label in labels.items()
        if k in lat
    ]
    dur = lat.get("duration_s")
    intro = (
        "`mqtt_bench.py --only latency`: the real pipeline (shipped bundle) on a real-time "
        f"synthetic stream{f' of {dur:.0f} s' if dur else ''}, every window reported, to a local "
        f"Mosquitto at QoS 1; {lat.get('detections', '?')} detections from "
        f"{lat.get('windows', '?')} windows:\n\n"
    )
    return intro + _table(["path", "p50 ms", "p95 ms", "max ms"], rows)


def _analyze_1t(pipe: dict[str, Any] | None, mode: str) -> float | None:
    r = (pipe or {}).get(f"analyze_{mode}_1t")
    return 1000 * _rtf(r) if r else None


def birdnet_section(pipe: dict[str, Any] | None) -> str:
    bn = (pipe or {}).get("birdnet_1t")
    if bn is None:
        return "No peer file was given (`--peer-birdnet PATH`): no BirdNET comparison."
    rows = [["BirdNET V2.4 (one invoke per 3-s window)", _ms(bn["ms_per_audio_s"]), "1.00"]]
    for mode, label in (("mix_only", "Chorus, mix only"), ("mix_and_separated", "Chorus, full")):
        ms = _analyze_1t(pipe, mode)
        ratio = f"{ms / bn['ms_per_audio_s']:.2f}" if ms is not None else DASH
        rows.append([label, _ms(ms), ratio])
    return (
        "1 thread, same run and machine. BirdNET is timed as its interpreter invoke alone (its "
        "spectrogram is inside the model); Chorus as the whole `chorus-agent analyze` pipeline "
        "(resampling, frontend, every model, combination, sinks):\n\n"
        + _table(["", "ms per audio s", "× BirdNET"], rows)
    )


def _target(name: str, value: float | None, limit: float, fmt: str, missing: str) -> list[str]:
    """One targets row: what, measured value (``fmt``), pass/fail; or why it was not measured."""
    if value is None or not math.isfinite(value):
        return [name, f"not measured: {missing}", DASH]
    return [name, fmt.format(value), "pass" if value <= limit else "**fail**"]


def targets_section(pipe: dict[str, Any] | None, lat: dict[str, Any] | None) -> str:
    full_ms = _analyze_1t(pipe, "mix_and_separated")
    rows = [
        _target(
            f"full-pipeline RTF ≤ {RTF_MAX:g} at 1 thread (analyze, mix + separated)",
            full_ms / 1000 if full_ms is not None else None,
            RTF_MAX,
            "{:.4f}",
            "no 1-thread analyze run",
        )
    ]
    bn = (pipe or {}).get("birdnet_1t")
    for mode, label, limit in (
        ("mix_only", "mix-only", MIX_ONLY_MAX_X_BIRDNET),
        ("mix_and_separated", "full-pipeline", FULL_MAX_X_BIRDNET),
    ):
        ms = _analyze_1t(pipe, mode)
        x = ms / bn["ms_per_audio_s"] if bn and ms is not None else None
        why = "no peer file" if not bn else "no 1-thread analyze run"
        name = f"{label} cost ≤ {limit:g} × BirdNET's per audio second (1 thread)"
        rows.append(_target(name, x, limit, "{:.2f} ×", why))
    soaks = {mode: r for mode, _, r in soak_rows(pipe or {})}
    rows.append(
        _target(
            f"streaming peak RSS ≤ {PEAK_RSS_MAX_MB:.0f} MB (soak, mix + separated)",
            soaks.get("mix_and_separated", {}).get("peak_rss_mb"),
            PEAK_RSS_MAX_MB,
            "{:.0f} MB",
            "no soak run",
        )
    )
    p95_ms = (lat or {}).get("end_to_puback", {}).get("p95_ms")
    rows.append(
        _target(
            f"detection latency p95 ≤ one hop ({HOP_S:g} s), window end → PUBACK",
            p95_ms / 1000 if p95_ms is not None else None,
            HOP_S,
            "{:.2f} s",
            "no mqtt run",
        )
    )
    for mode in MODES if soaks else ("mix_and_separated",):
        soak = soaks.get(mode, {})
        n = soak.get("rss_samples", 0)
        short = bool(soak) and n < MIN_SOAK_SAMPLES
        rows.append(
            _target(
                f"RSS growth ≤ {RSS_GROWTH_MAX_PCT:g} % over the soak ({mode})",
                None if short else soak.get("rss_growth_pct"),
                RSS_GROWTH_MAX_PCT,
                "{:+.1f} %",
                f"soak too short ({n} RSS samples)" if short else "no soak run",
            )
        )
    return _table(["target", "measured", "result"], rows)


def render(work: Path, meta: dict[str, Any], kept: set[str], flavours_note: str) -> str:
    """The Markdown block that goes between the markers."""
    pipe, lat = _load(work, "pipeline.json"), _load(work, "mqtt.json")
    b = meta["bundle"]
    out = [
        "<!-- generated by benchmarks/report.py: edits inside this block are overwritten -->",
        "",
        f"Measured {meta['date']} on {meta['machine']}, {meta['cpus']} CPUs, LiteRT "
        f"{meta['litert']}, Python {meta.get('python', '?')}; bundle `{b['name']}` {b['version']}.",
    ]
    if kept:
        out.append(
            f"Kept from an earlier run in the work folder: {', '.join(sorted(kept))} "
            "(their tables may be older than the date above)."
        )

    def section(title: str, body: str) -> None:
        out.extend(["", f"### {title}", "", body])

    section("Targets", targets_section(pipe, lat))
    no_pipe = "Not measured (`--skip pipeline`)."
    section("Per-stage cost", stages_section(pipe) if pipe else no_pipe)
    section("Whole pipeline", analyze_section(pipe) if pipe else no_pipe)
    section("Streaming soak", soak_section(pipe) if pipe else no_pipe)
    section("BirdNET as the peer", birdnet_section(pipe))
    section("TFLite flavours", flavours_section(_load(work, "flavours.json"), flavours_note))
    section("Presets: cost and quality", presets_section(work))
    section("Detection latency over MQTT", latency_section(lat))
    return "\n".join(out) + "\n"


# -- writing ----------------------------------------------------------------------------------


def replace_block(text: str, block: str) -> str | None:
    """``text`` with ``block`` between the markers; None if they are missing or out of order."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        return None
    head, rest = text.split(BEGIN)
    if END not in rest:  # END comes before BEGIN
        return None
    tail = rest.split(END)[1]
    return f"{head}{BEGIN}\n{block.rstrip()}\n{END}{tail}"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/perf"), help="JSON and logs (runs/perf)")
    p.add_argument(
        "--bundle",
        type=Path,
        default=ROOT / "agent" / "bundles" / "default",
        help="model bundle (default: agent/bundles/default)",
    )
    p.add_argument(
        "--flavours-dir",
        type=Path,
        default=Path("runs/flavours"),
        help="folder of .tflite flavours (runs/flavours; no table if it is missing)",
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="(default: 1 2)")
    p.add_argument("--soak-s", type=float, default=7200.0, help="soak audio seconds (7200)")
    p.add_argument("--long-s", type=float, default=300.0, help="analyze file seconds (300)")
    p.add_argument("--runs", type=int, default=None, help="timed repetitions (each script's)")
    p.add_argument("--latency-s", type=float, default=None, help="MQTT latency stream (30)")
    p.add_argument("--peer-birdnet", type=Path, default=None, help="BirdNET V2.4 .tflite file")
    p.add_argument("--skip", nargs="+", choices=PARTS, default=[], help="parts not to run")
    p.add_argument("--from-json", action="store_true", help="only re-render from --work")
    p.add_argument("--dry-run", action="store_true", help="print the Markdown, docs untouched")
    args = p.parse_args(argv)
    if args.peer_birdnet and not args.peer_birdnet.is_file():
        p.error(f"--peer-birdnet {args.peer_birdnet}: no such file")
    if not args.bundle.is_dir():
        p.error(f"--bundle {args.bundle}: no such folder")
    if not args.dry_run and replace_block(DOC.read_text(), "") is None:
        print(
            f"error: {_shown(DOC)} has no '{BEGIN}' ... '{END}' markers (one of each, "
            "in that order): add them where the measured tables should go",
            file=sys.stderr,
        )
        return 2
    work = args.work.resolve()  # the children run in the repository root
    kept: set[str] = set()
    flavours_note = "Not measured (`--skip flavours`)."
    if args.from_json:
        if not work.is_dir():
            p.error(f"--work {work}: no such folder (run without --from-json first)")
        meta = _load(work, "meta.json")
        if meta is None:  # figures written by the scripts themselves: describe this machine
            pipe = _load(work, "pipeline.json") or {}
            args.bundle = Path(pipe.get("bundle", args.bundle))
            meta = machine_meta(args)
        flavours_note = "Not measured (no flavours.json in the work folder)."
    else:
        if "flavours" not in args.skip and not args.flavours_dir.is_dir():
            flavours_note = (
                f"Not measured: `{args.flavours_dir}` does not exist (write it with "
                "`chorus-models export --flavours-dir`)."
            )
        try:
            run_all(args, work)
        except StepFailed as exc:
            log(f"error: {exc}")
            return 1
        meta = _load(work, "meta.json")
        kept = {
            part
            for part in args.skip
            if part in OUTPUTS and all((work / f).is_file() for f in OUTPUTS[part])
        }
    md = render(work, meta, kept, flavours_note)
    (work / "performance-measured.md").write_text(md)
    if args.dry_run:
        print(md, end="")
        return 0
    new = replace_block(DOC.read_text(), md)
    if new is None:  # the markers went away while the benchmarks ran
        print(f"error: {_shown(DOC)} lost its measured markers", file=sys.stderr)
        return 2
    DOC.write_text(new)
    log(f"wrote {_shown(DOC)} and {work / 'performance-measured.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
