"""Synthetic focal recordings (weak labels) and annotated soundscapes (strong labels).

Focal recordings mimic the paper's Xeno-Canto training data: one **primary** species sings
in one to three bouts at close range with long silent gaps between bouts, a few quieter
**background** species call now and then, and the recordist's ``background`` list is filled
only sometimes (and then not always completely). Soundscapes mimic a dawn chorus: several
species at many distances singing at once over a noise bed, every vocalisation annotated
with time, frequency box and in-band SNR.

Events quieter than ``scene.MIN_LABEL_SNR_DB`` in-band SNR are not placed at all, so every
annotated event is at least faintly audible and no label is given for an inaudible call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modeltools.data.noise import NoiseBank
from modeltools.data.scene import (
    MIN_LABEL_SNR_DB,
    REF_PEAK,
    Event,
    add_at,
    apply_distance,
    snr_db,
)
from modeltools.data.species import SyntheticWorld

MIN_BOUT_S = 4.0
RECORDER_PEAK = (0.3, 0.9)  # the recordist's gain: final peak level of a file


@dataclass(frozen=True)
class FocalConfig:
    duration_s: tuple[float, float] = (12.0, 40.0)
    primary_distance_m: tuple[float, float] = (5.0, 40.0)
    background_distance_m: tuple[float, float] = (40.0, 200.0)
    # P(0, 1, 2, 3 background species present)
    background_count_p: tuple[float, ...] = (0.25, 0.35, 0.25, 0.15)
    background_listed_p: float = 0.5  # the recordist fills the background list at all
    background_name_p: float = 0.8  # ... and then names each present species with this p
    active_fraction: tuple[float, float] = (0.25, 0.65)  # share of the file in singing bouts
    # RMS level of the noise bed (before the recorder gain). With the distances above the
    # primary's in-band SNR has median ~34 dB, the background's ~13 dB (seed-0 world).
    noise_dbfs: tuple[float, float] = (-52.0, -30.0)


@dataclass(frozen=True)
class SoundscapeConfig:
    duration_s: float = 60.0
    species_count: tuple[int, int] = (3, 8)  # inclusive range of singing species
    distance_m: tuple[float, float] = (20.0, 250.0)
    density: tuple[float, float] = (0.8, 1.8)  # multiplier on each species' singing rate
    other_p: float = 0.3  # an out-of-set species joins the chorus
    partial_p: float = 0.35  # a species sings during only part of the soundscape
    # In-band SNR of the calls: 5th/50th/95th percentile about -7 / 9 / 33 dB.
    noise_dbfs: tuple[float, float] = (-48.0, -30.0)


@dataclass
class SynthRecording:
    audio: np.ndarray  # float32 mono
    events: list[Event]
    primary: tuple[str, ...] = ()
    background: tuple[str, ...] = ()  # the listed (weak) background labels
    background_present: tuple[str, ...] = ()  # ground truth: who is really audible
    noise: list[str] = field(default_factory=list)
    noise_dbfs: float = 0.0
    # The vocalisations alone at the recording's gain (audio - birds is the noise bed); only
    # soundscapes set it. Semi-supervised separator training uses it as a reference stem.
    birds: np.ndarray | None = None

    @property
    def species_present(self) -> tuple[str, ...]:
        return tuple(sorted({e.code for e in self.events}))


class _Scene:
    """A track being filled with vocalisations over a fixed noise bed."""

    def __init__(
        self, world: SyntheticWorld, n: int, sr: int, noise: np.ndarray, rng: np.random.Generator
    ) -> None:
        self.world, self.sr, self.rng = world, sr, rng
        self.track = np.zeros(n)
        self.noise = noise
        self.events: list[Event] = []

    def sing(self, code: str, start_s: float, distance_m: float, role: str) -> float:
        """Place one vocalisation; return its dry duration in s (placed or not)."""
        voc = self.world.vocalization(code, self.rng)
        loud = self.world.voices[code].loudness
        wet = apply_distance(voc.samples * loud * REF_PEAK, distance_m, self.sr, self.rng)
        start = int(start_s * self.sr)
        dry_n = voc.samples.shape[0]
        if start >= self.track.shape[0]:
            return dry_n / self.sr
        a, b = start, min(start + dry_n, self.track.shape[0])
        snr = snr_db(wet[: b - a], self.noise[a:b], self.sr, voc.band_hz)
        if snr < MIN_LABEL_SNR_DB and role != "primary":
            return dry_n / self.sr
        add_at(self.track, wet, start)
        self.events.append(
            Event(
                code,
                a / self.sr,
                b / self.sr,
                voc.band_hz[0],
                voc.band_hz[1],
                voc.kind,
                distance_m,
                role,
                snr,
            )
        )
        return dry_n / self.sr

    def sing_bout(
        self,
        code: str,
        span_s: tuple[float, float],
        distance_m: float,
        role: str,
        rate: float = 1.0,
    ) -> None:
        """Vocalise from ``span_s[0]`` until ``span_s[1]`` with the species' pauses / rate."""
        lo, hi = self.world.voices[code].song_interval_s
        t = span_s[0]
        while t < span_s[1]:
            dur = self.sing(code, t, distance_m, role)
            t += dur + self.rng.uniform(lo, hi) / rate

    def mix(self) -> tuple[np.ndarray, float]:
        """Track + noise at a random recorder gain (peak in RECORDER_PEAK); (audio, gain)."""
        y = self.track + self.noise
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        gain = float(self.rng.uniform(*RECORDER_PEAK)) / peak if peak > 0 else 1.0
        return (y * gain).astype(np.float32), gain


