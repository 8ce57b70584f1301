"""A private PulseAudio server with a null sink: a real, paced "microphone" for tests.

DEPENDENCIES.md §5: PortAudio reaches the server through ALSA's ``pulse``/``default`` PCMs
(libasound2-plugins); ``pacat`` plays a known signal into the sink, whose monitor is the default
source. Processes that use it must be started with ``PulseServer.env``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

SINK_RATE_HZ = 22050
TONE_HZ = 1000.0


def tone_s16le(seconds: float) -> bytes:
    t = np.arange(round(seconds * SINK_RATE_HZ)) / SINK_RATE_HZ
    x = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)  # -6 dBFS peak
    return (x * 32767).astype("<i2").tobytes()


class PulseServer:
    """A private PulseAudio server with a null sink, and pacat playing the tone into it."""

    def __init__(self, root: Path, playback: np.ndarray | None = None) -> None:
        runtime, home = root / "run", root / "home"
        runtime.mkdir(mode=0o700)
        home.mkdir()
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)}
        self.env.pop("PULSE_SERVER", None)
        self.log_path = root / "pulseaudio.log"
        self.tone = root / "tone.raw"
        if playback is None:
            self.tone.write_bytes(tone_s16le(120.0))  # outlasts every capture of this module
        else:  # float samples at SINK_RATE_HZ
            self.tone.write_bytes((np.clip(playback, -1, 1) * 32767).astype("<i2").tobytes())
        self.server: subprocess.Popen[bytes] | None = None
        self.player: subprocess.Popen[bytes] | None = None

    def start(self) -> str | None:
        """Start server and player; the reason as text if the server does not come up."""
        with self.log_path.open("ab") as log:
            self.server = subprocess.Popen(
                [
                    "pulseaudio",
                    "-n",
                    "--daemonize=no",
                    "--exit-idle-time=-1",
                    "--disallow-exit",
                    "--use-pid-file=no",
                    "--log-target=stderr",
                    "-L",
                    "module-native-protocol-unix",
                    "-L",
                    f"module-null-sink sink_name=vsink rate={SINK_RATE_HZ} channels=1",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15.0
        while (
            subprocess.run(
                ["pactl", "info"], env=self.env, capture_output=True, timeout=10
            ).returncode
            != 0
        ):
            if self.server.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-400:].strip()
                return f"PulseAudio server did not start: {tail}"
            time.sleep(0.1)
        for args in (["set-default-sink", "vsink"], ["set-default-source", "vsink.monitor"]):
            subprocess.run(
                ["pactl", *args], env=self.env, check=True, capture_output=True, timeout=10
            )
        self.player = subprocess.Popen(
            [
                "pacat",
                "--playback",
                "--device=vsink",
                "--format=s16le",
                f"--rate={SINK_RATE_HZ}",
                "--channels=1",
                str(self.tone),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return None

    def stop(self) -> None:
        for proc in (self.player, self.server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.player = self.server = None


def skip_without_pulseaudio() -> None:
    missing = [b for b in ("pulseaudio", "pactl", "pacat") if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"PulseAudio not installed ({', '.join(missing)} missing): "
            "apt-get install pulseaudio pulseaudio-utils libasound2-plugins"
        )
    try:
        import sounddevice  # noqa: F401  (only to know PortAudio is there)
    except (OSError, ImportError) as exc:
        pytest.skip(f"sounddevice/PortAudio unavailable: {exc}")
