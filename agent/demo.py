"""Synthetic demo "species" and soundscapes that go with the shipped demo model bundle.

Six invented species, each calling in its own frequency band with its own call shape, so that the
hand-set demo models (``agent/bundles/demo``; built by ``chorus-models build-demo-bundle``) can
tell them apart with band-energy detectors. Nothing here is a real bird: every name is marked
synthetic. numpy only, so the agent, the tests and modeltools can all use it.

Level convention: a call's level in dBFS is the RMS level of a steady tone at the call's *peak
envelope* amplitude ``A``, i.e. ``20*log10(A/sqrt(2))``. Calls of every shape therefore reach the
same peak envelope at the same level, which is what a max-over-time band detector sees.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import ChorusError
from agent.models.manifest import Label

log = logging.getLogger(__name__)

DEMO_SAMPLE_RATE_HZ = 22050
NOISE_LEVEL_DBFS = -45.0  # RMS of the background noise
CALL_LEVEL_RANGE_DBFS = (-30.0, -12.0)
CALL_DURATION_RANGE_S = (0.5, 2.0)
FADE_S = 0.03  # raised-cosine attack/release: a click would be broadband and fire every band
# Edges (Hz) of the demo separator's 4 bands: [0, e0), [e0, e1), [e1, e2), [e2, Nyquist].
DEMO_SEPARATOR_EDGES_HZ = (2000.0, 4600.0, 8200.0)
_PEAK_LIMIT = 0.85  # leave room under the promised 0.9 peak for the background noise


@dataclass(frozen=True)
class DemoSpecies:
    """One synthetic species: its label, call shape and the band its energy stays in."""

    label: Label
    call_shape: str  # human description, for the docs
    band_hz: tuple[float, float]  # all of a call's energy lies in this band (detector band)
    separator_channel: int  # which demo separator channel it lands in

    @property
    def code(self) -> str:
        return self.label.species_code

    @property
    def centre_hz(self) -> float:
        return 0.5 * (self.band_hz[0] + self.band_hz[1])


def _species(
    code: str, sci: str, common: str, shape: str, band: tuple[float, float], channel: int
) -> DemoSpecies:
    genus = sci.split()[0]
    family = "Synthetidae" if genus == "Synthetica" else "Fictidae"
    return DemoSpecies(
        Label(code, sci, common, genus=genus, family=family, order="Demoformes"),
        shape,
        band,
        channel,
    )


DEMO_SPECIES: tuple[DemoSpecies, ...] = (
    _species(
        "dmwhis",
        "Synthetica flauta",
        "Demo Whistler (synthetic)",
        "steady whistle at 1.5 kHz with a slight 5 Hz vibrato",
        (1300.0, 1700.0),
        0,
    ),
    _species(
        "dmdesc",
        "Synthetica descendens",
        "Demo Downslur (synthetic)",
        "down-sweep 3.0 -> 2.5 kHz",
        (2400.0, 3100.0),
        1,
    ),
    _species(
        "dmtril",
        "Trillaria tremula",
        "Demo Triller (synthetic)",
        "4.0 kHz tone, fully amplitude-modulated at 20 Hz (trill)",
        (3800.0, 4200.0),
        1,
    ),
    _species(
        "dmasce",
        "Synthetica ascendens",
        "Demo Upslur (synthetic)",
        "up-sweep 5.3 -> 5.9 kHz",
        (5200.0, 6000.0),
        2,
    ),
    _species(
        "dmchip",
        "Punctata notula",
        "Demo Chipper (synthetic)",
        "40 ms notes at 7.2 kHz, 10 per second",
        (7000.0, 7400.0),
        2,
    ),
    _species(
        "dmbuzz",
        "Bombilia zumbans",
        "Demo Buzzer (synthetic)",
        "buzz: 9.3 kHz carrier, 70 Hz FM (+-200 Hz) and AM",
        (8900.0, 9700.0),
        3,
    ),
)
_BY_CODE = {s.code: s for s in DEMO_SPECIES}


def demo_labels() -> tuple[Label, ...]:
    """The label table of the demo bundle, in model output order."""
    return tuple(s.label for s in DEMO_SPECIES)


def level_to_amplitude(level_dbfs: float) -> float:
    """Peak envelope amplitude of a call at ``level_dbfs`` (see the module's level convention)."""
    return math.sqrt(2.0) * 10.0 ** (level_dbfs / 20.0)


# ---------------------------------------------------------------------------------------------
# Calls


def _fade(n: int, sample_rate_hz: int) -> np.ndarray:
    """Envelope 1.0 with raised-cosine ramps of FADE_S at both ends (shorter for tiny calls)."""
    env = np.ones(n)
    k = min(int(FADE_S * sample_rate_hz), n // 2)
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        env[:k] = ramp
        env[n - k :] = ramp[::-1]
    return env


def _tone(freq_hz: np.ndarray, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Sine with instantaneous frequency ``freq_hz`` (per sample) and a random start phase."""
    phase = 2.0 * np.pi * np.cumsum(freq_hz) / sample_rate_hz + rng.uniform(0, 2 * np.pi)
    return np.sin(phase)


def _whistle(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    f0 = 1500.0 + rng.uniform(-40, 40)
    return _tone(f0 + 15.0 * np.sin(2 * np.pi * 5.0 * t), sr, rng)


def _sweep(f_start: float, f_end: float) -> Callable[..., np.ndarray]:
    def call(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        jitter = rng.uniform(-40, 40)
        frac = t / max(t[-1], 1e-9)
        return _tone(f_start + jitter + (f_end - f_start) * frac, sr, rng)

    return call


def _trill(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    carrier = _tone(np.full_like(t, 4000.0 + rng.uniform(-40, 40)), sr, rng)
    return carrier * (0.5 - 0.5 * np.cos(2 * np.pi * 20.0 * t))


def _chips(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    carrier = _tone(np.full_like(t, 7200.0 + rng.uniform(-40, 40)), sr, rng)
    pos = np.mod(t, 0.1)  # one 40 ms Hann-shaped note every 100 ms
    notes = np.where(pos < 0.04, 0.5 - 0.5 * np.cos(2 * np.pi * pos / 0.04), 0.0)
    return carrier * notes


def _buzz(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    rate_hz = 70.0 + rng.uniform(-5, 5)
    freq = 9300.0 + rng.uniform(-40, 40) + 200.0 * np.sin(2 * np.pi * rate_hz * t)
    return _tone(freq, sr, rng) * (0.75 + 0.25 * np.cos(2 * np.pi * rate_hz * t))


_SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "dmwhis": _whistle,
    "dmdesc": _sweep(3000.0, 2500.0),
    "dmtril": _trill,
    "dmasce": _sweep(5300.0, 5900.0),
    "dmchip": _chips,
    "dmbuzz": _buzz,
}


def synthesize_call(
    code: str, duration_s: float, sample_rate_hz: int, rng: np.random.Generator
) -> np.ndarray:
    """One call of species ``code``: float32 (n,), peak envelope 1.0 (scale it to a level).

    Raises ChorusError for an unknown code or a non-positive duration.
    """
    if code not in _SHAPES:
        raise ChorusError(f"unknown demo species {code!r} (known: {', '.join(_SHAPES)})")
    n = round(duration_s * sample_rate_hz)
    if n <= 0:
        raise ChorusError(f"call duration must be > 0 s, got {duration_s}")
    t = np.arange(n) / sample_rate_hz
    call = _SHAPES[code](t, sample_rate_hz, rng) * _fade(n, sample_rate_hz)
    return call.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Soundscapes


def pink_noise(n: int, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum (flat below 100 Hz) at RMS ``level_dbfs``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)  # cycles/sample; only the shape matters before scaling
    spec /= np.sqrt(np.maximum(f, 100.0 / DEMO_SAMPLE_RATE_HZ))
    noise = np.fft.irfft(spec, n)
    return noise * (10.0 ** (level_dbfs / 20.0) / np.sqrt(np.mean(noise**2)))


@dataclass
class DemoSoundscape:
    """A synthetic recording plus its ground truth."""

    audio: np.ndarray  # float32 (n,), peak <= 0.9
    sample_rate_hz: int
    events: list[tuple[str, float, float]]  # (species_code, start_s, end_s), sorted by start
    event_levels_dbfs: list[float] = field(default_factory=list)  # parallel to events

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / self.sample_rate_hz

    def window_truth(
        self, start_s: float, end_s: float, min_overlap_s: float = 0.3
    ) -> dict[str, bool | None]:
        """Per demo species: True if a call overlaps [start_s, end_s) by >= ``min_overlap_s``,
        False if no call overlaps it at all, None (ambiguous) in between."""
        truth: dict[str, bool | None] = {s.code: False for s in DEMO_SPECIES}
        for code, a, b in self.events:
            overlap = min(b, end_s) - max(a, start_s)
            if overlap >= min_overlap_s:
                truth[code] = True
            elif overlap > 0 and truth[code] is False:
                truth[code] = None
        return truth


def _segments(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Active stretches: 8-12 s of calling, separated by 6.5-8 s of noise only."""
    active = []
    t = rng.uniform(0.3, 1.0)
    while t < duration_s - 0.8:
        end = min(t + rng.uniform(8.0, 12.0), duration_s - 0.2)
        active.append((t, end))
        t = end + rng.uniform(6.5, 8.0)
    return active


def make_demo_soundscape(
    duration_s: float = 60.0, sample_rate_hz: int = DEMO_SAMPLE_RATE_HZ, seed: int = 0
) -> DemoSoundscape:
    """A deterministic demo soundscape: calls of 2-4 species per active stretch, often overlapping,
    over pink noise at NOISE_LEVEL_DBFS, with noise-only gaps of more than 6 s between stretches.

    Calls last 0.5-2 s at -30..-12 dBFS. A call is made quieter (never below -30 dBFS) or left out
    where it would push the mix peak over 0.85, so the peak stays <= 0.9.
    """
    if duration_s <= 0 or sample_rate_hz <= 0:
        raise ChorusError("duration_s and sample_rate_hz must be > 0")
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate_hz)
    calls = np.zeros(n)
    placed: list[tuple[str, float, float, float]] = []
    lo_db, hi_db = CALL_LEVEL_RANGE_DBFS
    for seg_start, seg_end in _segments(duration_s, rng):
        k = int(rng.integers(2, 5))
        for idx in rng.choice(len(DEMO_SPECIES), size=k, replace=False):
            code = DEMO_SPECIES[int(idx)].code
            for _ in range(int(rng.integers(1, 4))):
                dur = min(rng.uniform(*CALL_DURATION_RANGE_S), seg_end - seg_start)
                start = seg_start + rng.uniform(0.0, max(seg_end - seg_start - dur, 0.0))
                level = rng.uniform(lo_db, hi_db)
                call = synthesize_call(code, dur, sample_rate_hz, rng)
                same = any(
                    c == code and a < start + dur + 0.2 and start < b + 0.2 for c, a, b, _ in placed
                )
                i0 = round(start * sample_rate_hz)
                span = slice(i0, i0 + call.shape[0])
                headroom = _PEAK_LIMIT - np.max(np.abs(calls[span]), initial=0.0)
                amp = min(level_to_amplitude(level), headroom)
                if same or amp < level_to_amplitude(lo_db):
                    continue  # no self-overlap (ambiguous truth); no call below -30 dBFS
                calls[span] += amp * call[: calls[span].shape[0]]
                level = 20.0 * math.log10(amp / math.sqrt(2.0))
                placed.append((code, start, start + call.shape[0] / sample_rate_hz, level))
    placed.sort(key=lambda e: (e[1], e[0]))
    audio = calls + pink_noise(n, NOISE_LEVEL_DBFS, rng)
    peak = float(np.max(np.abs(audio), initial=0.0))
    if peak > 0.9:  # only possible through a freak noise peak; keep the promise anyway
        audio *= 0.9 / peak
    return DemoSoundscape(
        audio=audio.astype(np.float32),
        sample_rate_hz=sample_rate_hz,
        events=[(c, round(a, 4), round(b, 4)) for c, a, b, _ in placed],
        event_levels_dbfs=[round(lv, 2) for *_, lv in placed],
    )


def truth_csv_path(wav_path: str | Path) -> Path:
    """Where :func:`write_demo_wav` puts the ground truth for ``wav_path``."""
    p = Path(wav_path)
    return p.with_name(f"{p.stem}.truth.csv")


def write_demo_wav(path: str | Path, duration_s: float = 60.0, seed: int = 0) -> DemoSoundscape:
    """Write a demo soundscape as 16-bit PCM WAV, and its ground truth as ``<stem>.truth.csv``
    (columns species_code,start_s,end_s,level_dbfs). Returns the soundscape."""
    import soundfile as sf  # local: keeps `import agent.demo` light

    scape = make_demo_soundscape(duration_s, DEMO_SAMPLE_RATE_HZ, seed)
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), scape.audio, scape.sample_rate_hz, subtype="PCM_16", format="WAV")
        with truth_csv_path(out).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["species_code", "start_s", "end_s", "level_dbfs"])
            for (code, a, b), lv in zip(scape.events, scape.event_levels_dbfs, strict=True):
                w.writerow([code, f"{a:.4f}", f"{b:.4f}", f"{lv:.2f}"])
    except (OSError, sf.LibsndfileError) as exc:
        raise ChorusError(f"{out}: cannot write demo audio: {exc}") from exc
    log.info("wrote %s (%.1f s, %d calls)", out, scape.duration_s, len(scape.events))
    return scape
