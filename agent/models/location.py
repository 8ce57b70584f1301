"""Location/season species filter with a BirdNET meta-model (``MData``) file.

The meta-model takes float32 ``[1, 3]`` = (latitude, longitude, week) and returns ``[1, C]``
occurrence scores, one per line of a BirdNET labels file. A species whose score is below
``threshold`` for the recorder's place and week is not reported. The filter works with any
backend whose labels carry scientific names (our bundles' label tables do): species are matched
by scientific name; a species the meta-model does not know is kept (the filter only removes what
it knows to be unlikely there and then).

Weeks follow BirdNET: 48 per year, four per month (days 1-7 -> 1, 8-14 -> 2, 15-21 -> 3, 22+ -> 4
of the month); -1 means "all year".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from agent.errors import ConfigError
from agent.models.birdnet import check_io, parse_birdnet_labels
from agent.models.manifest import Label
from agent.models.runtime import TFLiteModel


def week_48(t: datetime) -> int:
    """BirdNET's week of the year, 1..48 (four weeks per month)."""
    return (t.month - 1) * 4 + min(4, (t.day - 1) // 7 + 1)


class LocationFilter:
    """Which species are plausible at (latitude, longitude) in a given week."""

    def __init__(
        self,
        meta_model: str | Path,
        labels: str | Path,
        latitude: float,
        longitude: float,
        week: int | None,
        threshold: float,
    ) -> None:
        meta_labels = parse_birdnet_labels(labels, "classifier.location_filter.labels")
        if not Path(meta_model).is_file():
            raise ConfigError(
                [f"classifier.location_filter.meta_model: file not found: {meta_model}"]
            )
        self.model = TFLiteModel(meta_model)
        check_io(
            self.model,
            "classifier.location_filter.meta_model",
            (1, 3),
            len(meta_labels),
            "a BirdNET meta-model",
        )
        self.index = {lab.scientific_name.lower(): i for i, lab in enumerate(meta_labels)}
        self.latitude, self.longitude = latitude, longitude
        self.fixed_week = week
        self.threshold = threshold
        self._cache: dict[tuple[int, tuple[str, ...]], np.ndarray] = {}

    def occurrence(self, week: int) -> np.ndarray:
        """(C_meta,) occurrence scores for this place in ``week`` (-1: all year)."""
        x = np.array([[self.latitude, self.longitude, float(week)]], dtype=np.float32)
        return self.model.run(x)[0]

    def week_for(self, t: datetime) -> int:
        return self.fixed_week if self.fixed_week is not None else week_48(t)

    def mask(self, labels: Sequence[Label], t: datetime) -> np.ndarray:
        """(C,) bool for ``labels``: False where the meta-model scores the species below the
        threshold for the week of ``t``. Computed once per week and label set."""
        week = self.week_for(t)
        key = (week, tuple(lab.scientific_name for lab in labels))
        cached = self._cache.get(key)
        if cached is None:
            scores = self.occurrence(week)
            cached = np.array(
                [
                    (i := self.index.get(lab.scientific_name.lower())) is None
                    or scores[i] >= self.threshold
                    for lab in labels
                ],
                dtype=bool,
            )
            self._cache = {key: cached}  # weeks only move forward; keep one
        return cached
