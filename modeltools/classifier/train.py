"""Classifier training loop: tf.distribute strategy, Adam (eps 0.01), checkpoints and resume.

A run folder holds ``run.json`` (config, class counts, seed, data, and ``real_audio``: the
shared real files that went in; evaluation-only real audio is refused, REAL-AUDIO.md),
``ckpt/`` (model + optimizer + step, for ``--resume``), ``train.csv`` (loss per head,
examples/s), ``eval.csv`` (validation CMAP/lwlrap/top-1 on val soundscape segments),
``best.weights.h5`` (best val CMAP), ``final.weights.h5`` and ``summary.json``. The input
stream is a pure function of (seed, example index), so a resumed run continues exactly where
the interrupted one stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeltools.classifier.evaluate import predict_logits, segment_set, species_metrics
from modeltools.classifier.model import TAXONOMY_HEADS, build_classifier
from modeltools.classifier.presets import ClassifierConfig, ClassifierError, config_from_dict
from modeltools.data.dataset import Dataset

log = logging.getLogger(__name__)

STRATEGIES = ("cpu", "gpu", "tpu", "default")
LOG_FIELDS = ["step", "loss", *TAXONOMY_HEADS, "bird", "examples_per_s", "elapsed_s"]
EVAL_FIELDS = ["step", "cmap", "lwlrap", "top1", "elapsed_s"]


@dataclass
class RunOptions:
    """How to run (not what to train): output, length, seed, strategy, threads."""

    out: Path
    steps: int | None = None
    resume: bool = False
    seed: int = 0
    strategy: str = "cpu"
    threads: int = 0  # 0: TensorFlow's default
    progress: bool = True


def set_threads(threads: int | None, inter_op: int = 1) -> None:
    """Limit TensorFlow to ``threads`` intra-op and ``inter_op`` inter-op threads (0/None:
    leave the defaults). Must run before TensorFlow executes an op; later calls are ignored."""
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        except RuntimeError:  # already initialised in this process
            log.debug("TensorFlow threads already configured")


def make_strategy(name: str) -> Any:
    """``cpu`` (one CPU device), ``gpu`` (MirroredStrategy over the visible GPUs), ``tpu``."""
    import tensorflow as tf

    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise ClassifierError("--strategy gpu: no GPU visible to TensorFlow")
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "default":
        return tf.distribute.get_strategy()
    raise ClassifierError(f"unknown strategy {name!r} (use one of {', '.join(STRATEGIES)})")


def _append_csv(path: Path, fields: list[str], row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_csv(path: Path, max_step: int) -> None:
    """Drop rows logged after the last checkpoint (they are re-logged by the resumed run)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= max_step]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0].keys()))
        w.writeheader()
        w.writerows(keep)


