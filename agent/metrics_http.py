"""Optional Prometheus text endpoint on localhost (``health.prometheus_port``).

Serves ``GET /metrics`` in the Prometheus text exposition format (0.0.4) from a snapshot function,
on 127.0.0.1 only: scrape it through an SSH tunnel or a local node exporter, never expose it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

# name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "chorus_uptime_seconds": ("gauge", "Seconds since the agent started."),
    "chorus_windows_total": ("counter", "Analysis windows processed."),
    "chorus_detections_total": ("counter", "Detections emitted."),
    "chorus_window_errors_total": ("counter", "Windows whose inference failed."),
    "chorus_sink_errors_total": ("counter", "Detections a sink failed to take."),
    "chorus_dropped_samples_total": ("counter", "Audio samples lost at stream gaps."),
    "chorus_real_time_factor": ("gauge", "Processing time / audio time (< 1 keeps up)."),
    "chorus_audio_overflows_total": ("counter", "Audio blocks lost to overflows."),
    "chorus_outbox_depth": ("gauge", "Detections waiting in the MQTT outbox."),
    "chorus_cpu_temperature_celsius": ("gauge", "SoC temperature."),
    "chorus_load1": ("gauge", "One-minute load average."),
    "chorus_resident_memory_bytes": ("gauge", "Resident set size of the agent."),
    "chorus_clock_jumps_total": ("counter", "Wall-clock steps that re-anchored timestamps."),
}


def render(values: dict[str, float | None], device: str) -> str:
    """Text exposition of the known metrics present in ``values`` (None = not available)."""
    lines = []
    label = device.replace("\\", "\\\\").replace('"', '\\"')
    for name, (kind, text) in METRICS.items():
        value = values.get(name)
        if value is None:
            continue
        lines += [
            f"# HELP {name} {text}",
            f"# TYPE {name} {kind}",
            f'{name}{{device="{label}"}} {float(value):g}',
        ]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``start()`` serves in a daemon thread; ``close()`` stops it."""

    def __init__(
        self,
        port: int,
        snapshot: Callable[[], dict[str, float | None]],
        device: str,
        host: str = "127.0.0.1",
    ) -> None:
        self.snapshot, self.device = snapshot, device
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                try:
                    body = render(server_ref.snapshot(), server_ref.device).encode()
                except Exception:
                    log.exception("building metrics failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", self.port)
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
