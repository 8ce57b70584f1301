"""The agent's data flow: chunks -> windows -> separate -> classify -> combine -> events -> sinks.

* :class:`Inference` runs the models on one window (shared by every stream).
* :class:`StreamProcessor` holds one stream's state (windower, open events) and feeds sinks.
* :func:`run_stream` drives a source until it ends or a stop is requested, then drains in order:
  audio already captured is windowed and classified, the final partial window is processed,
  open events are closed and emitted, and only then is the source closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from agent.audio.chunk import AudioChunk, AudioSource, StreamInfo
from agent.clips import ClipStore
from agent.config import DetectionConfig
from agent.detection.combine import (
    SKIPPED_LOGIT,
    Combined,
    Mode,
    channel_names,
    combine_channels,
)
from agent.detection.events import DetectionContext, EventDetector
from agent.detection.types import Detection
from agent.errors import ChorusError
from agent.models.stages import ClassifierStage, LoadedModels, require_finite
from agent.sinks import Sink
from agent.windowing import Window, Windower

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counters for health reporting and the real-time factor."""

    windows: int = 0
    audio_s: float = 0.0  # audio advanced by the windows processed (hop per window)
    separator_s: float = 0.0
    classifier_s: float = 0.0
    total_s: float = 0.0  # wall time spent in inference + detection
    detections: int = 0
    sink_errors: int = 0
    window_errors: int = 0
    dropped_samples: int = 0
    nonfinite_samples: int = 0  # NaN/Inf input samples, skipped as gaps (never classified)
    nonfinite_gaps: int = 0

    @property
    def real_time_factor(self) -> float:
        """Processing wall time / audio time (< 1 keeps up with a live stream)."""
        return self.total_s / self.audio_s if self.audio_s else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {**self.__dict__, "real_time_factor": round(self.real_time_factor, 4)}


@dataclass(frozen=True)
class WindowResult:
    window: Window
    scores: list[tuple[ClassifierStage, Combined]]
    channels: np.ndarray  # (1 + M, N): the mix then the separated channels (sources or remixes)


class Inference:
    """Separate one window (if enabled) and run every classifier on the chosen channels."""

    def __init__(self, models: LoadedModels, mode: Mode, stats: PipelineStats) -> None:
        if mode != "mix_only" and models.separator is None:
            raise ValueError(f"mode {mode!r} needs a separator")
        self.models = models
        self.mode = mode
        self.stats = stats
        self.num_sources = models.separator.num_sources if models.separator else 0
        self.policy = models.combination
        self.channel_names = tuple(channel_names(self.num_sources, self.policy.channels))

    def run(self, window: Window) -> WindowResult:
        mix = window.samples.astype(np.float32)
        t0 = time.perf_counter()
        if self.models.separator is not None and self.mode != "mix_only":
            sources = self.models.separator.separate(mix)  # (M, N)
            # The policy says which channels the classifier hears (sources or remixes) and
            # which near-silent ones it skips.
            channels = self.policy.channels_of(mix, sources)  # (1 + M, N)
            active = self.policy.active(mix, sources)  # (1 + M,)
        else:
            channels = mix[np.newaxis]
            active = np.ones(1, bool)
        t1 = time.perf_counter()
        # separated_only still classifies the mix: mix-only classes (``unknown``) read it.
        scores = []
        for clf in self.models.classifiers:
            # NaN would silently never pass a threshold; raising counts a failed window that
            # health reports (and an OTA probation) see.
            heard = require_finite(clf.classify(channels[active]), f"classifier {clf.name}")
            logits = np.full((channels.shape[0], heard.shape[1]), SKIPPED_LOGIT, np.float32)
            logits[active] = heard  # (K, C); skipped channels never win
            scores.append(
                (clf, combine_channels(logits, self.mode, clf.mix_only_indices, self.policy))
            )
        t2 = time.perf_counter()
        self.stats.separator_s += t1 - t0
        self.stats.classifier_s += t2 - t1
        return WindowResult(window, scores, channels)


