"""The paper's training augmentations as small composable numpy ops (no TensorFlow).

Waveform ops (:mod:`modeltools.augment.waveform`): random crop, random peak normalisation,
example mixing with label union, noise at a random SNR, noise-only examples, MixIT
mixture-of-mixtures, and the composed classifier policy
:func:`~modeltools.augment.waveform.augment_classifier_example`. Spectral op
(:mod:`modeltools.augment.spectral`): the random mel-space low-pass envelope.
"""

from __future__ import annotations

from modeltools.augment.spectral import (
    apply_mel_lowpass,
    lowpass_envelope,
    random_lowpass_envelope,
)
from modeltools.augment.waveform import (
    AugmentConfig,
    Example,
    add_noise,
    augment_classifier_example,
    make_mom,
    mix,
    noise_only,
    peak_normalize,
    random_crop,
    scale_to_peak,
    union_labels,
)

__all__ = [
    "AugmentConfig",
    "Example",
    "add_noise",
    "apply_mel_lowpass",
    "augment_classifier_example",
    "lowpass_envelope",
    "make_mom",
    "mix",
    "noise_only",
    "peak_normalize",
    "random_crop",
    "random_lowpass_envelope",
    "scale_to_peak",
    "union_labels",
]
