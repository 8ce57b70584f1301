"""Composition root: build the pipeline from a config and run it (live or offline).

Nothing else wires stages together; tests build pipelines through these functions too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.audio.chunk import AudioSource, StreamInfo
from agent.clips import ClipStore
from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.models.manifest import load_bundle
from agent.models.stages import LoadedModels, RuntimeOptions, load_models
from agent.pipeline import Inference, PipelineStats, StreamProcessor, run_stream
from agent.sinks import Sink

if TYPE_CHECKING:
    from agent.detection.types import Detection
    from agent.ota.updater import Updater

log = logging.getLogger(__name__)

BUNDLES = Path(__file__).resolve().parent / "bundles"
DEFAULT_BUNDLE = BUNDLES / "default"  # trained edge bundle (chorus-models export)
DEMO_BUNDLE = BUNDLES / "demo"  # hand-set plumbing models for the generated demo audio


def factory_bundle_path(config: AgentConfig) -> Path:
    """The configured bundle (``inference.bundle``, else the shipped default)."""
    return Path(config.inference.bundle) if config.inference.bundle else DEFAULT_BUNDLE


def bundle_path(config: AgentConfig) -> Path:
    """The bundle to load: with updates enabled the model store's ``current`` (the configured
    bundle until an update is activated), else the configured bundle."""
    if config.updates.enabled:
        from agent.ota.updater import store_for

        return store_for(config).current()
    return factory_bundle_path(config)


def check_config_against_models(config: AgentConfig, models: LoadedModels) -> None:
    """Species named in the detection section must exist in the classifiers' label tables."""
    bundle = models.bundle.manifest
    known = {lab.species_code for c in models.classifiers for lab in c.labels}
    source = (
        "backend birdnet" if config.classifier.backend == "birdnet" else f"bundle {bundle.name}"
    )
    det = config.detection
    problems = [
        f"detection.{key}: unknown species code {code!r} (not in {source})"
        for key, codes in (
            ("include", det.include),
            ("exclude", det.exclude),
            ("species_thresholds", list(det.species_thresholds)),
        )
        for code in codes
        if code not in known
    ]
    if problems:
        raise ConfigError(problems)


def build_models(config: AgentConfig, path: Path | None = None) -> LoadedModels:
    """Load the bundle at ``path`` (default :func:`bundle_path`) as ``config`` runs it."""
    bundle = load_bundle(path or bundle_path(config))
    if config.inference.mode != "mix_only" and bundle.manifest.separator is None:
        raise ConfigError(
            [
                f"inference.mode: {config.inference.mode!r} needs a separator, but bundle "
                f"{bundle.manifest.name} has none (use mix_only)"
            ]
        )
    options = RuntimeOptions(
        config.inference.num_threads, config.inference.accelerator, config.inference.frontend
    )
    birdnet = config.classifier.backend == "birdnet"
    models = load_models(
        bundle,
        options,
        use_separator=config.inference.mode != "mix_only",
        load_classifiers=not birdnet,
    )
    if birdnet:
        from agent.models.birdnet import BirdNetClassifier

        bn = config.classifier.birdnet
        assert bn.model and bn.labels  # enforced by ClassifierConfig
        table = [lab for c in bundle.manifest.classifiers for lab in c.labels]
        models.classifiers = [
            BirdNetClassifier(
                bn.model,
                bn.labels,
                bn.sensitivity,
                bn.overlap_s,
                models.sample_rate_hz,
                models.window_samples,
                table,
                config.inference.num_threads,
            )
        ]
    if config.inference.combination == "bundle":
        models.combination = bundle.manifest.combination_for("birdnet" if birdnet else "chorus")
    lf = config.classifier.location_filter
    if lf.enabled:
        from agent.models.location import LocationFilter

        labels = lf.labels or config.classifier.birdnet.labels
        assert lf.meta_model and labels and config.location.latitude_deg is not None
        assert config.location.longitude_deg is not None
        models.species_filter = LocationFilter(
            lf.meta_model,
            labels,
            config.location.latitude_deg,
            config.location.longitude_deg,
            lf.week,
            lf.threshold,
        )
    check_config_against_models(config, models)
    return models