def _prepare_run(cfg: ClassifierConfig, datasets: Sequence[Dataset], opts: RunOptions) -> tuple:
    from modeltools.data.real_split import check_datasets

    real_audio = check_datasets(datasets, "classifier training")  # raises before any write
    out = opts.out
    meta_path = out / "run.json"
    if meta_path.is_file():
        if not opts.resume:
            raise ClassifierError(
                f"{out} already holds a run; pass --resume or choose another --out"
            )
        meta = json.loads(meta_path.read_text())
        cfg = config_from_dict(meta["config"])  # a resumed run keeps its own config
        if meta["taxonomy_version"] != datasets[0].taxonomy.version:
            raise ClassifierError(
                f"{out}: trained on another taxonomy ({meta['taxonomy_version']})"
            )
        return cfg, meta
    out.mkdir(parents=True, exist_ok=True)
    tax = datasets[0].taxonomy
    meta = {
        "format": "chorus-classifier-run",
        "config": cfg.to_dict(),
        "num_classes": {h: len(tax.label_spaces[h]) for h in TAXONOMY_HEADS},
        "labels": {h: list(tax.label_spaces[h].classes) for h in TAXONOMY_HEADS},
        "taxonomy_version": tax.version,
        "seed": opts.seed,
        "data": [str(d.root) for d in datasets],
        "real_audio": real_audio,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return cfg, meta


def train_classifier(
    cfg: ClassifierConfig, datasets: Sequence[Dataset], opts: RunOptions
) -> dict[str, Any]:
    """Train (or resume) one classifier into ``opts.out``; returns the summary dict."""
    set_threads(opts.threads)
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from modeltools.augment.waveform import AugmentConfig
    from modeltools.classifier.losses import classifier_loss
    from modeltools.data.examples import ClassifierExamples
    from modeltools.data.pipeline import classifier_dataset

    cfg, meta = _prepare_run(cfg, datasets, opts)
    seed = int(meta["seed"])
    total_steps = int(opts.steps if opts.steps is not None else cfg.steps)
    out = opts.out
    keras.utils.set_random_seed(seed)
    strategy = make_strategy(opts.strategy)
    batch = cfg.batch_size
    with strategy.scope():
        model = build_classifier(cfg, meta["num_classes"])
        optimizer = keras.optimizers.Adam(cfg.learning_rate, epsilon=cfg.adam_epsilon)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    manager = tf.train.CheckpointManager(ckpt, str(out / "ckpt"), max_to_keep=2)
    state = {"best_cmap": -math.inf, "bad_evals": 0, "best_step": -1}
    state_path = out / "state.json"
    if manager.latest_checkpoint:
        if not opts.resume:
            raise ClassifierError(f"{out} has checkpoints; pass --resume")
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if state_path.is_file():
            state.update(json.loads(state_path.read_text()))
        log.info("resumed %s at step %d", out, int(step_var.numpy()))
    start = int(step_var.numpy())
    for name in ("train.csv", "eval.csv"):
        _truncate_csv(out / name, start)

    aug = AugmentConfig(**cfg.augment)
    src = ClassifierExamples(datasets, "train", aug, seed=seed)
    ds = classifier_dataset(src, batch_size=batch, start=start * batch)
    dist = iter(strategy.experimental_distribute_dataset(ds))
    use_lowpass = cfg.lowpass

    # Plain Python control flow only (use_lowpass is a Python bool): no autograph needed.
    @tf.autograph.experimental.do_not_convert
    def replica_step(b: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        lowpass = b["lowpass"] if use_lowpass else tf.ones_like(b["lowpass"])
        with tf.GradientTape() as tape:
            outs = model({"audio": b["audio"], "lowpass": lowpass}, training=True)
            per_ex, parts = classifier_loss(
                outs, b, cfg.label_smoothing, cfg.taxonomy_weight, cfg.bird_weight
            )
            loss = tf.nn.compute_average_loss(per_ex, global_batch_size=batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, {
            k: tf.nn.compute_average_loss(v, global_batch_size=batch) for k, v in parts.items()
        }

    @tf.function
    def train_step(b: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        loss, parts = strategy.run(replica_step, args=(b,))
        red = tf.distribute.ReduceOp.SUM
        return strategy.reduce(red, loss, None), {
            k: strategy.reduce(red, v, None) for k, v in parts.items()
        }

    val = None
    if cfg.eval_every > 0:
        try:
            val = segment_set(datasets, "val", limit=cfg.val_segments)
        except Exception as exc:  # evaluation is optional during training
            log.warning("no validation segments (%s): training without validation CMAP", exc)

    def evaluate(step: int, t0: float) -> bool:
        """Validation metrics; saves best weights; True when early stopping triggers."""
        assert val is not None
        res = species_metrics(predict_logits(model, val[0])["species"], val[1])
        _append_csv(out / "eval.csv", EVAL_FIELDS, {"step": step, **res, "elapsed_s": t0})
        log.info("step %d: val CMAP %.3f lwlrap %.3f top-1 %.3f", step, *res.values())
        score = res["cmap"] if not math.isnan(res["cmap"]) else res["lwlrap"]
        if score > state["best_cmap"]:
            state.update(best_cmap=float(score), bad_evals=0, best_step=step)
            model.save_weights(out / "best.weights.h5")
        else:
            state["bad_evals"] += 1
        patience = cfg.early_stopping_patience
        return bool(patience and state["bad_evals"] >= patience)

    def checkpoint(step: int) -> None:
        step_var.assign(step)
        manager.save(checkpoint_number=step)
        state_path.write_text(json.dumps(state))

    t_start = time.monotonic()
    window: dict[str, float] = {}
    n_window, t_window = 0, time.monotonic()
    stopped_early = False
    bar = tqdm(total=total_steps, initial=start, disable=not opts.progress, unit="step")
    step = start
    while step < total_steps:
        loss, parts = train_step(next(dist))
        step += 1
        window["loss"] = window.get("loss", 0.0) + float(loss)
        for k, v in parts.items():
            window[k] = window.get(k, 0.0) + float(v)
        n_window += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            dt = time.monotonic() - t_window
            row = {k: v / n_window for k, v in window.items()}
            row.update(
                step=step,
                examples_per_s=n_window * batch / max(dt, 1e-9),
                elapsed_s=time.monotonic() - t_start,
            )
            _append_csv(out / "train.csv", LOG_FIELDS, row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", ex_s=f"{row['examples_per_s']:.1f}")
            window, n_window, t_window = {}, 0, time.monotonic()
        if val is not None and cfg.eval_every and step % cfg.eval_every == 0:
            stopped_early = evaluate(step, time.monotonic() - t_start)
        if step % cfg.checkpoint_every == 0 or step == total_steps or stopped_early:
            checkpoint(step)
        if stopped_early:
            log.info(
                "early stopping at step %d (best val CMAP at step %d)", step, state["best_step"]
            )
            break
    bar.close()
    if step > start and step_var.numpy() != step:
        checkpoint(step)
    model.save_weights(out / "final.weights.h5")
    summary = {
        "steps": step,
        "stopped_early": stopped_early,
        "best_val_cmap": state["best_cmap"] if state["best_step"] >= 0 else None,
        "best_step": state["best_step"],
        "train_s_this_session": time.monotonic() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def train_members(
    cfg: ClassifierConfig, datasets: Sequence[Dataset], opts: RunOptions, members: int = 1
) -> list[dict[str, Any]]:
    """Train ``members`` runs with seeds seed, seed+1, ... (``OUT/member-k`` when > 1)."""
    if members <= 1:
        return [train_classifier(cfg, datasets, opts)]
    res = []
    for k in range(members):
        o = RunOptions(**{**opts.__dict__, "out": opts.out / f"member-{k}", "seed": opts.seed + k})
        res.append(train_classifier(cfg, datasets, o))
    return res
