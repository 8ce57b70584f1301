"""Live microphone input through sounddevice/PortAudio, reopened with back-off when it is lost.

Threads: PortAudio calls the stream callback from its own thread; it only mixes the block to
mono, copies it into a bounded :class:`queue.Queue` (``put_nowait``; when the queue is full the
block is dropped and counted) and counts ``status.input_overflow``. Everything else
(resampling to the model rate, gap bookkeeping, health checks, reopening) runs in :meth:`read`,
on the consumer's thread, so the audio thread never blocks.

Time: sample index 0 is the first sample of the first block, and ``StreamInfo.start_utc`` is the
wall clock at the first callback minus that block's duration. PortAudio calls back once a block is
*complete*, so its first sample was captured one block earlier; the remaining error is the driver
latency (a few ms to tens of ms), far below what detections need. (PortAudio's ADC timestamps would
be finer, but ALSA often reports them as 0.) The wall clock is read once, at ``open``, paired with
the monotonic clock; later instants are derived from the monotonic clock only, so NTP steps do not
move them.

Loss: a stream whose callback stops (no block for ``stall_s``), that finishes by itself, or that
raises ``PortAudioError`` is closed and reopened after an exponential back-off with jitter
(``BackoffConfig``); the device is looked up again by name, so a re-plugged USB microphone with a
new index is found. Reopening never raises out of ``read``. The first chunk after the gap has
``discontinuity=True`` and a ``first_sample_index`` advanced by the elapsed wall time
(``round((t_first_sample - t_start) * rate)``, measured at the first callback of the new stream),
so timestamps stay aligned with real time. Blocks dropped because the queue was full are handled the
same way (index advanced by the dropped audio, ``discontinuity=True``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from agent.audio.chunk import AudioChunk, StreamInfo
from agent.audio.devices import import_sounddevice, resolve_device
from agent.audio.resample import StreamResampler
from agent.backoff import Backoff
from agent.config import BackoffConfig
from agent.errors import AudioSourceError

log = logging.getLogger(__name__)

_POLL_S = 0.25  # longest a read() sleeps between health checks


class _Block(NamedTuple):
    gen: int  # which opened stream produced it
    frame_pos: int  # frames the stream delivered before this block (dropped ones included)
    t_mono: float  # monotonic time of the callback (the block's end)
    rate_hz: int  # capture rate of the stream
    samples: np.ndarray  # mono float32 at rate_hz


@dataclass
class _Capture:
    """Per opened stream; written by the audio thread, read by the consumer."""

    gen: int
    rate_hz: int
    opened_mono: float
    frames: int = 0
    last_cb_mono: float | None = None
    finished: bool = False


class MicSource:
    """A live input device as an endless :class:`~agent.audio.chunk.AudioSource`."""

    def __init__(
        self,
        device: str | int | None,
        target_rate_hz: int,
        capture_rate_hz: int | None = None,
        input_channels: int = 1,
        block_s: float = 0.1,
        queue_s: float = 30.0,
        backoff: BackoffConfig | None = None,
        sd_module: Any = None,
        *,
        stall_s: float | None = None,
        first_data_timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if block_s <= 0 or queue_s <= 0 or input_channels < 1:
            raise ValueError("block_s and queue_s must be > 0, input_channels >= 1")
        self.device = device
        self.target_rate_hz = int(target_rate_hz)
        self.capture_rate_hz = capture_rate_hz
        self.input_channels = input_channels
        self.block_s = block_s
        # A few block periods without a callback means the device is gone; never below 1 s so a
        # busy machine's scheduling hiccup is not taken for a lost device.
        self.stall_s = stall_s if stall_s is not None else max(1.0, 10 * block_s)
        self.first_data_timeout_s = first_data_timeout_s
        self._sd_module = sd_module
        self._backoff = Backoff(backoff or BackoffConfig(), rng)
        self._queue: queue.Queue[_Block] = queue.Queue(maxsize=max(2, math.ceil(queue_s / block_s)))
        self._sd: Any = None
        self._stream: Any = None
        self._capture: _Capture | None = None
        self._gen = 0
        self._dev_name = str(device)
        self._closed = False
        self._next_retry_mono = 0.0
        # consumer-side timeline
        self._wall0 = 0.0
        self._mono0 = 0.0
        self._mono_at_start: float | None = None
        self._pending: deque[AudioChunk] = deque()
        self._next_index = 0
        self._seg_gen: int | None = None
        self._seg_base_index = 0
        self._seg_origin_frame = 0
        self._seg_expected_frame = 0
        self._resampler: StreamResampler | None = None
        self._disc_pending = False
        self._last_block_mono = 0.0
        self._capture_rate_hz = 0
        # counters (the *_overflows ones are written by the audio thread only)
        self._input_overflows = 0
        self._queue_overflows = 0
        self._reconnects = 0
        self._gap_samples = 0
        self._dropped_samples = 0
        self._stale_blocks = 0

    # -- AudioSource -------------------------------------------------------------------------

    def open(self) -> StreamInfo:
        """Open the device and wait (up to ``first_data_timeout_s``) for its first block."""
        self._sd = self._sd_module if self._sd_module is not None else import_sounddevice()
        dev = resolve_device(self.device, self._sd)
        if self.input_channels > dev["max_input_channels"]:
            raise AudioSourceError(
                f"input device {dev['name']!r} has {dev['max_input_channels']} input channel(s), "
                f"{self.input_channels} requested"
            )
        self._wall0, self._mono0 = time.time(), time.monotonic()
        try:
            self._start_stream(dev)
        except Exception as exc:
            raise AudioSourceError(f"cannot open input device {dev['name']!r}: {exc}") from None
        try:
            first = self._queue.get(timeout=self.first_data_timeout_s)
        except queue.Empty:
            self._close_stream()
            raise AudioSourceError(
                f"input device {dev['name']!r} delivered no audio within "
                f"{self.first_data_timeout_s:g} s"
            ) from None
        self._mono_at_start = first.t_mono - first.samples.shape[0] / first.rate_hz
        start_utc = datetime.fromtimestamp(self._wall0 + (self._mono_at_start - self._mono0), UTC)
        self._consume(first)
        log.info(
            "recording from %r at %d Hz (%d ch) -> %d Hz",
            dev["name"],
            first.rate_hz,
            self.input_channels,
            self.target_rate_hz,
        )
        return StreamInfo(
            name=f"mic:{dev['name']}",
            sample_rate_hz=self.target_rate_hz,
            start_utc=start_utc,
            duration_s=None,
        )

    @property
    def finished(self) -> bool:
        return self._closed

    def read(self, timeout_s: float) -> AudioChunk | None:
        """Next chunk, or None if none within ``timeout_s``. Never raises for a lost device."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed or self._mono_at_start is None:
                return None
            now = time.monotonic()
            if self._capture is None and now >= self._next_retry_mono:
                self._try_reopen()
                continue
            if self._capture is not None:
                self._check_health(now)
            wait_s = min(deadline - now, _POLL_S)
            if self._capture is None:
                wait_s = min(wait_s, self._next_retry_mono - now)
            try:
                block = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                continue
            self._consume(block)

    def close(self) -> None:
        self._closed = True
        self._close_stream()

    def stats(self) -> dict[str, int | float]:
        rate = self.target_rate_hz
        offset_s = 0.0
        if self._mono_at_start is not None and self._last_block_mono:
            # sample clock minus wall clock: drifts when the device clock is off (health signal)
            offset_s = self._next_index / rate - (self._last_block_mono - self._mono_at_start)
        return {
            "connected": int(self._capture is not None),
            "capture_rate_hz": self._capture_rate_hz,
            "reconnects": self._reconnects,
            "gap_s": round(self._gap_samples / rate, 3),
            "input_overflows": self._input_overflows,
            "queue_overflows": self._queue_overflows,
            "dropped_s": round(self._dropped_samples / rate, 3),
            "queue_depth": self._queue.qsize(),
            "samples_out": self._next_index,
            "clock_offset_s": round(offset_s, 4),
        }

    # -- audio thread ------------------------------------------------------------------------

    def _make_callback(self, cap: _Capture) -> Any:
        q = self._queue

        def callback(indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
            now = time.monotonic()
            if getattr(status, "input_overflow", False):
                self._input_overflows += 1
            if indata.shape[1] == 1:
                mono = indata[:, 0].copy()
            else:
                mono = indata.mean(axis=1, dtype=np.float32)
            block = _Block(cap.gen, cap.frames, now, cap.rate_hz, mono)
            cap.frames += frames
            cap.last_cb_mono = now
            try:
                q.put_nowait(block)
            except queue.Full:
                self._queue_overflows += 1

        return callback

    # -- stream management (consumer thread) -------------------------------------------------

    def _start_stream(self, dev: dict[str, Any]) -> None:
        rate = int(self.capture_rate_hz or round(dev["default_samplerate"]))
        cap = _Capture(self._gen + 1, rate, time.monotonic())

        def finished() -> None:
            cap.finished = True

        stream = self._sd.InputStream(
            device=dev["index"],
            samplerate=rate,
            channels=self.input_channels,
            dtype="float32",
            blocksize=max(1, round(self.block_s * rate)),
            callback=self._make_callback(cap),
            finished_callback=finished,
        )
        try:
            stream.start()
        except BaseException:
            stream.close()
            raise
        self._gen = cap.gen
        self._stream, self._capture, self._dev_name = stream, cap, dev["name"]

    def _close_stream(self) -> None:
        stream, self._stream, self._capture = self._stream, None, None
        if stream is None:
            return
        with contextlib.suppress(Exception):  # a vanished device may fail to stop; close anyway
            stream.abort()
        try:
            stream.close()
        except Exception as exc:
            log.debug("closing the input stream failed: %s", exc)

    def _check_health(self, now: float) -> None:
        cap = self._capture
        assert cap is not None
        reason = None
        if cap.finished:
            reason = "stream stopped"
        elif cap.last_cb_mono is None:
            if now - cap.opened_mono > self.first_data_timeout_s:
                reason = f"no audio within {self.first_data_timeout_s:g} s of opening"
        elif now - cap.last_cb_mono > self.stall_s:
            reason = f"no audio for {now - cap.last_cb_mono:.1f} s"
        if reason is None:
            try:
                if not self._stream.active:
                    reason = "stream no longer active"
            except Exception as exc:  # PortAudioError from a vanished device
                reason = f"stream error: {exc}"
        if reason is not None:
            self._fail(reason, now)

    def _fail(self, reason: str, now: float) -> None:
        self._close_stream()
        delay = self._backoff.next_delay()
        self._next_retry_mono = now + delay
        log.warning("input %r lost (%s); reopening in %.2f s", self._dev_name, reason, delay)

    def _try_reopen(self) -> None:
        """One reopen attempt; on failure schedule the next one. Never raises."""
        try:
            self._refresh_devices()
            dev = resolve_device(self.device, self._sd)
            self._start_stream(dev)
        except Exception as exc:
            delay = self._backoff.next_delay()
            self._next_retry_mono = time.monotonic() + delay
            log.warning(
                "reopening input %r failed (%s); next try in %.2f s",
                self._dev_name,
                " ".join(str(exc).split()),
                delay,
            )
            return
        self._reconnects += 1
        log.info("input %r reopened (reconnect %d)", self._dev_name, self._reconnects)

    def _refresh_devices(self) -> None:
        # PortAudio enumerates devices only when initialised; re-initialise so that a re-plugged
        # USB microphone (often with a new index) becomes visible. No stream is open here.
        terminate = getattr(self._sd, "_terminate", None)
        initialize = getattr(self._sd, "_initialize", None)
        if terminate is None or initialize is None:
            return
        try:
            terminate()
            initialize()
        except Exception as exc:
            log.debug("re-initialising PortAudio failed: %s", exc)

    # -- consumer: blocks -> chunks ----------------------------------------------------------

    def _consume(self, block: _Block) -> None:
        assert self._mono_at_start is not None
        n = block.samples.shape[0]
        self._last_block_mono = block.t_mono
        if self._seg_gen is not None and block.gen < self._seg_gen:
            self._stale_blocks += 1  # a late block from a stream already replaced
            return
        if block.gen != self._seg_gen:
            t_first = block.t_mono - n / block.rate_hz
            index = round((t_first - self._mono_at_start) * self.target_rate_hz)
            if self._seg_gen is None:
                index = 0
            else:
                self._end_segment()
                index = max(index, self._next_index)
                self._gap_samples += index - self._next_index
                self._backoff.reset()  # the reopened stream delivers audio
            self._start_segment(block, index, discontinuity=self._seg_gen is not None)
        elif block.frame_pos != self._seg_expected_frame:  # blocks dropped on a full queue
            self._end_segment()
            frames_in = block.frame_pos - self._seg_origin_frame
            index = self._seg_base_index + round(frames_in * self.target_rate_hz / block.rate_hz)
            index = max(index, self._next_index)
            self._dropped_samples += index - self._next_index
            self._start_segment(block, index, discontinuity=True)
        assert self._resampler is not None
        self._seg_expected_frame = block.frame_pos + n
        self._emit(self._resampler.process(block.samples))

    def _start_segment(self, block: _Block, index: int, discontinuity: bool) -> None:
        self._seg_gen = block.gen
        self._seg_base_index = index
        self._seg_origin_frame = block.frame_pos
        self._seg_expected_frame = block.frame_pos
        self._capture_rate_hz = block.rate_hz
        self._resampler = StreamResampler(block.rate_hz, self.target_rate_hz)
        self._next_index = index
        self._disc_pending = discontinuity

    def _end_segment(self) -> None:
        if self._resampler is not None:
            self._emit(self._resampler.flush())

    def _emit(self, samples: np.ndarray) -> None:
        if samples.shape[0] == 0:
            return
        chunk = AudioChunk(samples, self._next_index, discontinuity=self._disc_pending)
        self._disc_pending = False
        self._next_index += samples.shape[0]
        self._pending.append(chunk)
