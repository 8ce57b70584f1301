"""What a live run does on every pipeline tick besides processing audio.

* tells systemd it is ready once the first source is open (``READY=1``);
* feeds the systemd watchdog only when the window count has advanced since the last ping, so a
  stalled audio stream or a hung interpreter stops the pings (agent/sdnotify.py);
* watches for wall-clock jumps on live streams and re-anchors timestamps (agent/clock.py);
* serves the optional Prometheus endpoint from the same counters.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.audio.chunk import AudioSource
from agent.clock import ClockMonitor
from agent.config import AgentConfig
from agent.health import audio_overflows, system_metrics
from agent.pipeline import PipelineStats, StreamProcessor
from agent.sdnotify import Watchdog, notify

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        config: AgentConfig,
        stats: PipelineStats,
        watchdog: Watchdog | None = None,
        clock: ClockMonitor | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.watchdog = watchdog or Watchdog()
        self.clock = clock or ClockMonitor(config.health.clock_jump_tolerance_s)
        self.started = time.monotonic()
        self.ready = False
        self._last_windows = -1
        self._source_stats: dict[str, Any] = {}
        self.metrics = None
        port = config.health.prometheus_port
        if port is not None:
            from agent.metrics_http import MetricsServer

            # Metrics are a side channel: a taken port must not stop the birds being heard
            # (under systemd a fatal error would crash-loop, and count as restarts against an
            # OTA update on probation). One clear error, and the agent runs without them.
            try:
                self.metrics = MetricsServer(port, self.snapshot, config.device_id).start()
            except OSError as exc:
                log.error(
                    "health.prometheus_port: cannot serve metrics on 127.0.0.1:%d (%s); "
                    "running without the metrics endpoint",
                    port,
                    exc.strerror or exc,
                )

    def on_tick(self, processor: StreamProcessor, source: AudioSource) -> None:
        if not self.ready:
            notify(ready=1, status=f"listening on {processor.info.name}")
            self.ready = True
        if processor.stats.windows != self._last_windows:
            self._last_windows = processor.stats.windows
            self.watchdog.alive()
        if processor.info.duration_s is None:  # live: stamped from the wall-clock anchor
            jump = self.clock.check()
            if jump is not None:
                processor.reanchor(jump)
        self._source_stats = source.stats()

    def snapshot(self) -> dict[str, float | None]:
        """Values for the Prometheus endpoint."""
        system = system_metrics()
        s = self.stats
        return {
            "chorus_uptime_seconds": time.monotonic() - self.started,
            "chorus_windows_total": s.windows,
            "chorus_detections_total": s.detections,
            "chorus_window_errors_total": s.window_errors,
            "chorus_sink_errors_total": s.sink_errors,
            "chorus_dropped_samples_total": s.dropped_samples,
            "chorus_real_time_factor": s.real_time_factor,
            "chorus_audio_overflows_total": audio_overflows(self._source_stats),
            "chorus_cpu_temperature_celsius": system["cpu_temp_c"],
            "chorus_load1": system["load_1m"],
            "chorus_resident_memory_bytes": system["rss_bytes"],
            "chorus_clock_jumps_total": self.clock.jumps,
        }

    def close(self) -> None:
        notify(stopping=1, status="draining done, stopping")
        if self.metrics is not None:
            self.metrics.close()
