from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from agent.config import DetectionConfig
from agent.detection.combine import Combined
from agent.detection.events import DetectionContext, EventDetector
from agent.models.manifest import Label
from agent.windowing import Window

SR = 100
T0 = datetime(2026, 5, 1, tzinfo=UTC)
LABELS = (
    Label("amro", "Turdus migratorius", "American Robin"),
    Label("sosp", "Melospiza melodia", "Song Sparrow"),
)
CTX = DetectionContext("main", "b", "1", "dev", "test", ("mix", "sep0", "sep1"))


def win(i: int, hop: int = 250, size: int = 500, valid: int | None = None) -> Window:
    return Window(i, np.zeros(size, np.float32), i * hop, valid or size, SR, T0)


def scores(amro: float, sosp: float, winner: tuple[int, int] = (0, 0)) -> Combined:
    return Combined(np.array([amro, sosp], np.float32), np.array(winner))


def run(det: EventDetector, logits: list[tuple[float, float]], winners=None) -> list:
    out = []
    for i, (a, s) in enumerate(logits):
        out += det.process(win(i), scores(a, s, winners[i] if winners else (0, 0)))
    return out + det.flush()


def make(**cfg) -> EventDetector:
    return EventDetector(LABELS, DetectionConfig(**cfg), CTX, SR, T0)


def test_consecutive_windows_merge_into_one_event_with_max_confidence() -> None:
    events = run(
        make(),
        [(2.0, -5), (4.0, -5), (1.0, -5), (-3.0, -5), (3.0, -5)],
        winners=[(0, 0), (2, 0), (1, 0), (0, 0), (1, 0)],
    )
    assert [(e.species_code, e.start_s, e.end_s, e.windows) for e in events] == [
        ("amro", 0.0, 10.0, 3),
        ("amro", 10.0, 15.0, 1),
    ]
    first = events[0]
    assert first.logit == 4.0 and first.channel == "sep1"
    assert abs(first.confidence - 1 / (1 + np.exp(-4.0))) < 1e-9
    assert first.start_utc == T0 and (first.end_utc - T0).total_seconds() == 10.0


def test_no_merge_gives_one_detection_per_window() -> None:
    events = run(make(merge=False), [(2.0, -5), (4.0, -5)])
    assert [(e.start_s, e.end_s) for e in events] == [(0.0, 5.0), (2.5, 7.5)]


def test_thresholds_global_and_per_species() -> None:
    logit_070 = float(np.log(0.7 / 0.3))
    assert run(make(threshold=0.75), [(logit_070, logit_070)]) == []
    events = run(make(threshold=0.75, species_thresholds={"sosp": 0.6}), [(logit_070, logit_070)])
    assert [e.species_code for e in events] == ["sosp"]


def test_include_and_exclude_lists() -> None:
    assert {e.species_code for e in run(make(include=["sosp"]), [(3, 3)])} == {"sosp"}
    assert {e.species_code for e in run(make(exclude=["sosp"]), [(3, 3)])} == {"amro"}


def test_long_event_is_split_at_max_event_s() -> None:
    events = run(make(max_event_s=10.0), [(3, -9)] * 8)  # 8 windows = 0..22.5 s
    spans = [(e.start_s, e.end_s) for e in events]
    assert spans == [(0.0, 10.0), (7.5, 17.5), (15.0, 22.5)]
    assert all(e.end_s - e.start_s <= 10.0 for e in events)


def test_events_close_in_time_order_and_final_window_end_is_real_audio() -> None:
    det = make()
    out = det.process(win(0), scores(3, 3))
    out += det.process(win(1, valid=320), scores(-3, 3))  # last window: 3.2 s of real audio
    out += det.flush()
    assert [(e.species_code, e.start_s, e.end_s) for e in out] == [
        ("amro", 0.0, 5.0),
        ("sosp", 0.0, 5.7),
    ]


def test_ids_are_unique() -> None:
    events = run(make(merge=False), [(3, 3)] * 5)
    assert len({e.id for e in events}) == 10
