"""Separator training: one step lowers the loss, checkpoints resume exactly, MixIT on real audio."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tf
tf = pytest.importorskip("tensorflow")

from agent.errors import ConfigError  # noqa: E402
from modeltools.separation.losses import mixit  # noqa: E402
from modeltools.separation.metrics import momi_per_example  # noqa: E402
from modeltools.separation.presets import get_preset  # noqa: E402
from modeltools.separation.train import load_run, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CHORUS_SHARED_DATA", REPO.parent / "shared" / "data"))


class ToyMoMs:
    """Deterministic MoMs of two 'birds' (tones at random pitch) in little noise."""

    def __init__(self, num_samples: int) -> None:
        self.n = num_samples

    def __len__(self) -> int:
        return 64

    def keys(self) -> list[str]:
        return ["mom", "mixtures"]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"mom": (self.n,), "mixtures": (2, self.n)}

    def example_list(self, index: int) -> list[np.ndarray]:
        rng = np.random.default_rng(index)
        t = np.arange(self.n) / 22050
        mixes = np.stack(
            [
                0.3 * np.sin(2 * np.pi * rng.uniform(500, 5000) * t)
                + 0.01 * rng.normal(size=self.n)
                for _ in range(2)
            ]
        ).astype(np.float32)
        return [mixes.sum(0), mixes]


class ToyStems(ToyMoMs):
    """ToyMoMs whose mixtures are a tone ('birds') plus noise, with the four stems."""

    def keys(self) -> list[str]:
        return ["mom", "mixtures", "sources"]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().shapes(), "sources": (4, self.n)}

    def example_list(self, index: int) -> list[np.ndarray]:
        rng = np.random.default_rng(index)
        t = np.arange(self.n) / 22050
        stems = []
        for _ in range(2):
            stems.append(0.3 * np.sin(2 * np.pi * rng.uniform(500, 5000) * t))
            stems.append(0.05 * rng.normal(size=self.n))
        src = np.stack(stems).astype(np.float32)
        mixes = np.stack([src[0] + src[1], src[2] + src[3]])
        return [mixes.sum(0), mixes, src]


def test_supervised_weight_adds_the_stem_loss(tmp_path: Path) -> None:
    import keras

    from modeltools.separation.losses import source_mixit
    from modeltools.separation.model import build_separator
    from modeltools.separation.presets import SeparatorConfigError

    base = get_preset("tiny")
    source = ToyStems(base.example_samples)
    kw = dict(data=[], strategy="cpu", log_every=1, val_examples=0, progress=False)
    first = {}
    for w in (0.0, 0.5):
        cfg = get_preset("tiny", supervised_weight=w)
        train(cfg, run_dir=tmp_path / str(w), steps=1, source=source, **kw)
        rows = list(csv.DictReader((tmp_path / str(w) / "log.csv").open()))
        first[w] = float(rows[0]["loss_db"])
        assert json.loads((tmp_path / str(w) / "config.json").read_text())["supervised_weight"] == w
    # The first step's loss is MixIT (+ 0.5 x the stem loss) of the seeded initial model on
    # the first batch.
    keras.utils.set_random_seed(0)
    model = build_separator(base, num_samples=base.example_samples)
    moms = base.batch_size // 2
    mom, mixes, stems = (
        np.stack(x) for x in zip(*(source.example_list(i) for i in range(moms)), strict=True)
    )
    est = model(mom, training=True)
    want_mixit = float(tf.reduce_mean(mixit(mixes, est)[0]))
    want_stems = float(tf.reduce_mean(source_mixit(stems, est)[0]))
    assert first[0.0] == pytest.approx(want_mixit, abs=1e-3)
    assert first[0.5] == pytest.approx(want_mixit + 0.5 * want_stems, abs=1e-3)
    # A source without stems, or a negative weight: one clear error before any step.
    cfg = get_preset("tiny", supervised_weight=1.0)
    with pytest.raises(SeparatorConfigError, match="stems"):
        train(cfg, run_dir=tmp_path / "x", steps=1, source=ToyMoMs(cfg.example_samples), **kw)
    assert not (tmp_path / "x" / "checkpoints").exists()
    with pytest.raises(SeparatorConfigError, match="supervised_weight must be >= 0"):
        get_preset("tiny", supervised_weight=-1.0)


def _weights(model: tf.keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = get_preset("tiny")
    source = ToyMoMs(cfg.example_samples)
    batch = [np.stack(x) for x in zip(*(source.example_list(i) for i in range(2)), strict=True)]

    def loss_of(run: Path) -> float:
        model, _, _ = load_run(run)
        return float(tf.reduce_mean(mixit(batch[1], model(batch[0]))[0]))

    kw = dict(data=[], strategy="cpu", log_every=1, val_examples=0, progress=False, source=source)
    # Run A: 3 steps, checkpoint every step (the step-0 weights are needed for "before").
    run_a = tmp_path / "a"
    train(cfg, run_dir=run_a, steps=1, checkpoint_every=1, **kw)
    after_one = loss_of(run_a)
    train(cfg, run_dir=run_a, steps=3, checkpoint_every=1, resume=True, **kw)
    # Run B: the same 3 steps without interruption.
    run_b = tmp_path / "b"
    train(cfg, run_dir=run_b, steps=3, checkpoint_every=3, **kw)
    model_a, _, step_a = load_run(run_a)
    model_b, _, step_b = load_run(run_b)
    assert step_a == step_b == 3
    for wa, wb in zip(_weights(model_a), _weights(model_b), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert loss_of(run_a) < after_one  # a few more steps lowered the loss on these MoMs
    rows = list(csv.DictReader((run_a / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r["loss_db"])) for r in rows)
    assert json.loads((run_a / "config.json").read_text())["name"] == "tiny"
    with pytest.raises(ConfigError):  # an existing run is never overwritten without --resume
        train(cfg, run_dir=run_a, steps=5, **kw)


class _TermAt(ToyMoMs):
    """ToyMoMs that sends this process SIGTERM when example ``at`` is drawn."""

    def __init__(self, num_samples: int, at: int) -> None:
        super().__init__(num_samples)
        self.at = at

    def example_list(self, index: int) -> list[np.ndarray]:
        if index == self.at:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return super().example_list(index)


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    cfg = get_preset("tiny")
    kw = dict(data=[], strategy="cpu", val_examples=0, progress=False, checkpoint_every=100)
    row = train(cfg, run_dir=tmp_path, steps=40, source=_TermAt(cfg.example_samples, 8), **kw)
    assert row["interrupted"] is True
    stopped = row["step"]
    assert 0 < stopped < 40  # not a checkpoint step: saved because of the signal
    _, _, step = load_run(tmp_path)
    assert step == stopped
    row = train(
        cfg,
        run_dir=tmp_path,
        steps=stopped + 2,
        resume=True,
        source=ToyMoMs(cfg.example_samples),
        **kw,
    )
    assert row["step"] == stopped + 2 and not row.get("interrupted")


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = get_preset("tiny")
    kw = dict(data=[], strategy="cpu", val_examples=0, progress=False, checkpoint_every=1)
    source = ToyMoMs(cfg.example_samples)
    train(cfg, run_dir=tmp_path / "a", steps=2, source=source, **kw)
    # lr 0: the new run's only step leaves the weights it started from untouched.
    frozen = replace(cfg, learning_rate=0.0, mixit_allow_empty=False)
    train(frozen, run_dir=tmp_path / "b", steps=1, source=source, init_from=tmp_path / "a", **kw)
    (model_a, _, _), (model_b, cfg_b, step_b) = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert step_b == 1 and cfg_b.extra["init_from"] == str(tmp_path / "a")
    assert cfg_b.mixit_allow_empty is False
    for wa, wb in zip(_weights(model_a), _weights(model_b), strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-7)
    with pytest.raises(ConfigError, match="architecture differs in hidden"):
        other = replace(cfg, hidden=cfg.hidden * 2)
        train(other, run_dir=tmp_path / "c", steps=1, source=source, init_from=tmp_path / "a", **kw)


def test_one_step_lowers_the_loss(tmp_path: Path) -> None:
    from modeltools.separation.model import build_separator

    cfg = get_preset("tiny")
    source = ToyMoMs(cfg.example_samples)
    mom, refs = (np.stack(x) for x in zip(*(source.example_list(i) for i in range(4)), strict=True))
    model = build_separator(cfg)
    opt = tf.keras.optimizers.Adam(1e-2)

    def loss() -> tf.Tensor:
        return tf.reduce_mean(mixit(refs, model(mom, training=True))[0])

    before = float(loss())
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, model.trainable_variables)
    assert all(g is not None for g in grads)  # every weight gets a gradient
    opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    assert float(loss()) < before


@pytest.mark.needs_shared_data
@pytest.mark.skipif(not (SHARED / "birdvox-tests").is_dir(), reason="../shared/data absent")
def test_mixit_on_the_birdvox_triplet() -> None:
    sf = pytest.importorskip("soundfile")
    folder = SHARED / "birdvox-tests"
    bg, _ = sf.read(folder / "BirdVox-scaper_example_background.wav", dtype="float32")
    fg, _ = sf.read(folder / "BirdVox-scaper_example_foreground.wav", dtype="float32")
    mix, _ = sf.read(folder / "BirdVox-scaper_example_mix.wav", dtype="float32")
    np.testing.assert_allclose(bg + fg, mix, atol=1e-3)  # mix = background + foreground
    refs = np.stack([bg, fg])[None]
    # Oracle estimates in a shuffled order plus a silent channel and a quiet leak.
    est = np.stack([fg, 1e-4 * bg, bg, np.zeros_like(bg)])[None]
    loss, mat = mixit(refs, est)
    np.testing.assert_array_equal(mat.numpy()[0, 1], [1, 0, 0, 0])  # foreground -> mixture 2
    np.testing.assert_array_equal(mat.numpy()[0, 0, [0, 2]], [0, 1])  # background -> mixture 1
    assert loss.numpy()[0] < -29.0
    gain = momi_per_example(refs, est, mix[None])[0]
    assert gain > 20.0  # a faint flight call: separating it is a large SI-SNR gain


class NaNAfter(ToyMoMs):
    """Toy MoMs that turn to NaN from example ``start`` on."""

    def __init__(self, num_samples: int, start: int) -> None:
        super().__init__(num_samples)
        self.start = start

    def example_list(self, index: int) -> list[np.ndarray]:
        out = super().example_list(index)
        return [np.full_like(x, np.nan) for x in out] if index >= self.start else out


def test_nan_guard_restores_then_stops(tmp_path: Path) -> None:
    from modeltools.separation.train import TrainingError

    cfg = get_preset("tiny")  # 2 MoMs per step: examples >= 2 poison every step after the first
    source = NaNAfter(cfg.example_samples, start=2)
    with pytest.raises(TrainingError, match="non-finite"):
        train(
            cfg,
            [],
            tmp_path,
            steps=10,
            checkpoint_every=1,
            val_examples=0,
            progress=False,
            source=source,
            max_nan_restores=2,
        )
    model, _, step = load_run(tmp_path)
    assert step == 1  # only the good step was checkpointed
    assert all(np.all(np.isfinite(w)) for w in _weights(model))


def test_cli_reports_a_missing_run_as_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from modeltools.cli import main

    assert main(["eval-separator", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "not a separator run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-separator", "--preset", "nope", "--data", "x", "--out", str(tmp_path)])


def test_resume_can_anneal_the_learning_rate_and_records_it(tmp_path: Path) -> None:
    cfg = get_preset("tiny")
    kw = dict(data=[], strategy="cpu", log_every=1, val_examples=0, progress=False)
    run = tmp_path / "r"
    train(cfg, run_dir=run, steps=1, checkpoint_every=1, source=ToyMoMs(cfg.example_samples), **kw)
    train(
        cfg,
        run_dir=run,
        steps=2,
        checkpoint_every=1,
        resume=True,
        source=ToyMoMs(cfg.example_samples),
        resume_overrides={"learning_rate": 1e-5},
        **kw,
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["learning_rate"] == 1e-5
    assert saved["extra"]["schedule_changes"] == [{"step": 1, "learning_rate": 1e-5}]
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert float(rows[-1]["lr"]) < 2e-5 < float(rows[0]["lr"])  # the new rate was used
    with pytest.raises(ConfigError, match="num_coeffs"):
        train(
            cfg,
            run_dir=run,
            steps=3,
            resume=True,
            source=ToyMoMs(cfg.example_samples),
            resume_overrides={"num_coeffs": 8},
            **kw,
        )


def test_pack_keeps_the_model_weights_without_optimizer_state(tmp_path: Path) -> None:
    from modeltools.separation.train import pack_run

    cfg = get_preset("tiny")
    kw = dict(data=[], strategy="cpu", log_every=1, val_examples=0, progress=False)
    run = tmp_path / "r"
    train(cfg, run_dir=run, steps=2, checkpoint_every=1, source=ToyMoMs(cfg.example_samples), **kw)
    out, step = pack_run(run, tmp_path / "packed", run / "checkpoints" / "ckpt-1")
    assert step == 1
    packed, _, packed_step = load_run(out)
    original, _, _ = load_run(run, run / "checkpoints" / "ckpt-1")
    assert packed_step == 1
    for a, b in zip(_weights(packed), _weights(original), strict=True):
        np.testing.assert_array_equal(a, b)
    size = lambda d: sum(f.stat().st_size for f in (d / "checkpoints").iterdir())  # noqa: E731
    assert size(out) < size(run) / 2  # no Adam slots, one checkpoint
    with pytest.raises(ConfigError, match="exists"):
        pack_run(run, out)
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_run(run, run / "checkpoints" / "ckpt-99")


def test_pack_can_average_the_last_checkpoints(tmp_path: Path) -> None:
    from modeltools.separation.train import load_config, pack_run

    cfg = get_preset("tiny")
    kw = dict(data=[], strategy="cpu", log_every=1, val_examples=0, progress=False)
    run = tmp_path / "r"
    source = ToyMoMs(cfg.example_samples)
    train(cfg, run_dir=run, steps=3, checkpoint_every=1, keep_checkpoints=3, source=source, **kw)
    out, step = pack_run(run, tmp_path / "avg", average=2)
    assert step == 3 and load_config(out).extra["averaged_steps"] == [2, 3]
    packed, _, _ = load_run(out)
    two, _, _ = load_run(run, run / "checkpoints" / "ckpt-2")
    three, _, _ = load_run(run, run / "checkpoints" / "ckpt-3")
    moved = False
    for p, a, b in zip(_weights(packed), _weights(two), _weights(three), strict=True):
        np.testing.assert_allclose(p, (a + b) / 2, rtol=1e-6, atol=1e-7)
        moved |= not np.array_equal(a, b)
    assert moved  # the two checkpoints differ, so the mean is neither of them
    out1, _ = pack_run(run, tmp_path / "one", run / "checkpoints" / "ckpt-2", average=2)
    assert load_config(out1).extra["averaged_steps"] == [1, 2]  # ends at --checkpoint
    with pytest.raises(ConfigError, match="needs 4 kept checkpoints up to step 3, found 3"):
        pack_run(run, tmp_path / "four", average=4)
    with pytest.raises(ConfigError, match="--average must be >= 1"):
        pack_run(run, tmp_path / "zero", average=0)
    assert not (tmp_path / "four").exists() and not (tmp_path / "zero").exists()


def test_mom_levels_are_recorded_and_old_runs_read_as_random_peak(tmp_path: Path) -> None:
    from modeltools.data.examples import MOM_LEVELS
    from modeltools.separation import presets
    from modeltools.separation.train import load_config, save_config

    assert presets.MOM_LEVELS == MOM_LEVELS  # one vocabulary for the run config and the data
    assert get_preset("edge").mom_levels == "natural"  # SS-mixit: x = x1 + x2, no rescaling
    with pytest.raises(ConfigError, match="mom_levels must be one of"):
        get_preset("edge", mom_levels="loud")
    save_config(get_preset("tiny", mom_levels="random-peak"), tmp_path)
    assert load_config(tmp_path).mom_levels == "random-peak"
    save_config(get_preset("tiny"), tmp_path)
    assert load_config(tmp_path).mom_levels == "natural"
    legacy = json.loads((tmp_path / "config.json").read_text())
    del legacy["mom_levels"]  # a run folder written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert load_config(tmp_path).mom_levels == "random-peak"


def test_training_windows_are_recorded_and_validated(tmp_path: Path) -> None:
    from modeltools.separation.presets import WINDOW_KINDS
    from modeltools.separation.train import load_config, save_config

    assert get_preset("edge").windows == WINDOW_KINDS  # every kind unless a run says otherwise
    save_config(get_preset("tiny", windows=["soundscape"]), tmp_path)
    assert load_config(tmp_path).windows == ("soundscape",)  # JSON list back to a tuple
    legacy = json.loads((tmp_path / "config.json").read_text())
    del legacy["windows"]  # a run folder written before the field existed trained on all kinds
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert load_config(tmp_path).windows == WINDOW_KINDS
    for bad in (["birdsong"], []):
        with pytest.raises(ConfigError, match="separator windows must be among"):
            get_preset("edge", windows=bad)


def test_basis_init_is_recorded_and_a_checkpoint_wins_over_it(tmp_path: Path) -> None:
    from modeltools.separation.model import stft_basis
    from modeltools.separation.train import load_config

    cfg = get_preset("tiny", basis_init="stft", num_coeffs=32)
    kw = dict(data=[], strategy="cpu", val_examples=0, progress=False, checkpoint_every=1)
    train(cfg, run_dir=tmp_path / "run", steps=3, source=ToyMoMs(cfg.example_samples), **kw)
    model, loaded, step = load_run(tmp_path / "run")
    assert loaded.basis_init == "stft" and step == 3
    analysis, _ = stft_basis(cfg.window, cfg.hop, cfg.num_coeffs)
    # The bases are learned from the Fourier start: three Adam steps at lr 1e-3 moved them, and
    # loading the run gives the trained kernel, not a fresh init.
    moved = np.abs(model.encoder.kernel.numpy() - analysis).max()
    assert 1e-4 < moved < 0.1
    legacy = json.loads((tmp_path / "run" / "config.json").read_text())
    del legacy["basis_init"]  # a run folder written before the field existed: Glorot bases
    (tmp_path / "run" / "config.json").write_text(json.dumps(legacy))
    assert load_config(tmp_path / "run").basis_init == "random"
