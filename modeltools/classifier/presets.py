"""Classifier presets (``config/classifier/<name>.yaml``) as a frozen dataclass.

A preset fixes the backbone (EfficientNet width/depth multipliers, or one of ``b0``/``b1``/
``b2``), AutoPool's initial alpha, the training hyper-parameters and the ablation switches.
Unknown keys are an error, so a typo in a YAML file cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ChorusError


class ClassifierError(ChorusError):
    """A classifier preset, run folder or training request a user must fix."""

    exit_code = 2


PRESET_DIR = Path(__file__).resolve().parents[2] / "config" / "classifier"

# EfficientNet compound scaling (width, depth) for the ablation backbones.
BACKBONES = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2)}


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that defines a classifier and its training run."""

    name: str = "custom"
    backbone: str = "b0"  # b0 | b1 | b2 | custom (then width/depth below)
    width: float = 1.0
    depth: float = 1.0
    embedding_dim: int = 1280
    dropout: float = 0.2
    autopool_alpha_init: float = 0.0
    # Training
    batch_size: int = 32
    learning_rate: float = 1e-3
    adam_epsilon: float = 0.01
    steps: int = 20000
    eval_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 50
    early_stopping_patience: int = 0  # evaluations without val CMAP gain; 0 = off
    label_smoothing: float = 0.1
    taxonomy_weight: float = 0.1  # 0 = the "no taxonomic loss" ablation
    bird_weight: float = 0.1  # the bird/no-bird head's BCE weight (project addition)
    lowpass: bool = True  # False = the "no low-pass augmentation" ablation
    channel_norm: bool = True  # False = the "no channel normalisation" ablation
    val_segments: int = 240  # val soundscape segments used for the in-training CMAP
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig overrides

    @property
    def scaling(self) -> tuple[float, float]:
        """(width, depth) multipliers of the backbone."""
        if self.backbone == "custom":
            return self.width, self.depth
        return BACKBONES[self.backbone]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(d: dict[str, Any]) -> ClassifierConfig:
    """A config from a mapping; unknown keys or a bad backbone raise ClassifierError."""
    known = {f.name for f in dataclasses.fields(ClassifierConfig)}
    extra = sorted(set(d) - known)
    if extra:
        raise ClassifierError(f"unknown classifier config keys: {', '.join(extra)}")
    cfg = ClassifierConfig(**d)
    if cfg.backbone not in (*BACKBONES, "custom"):
        raise ClassifierError(f"backbone must be one of {sorted(BACKBONES)} or custom")
    return cfg


def load_preset(name_or_path: str | Path, **overrides: Any) -> ClassifierConfig:
    """Load ``config/classifier/<name>.yaml`` (or a YAML path), then apply ``overrides``."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ClassifierError(f"no classifier preset {name_or_path!r} (have: {', '.join(names)})")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data)
