"""Build the audio input(s) named by the ``audio`` section of the configuration.

:func:`make_sources` always returns an *iterator of sources*, one per stream: a single
:class:`~agent.audio.mic_source.MicSource` or :class:`~agent.audio.synthetic.SyntheticSource`, or
one :class:`~agent.audio.file_source.FileSource` per file (in order, forever with ``loop``).
Each stream has its own ``StreamInfo.start_utc`` and sample clock starting at 0, so the pipeline
runs ``open / read... / close`` per source and needs no notion of "file boundaries":

    for source in make_sources(config.audio, model_rate_hz):
        run_stream(source, ...)

Files are all checked (present, non-empty, readable audio) when ``make_sources`` is called, before
any is processed. :func:`make_source` is the single-stream shortcut.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.audio.chunk import AudioSource
from agent.audio.file_source import iter_file_sources
from agent.audio.synthetic import SyntheticSource
from agent.config import AudioConfig
from agent.errors import AudioSourceError


def make_sources(
    audio: AudioConfig,
    target_rate_hz: int,
    *,
    files_override: Sequence[str | Path] | None = None,
    realtime_override: bool | None = None,
) -> Iterator[AudioSource]:
    """Sources for ``audio.source``; ``files_override`` forces file input with those paths.

    ``realtime_override`` replaces ``audio.realtime`` (file and synthetic sources). Raises
    AudioSourceError at once for a missing/unreadable file; microphone problems surface at
    ``open()``.
    """
    realtime = audio.realtime if realtime_override is None else realtime_override
    if files_override is not None or audio.source == "file":
        files = list(files_override) if files_override is not None else list(audio.files)
        return iter_file_sources(files, target_rate_hz, realtime=realtime, loop=audio.loop)
    if audio.source == "synthetic":
        return iter([SyntheticSource(audio.synthetic, target_rate_hz, realtime=realtime)])
    if audio.source == "microphone":
        from agent.audio.mic_source import MicSource  # sounddevice itself is imported at open()

        return iter(
            [
                MicSource(
                    audio.device,
                    target_rate_hz,
                    capture_rate_hz=audio.capture_rate_hz,
                    input_channels=audio.input_channels,
                    block_s=audio.block_s,
                    queue_s=audio.queue_s,
                    backoff=audio.reopen_backoff,
                )
            ]
        )
    raise AudioSourceError(f"unknown audio source {audio.source!r}")


def make_source(
    audio: AudioConfig,
    target_rate_hz: int,
    *,
    files_override: Sequence[str | Path] | None = None,
    realtime_override: bool | None = None,
) -> AudioSource:
    """The one source of a single-stream configuration (microphone, synthetic, one file).

    AudioSourceError if the configuration yields several streams (several files, or ``loop``).
    """
    files = files_override if files_override is not None else audio.files
    if (files_override is not None or audio.source == "file") and (len(files) != 1 or audio.loop):
        raise AudioSourceError(
            "several audio streams configured (several files or loop); use make_sources()"
        )
    return next(
        make_sources(
            audio,
            target_rate_hz,
            files_override=files_override,
            realtime_override=realtime_override,
        )
    )
