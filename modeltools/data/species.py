"""A synthetic bird world: invented species in a taxonomy, each with its own song and call.

Everything follows from one seed (numpy/scipy only, no TensorFlow). Traits are inherited
down the tree so that relatedness means acoustic similarity:

* **order** -- frequency register (low / mid / high voices);
* **family** -- palette of syllable kinds (e.g. whistles + sweeps, or trills + buzzes) and tempo;
* **genus** -- a prototype song (phrases of syllables with frequencies, durations, repeats) and
  a prototype call;
* **species** -- the genus prototype with a distinct frequency offset (siblings sit about
  10-15 % apart), sweep directions, durations, repeat counts and rates perturbed, sometimes a
  phrase dropped or doubled. Sibling species therefore share syllable types and frequency
  ranges and differ in details: they really are confusable.

Each rendition adds individual variation (:meth:`Syllable.jittered`, repeat counts +-1). Names
are invented Latin-like binomials; every common name ends in "(synthetic)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from modeltools.data.syllables import Syllable, render
from modeltools.data.taxonomy import Species, Taxonomy

SAMPLE_RATE_HZ = 22050
F_MIN_HZ, F_MAX_HZ = 700.0, 9500.0
SONG_KINDS = ("sweep", "whistle", "trill", "stack", "buzz")
MIN_SONG_S = 0.8

_GEN_A = (
    "Sylv",
    "Cant",
    "Tril",
    "Fist",
    "Mel",
    "Ton",
    "Pip",
    "Zum",
    "Crep",
    "Vir",
    "Aur",
    "Nub",
    "Lum",
    "Sor",
    "Tit",
    "Quer",
    "Ful",
    "Brev",
    "Cal",
    "Dul",
    "Rup",
    "Pen",
    "Vox",
    "Ech",
)
_GEN_B = ("ornis", "ella", "aria", "icola", "ops", "ura", "ites", "ax", "idra", "ulus")
_EPITHETS = (
    "flava",
    "minor",
    "sonora",
    "rufa",
    "montana",
    "silvestris",
    "gracilis",
    "alpina",
    "aurea",
    "nigra",
    "palustris",
    "borealis",
    "australis",
    "maculata",
    "cinerea",
    "virens",
    "canora",
    "obscura",
    "pusilla",
    "major",
    "albifrons",
    "tenuis",
    "vocifera",
    "lucida",
    "rustica",
    "fulva",
    "caerulea",
    "modesta",
    "varia",
    "celer",
    "argentea",
    "umbrosa",
    "tremula",
    "lenta",
    "acuta",
    "serena",
)
_ADJ = (
    "Amber",
    "Ashy",
    "Dusky",
    "Golden",
    "Rufous",
    "Slate",
    "Olive",
    "Pale",
    "Spotted",
    "Crested",
    "Lesser",
    "Greater",
    "Hill",
    "Marsh",
    "Bright",
    "Sooty",
    "Pied",
    "Tawny",
    "Misty",
    "Cinder",
    "Ivory",
    "Copper",
    "Lilac",
    "Sable",
    "Meadow",
    "Cliff",
)
_NOUN = {
    "sweep": "Sweeper",
    "whistle": "Whistler",
    "trill": "Triller",
    "stack": "Chanter",
    "buzz": "Buzzer",
    "chip": "Chipper",
}


@dataclass(frozen=True)
class Phrase:
    """``repeats`` renditions of one syllable, ``gap_s`` of silence after each."""

    syllable: Syllable
    repeats: int
    gap_s: float
    gain: float = 1.0


@dataclass(frozen=True)
class Voice:
    """Everything a species sings: song phrases, call, timing and loudness."""

    song: tuple[Phrase, ...]
    call: tuple[Phrase, ...]
    phrase_gap_s: float
    song_interval_s: tuple[float, float]  # pause between songs within a singing bout
    call_fraction: float  # share of vocalisations that are calls
    loudness: float  # relative source level (peak amplitude at the reference distance)

    @property
    def band_hz(self) -> tuple[float, float]:
        bands = [p.syllable.band_hz for p in self.song + self.call]
        return min(b[0] for b in bands), max(b[1] for b in bands)


@dataclass(frozen=True)
class Vocalization:
    samples: np.ndarray  # float64, peak 1, clean (no distance effects)
    kind: str  # "song" or "call"
    band_hz: tuple[float, float]


class SyntheticWorld:
    """The taxonomy plus each species' voice; renders songs and calls deterministically."""

    def __init__(self, taxonomy: Taxonomy, voices: dict[str, Voice], seed: int) -> None:
        self.taxonomy = taxonomy
        self.voices = voices
        self.seed = seed

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(s.code for s in self.taxonomy.species)

    def render_phrases(
        self,
        phrases: tuple[Phrase, ...],
        phrase_gap_s: float,
        rng: np.random.Generator,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        jitter: float = 1.0,
    ) -> np.ndarray:
        parts: list[np.ndarray] = []
        for i, ph in enumerate(phrases):
            reps = max(1, ph.repeats + (int(rng.integers(-1, 2)) if ph.repeats > 2 else 0))
            for _ in range(reps):
                syl = ph.syllable.jittered(rng, jitter) if jitter > 0 else ph.syllable
                parts.append(ph.gain * render(syl, sample_rate_hz, rng))
                parts.append(np.zeros(int(ph.gap_s * sample_rate_hz)))
            if i < len(phrases) - 1:
                parts.append(np.zeros(int(phrase_gap_s * sample_rate_hz)))
        y = np.concatenate(parts)
        # Trim the trailing silence: a vocalisation ends with its last sound.
        nz = np.flatnonzero(np.abs(y) > 1e-6)
        y = y[: nz[-1] + 1] if nz.size else y
        return y / max(np.max(np.abs(y)), 1e-12)

    def song(self, code: str, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
        v = self.voices[code]
        return self.render_phrases(v.song, v.phrase_gap_s, rng, jitter=jitter)

    def call(self, code: str, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
        v = self.voices[code]
        return self.render_phrases(v.call, 0.08, rng, jitter=jitter)

    def vocalization(self, code: str, rng: np.random.Generator) -> Vocalization:
        """A song or (with the species' call fraction) a call, with individual variation."""
        v = self.voices[code]
        if rng.random() < v.call_fraction:
            band = _band(v.call)
            return Vocalization(self.call(code, rng), "call", band)
        return Vocalization(self.song(code, rng), "song", _band(v.song))


def _band(phrases: tuple[Phrase, ...]) -> tuple[float, float]:
    bands = [p.syllable.band_hz for p in phrases]
    return min(b[0] for b in bands), min(max(b[1] for b in bands), SAMPLE_RATE_HZ / 2)


# ---------------------------------------------------------------------------------------------
# Generation


def _clip_f(f: float) -> float:
    return float(min(max(f, F_MIN_HZ), F_MAX_HZ))


def _syllable(kind: str, f: float, rng: np.random.Generator) -> tuple[Syllable, int, float]:
    """A prototype syllable of ``kind`` around ``f`` Hz, with its repeat count and gap."""
    u = rng.uniform
    direction = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "sweep":
        bw = u(0.25, 0.8)
        f0, f1 = f * (1 - direction * bw / 2), f * (1 + direction * bw / 2)
        syl = Syllable("sweep", u(0.06, 0.3), _clip_f(f0), _clip_f(f1), curvature=u(-1, 1))
        return syl, int(rng.integers(1, 6)), u(0.03, 0.15)
    if kind == "whistle":
        syl = Syllable(
            "whistle",
            u(0.25, 0.8),
            _clip_f(f),
            _clip_f(f * u(0.9, 1.1)),
            vibrato_hz=u(4, 30),
            vibrato_depth_hz=f * u(0.015, 0.06),
            attack_frac=u(0.1, 0.3),
            release_frac=u(0.15, 0.4),
        )
        return syl, int(rng.integers(1, 4)), u(0.1, 0.3)
    if kind == "trill":
        bw = u(0.1, 0.5)
        syl = Syllable(
            "trill",
            u(0.4, 1.4),
            _clip_f(f * (1 + direction * bw / 2)),
            _clip_f(f * (1 - direction * bw / 2)),
            curvature=u(-0.5, 0.5),
            note_rate_hz=u(8, 28),
            note_duty=u(0.45, 0.8),
        )
        return syl, 1, u(0.05, 0.15)
    if kind == "stack":
        f0 = max(f / u(2.0, 3.5), F_MIN_HZ * 0.7)
        syl = Syllable(
            "stack",
            u(0.1, 0.4),
            f0,
            f0 * u(0.9, 1.12),
            n_harmonics=int(rng.integers(2, 6)),
            harmonic_decay=u(0.45, 0.8),
            vibrato_hz=u(3, 8),
            vibrato_depth_hz=f0 * 0.01,
        )
        return syl, int(rng.integers(1, 5)), u(0.05, 0.2)
    if kind == "buzz":
        syl = Syllable(
            "buzz",
            u(0.3, 0.9),
            _clip_f(f),
            _clip_f(f * u(0.9, 1.1)),
            am_rate_hz=u(40, 150),
            noise_mix=u(0.2, 0.6),
        )
        return syl, int(rng.integers(1, 3)), u(0.08, 0.2)
    if kind == "chip":
        syl = Syllable(
            "chip",
            u(0.02, 0.06),
            _clip_f(f * 1.3),
            _clip_f(f * 0.8),
            curvature=u(-1.0, 0.0),
            attack_frac=0.05,
            release_frac=0.5,
        )
        return syl, int(rng.integers(1, 4)), u(0.06, 0.15)
    raise ValueError(kind)


def _perturb(ph: Phrase, factor: float, rng: np.random.Generator) -> Phrase:
    """A sibling species' version of a genus phrase."""
    s = ph.syllable
    f0, f1 = s.f_start_hz * factor, s.f_end_hz * factor
    if s.kind in ("sweep", "trill") and rng.random() < 0.3:
        f0, f1 = f1, f0  # the sibling sweeps the other way
    u = rng.uniform
    syl = replace(
        s,
        f_start_hz=_clip_f(f0) if s.kind != "stack" else f0,
        f_end_hz=_clip_f(f1) if s.kind != "stack" else f1,
        duration_s=s.duration_s * u(0.8, 1.25),
        curvature=s.curvature + u(-0.4, 0.4),
        vibrato_hz=s.vibrato_hz * u(0.7, 1.4),
        note_rate_hz=s.note_rate_hz * u(0.75, 1.3),
        am_rate_hz=s.am_rate_hz * u(0.8, 1.25),
    )
    repeats = max(1, ph.repeats + int(rng.integers(-2, 3)))
    return Phrase(syl, repeats, ph.gap_s * u(0.8, 1.25), ph.gain * u(0.8, 1.0))


def _nominal_s(phrases: list[Phrase]) -> float:
    return sum(p.repeats * (p.syllable.duration_s + p.gap_s) for p in phrases)


def _names(rng: np.random.Generator, n: int, parts: tuple[tuple[str, ...], ...]) -> list[str]:
    combos = [a + b for a in parts[0] for b in parts[1]]
    idx = rng.permutation(len(combos))[:n]
    return [combos[i] for i in idx]


def _code(common: str, taken: set[str]) -> str:
    words = [w for w in common.replace("(synthetic)", "").split() if w]
    base = (words[0][:3] + words[-1][:3]).lower()
    code, k = base, 1
    while code in taken:
        code = base[:5] + str(k)
        k += 1
    taken.add(code)
    return code


def _split_sizes(total: int, n_groups: int, rng: np.random.Generator) -> list[int]:
    """``total`` items in ``n_groups`` groups, as even as possible, in random order."""
    sizes = [total // n_groups] * n_groups
    for i in rng.permutation(n_groups)[: total % n_groups]:
        sizes[i] += 1
    return sizes


def make_world(n_species: int = 24, n_other: int = 6, seed: int = 0) -> SyntheticWorld:
    """Generate ``n_species`` target species plus ``n_other`` out-of-set species.

    Genera hold 2-3 species (targets and others mixed, so out-of-set species have in-set
    relatives); there are about half as many families as genera and half as many orders as
    families.
    """
    if n_species < 1 or n_other < 0:
        raise ValueError("need n_species >= 1 and n_other >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EC1E5]))
    total = n_species + n_other
    n_genera = max(1, min(total, math.ceil(total / 2.5)))
    n_families = max(1, math.ceil(n_genera / 2))
    n_orders = max(1, math.ceil(n_families / 2))
    genus_sizes = _split_sizes(total, n_genera, rng)
    genus_family = [int(i) for i in np.sort(rng.permutation(n_genera) % n_families)]
    family_order = [int(i) for i in np.sort(rng.permutation(n_families) % n_orders)]

    genus_names = _names(rng, n_genera, (_GEN_A, _GEN_B))
    stems = [g[:-2] if len(g) > 5 else g for g in genus_names]
    family_names = [stems[genus_family.index(f)].capitalize() + "idae" for f in range(n_families)]
    order_names = [
        stems[genus_family.index(family_order.index(o))].capitalize() + "iformes"
        for o in range(n_orders)
    ]
    # Registers: orders spread over 1.5-5.5 kHz; families shift them a little.
    order_f = np.geomspace(1500.0, 5500.0, n_orders)[rng.permutation(n_orders)]
    family_f = [order_f[family_order[f]] * rng.uniform(0.85, 1.18) for f in range(n_families)]
    palettes = [
        tuple(rng.choice(SONG_KINDS, size=int(rng.integers(2, 4)), replace=False))
        for _ in range(n_families)
    ]
    tempo = [rng.uniform(0.7, 1.4) for _ in range(n_families)]

    species_rows: list[Species] = []
    voices: dict[str, Voice] = {}
    taken_codes: set[str] = set()
    taken_common: set[str] = set()
    epithets = list(rng.permutation(_EPITHETS))
    roles = ["target"] * n_species + ["other"] * n_other
    # Spread the out-of-set species over genera: interleave, then cut into genera.
    order_idx = list(rng.permutation(total))
    roles = [roles[i] for i in order_idx]
    pos = 0
    for g in range(n_genera):
        fam = genus_family[g]
        palette = palettes[fam]
        f_genus = family_f[fam] * rng.uniform(0.9, 1.1)
        n_phr = int(rng.integers(1, 4))
        proto = []
        for _ in range(n_phr):
            kind = str(rng.choice(palette))
            f = f_genus * rng.uniform(0.85, 1.2)
            syl, reps, gap = _syllable(kind, f, rng)
            proto.append(Phrase(syl, reps, gap * tempo[fam], rng.uniform(0.6, 1.0)))
        call_syl, call_reps, call_gap = _syllable("chip", f_genus * rng.uniform(1.0, 1.3), rng)
        proto_call = Phrase(call_syl, call_reps, call_gap)
        size = genus_sizes[g]
        # Siblings get distinct register offsets, ~12 % apart, in random order.
        factors = np.exp((np.arange(size) - (size - 1) / 2) * 0.12)[rng.permutation(size)]
        for k in range(size):
            factor = float(factors[k] * rng.uniform(0.98, 1.02))
            song = [_perturb(p, factor, rng) for p in proto]
            if len(song) > 1 and rng.random() < 0.25:
                song.pop(int(rng.integers(len(song))))
            elif rng.random() < 0.2:
                song.append(_perturb(song[-1], 1.0, rng))
            while _nominal_s(song) < MIN_SONG_S:  # a song is more than a single short note
                song[0] = replace(song[0], repeats=song[0].repeats + 1)
            call = (_perturb(proto_call, factor, rng),)
            epithet = str(epithets[(pos) % len(epithets)]) + ("" if pos < len(epithets) else "i")
            sci = f"{genus_names[g]} {epithet}"
            adj = str(_ADJ[int(rng.integers(len(_ADJ)))])
            noun = _NOUN[song[0].syllable.kind]
            common = f"{adj} {noun}"
            while common in taken_common:
                adj = str(_ADJ[int(rng.integers(len(_ADJ)))])
                common = f"{adj} {noun}" if rng.random() < 0.7 else f"{adj} {genus_names[g]}"
            taken_common.add(common)
            code = _code(common, taken_codes)
            species_rows.append(
                Species(
                    code=code,
                    scientific_name=sci,
                    common_name=f"{common} (synthetic)",
                    genus=genus_names[g],
                    family=family_names[fam],
                    order=order_names[family_order[fam]],
                    role=roles[pos],
                )
            )
            voices[code] = Voice(
                song=tuple(song),
                call=call,
                phrase_gap_s=rng.uniform(0.05, 0.25) * tempo[fam],
                song_interval_s=(rng.uniform(1.5, 4.0), rng.uniform(5.0, 10.0)),
                call_fraction=rng.uniform(0.1, 0.35),
                loudness=rng.uniform(0.6, 1.0),
            )
            pos += 1
    species_rows.sort(key=lambda s: s.code)
    taxonomy = Taxonomy(species_rows, name=f"synthetic-{seed}")
    return SyntheticWorld(taxonomy, voices, seed)
