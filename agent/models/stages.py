"""Separator and classifier stages: a bundle's models behind ``separate`` and ``classify``.

Each stage checks at load time that its TFLite files have the shapes the manifest promises, so a
mismatched bundle is refused before any audio is processed, with a message naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

import numpy as np

from agent.detection.combine import PAPER_MAX, CombinationPolicy
from agent.errors import BundleError
from agent.models.frontend import FrontendParams, NumpyFrontend
from agent.models.frontend import supports as frontend_supports
from agent.models.manifest import Bundle, ClassifierSpec, Label, ModelFile, SeparatorSpec
from agent.models.runtime import TFLiteModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    num_threads: int = 1
    accelerator: str = "cpu"
    # "native": compute a known classifier frontend in numpy (agent.models.frontend; ~3x cheaper
    # than its TFLite graph); "tflite": always run the bundle's frontend model.
    frontend: str = "native"


def _load(
    bundle: Bundle, spec: ModelFile, options: RuntimeOptions, output_name: str | None = None
) -> TFLiteModel:
    edgetpu = bundle.file(spec.edgetpu_file) if spec.edgetpu_file else None
    return TFLiteModel(
        bundle.file(spec.file), options.num_threads, options.accelerator, edgetpu, output_name
    )


def _check_shape(
    model: TFLiteModel, what: str, actual: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    if actual != expected:
        raise BundleError(
            f"{model.path}: {what} shape is {list(actual)} but the manifest implies "
            f"{list(expected)}"
        )


class Separator:
    """MixIT separator: a window (N,) -> M separated channels (M, N)."""

    def __init__(self, bundle: Bundle, spec: SeparatorSpec, options: RuntimeOptions) -> None:
        self.spec = spec
        self.model = _load(bundle, spec.model, options)
        n = spec.window_samples
        _check_shape(self.model, "input", self.model.input.shape, (1, n))
        _check_shape(self.model, "output", self.model.output.shape, (1, spec.num_sources, n))

    @property
    def num_sources(self) -> int:
        return self.spec.num_sources

    def separate(self, window: np.ndarray) -> np.ndarray:
        """(N,) float32 -> (M, N) float32.

        With the manifest's ``input_peak`` the window is scaled to that peak before the model
        and the channels are scaled back after it: the model sees the levels it was trained on,
        and because the scaling is linear the channels still sum to the input. A silent (or
        non-finite) window runs unscaled: there is no gain that would normalize it.
        """
        x = np.asarray(window, dtype=np.float32)[np.newaxis, :]
        sources = peak_scaled(self.model.run, x, self.spec.input_peak)[0]
        return require_finite(sources, "separator")


def require_finite(values: np.ndarray, stage: str) -> np.ndarray:
    """``values`` if every element is finite, else FloatingPointError naming ``stage``.

    A stage that answers NaN or Inf has failed: its output must not reach the next stage, where
    an int8 model would quantize NaN to a constant and answer with a confident, meaningless
    score. The pipeline counts the error as a failed window, which an OTA probation sees.
    """
    if not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise FloatingPointError(f"{stage} outputs NaN/Inf ({bad} of {np.size(values)} values)")
    return values


def peak_scaled(
    run: Callable[[np.ndarray], np.ndarray], windows: np.ndarray, input_peak: float | None
) -> np.ndarray:
    """``run(windows)`` with each row scaled to ``input_peak`` first and the result scaled back.

    The one definition of the separator's per-window gain (the manifest's ``input_peak``),
    shared by the agent and modeltools' export, parity and evaluation. Rows that are silent
    or non-finite run unscaled; ``input_peak`` None runs everything unscaled.
    """
    x = np.asarray(windows, dtype=np.float32)
    if not input_peak:
        return np.asarray(run(x))
    peaks = np.max(np.abs(x), axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    ok = np.isfinite(peaks) & (peaks > 0)
    gains = np.where(ok, input_peak / np.where(ok, peaks, 1.0), 1.0).astype(np.float32)
    out = np.asarray(run(x * gains[:, None]))
    return (out / gains.reshape((-1,) + (1,) * (out.ndim - 1))).astype(np.float32)


class Classifier:
    """An ensemble of classifier members sharing one label table (and, with input "features",
    one frontend model).

    ``classify`` runs every member on every channel and averages logits over the ensemble
    (ALGORITHMS.md §2.7: ensemble mean first; the max over channels comes later).
    """

    def __init__(self, bundle: Bundle, spec: ClassifierSpec, options: RuntimeOptions) -> None:
        self.spec = spec
        n, c = spec.window_samples, len(spec.labels)
        self.frontend: TFLiteModel | None = None
        self.native: NumpyFrontend | None = None
        member_input: tuple[int, ...] = (1, n)
        if (
            spec.frontend_model is not None
            and options.frontend == "native"
            and frontend_supports(spec.frontend)
        ):
            self.native = NumpyFrontend(FrontendParams.from_manifest(spec.frontend or {}), n)
            member_input = self.native.output_shape
        elif spec.frontend_model is not None:
            # A float frontend (STFT, mel...) has no Edge TPU twin: it runs on the CPU then.
            fe_options = (
                options if spec.frontend_model.edgetpu_file else replace(options, accelerator="cpu")
            )
            self.frontend = _load(bundle, spec.frontend_model, fe_options)
            _check_shape(self.frontend, "input", self.frontend.input.shape, (1, n))
            member_input = self.frontend.output.shape
        self.members = [_load(bundle, m, options, spec.output_name) for m in spec.members]
        for model in self.members:
            _check_shape(model, "input", model.input.shape, member_input)
            _check_shape(model, "output", model.output.shape, (1, c))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> tuple[Label, ...]:
        return self.spec.labels

    @property
    def mix_only_indices(self) -> tuple[int, ...]:
        return self.spec.mix_only_indices

    def member_logits(self, channels: np.ndarray) -> np.ndarray:
        """(K, N) channels -> (E, K, C) logits of each member on each channel."""
        out = np.empty((len(self.members), channels.shape[0], len(self.labels)), np.float32)
        # The native frontend does every channel in one pass; its features feed every member.
        feats = self.native.features_batch(channels) if self.native is not None else None
        if feats is not None:
            require_finite(feats, f"classifier {self.name} frontend")
        for k in range(channels.shape[0]):
            x = channels[k][np.newaxis, :]
            if feats is not None:
                x = feats[k : k + 1]
            elif self.frontend is not None:
                x = require_finite(self.frontend.run(x), f"classifier {self.name} frontend")
            for e, model in enumerate(self.members):
                out[e, k] = model.run(x)[0]
        return out

    def classify(self, channels: np.ndarray) -> np.ndarray:
        """(K, N) channels -> (K, C) ensemble-mean logits."""
        return ensemble_mean(self.member_logits(channels))


def ensemble_mean(member_logits: np.ndarray) -> np.ndarray:
    """(E, K, C) -> (K, C): mean over ensemble members, in the logit domain."""
    return member_logits.mean(axis=0)


class ClassifierStage(Protocol):
    """What the pipeline needs of a classifier: the bundle's ensembles or another backend."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> tuple[Label, ...]: ...

    @property
    def mix_only_indices(self) -> tuple[int, ...]: ...

    def classify(self, channels: np.ndarray) -> np.ndarray:
        """(K, N) channels at the pipeline rate -> (K, C) logits."""
        ...


