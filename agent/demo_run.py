"""``chorus-agent demo``: the whole offline pipeline on a generated soundscape, no network needed.

Writes a demo recording with known calls, analyses it with the shipped bundle exactly as
``chorus-agent analyze`` would, prints the detections next to the ground truth, and scores them
(an event counts as found when a detection of the same species overlaps it in time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.app import analyze_files, build_engine
from agent.config import parse_config
from agent.demo import write_demo_wav

# A 60-s soundscape of the synthetic bird world the shipped bundle was trained on (test split,
# never seen in training), and its annotation; see docs/export.md for how both were made.
DEMO_SOUNDSCAPE = Path(__file__).resolve().parent / "demo_data" / "soundscape.wav"


@dataclass(frozen=True)
class Match:
    found_events: int
    total_events: int
    true_detections: int
    total_detections: int

    @property
    def recall(self) -> float:
        return self.found_events / self.total_events if self.total_events else 0.0

    @property
    def precision(self) -> float:
        return self.true_detections / self.total_detections if self.total_detections else 0.0


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def score(
    truth: Sequence[tuple[str, float, float]], detections: Sequence[tuple[str, float, float]]
) -> Match:
    """Event-level recall and detection-level precision by species + time overlap."""
    found = sum(
        any(c == d and _overlaps(s, e, ds, de) for d, ds, de in detections) for c, s, e in truth
    )
    true = sum(
        any(c == d and _overlaps(s, e, ds, de) for c, s, e in truth) for d, ds, de in detections
    )
    return Match(found, len(truth), true, len(detections))


def read_truth(path: Path) -> list[tuple[str, float, float]]:
    """(species code, start s, end s) of every annotated call in a soundscape's event CSV."""
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return [(r["code"], float(r["start_s"]), float(r["end_s"])) for r in csv.DictReader(f)]


def run_demo(
    out_dir: Path, duration_s: float = 60.0, seed: int = 0, synthetic: bool = False
) -> int:
    """Analyse the demo soundscape and score the detections against its annotation.

    Default: the shipped soundscape (``agent/demo_data``, made by modeltools' synthetic world)
    with the shipped trained bundle. ``synthetic``: a freshly generated soundscape of the six
    demo sources with the hand-set plumbing bundle (``agent/bundles/demo``).
    """
    import json
    import shutil

    from agent.app import DEMO_BUNDLE

    out_dir.mkdir(parents=True, exist_ok=True)
    if synthetic:
        wav = out_dir / "demo-soundscape.wav"
        truth = list(write_demo_wav(wav, duration_s=duration_s, seed=seed).events)
        cfg: dict = {"device_id": "demo", "inference": {"bundle": str(DEMO_BUNDLE)}}
        what = f"{duration_s:.0f} s generated soundscape"
    else:
        wav = out_dir / DEMO_SOUNDSCAPE.name
        shutil.copyfile(DEMO_SOUNDSCAPE, wav)
        truth = read_truth(DEMO_SOUNDSCAPE.with_suffix(".csv"))
        cfg = {"device_id": "demo"}
        what = "shipped synthetic soundscape"
    engine = build_engine(parse_config(cfg, "demo"))
    report = analyze_files(engine, [wav], out_dir, progress=False)
    detections = [
        json.loads(line)
        for line in (out_dir / "detections.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    m = engine.models.bundle.manifest
    print(
        f"Chorus demo: {what}, bundle {m.name} {m.version}, mode {engine.config.inference.mode}\n"
    )
    print(f"{'start_s':>8} {'end_s':>7}  {'species':<28} {'conf':>5}  channel")
    for d in detections:
        print(
            f"{d['start_s']:8.1f} {d['end_s']:7.1f}  {d['species']['common_name']:<28} "
            f"{d['confidence']:5.2f}  {d['channel']}"
        )
    match = score(truth, [(d["species"]["code"], d["start_s"], d["end_s"]) for d in detections])
    present = sorted({c for c, _, _ in truth})
    found = sorted({d["species"]["code"] for d in detections} & set(present))
    print(
        f"\n{match.found_events}/{match.total_events} calls found (recall {match.recall:.2f}), "
        f"{match.true_detections}/{match.total_detections} detections overlap a true call "
        f"(precision {match.precision:.2f}); species found: {len(found)}/{len(present)}"
    )
    rtf = report.audio_s / report.wall_s if report.wall_s else float("inf")
    print(f"{report.audio_s:.0f} s of audio in {report.wall_s:.2f} s ({rtf:.0f}x real time)")
    print(
        f"outputs: {out_dir}/detections.jsonl, detections.csv, {wav.stem}.selections.txt "
        f"(Raven), summary.json; audio: {wav}"
    )
    (out_dir / "demo-score.json").write_text(
        json.dumps(
            {
                "recall": match.recall,
                "precision": match.precision,
                "calls": match.total_events,
                "detections": match.total_detections,
                "species_present": present,
                "species_found": found,
            },
            indent=1,
        )
        + "\n"
    )
    return 0
