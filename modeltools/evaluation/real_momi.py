"""MoMi of a bundle's separator on mixtures of mixtures of *real* evaluation-only recordings.

Each benchmark clip (5 s of a real recording, :func:`~modeltools.evaluation.real_benchmark.
select_clips`) is one mixture; its partner is the next clip from another recording (MoMs of two
real soundscapes) or a 5-s segment of the evaluation half of a real noise file. Both at their
recorded levels (x1 + x2, as the synthetic MoMs of ALGORITHMS.md §1.7). The separator is the
agent's own stage (TFLite, with the manifest's input gain); MoMi and the collapse count are
:func:`modeltools.separation.metrics.momi_breakdown`'s, so the figure sits beside the synthetic
MoMi of docs/separation.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.models.stages import LoadedModels
from modeltools.evaluation.real_benchmark import NOISE_FILES, Clip, _Audio, _noise_segment
from modeltools.evaluation.real_run import to_pipeline_rate


def real_moms(
    clips: list[Clip], shared: Path, seed: int = 0
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(kind, x1, x2)`` at 48 kHz: a clip with the next clip of another file, and a clip with
    real noise (evaluation halves)."""
    audio = _Audio(shared)
    rng = np.random.default_rng(seed + 1)
    names = [n for n, _ in NOISE_FILES]
    halves = {n: audio.noise_half(rel) for n, rel in NOISE_FILES}
    out = []
    for i, c in enumerate(clips):
        others = [j for j in range(1, len(clips)) if clips[(i + j) % len(clips)].rel != c.rel]
        if others:
            out.append(
                ("two recordings", audio.clip(c), audio.clip(clips[(i + others[0]) % len(clips)]))
            )
        noise = _noise_segment(halves[names[i % len(names)]], rng)
        out.append(("recording + noise", audio.clip(c), noise))
    return out


def real_momi(
    models: LoadedModels, clips: list[Clip], shared: Path, seed: int = 0
) -> dict[str, Any]:
    """MoMi (dB) of ``models.separator`` on :func:`real_moms`; overall and per kind."""
    from modeltools.separation.metrics import momi_breakdown

    assert models.separator is not None
    rate, n = models.sample_rate_hz, models.window_samples
    kinds, refs, ests = [], [], []
    for kind, a, b in real_moms(clips, shared, seed):
        x1, x2 = to_pipeline_rate(a, rate, n), to_pipeline_rate(b, rate, n)
        kinds.append(kind)
        refs.append(np.stack([x1, x2]))
        ests.append(models.separator.separate(x1 + x2))
    res = momi_breakdown(np.stack(refs), np.stack(ests))
    m, collapsed = res["momi_db"], res["collapsed"]
    per_kind = {
        k: {
            "moms": int(sum(1 for x in kinds if x == k)),
            "mean_db": float(np.mean(m[np.array(kinds) == k])),
        }
        for k in dict.fromkeys(kinds)
    }
    return {
        "moms": int(m.shape[0]),
        "what": "benchmark clips + the next clip of another recording, and + real noise "
        "(evaluation halves), at recorded levels",
        "mean_db": float(np.mean(m)),
        "median_db": float(np.median(m)),
        "collapsed": int(np.sum(collapsed)),
        "per_kind": per_kind,
    }
