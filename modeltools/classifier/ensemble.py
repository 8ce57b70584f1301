"""Ensembles: K members trained with different seeds, combined by the mean of their logits.

ALGORITHMS.md §2.7: average logits over the ensemble first (per channel), then any max over
separated channels. Members are run folders written by :mod:`modeltools.classifier.train`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modeltools.classifier.presets import ClassifierConfig, ClassifierError, config_from_dict


def ensemble_logits(member_logits: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the members' logits (all the same shape)."""
    if not member_logits:
        raise ValueError("an ensemble needs at least one member")
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in member_logits])
    return stacked.mean(axis=0).astype(np.float32)


def member_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from the given paths: a run folder, or a folder of ``member-*`` runs."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "run.json").is_file():
            out.append(p)
        else:
            found = sorted(q for q in p.glob("member-*") if (q / "run.json").is_file())
            if not found:
                raise ClassifierError(f"{p}: not a classifier run folder (no run.json)")
            out += found
    return out


def load_member(run_dir: str | Path, which: str = "best") -> tuple[Any, ClassifierConfig]:
    """(Keras model with trained weights, config) of a run folder.

    ``which``: ``best`` (best validation CMAP; falls back to ``final``) or ``final``.
    """
    from modeltools.classifier.model import build_classifier

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    cfg = config_from_dict(meta["config"])
    model = build_classifier(cfg, meta["num_classes"])
    weights = run_dir / f"{which}.weights.h5"
    if not weights.is_file():
        weights = run_dir / "final.weights.h5"
    if not weights.is_file():
        raise ClassifierError(f"{run_dir}: no trained weights (best/final.weights.h5)")
    try:
        model.load_weights(weights)
    except (ValueError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClassifierError(
            f"{run_dir}: {weights.name} does not match the run's config (preset {cfg.name}): "
            f"{first[:200]}"
        ) from None
    return model, cfg
