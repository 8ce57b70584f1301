"""MixIT training loop (ALGORITHMS.md §1.7) under a ``tf.distribute`` strategy.

A run folder holds ``config.json`` (the resolved preset), ``data.json`` (the corpora that went
in), ``checkpoints/`` (``tf.train.Checkpoint`` of model, optimizer and step; the latest few
kept), ``log.csv`` / ``log.jsonl`` (step, loss, steps/s, validation MoMi) and ``tensorboard/``
(scalar summaries). Re-running with ``resume=True`` restores the latest checkpoint and continues
the same data stream (example ``i`` is a pure function of (seed, i)).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from agent.errors import ChorusError
from modeltools.separation.losses import mixit, source_mixit
from modeltools.separation.metrics import momi_per_example
from modeltools.separation.model import Separator, build_separator
from modeltools.separation.presets import (
    WINDOW_KINDS,
    SeparatorConfig,
    SeparatorConfigError,
    get_preset,
)

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
CKPT_DIR = "checkpoints"
LOG_FIELDS = ["step", "loss_db", "steps_per_s", "examples_per_s", "lr", "val_momi_db", "wall_s"]


class TrainingError(ChorusError):
    """Training cannot go on (non-finite loss that restoring did not cure, bad run folder)."""


def make_strategy(kind: str = "cpu", tpu: str | None = None) -> tf.distribute.Strategy:
    """``tpu`` address -> TPUStrategy; ``mirrored`` -> all GPUs; ``gpu`` -> first GPU;
    ``auto`` -> mirrored if several GPUs, else one GPU, else CPU; ``cpu`` (default) -> CPU."""
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        kind = "mirrored" if len(gpus) > 1 else "gpu" if gpus else "cpu"
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "gpu":
        if not gpus:
            raise SeparatorConfigError("--strategy gpu: no GPU visible to TensorFlow")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if kind == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    raise SeparatorConfigError(f"unknown strategy {kind!r} (cpu, gpu, mirrored, auto, or --tpu)")


def save_config(
    cfg: SeparatorConfig, run_dir: Path, real_audio: list[dict[str, Any]] | None = None
) -> None:
    """Write ``config.json``: the config, plus ``real_audio`` (the shared real files that went
    in, :func:`modeltools.data.real_split.check_datasets`) when given."""
    data = cfg.to_dict()
    if real_audio is not None:
        data["real_audio"] = real_audio
    (run_dir / CONFIG_NAME).write_text(json.dumps(data, indent=1) + "\n")


def load_config(run_dir: Path) -> SeparatorConfig:
    path = Path(run_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SeparatorConfigError(
            f"{run_dir}: no {CONFIG_NAME} (not a separator run folder)"
        ) from None
    known = {f.name for f in fields(SeparatorConfig)}
    # Runs written before the field existed all trained on random-peak MoMs.
    data.setdefault("mom_levels", "random-peak")
    return SeparatorConfig(**{k: v for k, v in data.items() if k in known})


def _optimizer(cfg: SeparatorConfig) -> Any:
    import keras

    schedule = keras.optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_rate, staircase=False
    )
    return keras.optimizers.Adam(learning_rate=schedule)


def make_checkpoint(model: Separator, optimizer: Any, step: tf.Variable) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None
) -> tuple[Separator, SeparatorConfig, int]:
    """(model with the latest checkpoint's weights, its config, its step) of a run folder.

    ``checkpoint``: a checkpoint prefix (``.../ckpt-3000``) to load instead of the latest.
    """
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    latest = str(checkpoint) if checkpoint else tf.train.latest_checkpoint(str(run_dir / CKPT_DIR))
    if latest is None or not Path(f"{latest}.index").is_file():
        raise SeparatorConfigError(f"{run_dir}: no checkpoint {latest or 'in ' + CKPT_DIR + '/'}")
    model = build_separator(cfg, num_samples=cfg.hop * 64)
    return model, cfg, _restore(model, cfg, run_dir, latest)


def kept_checkpoints(run_dir: str | Path) -> list[str]:
    """Prefixes (``.../ckpt-N``) of the checkpoints a run folder kept, oldest first."""
    state = tf.train.get_checkpoint_state(str(Path(run_dir) / CKPT_DIR))
    return list(state.all_model_checkpoint_paths) if state else []


def _restore(model: Separator, cfg: SeparatorConfig, run_dir: Path, prefix: str) -> int:
    """Load checkpoint ``prefix`` into ``model`` in place; returns its step."""
    step = tf.Variable(0, dtype=tf.int64)
    try:
        tf.train.Checkpoint(model=model, step=step).restore(prefix).expect_partial()
    except (ValueError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeparatorConfigError(
            f"{run_dir}: checkpoint {Path(prefix).name} does not match the run's config.json "
            f"(preset {cfg.name}): {first[:200]}"
        ) from None
    return int(step.numpy())


class _Logger:
    def __init__(self, run_dir: Path) -> None:
        self.csv_path = run_dir / "log.csv"
        self.jsonl_path = run_dir / "log.jsonl"
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)
        self.writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
        self.has_tensorboard = importlib.util.find_spec("tensorboard") is not None

    def write(self, row: dict[str, Any]) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in LOG_FIELDS])
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with self.writer.as_default(step=int(row["step"])):
            for k in ("loss_db", "steps_per_s", "lr", "val_momi_db"):
                if row.get(k) not in (None, ""):
                    if self.has_tensorboard:
                        tf.summary.scalar(k, float(row[k]))
                    else:  # core TF raw summary (no TensorBoard package in the train extra)
                        tf.summary.write(k, tf.constant(float(row[k])))
        self.writer.flush()


def _validation_set(
    datasets: list[Any],
    num_examples: int,
    seed: int,
    levels: str = "natural",
    kinds: tuple[str, ...] = WINDOW_KINDS,
) -> tuple | None:
    from modeltools.data.examples import SeparatorConfig as DataConfig
    from modeltools.data.examples import SeparatorExamples

    if num_examples <= 0:
        return None
    try:
        source = SeparatorExamples(
            datasets, "val", cfg=DataConfig(levels=levels), seed=seed, kinds=kinds
        )
    except ChorusError as exc:
        log.warning("no validation MoMs (%s): skipping validation MoMi", exc)
        return None
    exs = [source.example(i) for i in range(num_examples)]
    return np.stack([e["mom"] for e in exs]), np.stack([e["mixtures"] for e in exs])


def validation_momi(model: Separator, val: tuple, batch_size: int = 4) -> float:
    mom, refs = val
    scores = [
        momi_per_example(
            refs[i : i + batch_size], model(mom[i : i + batch_size]), mom[i : i + batch_size]
        )
        for i in range(0, len(mom), batch_size)
    ]
    return float(np.mean(np.concatenate(scores)))


def train(
    cfg: SeparatorConfig | str,
    data: list[str | Path],
    run_dir: str | Path,
    steps: int = 10_000,
    resume: bool = False,
    strategy: str = "cpu",
    tpu: str | None = None,
    checkpoint_every: int = 200,
    keep_checkpoints: int = 3,
    log_every: int = 10,
    val_examples: int = 16,
    seed: int = 0,
    max_nan_restores: int = 3,
    progress: bool = True,
    source: Any = None,
    resume_overrides: dict[str, Any] | None = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train to ``steps`` total steps; returns the last log row. See the module docstring.

    ``source`` (an :class:`~modeltools.data.pipeline.ExampleSource` with ``mom`` and
    ``mixtures``) replaces the MoMs drawn from ``data`` (tests; custom data). Ctrl-C or SIGTERM
    saves a checkpoint at the current step before stopping. ``init_from``: a run folder whose
    latest weights start this (new) run — fine-tuning with another loss or schedule; the
    architecture must be the same (optimizer state and step start afresh).
    """
    from modeltools.data.dataset import read_dataset
    from modeltools.data.examples import SeparatorExamples
    from modeltools.data.pipeline import separator_dataset
    from modeltools.data.real_split import check_datasets

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CKPT_DIR
    has_ckpt = tf.train.latest_checkpoint(str(ckpt_dir)) is not None
    if has_ckpt and not resume:
        raise SeparatorConfigError(
            f"{run_dir} already holds checkpoints: pass --resume, or a new --out"
        )
    if resume and (run_dir / CONFIG_NAME).exists():
        cfg = load_config(run_dir)  # the run's own config wins over the preset on resume
        cfg = _apply_resume_overrides(cfg, run_dir, resume_overrides or {})
    elif isinstance(cfg, str):
        cfg = get_preset(cfg)
    datasets = [read_dataset(d) for d in data]
    # Refuse evaluation-only real audio before anything is written (REAL-AUDIO.md).
    real_audio = check_datasets(datasets, "separator training")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir, real_audio)
    (run_dir / "data.json").write_text(
        json.dumps({"corpora": [str(Path(d).resolve()) for d in data], "seed": seed}, indent=1)
        + "\n"
    )
    moms = max(1, cfg.batch_size // 2)  # batch_size counts single mixtures (SS-mixit: 6 -> 3)
    from modeltools.data.examples import SeparatorConfig as DataConfig

    data_cfg = DataConfig(example_s=cfg.example_s, levels=cfg.mom_levels)
    if source is None:
        source = SeparatorExamples(
            datasets,
            "train",
            cfg=data_cfg,
            seed=seed,
            kinds=cfg.windows,
            stems=cfg.supervised_weight > 0,
            real_fraction=cfg.real_fraction,
        )
    keys = list(source.keys())
    if cfg.supervised_weight > 0 and "sources" not in keys:
        raise SeparatorConfigError(
            f"supervised_weight {cfg.supervised_weight} needs training examples with stems "
            "('sources'); the data gives only " + ", ".join(keys)
        )
    val = (
        _validation_set(datasets, val_examples, seed + 1, cfg.mom_levels, cfg.windows)
        if datasets
        else None
    )

    strat = make_strategy(strategy, tpu)
    import keras

    keras.utils.set_random_seed(seed)  # reproducible initial weights (resume restores them)
    with strat.scope():
        model = build_separator(cfg, num_samples=cfg.example_samples)
        optimizer = _optimizer(cfg)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
    if init_from is not None and not has_ckpt:
        _init_weights(model, cfg, Path(init_from))
        extra = {**cfg.extra, "init_from": str(init_from)}
        cfg = replace(cfg, extra=extra)
        save_config(cfg, run_dir, real_audio)
    ckpt = make_checkpoint(model, optimizer, step)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=max(1, keep_checkpoints))
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed %s at step %d", manager.latest_checkpoint, int(step.numpy()))
    start = int(step.numpy())
    if start >= steps:
        log.info("already at step %d >= %d", start, steps)
        return {"step": start}

    @tf.function
    def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        def replica(b: dict[str, tf.Tensor]) -> tf.Tensor:
            with tf.GradientTape() as tape:
                est = model(b["mom"], training=True)
                per_example, _ = mixit(
                    b["mixtures"], est, cfg.max_snr_db, allow_empty=cfg.mixit_allow_empty
                )
                if cfg.supervised_weight > 0:  # semi-supervised: the stems as well
                    supervised, _ = source_mixit(b["sources"], est, cfg.max_snr_db)
                    per_example += cfg.supervised_weight * supervised
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=moms)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        losses = strat.run(replica, args=(batch,))
        step.assign_add(1)
        return strat.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def make_iter(at: int) -> Any:
        ds = separator_dataset(source, batch_size=moms, start=at * moms)
        return iter(strat.experimental_distribute_dataset(ds))

    logger = _Logger(run_dir)
    it = make_iter(start)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)
    nan_restores, window, t0, t_start = 0, [], time.monotonic(), time.monotonic()
    row: dict[str, Any] = {"step": start}
    stop = _StopOnSigterm()
    try:
        while int(step.numpy()) < steps:
            if stop.requested:
                raise KeyboardInterrupt
            loss = float(train_step(next(it)))
            cur = int(step.numpy())
            if not math.isfinite(loss):
                nan_restores += 1
                if nan_restores > max_nan_restores or manager.latest_checkpoint is None:
                    raise TrainingError(f"non-finite loss at step {cur}; stopping")
                log.warning("non-finite loss at step %d: restoring the latest checkpoint", cur)
                ckpt.restore(manager.latest_checkpoint)
                step.assign(cur)  # skip the batch that blew up (keep the stream moving forwards)
                continue
            window.append(loss)
            if bar is not None:
                bar.update(1)
            at_ckpt = cur % checkpoint_every == 0 or cur == steps
            if cur % log_every == 0 or at_ckpt:
                dt = time.monotonic() - t0
                row = {
                    "step": cur,
                    "loss_db": float(np.mean(window)),
                    "steps_per_s": len(window) / dt if dt > 0 else 0.0,
                    "examples_per_s": len(window) * moms / dt if dt > 0 else 0.0,
                    "lr": float(optimizer.learning_rate.numpy())
                    if hasattr(optimizer.learning_rate, "numpy")
                    else float(cfg.learning_rate),
                    "wall_s": time.monotonic() - t_start,
                }
                if at_ckpt:
                    manager.save(checkpoint_number=cur)
                    if val is not None:
                        row["val_momi_db"] = validation_momi(model, val)
                logger.write(row)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{row['loss_db']:.2f}",
                        sps=f"{row['steps_per_s']:.2f}",
                        momi=f"{row.get('val_momi_db', float('nan')):.2f}",
                    )
                window, t0 = [], time.monotonic()
    except KeyboardInterrupt:
        cur = int(step.numpy())
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{cur}"):
            manager.save(checkpoint_number=cur)
        log.warning("interrupted at step %d: checkpoint saved, resume with --resume", cur)
        row = {**row, "step": cur, "interrupted": True}
    finally:
        stop.restore()
    if bar is not None:
        bar.close()
    return row