def _noise_bed(
    bank: NoiseBank, n: int, rng: np.random.Generator, level_dbfs: tuple[float, float]
) -> tuple[np.ndarray, list[str], float]:
    bed, names = bank.bed(n, rng)
    dbfs = float(rng.uniform(*level_dbfs))
    return bed * 10 ** (dbfs / 20), names, dbfs


def make_focal(
    world: SyntheticWorld,
    code: str,
    rng: np.random.Generator,
    bank: NoiseBank,
    cfg: FocalConfig = FocalConfig(),
    sample_rate_hz: int = 22050,
) -> SynthRecording:
    """A weakly labelled focal recording of ``code``."""
    dur = float(rng.uniform(*cfg.duration_s))
    n = int(dur * sample_rate_hz)
    noise, noise_names, noise_dbfs = _noise_bed(bank, n, rng, cfg.noise_dbfs)
    scene = _Scene(world, n, sample_rate_hz, noise, rng)

    # Primary: 1-3 singing bouts, each in its own slot of the file, silence in between.
    dist = float(rng.uniform(*cfg.primary_distance_m))
    n_bouts = int(rng.integers(1, 4))
    slot = dur / n_bouts
    bout = max(float(rng.uniform(*cfg.active_fraction)) * dur / n_bouts, MIN_BOUT_S)
    for k in range(n_bouts):
        start = k * slot + rng.uniform(0, max(slot - bout, 0.0))
        scene.sing_bout(code, (start, min(start + bout, dur - 0.5)), dist, "primary")
    if not any(e.role == "primary" for e in scene.events):
        scene.sing(code, rng.uniform(0, max(dur - 4.0, 0.1)), dist, "primary")

    # Background species: sparse, far away, anywhere in the file.
    others = [c for c in world.codes if c != code]
    k_bg = int(rng.choice(len(cfg.background_count_p), p=np.array(cfg.background_count_p)))
    for bg in rng.choice(others, size=min(k_bg, len(others)), replace=False):
        bg_dist = float(rng.uniform(*cfg.background_distance_m))
        scene.sing_bout(str(bg), (rng.uniform(0, dur / 2), dur), bg_dist, "background", 0.3)

    audio, gain = scene.mix()
    noise_dbfs += 20 * np.log10(gain)  # the level actually in the file
    present = tuple(sorted({e.code for e in scene.events if e.role == "background"}))
    listed: tuple[str, ...] = ()
    if present and rng.random() < cfg.background_listed_p:
        named = [c for c in present if rng.random() < cfg.background_name_p]
        listed = tuple(named or [present[int(rng.integers(len(present)))]])
    return SynthRecording(audio, scene.events, (code,), listed, present, noise_names, noise_dbfs)


def make_soundscape(
    world: SyntheticWorld,
    rng: np.random.Generator,
    bank: NoiseBank,
    cfg: SoundscapeConfig = SoundscapeConfig(),
    sample_rate_hz: int = 22050,
) -> SynthRecording:
    """A strongly annotated dawn-chorus soundscape."""
    dur = float(cfg.duration_s)
    n = int(dur * sample_rate_hz)
    noise, noise_names, noise_dbfs = _noise_bed(bank, n, rng, cfg.noise_dbfs)
    scene = _Scene(world, n, sample_rate_hz, noise, rng)
    targets = [s.code for s in world.taxonomy.targets]
    others = [s.code for s in world.taxonomy.others]
    k = int(rng.integers(cfg.species_count[0], cfg.species_count[1] + 1))
    chorus = [str(c) for c in rng.choice(targets, size=min(k, len(targets)), replace=False)]
    if others and rng.random() < cfg.other_p:
        chorus.append(str(rng.choice(others)))
    for code in chorus:
        dist = float(rng.uniform(*cfg.distance_m))
        rate = float(rng.uniform(*cfg.density))
        span = (float(rng.uniform(0, 3.0)), dur)
        if rng.random() < cfg.partial_p:
            a = float(rng.uniform(0, dur * 0.6))
            span = (a, a + float(rng.uniform(dur * 0.2, dur * 0.5)))
        scene.sing_bout(code, span, dist, "chorus", rate)
    audio, gain = scene.mix()
    noise_dbfs += 20 * np.log10(gain)
    birds = (scene.track * gain).astype(np.float32)
    return SynthRecording(
        audio, scene.events, noise=noise_names, noise_dbfs=noise_dbfs, birds=birds
    )