@dataclass
class Engine:
    """Loaded models + shared stats: makes a StreamProcessor for each stream."""

    config: AgentConfig
    models: LoadedModels
    stats: PipelineStats = field(default_factory=PipelineStats)

    def __post_init__(self) -> None:
        self.inference = Inference(self.models, self.config.inference.mode, self.stats)
        self.hop_samples = round(self.config.audio.hop_s * self.models.sample_rate_hz)
        self.window_s = self.models.window_samples / self.models.sample_rate_hz
        if abs(self.window_s - self.config.audio.window_s) > 1e-6:
            # The bundle fixes the window length; say so rather than silently ignoring the key.
            log.warning(
                "audio.window_s is %.3f s but the bundle's models take %.3f s windows; "
                "using the bundle's",
                self.config.audio.window_s,
                self.window_s,
            )
            if self.hop_samples > self.models.window_samples:
                raise ConfigError(
                    [
                        f"audio.hop_s: must be <= the bundle's window ({self.window_s} s), "
                        f"got {self.config.audio.hop_s}"
                    ]
                )

    def swap_models(
        self, models: LoadedModels, processor: StreamProcessor | None = None
    ) -> list[Detection]:
        """Switch to ``models`` between two windows (OTA): later streams use them, and
        ``processor`` (the running stream) from its next window on. Returns the detections of
        the events this closed (already emitted to the sinks)."""
        inference = Inference(models, self.config.inference.mode, self.stats)
        closed = processor.swap_inference(inference) if processor is not None else []
        self.models, self.inference = models, inference
        return closed

    def processor(
        self,
        info: StreamInfo,
        sinks: Sequence[Sink],
        on_window: Callable | None = None,
        clip_store: ClipStore | None = None,
    ) -> StreamProcessor:
        if info.sample_rate_hz != self.models.sample_rate_hz:
            raise ValueError(
                f"source yields {info.sample_rate_hz} Hz, models want "
                f"{self.models.sample_rate_hz} Hz"
            )
        return StreamProcessor(
            self.inference,
            info,
            self.hop_samples,
            self.config.detection,
            self.config.device_id,
            sinks,
            on_window,
            clip_store,
        )


def build_engine(config: AgentConfig) -> Engine:
    return Engine(config, build_models(config))


# ---------------------------------------------------------------------------------------------
# Offline analysis


@dataclass
class FileReport:
    path: str
    duration_s: float
    start_utc: str
    windows: int
    detections: int
    raven: str
    truncated: bool = False  # decoded less audio than the header promised (duration_s: decoded)
    nonfinite_s: float = 0.0  # NaN/Inf audio skipped as gaps


@dataclass
class AnalyzeReport:
    files: list[FileReport]
    stats: dict[str, float | int]
    wall_s: float
    out_dir: str

    @property
    def audio_s(self) -> float:
        return sum(f.duration_s for f in self.files)


