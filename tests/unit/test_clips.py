from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import soundfile as sf

from agent.clips import MB, ClipStore
from agent.detection.types import Detection

T0 = datetime(2026, 5, 1, 4, 0, tzinfo=UTC)


def det(i: int) -> Detection:
    start = T0 + timedelta(seconds=10 * i)
    return Detection(
        "dmwhis",
        "Synthetica flauta",
        "Demo Whistler",
        0.9,
        2.2,
        start,
        start + timedelta(seconds=5),
        10.0 * i,
        10.0 * i + 5,
        "sep1",
        "demo",
        "chorus-demo",
        "0.1.0",
        "dev",
        "test",
    )


def audio(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "mix": rng.normal(0, 0.1, 22050 * 5).astype(np.float32),
        "sep1": rng.normal(0, 0.1, 22050 * 5).astype(np.float32),
    }


def test_clip_round_trip_names_and_formats(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, fmt="flac", min_free_mb=0)
    a = audio(0)
    paths = store.save(det(0), a, 22050)
    assert [p.name.split("_")[-1] for p in paths] == ["mix.flac", "sep1.flac"]
    assert paths[0].parent.name == "2026-05-01"
    x, sr = sf.read(paths[0], dtype="float32")
    assert sr == 22050 and np.max(np.abs(x - a["mix"])) < 1 / 32767 + 1e-6
    assert not list(tmp_path.rglob("*.part"))


def test_many_clips_stay_under_the_size_bound(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, fmt="wav", max_total_mb=2.0, min_free_mb=0)  # ~440 kB a pair
    for i in range(40):
        store.save(det(i), audio(i), 22050)
        assert store.total_bytes() <= 2.0 * MB
    kept = store.clips()
    assert store.stats.saved == 40 and store.stats.deleted_size > 60
    # The newest survive, the oldest went first.
    assert kept[-1].name.startswith((T0 + timedelta(seconds=390)).strftime("%Y%m%dT%H%M%S"))
    assert not any(p.name.startswith(T0.strftime("%Y%m%dT%H%M%S")) for p in kept)


def test_old_clips_expire(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, max_age_days=1.0, min_free_mb=0)
    old = store.save(det(0), audio(0), 22050)
    new = store.save(det(1), audio(1), 22050)
    for p in old:
        os.utime(p, (0, p.stat().st_mtime - 2 * 86400))
    store.enforce()
    assert not any(p.exists() for p in old) and all(p.exists() for p in new)
    assert store.stats.deleted_age == 2


def test_free_space_floor_deletes_then_refuses(tmp_path: Path) -> None:
    free = {"bytes": 100 * MB}
    store = ClipStore(
        tmp_path,
        fmt="wav",
        max_total_mb=1e6,
        min_free_mb=99.5,
        disk_free=lambda: free["bytes"] - store.total_bytes(),
    )
    assert store.save(det(0), audio(0), 22050)  # 100 MB free, clip ~0.44 MB
    assert store.save(det(1), audio(1), 22050) and len(store.clips()) == 2  # oldest made room
    assert store.stats.deleted_floor >= 2
    free["bytes"] = 99 * MB  # below the floor even with no clips at all
    assert store.save(det(2), audio(2), 22050) == []
    assert store.clips() == [] and store.stats.skipped_low_disk == 1