@dataclass
class StreamProcessor:
    """One stream's windowing and event state; emits detections to the sinks."""

    inference: Inference
    info: StreamInfo
    hop_samples: int
    detection: DetectionConfig
    device_id: str
    sinks: Sequence[Sink]
    on_window: Callable[[WindowResult], None] | None = None
    clip_store: ClipStore | None = None
    windower: Windower = field(init=False)
    detectors: list[EventDetector] = field(init=False)
    # Channels of recent windows, kept only while an open event may take its clip from them.
    _recent: dict[int, np.ndarray] = field(init=False, default_factory=dict)
    # id(sink) -> the error it last failed with, logged once while it lasts
    _sink_failing: dict[int, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        models = self.inference.models
        self.windower = Windower(
            models.window_samples, self.hop_samples, models.sample_rate_hz, self.info.start_utc
        )
        self.detectors = self._make_detectors()

    def _make_detectors(self) -> list[EventDetector]:
        models = self.inference.models
        manifest = models.bundle.manifest
        return [
            EventDetector(
                clf.labels,
                self.detection,
                DetectionContext(
                    clf.name,
                    manifest.name,
                    manifest.version,
                    self.device_id,
                    self.info.name,
                    self.inference.channel_names,
                ),
                models.sample_rate_hz,
                self.windower.stream_start_utc,  # re-anchored by reanchor()
            )
            for clf in models.classifiers
        ]

    def swap_inference(self, inference: Inference) -> list[Detection]:
        """Run ``inference`` (other models: an OTA update or rollback) from the next window on.

        Call between two windows (never from inside ``push``). Open events are closed and
        emitted first, under the bundle that detected them; the windower and its buffered
        audio carry over, so no sample is dropped. The models must take the same rate and
        window as the running ones.
        """
        old, new = self.inference.models, inference.models
        if (old.sample_rate_hz, old.window_samples) != (new.sample_rate_hz, new.window_samples):
            raise ValueError(
                f"cannot switch models between windows: {new.sample_rate_hz} Hz / "
                f"{new.window_samples} samples vs {old.sample_rate_hz} Hz / {old.window_samples}"
            )
        closed = self._close_events()
        self.inference = inference
        self._recent.clear()
        self.detectors = self._make_detectors()
        return closed

    @property
    def stats(self) -> PipelineStats:
        return self.inference.stats

    def push(self, chunk: AudioChunk) -> list[Detection]:
        out: list[Detection] = []
        gaps_before = self.windower.nonfinite_gaps
        samples_before = self.windower.nonfinite_samples
        windows = self.windower.push(chunk)
        self._count_nonfinite(gaps_before, samples_before)
        for window in windows:
            out += self._process(window)
        self.stats.dropped_samples = self.windower.dropped_samples
        return out

    def _count_nonfinite(self, gaps_before: int, samples_before: int) -> None:
        """Add the windower's new NaN/Inf gaps to the stats; warn at a stream's first one."""
        w = self.windower
        self.stats.nonfinite_gaps += w.nonfinite_gaps - gaps_before
        self.stats.nonfinite_samples += w.nonfinite_samples - samples_before
        if gaps_before == 0 and w.nonfinite_gaps:
            log.warning(
                "%s: non-finite samples (NaN/Inf) in the audio: skipped as a gap, never "
                "classified (counted in nonfinite_samples)",
                self.info.name,
            )

    def finish(self) -> list[Detection]:
        """End of stream: last partial window, then close every open event."""
        out: list[Detection] = []
        for window in self.windower.flush():
            out += self._process(window)
        out += self._close_events()
        self._recent.clear()
        if self.windower.nonfinite_samples:
            log.warning(
                "%s: %.3f s of non-finite samples (NaN/Inf) in %d gap(s) skipped",
                self.info.name,
                self.windower.nonfinite_samples / self.windower.sample_rate_hz,
                self.windower.nonfinite_gaps,
            )
        return out

    def reanchor(self, jump_s: float) -> list[Detection]:
        """The wall clock stepped by ``jump_s`` (NTP): close open events with the timestamps
        they had, then stamp later windows on the corrected clock (agent/clock.py)."""
        closed = self._close_events()
        delta = timedelta(seconds=jump_s)
        self.windower.stream_start_utc += delta
        for det in self.detectors:
            det.shift_clock(delta)
        log.warning("wall clock jumped by %+.1f s: re-anchored the audio clock", jump_s)
        return closed

    def _close_events(self) -> list[Detection]:
        out: list[Detection] = []
        for det in self.detectors:
            closed = det.flush()
            self._emit(closed)
            out += closed
        return out

    def _process(self, window: Window) -> list[Detection]:
        t0 = time.perf_counter()
        try:
            result = self.inference.run(window)
        except FloatingPointError as exc:  # a stage answered NaN/Inf: a known fault, no trace
            self.stats.window_errors += 1
            log.error(
                "inference failed on window %d (%.2f s): %s", window.index, window.start_s, exc
            )
            return []
        except Exception:  # a running stage catches, counts, logs and continues
            self.stats.window_errors += 1
            log.exception("inference failed on window %d (%.2f s)", window.index, window.start_s)
            return []
        if self.on_window is not None:
            self.on_window(result)
        if self.clip_store is not None:
            self._recent[window.index] = result.channels
        out: list[Detection] = []
        species_filter = self.inference.models.species_filter
        for det, (clf, scores) in zip(self.detectors, result.scores, strict=True):
            allowed = species_filter.mask(clf.labels, window.start_utc) if species_filter else None
            out += det.process(window, scores, allowed)
        self._emit(out)
        if self.clip_store is not None:  # forget windows no open event can still use
            keep = set().union(*(d.open_windows() for d in self.detectors)) | {window.index}
            self._recent = {i: ch for i, ch in self._recent.items() if i in keep}
        self.stats.windows += 1
        self.stats.audio_s += min(window.valid_samples, self.hop_samples) / window.sample_rate_hz
        self.stats.total_s += time.perf_counter() - t0
        return out

    def _emit(self, detections: list[Detection]) -> None:
        for d in detections:
            self.stats.detections += 1
            for sink in self.sinks:
                try:
                    sink.emit(d)
                except ChorusError as exc:  # a known condition (a full disk): once, then counted
                    self.stats.sink_errors += 1
                    if self._sink_failing.get(id(sink)) != str(exc):
                        log.error(
                            "sink %s failed: %s (counted in sink_errors)", type(sink).__name__, exc
                        )
                    self._sink_failing[id(sink)] = str(exc)
                    continue
                except Exception:
                    self.stats.sink_errors += 1
                    log.exception("sink %s failed on detection %s", type(sink).__name__, d.id)
                    continue
                if self._sink_failing.pop(id(sink), None) is not None:
                    log.info("sink %s works again", type(sink).__name__)
            self._save_clip(d)

    def _save_clip(self, d: Detection) -> None:
        """The audio of the detection's best window: the mix and the channel that won."""
        best = None
        for det in self.detectors:
            best = det.best_window_of.pop(d.id, best)
        if self.clip_store is None or best is None or best not in self._recent:
            return
        channels = self._recent[best]
        names = self.inference.channel_names
        audio = {"mix": channels[0]}
        if d.channel != "mix":
            audio[d.channel] = channels[names.index(d.channel)]
        try:
            self.clip_store.save(d, audio, self.inference.models.sample_rate_hz)
        except Exception:  # a full or failing disk must not stop detection
            self.stats.sink_errors += 1
            log.exception("saving the clip of detection %s failed", d.id)


def run_stream(
    source: AudioSource,
    make_processor: Callable[[StreamInfo], StreamProcessor],
    stop: threading.Event,
    read_timeout_s: float = 0.25,
    on_tick: Callable[[StreamProcessor, AudioSource], None] | None = None,
) -> StreamProcessor:
    """Drive one source to its end (or until ``stop``), then drain in order and close it."""
    info = source.open()
    processor = make_processor(info)
    try:
        while not stop.is_set():
            chunk = source.read(read_timeout_s)
            if chunk is None:
                if source.finished:
                    break
            else:
                processor.push(chunk)
            if on_tick is not None:
                on_tick(processor, source)
        if stop.is_set() and info.duration_s is None:
            # Live stream: what the capture queue already holds was heard; process it too.
            while (chunk := source.read(0.0)) is not None:
                processor.push(chunk)
    finally:
        source.close()
    processor.finish()
    return processor