def analyze_files(
    engine: Engine,
    files: Iterable[str | Path],
    out_dir: str | Path,
    start_utc: datetime | None = None,
    progress: bool = True,
) -> AnalyzeReport:
    """Analyse recordings as fast as possible; write detections.jsonl/.csv, one Raven table per
    file, and summary.json to ``out_dir``."""
    from agent.audio.file_source import iter_file_sources
    from agent.sinks.files import CsvSink, JsonlSink, OutputError, RavenSink

    # Every file is checked (exists, readable audio) before any output is written.
    sources = iter_file_sources(
        [Path(f) for f in files], engine.models.sample_rate_hz, realtime=False, start_utc=start_utc
    )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, no permission: one line, exit 2
        raise OutputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    for p in (out / "detections.jsonl", out / "detections.csv"):
        p.unlink(missing_ok=True)  # a re-run replaces, never appends to, old results
    shared: list[Sink] = [JsonlSink(out / "detections.jsonl"), CsvSink(out / "detections.csv")]
    reports: list[FileReport] = []
    t0 = time.perf_counter()
    stop = threading.Event()
    try:
        for source in sources:
            path = source.path
            raven_path = out / f"{path.stem}.selections.txt"
            raven = RavenSink(raven_path)
            bar = _ProgressBar(path.name, enabled=progress)
            windows_before = engine.stats.windows
            detections_before = engine.stats.detections
            nonfinite_before = engine.stats.nonfinite_samples

            def make(
                info: StreamInfo, raven: RavenSink = raven, bar: _ProgressBar = bar
            ) -> StreamProcessor:
                bar.start(info.duration_s)
                return engine.processor(
                    info, [*shared, raven], on_window=lambda r: bar.update(r.window.end_s)
                )

            try:
                info = run_stream(source, make, stop).info
            finally:
                raven.close()
                bar.close()
            reports.append(
                FileReport(
                    str(path),
                    round(source.decoded_s, 6),  # not the header's length: it may be truncated
                    info.start_utc.isoformat(),
                    engine.stats.windows - windows_before,
                    engine.stats.detections - detections_before,
                    str(raven_path),
                    source.truncated,
                    round(
                        (engine.stats.nonfinite_samples - nonfinite_before) / info.sample_rate_hz, 6
                    ),
                )
            )
    finally:
        for sink in shared:
            sink.close()
    report = AnalyzeReport(reports, engine.stats.as_dict(), time.perf_counter() - t0, str(out))
    summary = {
        "bundle": {
            "name": engine.models.bundle.manifest.name,
            "version": engine.models.bundle.manifest.version,
            "path": str(engine.models.bundle.path),
        },
        "mode": engine.config.inference.mode,
        "files": [f.__dict__ for f in reports],
        "audio_s": report.audio_s,
        "wall_s": round(report.wall_s, 3),
        "audio_s_per_wall_s": round(report.audio_s / report.wall_s, 2) if report.wall_s else None,
        "stats": report.stats,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return report


class _ProgressBar:
    """tqdm over audio seconds, only on long files and only when enabled."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled, self._bar, self._last = name, enabled, None, 0.0

    def start(self, duration_s: float | None) -> None:
        if self.enabled and duration_s and duration_s > 30:
            from tqdm import tqdm

            self._bar = tqdm(total=round(duration_s, 1), desc=self.name, unit="s", leave=False)

    def update(self, end_s: float) -> None:
        if self._bar is not None and end_s > self._last:
            self._bar.update(round(end_s - self._last, 3))
            self._last = end_s

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------------------------
# Live


def build_live_sinks(config: AgentConfig) -> list[Sink]:
    """The live sinks. With MQTT enabled the MQTT output comes first: its ``emit`` commits the
    detection to the outbox before any other sink (or the network) sees it."""
    from agent.sinks.files import CsvSink, JsonlSink, OutputError

    sinks: list[Sink] = []
    try:
        if config.mqtt.enabled:
            from agent.sinks.mqtt_output import MqttOutput

            sinks.append(MqttOutput(config))
        for key, path, sink_type in (
            ("jsonl", config.outputs.jsonl, JsonlSink),
            ("csv", config.outputs.csv, CsvSink),
        ):
            if path:
                try:
                    sinks.append(sink_type(path))
                except OutputError as exc:  # say which key holds the unusable path
                    raise ConfigError([f"outputs.{key}: {exc}"]) from None
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def build_clip_store(config: AgentConfig) -> ClipStore | None:
    c = config.storage.clips
    if not c.enabled:
        return None
    from agent.state import default_state_dir

    root = Path(c.dir) if c.dir else default_state_dir() / "clips"
    return ClipStore(root, c.max_age_days, c.max_total_mb, c.min_free_mb, c.format)


def run_live(
    engine: Engine,
    sources: Iterable[AudioSource],
    sinks: Sequence[Sink],
    stop: threading.Event,
    status_interval_s: float = 60.0,
    updater: Updater | None = None,
) -> PipelineStats:
    """Run until the sources end or ``stop`` is set; drain; close the sinks last.

    Sinks that are :class:`~agent.health.TickListener` (the MQTT output's heartbeat) are
    called on every pipeline tick; a status line is logged every ``status_interval_s``. With
    ``updates.enabled`` an :class:`~agent.ota.updater.Updater` (``updater``, else a new one) is
    ticked too: it switches models between two windows.
    """
    from agent.health import TickListener
    from agent.supervisor import Supervisor

    if updater is None and engine.config.updates.enabled:
        from agent.ota.updater import Updater

        try:
            updater = Updater(engine.config, engine).start()
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
    last = [time.monotonic()]
    supervisor = Supervisor(engine.config, engine.stats)
    listeners: list[TickListener] = [supervisor, *(s for s in sinks if isinstance(s, TickListener))]
    if updater is not None:
        listeners.insert(0, updater)  # first: a switch happens before anything reads the models

    def tick(proc: StreamProcessor, source: AudioSource) -> None:
        for listener in listeners:
            try:
                listener.on_tick(proc, source)
            except Exception:
                log.exception("health reporting by %s failed", type(listener).__name__)
        now = time.monotonic()
        if now - last[0] >= status_interval_s:
            last[0] = now
            log.info(
                "status: %d windows, %d detections, real-time factor %.3f, source %s",
                proc.stats.windows,
                proc.stats.detections,
                proc.stats.real_time_factor,
                source.stats(),
            )

    clips = build_clip_store(engine.config)
    try:
        for source in sources:
            if stop.is_set():
                break
            run_stream(
                source,
                lambda info: engine.processor(info, sinks, clip_store=clips),
                stop,
                on_tick=tick,
            )
    finally:
        if updater is not None:
            updater.close()
        supervisor.close()
        for sink in sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %s failed", type(sink).__name__)
    return engine.stats
