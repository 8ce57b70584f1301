"""Seeds and splits: every generated item has its own random stream.

An item's stream is ``SeedSequence([seed, split, stream, index])``: the train, validation and
test generators draw from disjoint streams for any base seed, and an item's content depends
only on its own key -- not on how many items were made before it, nor on how many worker
processes made them. Real noise recordings are split into pools (``noise.REAL_NOISE``): the
test soundscapes use the held-out ``test`` pool, train and validation the ``train`` pool.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "val", "test")
_SPLIT_WORD = {"train": 1, "val": 2, "test": 3}
_STREAM_WORD = {"focal": 11, "soundscape": 12, "noise": 13, "augment": 14, "separator": 15}


def seed_words(seed: int, split: str, stream: str, index: int) -> tuple[int, ...]:
    """The SeedSequence entropy of one item (distinct for every split/stream/index)."""
    if split not in _SPLIT_WORD:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return (int(seed), _SPLIT_WORD[split], _STREAM_WORD[stream], int(index))


def item_rng(seed: int, split: str, stream: str, index: int) -> np.random.Generator:
    """Generator for item ``index`` of ``stream`` in ``split``."""
    return np.random.default_rng(np.random.SeedSequence(seed_words(seed, split, stream, index)))


def noise_pool(split: str) -> str:
    """Which real-noise pool a split uses: ``test`` only for the test split."""
    return "test" if split == "test" else "train"


def hash_split(key: str, val_fraction: float, test_fraction: float = 0.0) -> str:
    """Stable split for an ingested file from a hash of ``key`` (e.g. its relative path)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"