# The fields that define the network's weights (the rest is training schedule and data).
ARCHITECTURE_FIELDS = (
    "window", "hop", "num_coeffs", "num_sources", "bottleneck", "hidden", "kernel_size",
    "repeats", "blocks_per_repeat", "norm", "activation", "consistency",
)  # fmt: skip


def _init_weights(model: Separator, cfg: SeparatorConfig, init_from: Path) -> None:
    """Copy the latest weights of run ``init_from`` into ``model`` (same architecture)."""
    src, src_cfg, src_step = load_run(init_from)
    diff = [f for f in ARCHITECTURE_FIELDS if getattr(src_cfg, f) != getattr(cfg, f)]
    if diff:
        raise SeparatorConfigError(
            f"--init-from {init_from}: its architecture differs in "
            + ", ".join(f"{f} ({getattr(src_cfg, f)!r} vs {getattr(cfg, f)!r})" for f in diff)
        )
    model.set_weights(src.get_weights())
    log.info("initialised from %s (step %d)", init_from, src_step)


class _StopOnSigterm:
    """SIGTERM (systemd, a batch scheduler, ``kill``) ends training like Ctrl-C does: at the next
    step boundary, with a checkpoint. Background jobs started from a shell ignore SIGINT, so
    SIGTERM is how such a run is stopped without losing the steps since the last checkpoint."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def pack_run(
    run_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    average: int = 1,
) -> tuple[Path, int]:
    """Copy a run's config, data record and logs plus one checkpoint's *model* weights (no
    optimizer state: about a third of the size) into ``out_dir``, a run folder that
    ``load_run``, ``eval-separator`` and ``export`` accept. Returns (out_dir, step).

    ``average`` > 1 packs the mean weights of that many kept checkpoints, ending at
    ``checkpoint`` (default: the latest): Polyak averaging of the last stretch of a run, which
    smooths out the noise of small-batch steps. The steps that went in are recorded in
    ``config.json`` (``extra["averaged_steps"]``).
    """
    import shutil

    if average < 1:
        raise SeparatorConfigError(f"--average must be >= 1, got {average}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, cfg, step = load_run(run_dir, checkpoint)
    if average > 1:
        steps = _average_checkpoints(model, cfg, run_dir, step, average)
        cfg = replace(cfg, extra={**cfg.extra, "averaged_steps": steps})
    if out_dir.exists():
        raise SeparatorConfigError(f"{out_dir} exists; choose a new folder")
    out_dir.mkdir(parents=True)
    for name in ("data.json", "log.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    real_audio = json.loads((run_dir / CONFIG_NAME).read_text()).get("real_audio")
    save_config(cfg, out_dir, real_audio)
    step_var = tf.Variable(step, dtype=tf.int64)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, step=step_var), str(out_dir / CKPT_DIR), max_to_keep=1
    )
    manager.save(checkpoint_number=step)
    return out_dir, step


def _average_checkpoints(
    model: Separator, cfg: SeparatorConfig, run_dir: Path, last: int, count: int
) -> list[int]:
    """Set ``model`` to the mean weights of the ``count`` kept checkpoints up to step ``last``
    (each restored into ``model`` in turn); returns their steps (ascending)."""
    by_step = {int(p.rsplit("-", 1)[-1]): p for p in kept_checkpoints(run_dir)}
    chosen = sorted(s for s in by_step if s <= last)[-count:]
    if len(chosen) < count:
        raise SeparatorConfigError(
            f"{run_dir}: --average {count} needs {count} kept checkpoints up to step {last}, "
            f"found {len(chosen)} ({', '.join(map(str, chosen)) or 'none'}); train with "
            f"--keep-checkpoints {count} or more"
        )
    total = [np.zeros_like(w) for w in model.get_weights()]
    for s in chosen:
        _restore(model, cfg, run_dir, by_step[s])
        for acc, w in zip(total, model.get_weights(), strict=True):
            acc += w
    model.set_weights([acc / count for acc in total])
    return chosen


# What may change when a run is resumed (the rest defines the model or the data stream).
RESUMABLE_OVERRIDES = ("learning_rate", "lr_decay_steps")


def _apply_resume_overrides(
    cfg: SeparatorConfig, run_dir: Path, overrides: dict[str, Any]
) -> SeparatorConfig:
    """The run's config with a new learning-rate schedule from the checkpoint on (an annealing
    phase); each change is recorded in ``extra["schedule_changes"]`` with the step it took
    effect, so config.json says how the weights were made."""
    kept = {k: v for k, v in overrides.items() if v is not None and getattr(cfg, k) != v}
    bad = sorted(set(kept) - set(RESUMABLE_OVERRIDES))
    if bad:
        raise SeparatorConfigError(f"cannot change {', '.join(bad)} when resuming a run")
    if not kept:
        return cfg
    latest = tf.train.latest_checkpoint(str(run_dir / CKPT_DIR))
    at = int(latest.rsplit("-", 1)[-1]) if latest else 0
    changes = [*cfg.extra.get("schedule_changes", []), {"step": at, **kept}]
    log.info("resuming at step %d with %s (was %s)", at, kept, {k: getattr(cfg, k) for k in kept})
    return replace(cfg, **kept, extra={**cfg.extra, "schedule_changes": changes})


def with_overrides(cfg: SeparatorConfig, **overrides: Any) -> SeparatorConfig:
    """``cfg`` with the non-None ``overrides`` applied."""
    kept = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **kept) if kept else cfg
