"""Run the real-audio benchmark's examples through the product (agent config, bundle, stages).

Each example (5 s at 48 kHz) is resampled to the bundle's rate with the agent's resampler, as
``chorus-agent analyze`` does, and becomes one analysis window. The agent's separator and
classifier stages give the per-channel logits ``(1 + M, C)`` once; every inference mode is then
the agent's own :func:`agent.detection.combine.combine_channels` of those logits (a mix-only
run classifies the mix exactly as this does, it only skips the separator). The oracle row
classifies the mix plus the example's true components instead of the separated channels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.audio.resample import resample
from agent.config import AgentConfig, parse_config
from agent.detection.combine import combine_channels, sigmoid
from agent.models.stages import ClassifierStage, LoadedModels
from modeltools.evaluation.real_benchmark import (
    BENCH_RATE_HZ,
    EXAMPLE_SAMPLES,
    TRUTH_MIN_CONFIDENCE,
    Example,
    ScoreTable,
)

log = logging.getLogger(__name__)

PRODUCT_MODES = ("mix_only", "separated_only", "mix_and_separated")
ORACLE = "oracle"


def agent_config(
    backend: str,
    bundle: Path | None,
    birdnet_model: Path | None,
    birdnet_labels: Path | None,
    threads: int = 1,
    base: AgentConfig | None = None,
) -> AgentConfig:
    """The agent config a user would write for this backend (``base``: their own file)."""
    data = base.model_dump(mode="json") if base is not None else {}
    data.setdefault("inference", {})
    data["inference"].update({"mode": "mix_and_separated", "num_threads": threads})
    if bundle is not None:
        data["inference"]["bundle"] = str(bundle)
    data.setdefault("classifier", {})
    if backend == "birdnet":
        data["classifier"]["backend"] = "birdnet"
        data["classifier"].setdefault("birdnet", {})
        if birdnet_model is not None:
            data["classifier"]["birdnet"]["model"] = str(birdnet_model)
        if birdnet_labels is not None:
            data["classifier"]["birdnet"]["labels"] = str(birdnet_labels)
    elif backend == "chorus":
        data["classifier"]["backend"] = "chorus"
    else:
        raise ValueError(f"unknown backend {backend!r}")
    # The benchmark scores every species everywhere: no place/season filter.
    data["classifier"].setdefault("location_filter", {})["enabled"] = False
    return parse_config(data, "benchmark config")


@dataclass
class ProductRun:
    """Per-example logits of one classifier: separated channels and the oracle's channels."""

    classifier: ClassifierStage
    channel_logits: list[np.ndarray]  # per example (1 + M, C): mix, sep0..sep{M-1}
    oracle_logits: list[np.ndarray]  # per example (1 + components, C): mix, true components
    channel_rms: list[np.ndarray]  # per example (1 + M,): RMS of each channel

    @property
    def species(self) -> list[str]:
        return [
            (lab.scientific_name or lab.species_code).strip().lower()
            for lab in self.classifier.labels
        ]


def to_pipeline_rate(x: np.ndarray, rate_hz: int, window_samples: int) -> np.ndarray:
    """48-kHz benchmark audio -> one window at the pipeline's rate (the agent's resampler)."""
    y = resample(x, BENCH_RATE_HZ, rate_hz)
    out = np.zeros(window_samples, np.float32)
    out[: min(window_samples, y.shape[0])] = y[:window_samples]
    return out


def run_product(
    models: LoadedModels, examples: Sequence[Example], progress: bool = True
) -> ProductRun:
    """Separate (if the bundle can) and classify every example once."""
    if len(models.classifiers) != 1:
        raise ValueError(
            f"the benchmark scores one classifier, the config has {len(models.classifiers)}"
        )
    clf = models.classifiers[0]
    rate, n = models.sample_rate_hz, models.window_samples
    chan, oracle, rms = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc="benchmark", unit="ex", leave=False)
    for ex in examples:
        mix = to_pipeline_rate(ex.audio, rate, n)
        channels = mix[np.newaxis]
        if models.separator is not None:
            channels = np.concatenate([channels, models.separator.separate(mix)], axis=0)
        chan.append(clf.classify(channels))
        rms.append(np.sqrt(np.mean(np.square(channels, dtype=np.float64), axis=1)))
        comps = [to_pipeline_rate(c, rate, n) for c in ex.components]
        oracle.append(clf.classify(np.stack([mix, *comps])) if len(comps) > 1 else chan[-1][:1])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return ProductRun(clf, chan, oracle, rms)


def mode_table(run: ProductRun, mode: str) -> ScoreTable:
    """One mode's confidences from the run: the agent's channel combination of each example."""
    rows = run.oracle_logits if mode == ORACLE else run.channel_logits
    product_mode = "mix_and_separated" if mode == ORACLE else mode
    scores, winners = [], []
    for logits in rows:
        if product_mode != "mix_only" and logits.shape[0] < 2:
            c = combine_channels(logits, "mix_only", run.classifier.mix_only_indices)
        else:
            c = combine_channels(logits, product_mode, run.classifier.mix_only_indices)  # type: ignore[arg-type]
        scores.append(sigmoid(c.logits).astype(np.float32))
        winners.append(c.winner)
    return ScoreTable(mode, np.stack(scores), np.stack(winners))


def reference_truth(
    examples: Sequence[Example], model: Path, labels: Path, threads: int = 1
) -> None:
    """Set each example's ``truth``: the species BirdNET V2.4 gives >= 0.3 on its clean
    clip(s) at 48 kHz (3-s sub-windows at 0 and 2 s), plus the labelled species."""
    from agent.models.birdnet import BirdNetClassifier

    ref = BirdNetClassifier(model, labels, 1.0, 1.0, BENCH_RATE_HZ, EXAMPLE_SAMPLES, (), threads)
    names = [lab.scientific_name.strip().lower() for lab in ref.labels]
    for ex in examples:
        found: set[str] = {s.lower() for s in ex.labelled}
        for clean in ex.clean:
            p = sigmoid(ref.classify(clean[np.newaxis].astype(np.float32))[0])
            found |= {names[j] for j in np.nonzero(p >= TRUTH_MIN_CONFIDENCE)[0]}
        ex.truth = found
