"""Audio input devices through sounddevice/PortAudio: listing and picking one from the config.

sounddevice is imported lazily so that ``import agent`` works on machines without PortAudio.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from agent.errors import AudioSourceError


def import_sounddevice() -> ModuleType:
    """Import sounddevice lazily: ``import agent`` must work on machines without PortAudio."""
    try:
        import sounddevice
    except OSError as exc:  # the wheel does not bundle PortAudio on Linux
        raise AudioSourceError(
            f"microphone unavailable: PortAudio library not found ({exc}); "
            "install libportaudio2 (apt-get install libportaudio2)"
        ) from None
    except ImportError:
        raise AudioSourceError(
            "microphone unavailable: the sounddevice package is not installed "
            "(pip install 'chorus[agent]')"
        ) from None
    return sounddevice


def _default_input_index(sd: Any) -> int | None:
    try:
        value = sd.default.device[0]
    except Exception:
        return None
    return int(value) if isinstance(value, int) and value >= 0 else None


def list_input_devices(sd_module: Any = None) -> list[dict[str, Any]]:
    """Every device with input channels: index, name, hostapi, channels, rate, is_default."""
    sd = sd_module if sd_module is not None else import_sounddevice()
    try:
        devices = list(sd.query_devices())
        hostapis = list(sd.query_hostapis())
    except Exception as exc:
        raise AudioSourceError(f"cannot list audio devices: {exc}") from None
    default = _default_input_index(sd)
    out = []
    for i, d in enumerate(devices):
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        api = d.get("hostapi", 0)
        out.append(
            {
                "index": int(d.get("index", i)),
                "name": str(d["name"]),
                "hostapi": hostapis[api]["name"] if 0 <= api < len(hostapis) else str(api),
                "max_input_channels": int(d["max_input_channels"]),
                "default_samplerate": float(d["default_samplerate"]),
                "is_default": int(d.get("index", i)) == default,
            }
        )
    return out


def _listing(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no input devices found"
    return "available inputs: " + ", ".join(f"{d['index']} {d['name']!r}" for d in devices)


def resolve_device(device: str | int | None, sd_module: Any = None) -> dict[str, Any]:
    """The input device for a config value: None = default, int = index, str = name substring.

    A string matches case-insensitively; an exact name wins over substrings. AudioSourceError
    (listing the inputs) when nothing or more than one device matches.
    """
    inputs = list_input_devices(sd_module)
    if device is None:
        for d in inputs:
            if d["is_default"]:
                return d
        if len(inputs) >= 1:  # no default set (e.g. some ALSA setups): take the first input
            return inputs[0]
        raise AudioSourceError(f"no default input device; {_listing(inputs)}")
    if isinstance(device, int):
        for d in inputs:
            if d["index"] == device:
                return d
        raise AudioSourceError(f"no input device with index {device}; {_listing(inputs)}")
    wanted = device.strip().lower()
    exact = [d for d in inputs if d["name"].lower() == wanted]
    if len(exact) == 1:
        return exact[0]
    matches = [d for d in inputs if wanted in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioSourceError(f"no input device matches {device!r}; {_listing(inputs)}")
    raise AudioSourceError(
        f"input device {device!r} is ambiguous ({len(matches)} matches); use an index or a "
        f"longer name; {_listing(matches)}"
    )