class SpeciesFilter(Protocol):
    def mask(self, labels: Sequence[Label], t: datetime) -> np.ndarray: ...


@dataclass
class LoadedModels:
    bundle: Bundle
    separator: Separator | None
    classifiers: list[ClassifierStage]
    species_filter: SpeciesFilter | None = field(default=None)
    # How separated channels vote (the bundle's policy for the backend in use; the paper's
    # max unless the config or the bundle says otherwise).
    combination: CombinationPolicy = field(default=PAPER_MAX)

    @property
    def sample_rate_hz(self) -> int:
        return self.bundle.manifest.sample_rate_hz

    @property
    def window_samples(self) -> int:
        return self.bundle.manifest.window_samples


def load_models(
    bundle: Bundle,
    options: RuntimeOptions,
    use_separator: bool = True,
    load_classifiers: bool = True,
) -> LoadedModels:
    """Load a bundle's models. The pipeline runs at the bundle's rate and window.

    ``load_classifiers=False`` when another backend (BirdNET) classifies: only the separator
    and the label table are used then.
    """
    m = bundle.manifest
    specs = [(c.name, c.sample_rate_hz, c.window_samples) for c in m.classifiers]
    if m.separator is not None:
        specs.append(("separator", m.separator.sample_rate_hz, m.separator.window_samples))
    for name, rate, window in specs:
        if (rate, window) != (m.sample_rate_hz, m.window_samples):
            raise BundleError(
                f"{bundle.path}: {name} runs at {rate} Hz / {window} samples but the bundle at "
                f"{m.sample_rate_hz} Hz / {m.window_samples}; per-model rates are not supported yet"
            )
    separator = None
    if use_separator:
        if m.separator is None:
            raise BundleError(
                f"{bundle.path}: bundle has no separator; use inference.mode: mix_only"
            )
        separator = Separator(bundle, m.separator, options)
    classifiers: list[ClassifierStage] = (
        [Classifier(bundle, c, options) for c in m.classifiers] if load_classifiers else []
    )
    log.info(
        "loaded bundle %s %s (%s runtime, %d classifier(s), separator: %s)",
        m.name,
        m.version,
        separator.model.runtime if separator else "tflite",
        len(classifiers),
        f"{m.separator.num_sources} channels" if separator and m.separator else "off",
    )
    return LoadedModels(bundle, separator, classifiers)
