"""``chorus-agent``: run the field agent, analyse recordings, check configs, list devices, demo.

User mistakes (bad config, missing bundle, unreadable audio) end with one line per problem on
stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig, load_config, parse_config, to_yaml
from agent.errors import ChorusError, ConfigError

log = logging.getLogger("agent")


def _setup_logging(level: str) -> None:
    # Under systemd, journald stamps time and unit itself.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


def _config(path: str | None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    config = load_config(path) if path else parse_config({}, "defaults")
    if overrides:
        data = config.model_dump(mode="python")
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            data[section][key] = value
        config = parse_config(data, path or "defaults")
    return config


def _parse_utc(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            [f"--start-utc: not an ISO 8601 time, got {text!r}"], "arguments"
        ) from None
    if t.tzinfo is None:
        raise ConfigError(
            [f"--start-utc: needs a timezone (e.g. {text}Z), got {text!r}"], "arguments"
        )
    return t


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.app import build_models

    config = _config(args.config)
    models = build_models(config)  # also validates the bundle and the species lists against it
    m = models.bundle.manifest
    print(
        f"{args.config}: OK (bundle {m.name} {m.version}, {len(models.classifiers)} classifier(s), "
        f"mode {config.inference.mode}, source {config.audio.source})"
    )
    if args.print:
        print(to_yaml(config), end="")
    return 0


def cmd_check_bundle(args: argparse.Namespace) -> int:
    from agent.models.verify import verify_bundle

    # Hashes and sizes, builtin ops only, shapes, golden smoke test; the first failure raises
    # BundleError (one line, exit 2).
    report = verify_bundle(args.bundle)
    print(report.format())
    print(f"{args.bundle}: {report.name} {report.version}: {report.golden}")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from agent.selftest import format_table, run_selftest

    config = _config(args.config)  # an invalid config exits 2 with its own message
    checks = run_selftest(config, mic_seconds=args.mic_seconds)
    print(format_table(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_devices(args: argparse.Namespace) -> int:
    from agent.audio.devices import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices found")
        return 1
    for d in devices:
        star = "*" if d.get("is_default") else " "
        print(
            f"{star}{d['index']:>3}  {d['name']}  ({d['hostapi']}, {d['max_input_channels']} ch, "
            f"{d['default_samplerate']:.0f} Hz)"
        )
    return 0


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("%s received: draining the pipeline", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.app import build_engine, build_live_sinks, run_live
    from agent.audio.factory import make_sources

    config = _config(args.config)
    _setup_logging(args.log_level or config.log_level)
    if config.updates.enabled:  # before any model loads: count the restart, undo a crash loop
        from agent.ota.updater import prepare_start

        prepare_start(config)
    engine = build_engine(config)
    sources = make_sources(config.audio, engine.models.sample_rate_hz)
    sinks = build_live_sinks(config)
    stop = threading.Event()
    _install_stop_handlers(stop)
    log.info(
        "chorus-agent %s running as %s (source %s, mode %s)",
        __version__,
        config.device_id,
        config.audio.source,
        config.inference.mode,
    )
    stats = run_live(engine, sources, sinks, stop)
    log.info(
        "stopped: %d windows, %d detections, real-time factor %.3f",
        stats.windows,
        stats.detections,
        stats.real_time_factor,
    )
    return 0


def _print_report(report: Any) -> None:
    rtf = report.audio_s / report.wall_s if report.wall_s else float("inf")
    print(
        f"analysed {len(report.files)} file(s), {report.audio_s:.1f} s of audio in "
        f"{report.wall_s:.1f} s ({rtf:.1f}x real time); "
        f"{report.stats['detections']} detection(s) -> {report.out_dir}"
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    from agent.app import analyze_files, build_engine

    overrides = {"inference.mode": args.mode} if args.mode else None
    if args.bundle:
        overrides = {**(overrides or {}), "inference.bundle": args.bundle}
    config = _config(args.config, overrides)
    engine = build_engine(config)
    report = analyze_files(
        engine,
        args.files,
        args.out,
        _parse_utc(args.start_utc),
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    _print_report(report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo_run import run_demo

    return run_demo(
        Path(args.out), duration_s=args.duration_s, seed=args.seed, synthetic=args.synthetic
    )


def _model_store(args: argparse.Namespace) -> Any:
    from agent.ota.updater import store_for

    config = _config(args.config)
    if not config.updates.enabled:
        raise ConfigError(
            ["updates.enabled: false, so the agent does not use the model store"],
            args.config or "defaults",
        )
    return store_for(config), config


def cmd_models(args: argparse.Namespace) -> int:
    store, config = _model_store(args)
    if args.models_action == "list":
        pending = store.read_state().get("pending")
        for v in store.versions():
            marks = [
                m
                for m, on in (
                    ("active", v.active),
                    ("previous", v.previous),
                    ("factory", v.factory),
                    ("rolled back", v.refused),
                )
                if on
            ]
            if v.active and pending:
                marks.append(f"unconfirmed, {pending.get('restarts', 0)} restart(s)")
            star = "*" if v.active else " "
            print(f"{star} {v.name} {v.version:<12} {', '.join(marks) or '-':<32} {v.path}")
        return 0
    if args.models_action == "activate":
        path = store.find(args.version)
        store.activate(path, None, "activated by hand (chorus-agent models activate)")
        print(
            f"activated {path.name}; restart the agent to load it (confirmed after "
            f"{config.updates.confirm_windows} healthy windows, else rolled back)"
        )
        return 0
    back = store.rollback("rolled back by hand (chorus-agent models rollback)")
    print(f"rolled back to {back}; restart the agent to load it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chorus-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"chorus-agent {__version__}")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "run", help="run the live agent (microphone, paced file or synthetic source)"
    )
    s.add_argument("--config", "-c", required=True, help="agent YAML config")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "analyze", help="analyse recordings offline; writes JSONL, CSV, Raven tables"
    )
    s.add_argument("files", nargs="+", help="WAV/FLAC files")
    s.add_argument("--out", "-o", required=True, help="output folder")
    s.add_argument("--config", "-c", help="agent YAML config (default: built-in defaults)")
    s.add_argument("--bundle", help="model bundle folder (overrides inference.bundle)")
    s.add_argument("--mode", choices=["mix_only", "separated_only", "mix_and_separated"])
    s.add_argument(
        "--start-utc",
        help="UTC time of the first sample (default: from the file name "
        "YYYYMMDD_HHMMSS, else the file's modification time)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("check-config", help="validate a config (and its bundle) and exit")
    s.add_argument("config")
    s.add_argument("--print", action="store_true", help="print the effective config")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser(
        "check-bundle",
        help="verify a model bundle (hashes, sizes, ops, shapes) and run its golden smoke test",
    )
    s.add_argument("bundle")
    s.set_defaults(func=cmd_check_bundle)

    s = sub.add_parser(
        "selftest", help="check config, models, microphone, broker and disk; pass/fail table"
    )
    s.add_argument("--config", "-c", help="agent YAML config (default: built-in defaults)")
    s.add_argument("--mic-seconds", type=float, default=3.0, help="how long to record (s)")
    s.set_defaults(func=cmd_selftest)

    s = sub.add_parser("devices", help="list audio input devices")
    s.set_defaults(func=cmd_devices)

    s = sub.add_parser(
        "demo", help="analyse the shipped demo soundscape with the shipped bundle and score it"
    )
    s.add_argument(
        "--out", "-o", default="chorus-demo", help="output folder (default: chorus-demo)"
    )
    s.add_argument(
        "--synthetic",
        action="store_true",
        help="instead: a generated soundscape of six demo sources with the hand-set plumbing "
        "bundle (agent/bundles/demo)",
    )
    s.add_argument("--duration-s", type=float, default=60.0, help="with --synthetic")
    s.add_argument("--seed", type=int, default=0, help="with --synthetic")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "models", help="installed model bundles (OTA store): list, activate a version, roll back"
    )
    config_arg = argparse.ArgumentParser(add_help=False)
    config_arg.add_argument("--config", "-c", help="agent YAML config (needs updates.enabled)")
    actions = s.add_subparsers(dest="models_action", required=True, metavar="ACTION")
    actions.add_parser(
        "list", parents=[config_arg], help="installed versions; * marks the active one"
    )
    a = actions.add_parser(
        "activate", parents=[config_arg], help="make an installed version current (restart after)"
    )
    a.add_argument("version", help="version (or folder name <name>-<version>)")
    actions.add_parser(
        "rollback", parents=[config_arg], help="go back to the previous version (restart after)"
    )
    s.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level or "WARNING")
    try:
        try:
            return int(args.func(args))
        except ConfigError as exc:
            if exc.source != "config":
                raise
            # Found after parsing (an unknown species in the bundle, an unusable output path):
            # name the file the key is in, as a parse error does.
            raise ConfigError(exc.problems, getattr(args, "config", None) or "defaults") from None
    except ChorusError as exc:
        for line in str(exc).splitlines():
            print(f"chorus-agent: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
