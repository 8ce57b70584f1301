"""Separator presets (ALGORITHMS.md §1) and their cost: parameters and MACs per 5-s window.

Pure Python (no TensorFlow), so the CLI and docs can list presets cheaply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.errors import ConfigError


class SeparatorConfigError(ConfigError):
    """A bad separator preset, option or run folder (one message; exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__([message], source="separator")


NORMS = ("instance_norm", "global_layer_norm", "layer_norm", "none")
CONSISTENCY = ("pred_source", "uniform", "magsq", "none")
ACTIVATIONS = ("prelu", "relu")
# How the learned analysis / synthesis bases start (model.init_basis): "random" (Keras' Glorot
# draws, the paper's) or "stft" (a rectified, oversampled sine-windowed Fourier frame and its
# inverse: the untrained model already reconstructs its input exactly, so training starts on
# the masks instead of first learning an invertible basis).
BASIS_INITS = ("random", "stft")
# How the two mixtures of a MoM get their levels (modeltools.data.examples, run configs, CLI):
#   "natural"     — as recorded, x = x1 + x2 with no rescaling (SS-mixit, ALGORITHMS.md §1.7);
#   "random-peak" — each mixture scaled to a random peak level first (the classifier's
#                   augmentation; used by runs before 2026-12-04: it makes 12+ dB level gaps
#                   common, and MixIT then often gives the quieter mixture no output at all).
MOM_LEVELS = ("natural", "random-peak")
# Recording kinds that give separator windows (modeltools.data.examples; focal: activity windows,
# the others tiled). A run trains and validates on the kinds in its ``windows`` field.
WINDOW_KINDS = ("focal", "soundscape", "unlabelled")


@dataclass(frozen=True)
class SeparatorConfig:
    """Architecture and training hyper-parameters of one separator.

    ``window``/``hop`` are the learned basis length and stride in samples; the overlap-add
    decoder needs ``window % hop == 0`` (true for the paper's 22/11).
    """

    name: str = "custom"
    sample_rate_hz: int = 22050
    window: int = 22
    hop: int = 11
    num_coeffs: int = 256
    num_sources: int = 4
    bottleneck: int = 256
    hidden: int = 512
    kernel_size: int = 3
    repeats: int = 4
    blocks_per_repeat: int = 8
    norm: str = "instance_norm"
    norm_eps: float = 1e-3
    activation: str = "prelu"  # "relu" in int8 presets (no fast int8 PRELU kernel)
    prelu_init: float = 0.1
    scale_decay: float = 0.9  # block output scale init scale_decay**b (SS-net 'exponential')
    consistency: str = "pred_source"
    # Clamp mask logits to +-this before the sigmoid (None: no clamp). For int8 export: the
    # logit tensor then has a bounded range (see Separator.call).
    mask_logit_clip: float | None = None
    # Initial analysis / synthesis bases (BASIS_INITS above). Not an architecture field: the
    # weights have the same shapes either way, and both stay learnable.
    basis_init: str = "random"
    # training
    batch_size: int = 6  # single mixtures; MoMs per step = batch_size // 2 (SS-mixit: 6 -> 3)
    learning_rate: float = 1e-4
    lr_decay_rate: float = 0.5
    lr_decay_steps: int = 2_000_000
    max_snr_db: float = 30.0
    # Training loss only: False restricts MixIT to assignments that give both mixtures an
    # estimate (losses.mixit); MoMi always searches all 2^M (ALGORITHMS.md §1.8).
    mixit_allow_empty: bool = True
    # Semi-supervised MixIT (our option; 0 = the paper's unsupervised loss): the training loss
    # adds this weight times losses.source_mixit of the estimates against the MoM's four known
    # stems (bird stem and noise bed of each mixture; corpora written with `synth --stems`).
    supervised_weight: float = 0.0
    example_s: float = 5.0
    # Levels of the two mixtures in a training / validation MoM (MOM_LEVELS above).
    mom_levels: str = "natural"
    # Recording kinds the training and validation MoMs are drawn from (WINDOW_KINDS above).
    # ("soundscape",) matches the synthetic corpus' test split, which holds soundscapes only.
    windows: tuple[str, ...] = WINDOW_KINDS
    # Fraction of training MoMs built from real (ingested, non-synthetic) datasets, the rest
    # from synthetic corpora (modeltools.data.examples.SeparatorExamples). None: one pool of
    # every --data window, in epoch order.
    real_fraction: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise SeparatorConfigError(f"separator norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise SeparatorConfigError(
                f"separator activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if self.consistency not in CONSISTENCY:
            raise SeparatorConfigError(
                f"separator consistency must be one of {CONSISTENCY}, got {self.consistency!r}"
            )
        if self.window % self.hop != 0:
            raise SeparatorConfigError(
                f"window ({self.window}) must be a multiple of hop ({self.hop})"
            )
        if self.basis_init not in BASIS_INITS:
            raise SeparatorConfigError(
                f"separator basis_init must be one of {BASIS_INITS}, got {self.basis_init!r}"
            )
        if self.basis_init == "stft" and (self.num_coeffs % 2 or self.num_coeffs < 2 * self.window):
            raise SeparatorConfigError(
                f"basis_init 'stft' needs an even num_coeffs >= 2 x window (a rectified frame "
                f"at least as wide as the window); got window {self.window}, "
                f"num_coeffs {self.num_coeffs}"
            )
        if self.num_sources < 2:
            raise SeparatorConfigError("num_sources must be >= 2")
        if not self.supervised_weight >= 0.0:  # also refuses NaN
            raise SeparatorConfigError(
                f"separator supervised_weight must be >= 0, got {self.supervised_weight!r}"
            )
        object.__setattr__(self, "windows", tuple(self.windows))  # JSON gives a list
        bad = sorted(set(self.windows) - set(WINDOW_KINDS))
        if bad or not self.windows:
            raise SeparatorConfigError(
                f"separator windows must be among {WINDOW_KINDS}, got {', '.join(bad) or '(none)'}"
            )
        if self.mom_levels not in MOM_LEVELS:
            raise SeparatorConfigError(
                f"separator mom_levels must be one of {MOM_LEVELS}, got {self.mom_levels!r}"
            )
        if self.real_fraction is not None and not 0.0 <= self.real_fraction <= 1.0:
            raise SeparatorConfigError(
                f"separator real_fraction must be in [0, 1], got {self.real_fraction!r}"
            )

    @property
    def dilations(self) -> list[int]:
        """Dilation of every block: 1, 2, ..., 2^(blocks_per_repeat-1), repeated."""
        return [2**i for i in range(self.blocks_per_repeat)] * self.repeats

    @property
    def num_blocks(self) -> int:
        return self.repeats * self.blocks_per_repeat

    @property
    def receptive_field_frames(self) -> int:
        """Frames seen by one output frame: 1 + (kernel-1) * sum of dilations."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    @property
    def receptive_field_s(self) -> float:
        return self.receptive_field_frames * self.hop / self.sample_rate_hz

    @property
    def example_samples(self) -> int:
        return round(self.example_s * self.sample_rate_hz)

    def num_frames(self, num_samples: int) -> int:
        """F = 1 + ceil((N - W) / H) (end zero padding, ALGORITHMS.md §1.2)."""
        return 1 + max(0, math.ceil((num_samples - self.window) / self.hop))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, SeparatorConfig] = {
    # ALGORITHMS.md §1: the paper's (SS-mixit / bird_mixit) model.
    "paper": SeparatorConfig(name="paper"),
    # Raspberry Pi presets: longer basis hop (fewer frames), narrower and fewer blocks. Same
    # whole-window instance norm as the paper: the agent runs fixed 5-s windows, so the
    # statistics are over one window (not causal, not streamable; see docs/separation.md).
    "edge": SeparatorConfig(
        name="edge",
        window=32,
        hop=16,
        num_coeffs=128,
        bottleneck=64,
        hidden=128,
        repeats=2,
        blocks_per_repeat=8,
        consistency="pred_source",
        learning_rate=1e-3,
        lr_decay_steps=20_000,
    ),
    "edge-small": SeparatorConfig(
        name="edge-small",
        window=40,
        hop=20,
        num_coeffs=64,
        bottleneck=32,
        hidden=64,
        repeats=2,
        blocks_per_repeat=8,
        consistency="pred_source",
        learning_rate=1e-3,
        lr_decay_steps=20_000,
    ),
    # Unit tests only: tiny and fast.
    "tiny": SeparatorConfig(
        name="tiny",
        window=16,
        hop=8,
        num_coeffs=16,
        bottleneck=8,
        hidden=16,
        repeats=1,
        blocks_per_repeat=3,
        batch_size=4,
        learning_rate=1e-3,
        example_s=0.25,
    ),
}


# A 2x longer basis than `edge` (64 samples = 2.9 ms, hop 1.45 ms): half the frames, spent on
# twice the basis coefficients, 1.5x wider blocks and twice the receptive field in seconds
# (1.48 s) at about the same cost per window (docs/separation.md).
PRESETS["edge-long"] = replace(
    PRESETS["edge"],
    name="edge-long",
    window=64,
    hop=32,
    num_coeffs=256,
    bottleneck=96,
    hidden=192,
)
# An STFT-sized basis (256 samples = 11.6 ms, hop 5.8 ms), started as a Fourier frame: 8x fewer
# frames than `edge`, so 2x wider blocks still cost fewer MACs, training makes ~2.3x the steps per
# CPU hour and the receptive field spans the whole window. Ideal ratio masks gain with the frame
# length (8.84 dB at 32 samples, 10.68 at 512 on the test MoMs); docs/separation.md has its runs.
PRESETS["edge-stft256"] = replace(
    PRESETS["edge"],
    name="edge-stft256",
    window=256,
    hop=128,
    num_coeffs=512,
    bottleneck=128,
    hidden=256,
    basis_init="stft",
)
# int8-oriented edge preset: the edge shape without data-dependent norms (their MEAN/RSQRT
# statistics are what full-integer quantisation loses, docs/export.md), with ReLU (int8 PRELU has
# no fast kernel) and bounded mask logits. The residual scales (scale_decay) keep the
# un-normalised stack stable.
PRESETS["edge-int8"] = replace(
    PRESETS["edge"], name="edge-int8", norm="none", activation="relu", mask_logit_clip=8.0
)
# The same int8-friendly stack, twice as wide inside the blocks (about 2x the MACs): the next
# point of the cost/quality frontier (docs/performance.md), still inside the real-time budget.
PRESETS["edge-int8-wide"] = replace(
    PRESETS["edge-int8"], name="edge-int8-wide", bottleneck=96, hidden=192
)


def get_preset(name: str, **overrides: Any) -> SeparatorConfig:
    """The preset ``name`` with fields replaced by ``overrides`` (ConfigError if unknown)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise SeparatorConfigError(
            f"unknown separator preset {name!r} (known: {', '.join(PRESETS)})"
        ) from None
    return replace(cfg, **overrides) if overrides else cfg


def count_cost(cfg: SeparatorConfig, window_s: float = 5.0) -> dict[str, int]:
    """Trainable parameters and multiply-accumulates for one ``window_s`` window.

    MACs count the matrix products (encoder, dense layers, depthwise convs, mask head,
    decoder, pred_source head); element-wise work (norms, PReLU, masks, overlap-add) is
    listed separately as ``elementwise`` (one op per element touched, roughly).
    """
    n = round(window_s * cfg.sample_rate_hz)
    f = cfg.num_frames(n)
    w, c, m, b, h, k = (
        cfg.window,
        cfg.num_coeffs,
        cfg.num_sources,
        cfg.bottleneck,
        cfg.hidden,
        cfg.kernel_size,
    )
    norm_params = 0 if cfg.norm == "none" else 2
    params = w * c  # encoder
    params += c * b + b + 1  # initial dense + bias + scale
    act_params = 1 if cfg.activation == "prelu" else 0
    up_bias = h if cfg.norm == "none" else 0
    per_block = (
        b * h
        + up_bias
        + 1
        + act_params
        + norm_params
        + h * k
        + h
        + act_params
        + norm_params
        + h * b
        + 1
    )
    params += cfg.num_blocks * per_block
    params += b * m * c  # mask head
    params += c * w  # decoder
    if cfg.consistency == "pred_source":
        params += b * m
    macs_frame = w * c + c * b + cfg.num_blocks * (b * h + h * k + h * b) + b * m * c + m * c * w
    macs = f * macs_frame + (b * m if cfg.consistency == "pred_source" else 0)
    elementwise = f * (cfg.num_blocks * (6 * h + b) + 2 * m * c) + 2 * m * n
    return {"params": params, "macs": macs, "frames": f, "elementwise": elementwise}
