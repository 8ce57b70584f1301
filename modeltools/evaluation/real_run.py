"""Run the real-audio benchmark's examples through the product (agent config, bundle, stages).

Each example (5 s at 48 kHz) is resampled to the bundle's rate with the agent's resampler, as
``chorus-agent analyze`` does, and becomes one analysis window. The agent's separator and
classifier stages give the logits of every channel a combination policy can ask for (the mix,
the separated sources, the remixes) once; each inference mode under a policy is then the agent's
own :func:`agent.detection.combine.combine_channels` of the channels that policy hears, gated as
the agent gates them (a mix-only run classifies the mix exactly as this does, it only skips the
separator). The oracle row classifies the mix plus the example's true components instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.audio.resample import resample
from agent.config import AgentConfig, parse_config
from agent.detection.combine import (
    PAPER_MAX,
    SKIPPED_LOGIT,
    CombinationPolicy,
    combine_channels,
    rms,
    sigmoid,
)
from agent.models.stages import ClassifierStage, LoadedModels
from modeltools.evaluation.real_benchmark import (
    BENCH_RATE_HZ,
    EXAMPLE_SAMPLES,
    TRUTH_MIN_CONFIDENCE,
    Example,
    ScoreTable,
    truth_matrix,
)

log = logging.getLogger(__name__)

PRODUCT_MODES = ("mix_only", "separated_only", "mix_and_separated")
PAPER = "paper_max"  # mix_and_separated under the paper's max, beside the bundle's policy
ORACLE = "oracle"
REMIXES = CombinationPolicy(channels="remixes")


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
class ChannelBank:
    """Per-example logits of one classifier on every channel a policy can ask for: the mix,
    the separator's M sources and the M remixes (mix - source), plus the oracle's channels."""

    classifier: ClassifierStage
    num_sources: int
    logits: list[np.ndarray]  # per example (1 + 2M, C): mix, sources, remixes
    mix_rms: list[float]  # per example
    source_rms: list[np.ndarray]  # per example (M,)
    oracle_logits: list[np.ndarray]  # per example (1 + components, C): mix, true components

    @property
    def species(self) -> list[str]:
        return [
            (lab.scientific_name or lab.species_code).strip().lower()
            for lab in self.classifier.labels
        ]

    def policy_logits(self, e: int, policy: CombinationPolicy) -> np.ndarray:
        """(1 + M, C) logits of example ``e`` as the agent computes them under ``policy``:
        its channels, and the gated ones at SKIPPED_LOGIT."""
        m = self.num_sources
        rows = self.logits[e]
        if m == 0:
            return rows[:1]
        first = 1 if policy.channels == "sources" else 1 + m
        out = np.concatenate([rows[:1], rows[first : first + m]], axis=0)
        out[~policy.active_from_rms(self.mix_rms[e], self.source_rms[e])] = SKIPPED_LOGIT
        return out

    def energy_ratios(self) -> np.ndarray:
        """(E, M) each source's RMS over its mix's (over-separation: how many carry energy)."""
        return np.stack(
            [
                s / m if m > 0 else np.zeros_like(s)
                for m, s in zip(self.mix_rms, self.source_rms, strict=True)
            ]
        )


def to_pipeline_rate(x: np.ndarray, rate_hz: int, window_samples: int) -> np.ndarray:
    """48-kHz benchmark audio -> one window at the pipeline's rate (the agent's resampler)."""
    y = resample(x, BENCH_RATE_HZ, rate_hz)
    out = np.zeros(window_samples, np.float32)
    out[: min(window_samples, y.shape[0])] = y[:window_samples]
    return out


def channel_bank(
    models: LoadedModels, examples: Sequence[Example], progress: bool = True
) -> ChannelBank:
    """Separate (if the bundle can) and classify every channel of every example once."""
    if len(models.classifiers) != 1:
        raise ValueError(
            f"the benchmark scores one classifier, the config has {len(models.classifiers)}"
        )
    clf = models.classifiers[0]
    rate, n = models.sample_rate_hz, models.window_samples
    m = models.separator.num_sources if models.separator is not None else 0
    logits, mix_rms, source_rms, oracle = [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc="benchmark", unit="ex", leave=False)
    for ex in examples:
        mix = to_pipeline_rate(ex.audio, rate, n)
        channels = mix[np.newaxis]
        sources = np.zeros((0, n), np.float32)
        if models.separator is not None:
            sources = models.separator.separate(mix)
            remixes = REMIXES.channels_of(mix, sources)[1:]
            channels = np.concatenate([channels, sources, remixes], axis=0)
        logits.append(clf.classify(channels))
        mix_rms.append(float(rms(mix)))
        source_rms.append(rms(sources))
        comps = [to_pipeline_rate(c, rate, n) for c in ex.components]
        oracle.append(clf.classify(np.stack([mix, *comps])) if len(comps) > 1 else logits[-1][:1])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return ChannelBank(clf, m, logits, mix_rms, source_rms, oracle)


def mode_table(bank: ChannelBank, mode: str, policy: CombinationPolicy = PAPER_MAX) -> ScoreTable:
    """One mode's confidences: the agent's channel combination of each example under
    ``policy`` (the oracle: the mix and the true components, the paper's max)."""
    scores, winners = [], []
    for e in range(len(bank.logits)):
        if mode == ORACLE:
            logits, product_mode, pol = bank.oracle_logits[e], "mix_and_separated", PAPER_MAX
        else:
            logits, product_mode, pol = bank.policy_logits(e, policy), mode, policy
        if logits.shape[0] < 2:
            product_mode = "mix_only"
        c = combine_channels(logits, product_mode, bank.classifier.mix_only_indices, pol)  # type: ignore[arg-type]
        scores.append(sigmoid(c.logits).astype(np.float32))
        winners.append(c.winner)
    return ScoreTable(mode, np.stack(scores), np.stack(winners))


@dataclass(frozen=True)
class Scoring:
    """The truth of a bank's examples over the classifier's species plus the true species it
    cannot name (their score is 0: they count as misses), and mode tables over those columns."""

    bank: ChannelBank
    truth: np.ndarray  # (E, C + extra) bool: true species (labelled or reference >= 0.3)
    labelled: np.ndarray  # (E, C + extra) bool: the species an example was built to hold
    extra: int

    def table(self, mode: str, policy: CombinationPolicy = PAPER_MAX) -> ScoreTable:
        t = mode_table(self.bank, mode, policy)
        if not self.extra:
            return t
        pad = ((0, 0), (0, self.extra))
        return ScoreTable(t.mode, np.pad(t.scores, pad), np.pad(t.winners, pad))


def scoring(bank: ChannelBank, examples: Sequence[Example]) -> Scoring:
    species = bank.species
    extra = sorted({s for ex in examples for s in ex.truth} - set(species))
    truth, labelled = truth_matrix(examples, species + extra)
    return Scoring(bank, truth, labelled, len(extra))


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
