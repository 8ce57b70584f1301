"""``chorus-models export`` / ``parity``: tiny trained runs -> TFLite flavours -> gated bundle.

The runs are real (a few training steps of the ``tiny`` presets on a small generated corpus), the
conversion is the real TFLite converter and every check runs the models in LiteRT, through the
agent's own loader and smoke test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from modeltools.cli import main  # noqa: E402
from modeltools.export.convert import (  # noqa: E402
    ExportError,
    check_ops,
    check_representative,
    convert,
    freeze,
)

pytestmark = [pytest.mark.needs_tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    corpus = root / "corpus"
    args = ["--species", "3", "--other-species", "1", "--focal-per-species", "2", "1"]
    args += ["--focal-per-other", "1", "0", "--soundscapes", "1", "1", "2"]
    args += ["--soundscape-s", "30", "--noise-clips", "1", "1", "--noise-clip-s", "10"]
    args += ["--no-real-noise", "--workers", "1"]
    assert main(["-q", "synth", "--out", str(corpus), *args]) == 0
    sep, cls = root / "sep", root / "cls"
    common = ["--data", str(corpus), "--threads", "1"]
    assert (
        main(
            [
                "-q",
                "train-separator",
                "--preset",
                "tiny",
                "--out",
                str(sep),
                "--steps",
                "2",
                "--val-examples",
                "0",
                "--windows",
                "focal,soundscape",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "-q",
                "train-classifier",
                "--preset",
                "tiny",
                "--out",
                str(cls),
                "--members",
                "2",
                "--steps",
                "2",
                "--no-progress",
                *common,
            ]
        )
        == 0
    )
    bundle = root / "bundle"
    assert (
        main(
            [
                "-q",
                "export",
                "--separator",
                str(sep),
                "--classifier",
                str(cls),
                "--out",
                str(bundle),
                "--flavours",
                "float32,dynamic,int8",
                "--representative",
                "4",
                "--eval-moms",
                "4",
                "--eval-segments",
                "12",
                "--flavours-dir",
                str(root / "flavours"),
                *common,
            ]
        )
        == 0
    )
    return {"root": root, "corpus": corpus, "sep": sep, "cls": cls, "bundle": bundle}


def test_export_writes_a_bundle_the_agent_loads_and_smoke_tests(runs: dict[str, Path]) -> None:
    from agent.models.golden import smoke_test
    from agent.models.manifest import load_bundle
    from agent.models.stages import RuntimeOptions, load_models

    bundle = load_bundle(runs["bundle"])
    m = bundle.manifest
    assert m.separator is not None and m.separator.num_sources == 4
    assert len(m.classifiers) == 1 and len(m.classifiers[0].members) == 2
    assert m.classifiers[0].labels[0].species_code == "unknown"
    models = load_models(bundle, RuntimeOptions())
    assert "smoke test passed" in smoke_test(models)
    # The separator keeps mixture consistency through int8 and the per-window gain.
    x = np.random.default_rng(0).standard_normal(m.window_samples).astype(np.float32) * 0.01
    assert models.separator is not None
    sources = models.separator.separate(x)
    assert sources.shape == (4, m.window_samples) and np.all(np.isfinite(sources))
    logits = models.classifiers[0].classify(np.vstack([x, sources]))
    assert logits.shape == (5, len(m.classifiers[0].labels)) and np.all(np.isfinite(logits))


def test_parity_report_covers_every_flavour_and_the_flavour_files(runs: dict[str, Path]) -> None:
    report = json.loads((runs["bundle"] / "parity.json").read_text())
    sep = {r["flavour"]: r for r in report["separator"]["flavours"]}
    cls = {r["flavour"]: r for r in report["classifier"]["flavours"]}
    assert set(sep) == set(cls) == {"float32", "dynamic", "int8"}
    # float32 is the Keras graph: near-identical outputs and no metric loss.
    assert sep["float32"]["output_snr_db"] > 60 and abs(sep["float32"]["momi_loss_db"]) < 1e-3
    assert sep["float32"]["assignments_changed"] == 0
    assert abs(sep["float32"]["momi_same_assignment_loss_db"]) < 1e-3
    for row in sep.values():  # the gate's figure is Keras MoMi minus MoMi at Keras's assignments
        want = report["separator"]["keras_momi_db"] - row["momi_same_assignment_db"]
        assert row["momi_same_assignment_loss_db"] == pytest.approx(want, abs=1e-6)
        assert 0 <= row["assignments_changed"] <= report["separator_eval_moms"]
    assert cls["float32"]["max_abs_logit_error"] < 1e-3 and cls["float32"]["top1_agreement"] == 1
    assert sep["int8"]["passed"] and cls["int8"]["passed"]
    assert "RFFT2D" not in cls["int8"]["ops"]  # the STFT lives in the shared float frontend
    assert (runs["bundle"] / "parity.md").read_text().startswith("# Parity report")
    files = {p.name for p in (runs["root"] / "flavours").iterdir()}
    assert {"separator_int8.tflite", "classifier_1_dynamic.tflite", "parity.json"} <= files


def test_parity_command_rechecks_the_bundle(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "parity",
        str(runs["bundle"]),
        "--data",
        str(runs["corpus"]),
        "--eval-moms",
        "4",
        "--eval-segments",
        "12",
    ]
    assert main(args) == 0
    assert "passed" in capsys.readouterr().out
    # An impossible tolerance fails the gate with a non-zero exit.
    assert main([*args, "--max-momi-loss", "-100"]) == 2


def test_failed_gate_writes_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    code = main(
        [
            "export",
            "--separator",
            str(runs["sep"]),
            "--classifier",
            str(runs["cls"]),
            "--out",
            str(out),
            "--flavours",
            "float32",
            "--separator-flavour",
            "float32",
            "--classifier-flavour",
            "float32",
            "--representative",
            "4",
            "--eval-moms",
            "2",
            "--eval-segments",
            "6",
            "--max-momi-loss",
            "-100",
            "--data",
            str(runs["corpus"]),
        ]
    )
    assert code == 2
    assert not out.exists() and not list(tmp_path.iterdir())  # no temp folder left either


def test_eval_separator_scores_every_checkpoint_and_one_step(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--checkpoint", str(runs["sep"]), "--data", str(runs["corpus"]), "--examples", "4"]
    out = tmp_path / "all.json"
    assert (
        main(["eval-separator", *common, "--split", "val", "--all-checkpoints", "--json", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["best_step"] == 2 and [r["step"] for r in res["checkpoints"]] == [2]
    (one,) = res["checkpoints"]
    assert one["split"] == "val" and one["examples"] == 4
    assert sum(r["examples"] for r in one["by_level_gap"]) == 4
    assert 0 <= one["collapsed"] <= 4
    assert "best on val: step 2" in capsys.readouterr().out
    # --step picks that checkpoint; a step that was not kept is one clear error.
    assert main(["eval-separator", *common, "--step", "2"]) == 0
    assert "step 2:" in capsys.readouterr().out
    assert main(["eval-separator", *common, "--step", "7"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # --windows / --mom-levels choose the MoM population and are recorded.
    one_json = tmp_path / "one.json"
    args = ["--windows", "soundscape", "--mom-levels", "random-peak", "--json", str(one_json)]
    assert main(["eval-separator", *common, *args]) == 0
    res = json.loads(one_json.read_text())
    assert (res["windows"], res["mom_levels"]) == (["soundscape"], "random-peak")
    assert "(random-peak levels; soundscape windows)" in capsys.readouterr().out
    # --oracle scores ideal ratio masks on the same MoMs, with no checkpoint.
    oracle = ["--data", str(runs["corpus"]), "--examples", "4", "--split", "val", "--oracle", "64"]
    assert main(["eval-separator", *oracle, "--json", str(one_json)]) == 0
    res = json.loads(one_json.read_text())
    assert (res["preset"], res["oracle_window"], res["step"]) == ("oracle-irm", 64, None)
    assert res["examples"] == 4 and res["momi_db"] > one["momi_db"]
    assert "oracle ratio masks, 64-sample STFT" in capsys.readouterr().out
    assert main(["eval-separator", *oracle, "--step", "2"]) == 2
    assert "drop --step" in capsys.readouterr().err
    assert main(["eval-separator", *oracle, "--all-checkpoints"]) == 2
    assert "--all-checkpoints" in capsys.readouterr().err
    assert main(["eval-separator", *oracle[:-1], "63"]) == 2
    assert "even number" in capsys.readouterr().err


def test_train_separator_windows_choose_and_record_the_training_mixtures(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = json.loads((runs["sep"] / "config.json").read_text())
    assert cfg["windows"] == ["focal", "soundscape"]  # resume and packing read it back
    common = ["train-separator", "--preset", "tiny", "--data", str(runs["corpus"])]
    common += ["--steps", "1", "--val-examples", "0", "--threads", "1"]
    # The corpus has no unlabelled recordings: the kinds reach the MoM source.
    assert main([*common, "--out", str(tmp_path / "u"), "--windows", "unlabelled"]) == 2
    assert "no windows of unlabelled for split 'train'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*common, "--out", str(tmp_path / "b"), "--windows", "birdsong"])
    assert exc.value.code == 2
    assert "window kind" in capsys.readouterr().err
    # tiny has 16 coefficients for a 16-sample basis: too few for an invertible Fourier start.
    assert main([*common, "--out", str(tmp_path / "s"), "--basis-init", "stft"]) == 2
    assert "basis_init 'stft' needs an even num_coeffs >= 2 x window" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_semi_supervised_training_and_bird_scores_through_the_cli(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stems = tmp_path / "stems"
    args = ["--species", "3", "--other-species", "1", "--focal-per-species", "2", "1"]
    args += ["--focal-per-other", "1", "0", "--soundscapes", "1", "1", "2"]
    args += ["--soundscape-s", "30", "--noise-clips", "1", "1", "--noise-clip-s", "10"]
    args += ["--no-real-noise", "--workers", "1", "--no-activity", "--stems"]
    assert main(["-q", "synth", "--out", str(stems), *args]) == 0
    train = ["train-separator", "--preset", "tiny", "--windows", "soundscape", "--steps", "1"]
    train += ["--val-examples", "0", "--threads", "1", "--supervised-weight", "1"]
    assert main([*train, "--data", str(stems), "--out", str(tmp_path / "semi")]) == 0
    assert json.loads((tmp_path / "semi" / "config.json").read_text())["supervised_weight"] == 1
    capsys.readouterr()
    # A corpus without stems, or a negative weight: exit 2 with one line, nothing trained.
    assert main([*train, "--data", str(runs["corpus"]), "--out", str(tmp_path / "x")]) == 2
    assert "no bird stem" in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoints").exists()
    bad = [*train, "--data", str(stems), "--out", str(tmp_path / "y"), "--supervised-weight"]
    assert main([*bad, "-1"]) == 2
    assert "supervised_weight must be >= 0" in capsys.readouterr().err
    # Bird-vs-noise scores of single soundscape windows.
    report = tmp_path / "birds.json"
    evaluate = ["eval-separator", "--checkpoint", str(runs["sep"]), "--birds", "--threads", "1"]
    code = main([*evaluate, "--data", str(stems), "--examples", "6", "--json", str(report)])
    assert code == 0
    res = json.loads(report.read_text())
    assert res["examples"] == 6 and res["windows"] == ["soundscape"]
    assert res["examples"] - res["without_birds"] >= 1 and np.isfinite(res["bird_sisnri_db"])
    assert "bird SI-SNRi" in capsys.readouterr().out
    assert main([*evaluate, "--data", str(runs["corpus"])]) == 2
    assert "no bird stem" in capsys.readouterr().err
    assert main([*evaluate, "--data", str(stems), "--resample-hz", "16000"]) == 2
    assert "--birds scores one checkpoint" in capsys.readouterr().err


def test_existing_output_needs_force(runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "export",
            "--classifier",
            str(runs["cls"]),
            "--out",
            str(runs["bundle"]),
            "--data",
            str(runs["corpus"]),
        ]
    )
    assert code == 2 and "--force" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_match_its_preset_is_one_clear_error(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    bad = tmp_path / "sep"
    shutil.copytree(runs["sep"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_coeffs": cfg["num_coeffs"] + 8}))
    code = main(
        [
            "export",
            "--separator",
            str(bad),
            "--classifier",
            str(runs["cls"]),
            "--out",
            str(tmp_path / "b"),
            "--data",
            str(runs["corpus"]),
        ]
    )
    # (TensorFlow may log its own restore warnings, with stack excerpts, to the same stderr.)
    errors = [
        ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("chorus-models: error:")
    ]
    assert code == 2 and len(errors) == 1 and "does not match" in errors[0]
    assert not (tmp_path / "b").exists()


def test_representative_set_must_be_non_empty_finite_and_audible() -> None:
    with pytest.raises(ExportError, match="empty"):
        check_representative(np.zeros((0, 100), np.float32))
    with pytest.raises(ExportError, match="silent"):
        check_representative(np.zeros((8, 100), np.float32))
    with pytest.raises(ExportError, match="NaN"):
        check_representative(np.full((8, 100), np.nan, np.float32))
    with pytest.raises(ExportError, match="at least"):
        check_representative(np.ones((2, 100), np.float32))
    assert check_representative(np.ones((4, 3, 5), np.float32)).shape == (4, 3, 5)


def test_ops_the_device_cannot_run_fail_the_export() -> None:
    with pytest.raises(ExportError, match="FlexSvd"):
        check_ops(("ADD", "FlexSvd"), "m")
    frozen = freeze(lambda w: tf.linalg.svd(tf.reshape(w, [4, 4]), compute_uv=False), (1, 16))
    with pytest.raises(ExportError, match="Svd"):
        convert(frozen, "float32", None, "svd")


def test_edge_tpu_models_are_compiled_when_the_compiler_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in ``edgetpu_compiler`` (the real one is an x86 Debian package from Coral's
    repository, not installable here) that behaves like the real CLI: ``-s -o DIR MODEL``."""
    from modeltools.export.convert import Converted
    from modeltools.export.writer import compile_edgetpu_twins, tpu_file

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(
        "#!/bin/sh\n"
        'out="$3"; src="$4"; name=$(basename "$src" .tflite)\n'
        'case "$name" in *broken*) echo "Model not quantized" >&2; exit 1;; esac\n'
        'cp "$src" "$out/${name}_edgetpu.tflite"\n'
        'echo "Number of operations that will run on Edge TPU: 41"\n'
        'echo "Number of operations that will run on CPU: 3"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    out = tmp_path / "bundle"
    out.mkdir()
    named = [
        ("separator", Converted("int8", b"sep", ())),
        ("classifier_0", Converted("dynamic", b"c0", ())),
        ("broken", Converted("int8", b"x", ())),
    ]
    res = compile_edgetpu_twins(out, named)
    assert res["separator"] == "41 ops on the Edge TPU, 3 on the CPU"
    assert (out / "separator_edgetpu.tflite").read_bytes() == b"sep"
    assert tpu_file(out, "separator") == "separator_edgetpu.tflite"
    assert "needs int8" in res["classifier_0"] and tpu_file(out, "classifier_0") is None
    assert "Model not quantized" in res["broken"]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "not installed" in compile_edgetpu_twins(out, named)["all"]


def test_a_separator_without_norms_or_prelu_is_integer_end_to_end() -> None:
    """Why the edge-int8 preset exists: with no data-dependent norm and ReLU, every op of the
    int8 separator has int8 outputs (only the float I/O converts at the edges), while the
    normalised PReLU model keeps float and PRELU ops (docs/export.md)."""
    import dataclasses

    from ai_edge_litert.interpreter import Interpreter

    from modeltools.export.convert import convert, freeze
    from modeltools.separation.model import build_separator
    from modeltools.separation.presets import get_preset

    n = 2048
    rep = np.random.default_rng(0).standard_normal((4, n)).astype(np.float32) * 0.2

    def op_dtypes(cfg: object) -> dict[str, set[str]]:
        model = build_separator(cfg, num_samples=n)  # type: ignore[arg-type]
        conv = convert(freeze(lambda w: model(w, training=False), (1, n)), "int8", rep, "sep")
        interp = Interpreter(model_content=conv.data)
        tensors = {t["index"]: t["dtype"].__name__ for t in interp.get_tensor_details()}
        kinds: dict[str, set[str]] = {}
        for op in interp._get_ops_details():
            for i in op["outputs"]:
                kinds.setdefault(op["op_name"], set()).add(tensors[int(i)])
        return kinds

    tiny = get_preset("tiny")
    integer = op_dtypes(
        dataclasses.replace(tiny, norm="none", activation="relu", mask_logit_clip=8.0)
    )
    floats = {op for op, kinds in integer.items() if "float32" in kinds}
    assert floats == {"DEQUANTIZE"}, integer
    assert "PRELU" not in integer and "RSQRT" not in integer
    normed = op_dtypes(tiny)  # instance norm + PReLU
    assert "PRELU" in normed and "RSQRT" in normed
