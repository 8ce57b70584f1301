"""The shipped demo bundle (agent/bundles/demo), run with the real LiteRT interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.demo import (
    DEMO_SAMPLE_RATE_HZ,
    DEMO_SPECIES,
    NOISE_LEVEL_DBFS,
    demo_labels,
    level_to_amplitude,
    make_demo_soundscape,
    pink_noise,
    synthesize_call,
)
from agent.models.manifest import load_bundle

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "agent" / "bundles" / "demo"
TEST_MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
N = 5 * DEMO_SAMPLE_RATE_HZ
MEMBER_FILES = ("classifier_a.tflite", "classifier_b.tflite")
ACCURACY_SEEDS = (0, 1, 2)  # the build calibrates int8 ranges on seeds 101 and 102


class Model:
    """A single-input, single-output .tflite model with float I/O."""

    def __init__(self, path: Path) -> None:
        self.interp = Interpreter(model_path=str(path), num_threads=1)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.input["index"], np.asarray(x, np.float32)[None])
        self.interp.invoke()
        return np.array(self.interp.get_tensor(self.output["index"])[0])


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE_DIR)


@pytest.fixture(scope="module")
def separator() -> Model:
    return Model(BUNDLE_DIR / "separator.tflite")


@pytest.fixture(scope="module")
def members() -> list[Model]:
    return [Model(BUNDLE_DIR / f) for f in MEMBER_FILES]


def _call_window(code: str, level_dbfs: float, seed: int, noise: bool = True) -> np.ndarray:
    """5 s: a 1 s call at ``level_dbfs`` starting at 1 s, over the demo background noise."""
    rng = np.random.default_rng(seed)
    x = pink_noise(N, NOISE_LEVEL_DBFS, rng) if noise else np.zeros(N)
    call = synthesize_call(code, 1.0, DEMO_SAMPLE_RATE_HZ, rng) * level_to_amplitude(level_dbfs)
    x[DEMO_SAMPLE_RATE_HZ : DEMO_SAMPLE_RATE_HZ + call.shape[0]] += call
    return x.astype(np.float32)


def test_shipped_bundle_loads_and_describes_the_demo(bundle) -> None:
    m = bundle.manifest
    assert (m.name, m.version) == ("chorus-demo", "0.1.0")
    assert (m.sample_rate_hz, m.window_samples) == (DEMO_SAMPLE_RATE_HZ, N)
    assert "not trained" in m.description.lower()
    assert m.separator is not None and m.separator.num_sources == 4
    assert m.separator.model.edgetpu_file is None
    (clf,) = m.classifiers
    assert clf.name == "demo" and clf.input_kind == "waveform"
    assert [mf.file for mf in clf.members] == list(MEMBER_FILES)
    assert clf.labels == demo_labels()
    assert m.golden is not None and m.golden.atol > 0
    for f in bundle.path.rglob("*"):  # "KBs": the models are tiny; only golden I/O is bigger
        if f.suffix == ".tflite":
            assert f.stat().st_size < 64_000


def test_model_io_signatures(separator, members) -> None:
    assert separator.input["dtype"] == np.float32
    assert tuple(separator.input["shape"]) == (1, N)
    assert separator.output["dtype"] == np.float32
    assert tuple(separator.output["shape"]) == (1, 4, N)
    for model in members:
        assert model.input["dtype"] == np.float32 and tuple(model.input["shape"]) == (1, N)
        assert model.output["dtype"] == np.float32 and tuple(model.output["shape"]) == (1, 6)
        # Quantized inside: an int8 copy of the input and int8 logits before the DEQUANTIZE.
        int8_shapes = {
            tuple(t["shape"])
            for t in model.interp.get_tensor_details()
            if t["dtype"] == np.int8 and t["quantization"][0] > 0
        }
        assert {(1, N), (1, 6)} <= int8_shapes


def test_separator_channels_sum_to_the_input(separator) -> None:
    audio = make_demo_soundscape(30.0, seed=4).audio
    for i0 in (0, N, 3 * N):
        x = audio[i0 : i0 + N]
        y = separator(x)
        assert np.max(np.abs(y.sum(axis=0) - x)) < 1e-5
        assert np.all(np.std(y, axis=1) > 0)  # four real channels, not copies of zero


@pytest.mark.parametrize("sp", DEMO_SPECIES, ids=lambda s: s.code)
def test_separator_puts_each_species_in_its_channel(separator, sp) -> None:
    clean = np.sum(separator(_call_window(sp.code, -20.0, seed=11, noise=False)) ** 2, axis=1)
    assert clean[sp.separator_channel] / clean.sum() > 0.99
    noisy = np.sum(separator(_call_window(sp.code, -25.0, seed=11)) ** 2, axis=1)
    assert int(np.argmax(noisy)) == sp.separator_channel


@pytest.mark.parametrize("sp", DEMO_SPECIES, ids=lambda s: s.code)
def test_classifier_level_thresholds(members, sp) -> None:
    c = [s.code for s in DEMO_SPECIES].index(sp.code)
    for seed in (21, 22):
        for model in members:
            quiet = model(_call_window(sp.code, -45.0, seed))
            loud = model(_call_window(sp.code, -30.0, seed))
            assert quiet[c] < -2.0
            assert loud[c] > 2.0
            others = np.delete(loud, c)
            assert np.all(others < -2.0)  # a call does not light up the other species


def test_classifier_decisions_on_demo_soundscapes(members) -> None:
    codes = [s.code for s in DEMO_SPECIES]
    correct = np.zeros(len(members) + 1)
    total = 0
    for seed in ACCURACY_SEEDS:
        scape = make_demo_soundscape(60.0, seed=seed)
        for i0 in range(0, scape.audio.shape[0] - N + 1, N // 2):
            window = scape.audio[i0 : i0 + N]
            truth = scape.window_truth(i0 / DEMO_SAMPLE_RATE_HZ, (i0 + N) / DEMO_SAMPLE_RATE_HZ)
            logits = [model(window) for model in members]
            logits.append(np.mean(logits, axis=0))  # the ensemble
            for c, code in enumerate(codes):
                if truth[code] is None:
                    continue  # call only grazes the window
                total += 1
                correct += [(lg[c] > 0) == truth[code] for lg in logits]
    accuracy = correct / total
    print(f"demo decisions: {total}; accuracy a/b/ensemble: {np.round(accuracy, 4)}")
    assert total > 300
    assert np.all(accuracy >= 0.9)


def test_golden_expected_matches_rerun(bundle, separator, members) -> None:
    golden = bundle.manifest.golden
    x = np.load(bundle.file(golden.input_file))
    assert x.dtype == np.float32 and x.shape == (N,)
    with np.load(bundle.file(golden.expected_file)) as expected:
        assert sorted(expected.files) == ["demo/0", "demo/1", "separator"]
        assert expected["separator"].shape == (4, N)
        np.testing.assert_allclose(separator(x), expected["separator"], rtol=0, atol=1e-5)
        for j, model in enumerate(members):
            assert expected[f"demo/{j}"].shape == (6,)
            np.testing.assert_allclose(model(x), expected[f"demo/{j}"], rtol=0, atol=golden.atol)
    # A meaningful golden window: several species present, several absent.
    assert 2 <= int(np.sum(members[0](x) > 0)) <= 5


def test_affine_int8io_test_model() -> None:
    model = Model(TEST_MODELS_DIR / "affine_int8io.tflite")
    assert model.input["dtype"] == np.int8 and tuple(model.input["shape"]) == (1, 16)
    assert model.output["dtype"] == np.int8 and tuple(model.output["shape"]) == (1, 16)
    (s_in, z_in), (s_out, z_out) = model.input["quantization"], model.output["quantization"]
    x = np.linspace(-1.0, 1.0, 16)
    q = np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8)
    model.interp.set_tensor(model.input["index"], q[None])
    model.interp.invoke()
    y = (model.interp.get_tensor(model.output["index"])[0].astype(np.float64) - z_out) * s_out
    np.testing.assert_allclose(y, 0.5 * x + 0.25, atol=s_in / 2 * 0.5 + s_out)


def test_cli_refuses_to_overwrite_a_non_bundle(tmp_path, capsys) -> None:
    from modeltools.cli import main

    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["build-demo-bundle", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a model bundle" in err[0]
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.needs_tf
def test_rebuild_reproduces_the_shipped_bundle(tmp_path, bundle) -> None:
    pytest.importorskip("tensorflow")
    from modeltools.packaging.demo_bundle import build_demo_bundle

    rebuilt = load_bundle(build_demo_bundle(tmp_path / "demo"))
    assert rebuilt.manifest.golden == bundle.manifest.golden
    for name in ("labels.csv", "golden/input.npy"):  # numpy-only parts: byte for byte
        assert rebuilt.manifest.files[name] == bundle.manifest.files[name]
    atol = bundle.manifest.golden.atol
    with (
        np.load(bundle.file("golden/expected.npz")) as old,
        np.load(rebuilt.file("golden/expected.npz")) as new,
    ):
        np.testing.assert_allclose(new["separator"], old["separator"], rtol=0, atol=1e-5)
        for key in ("demo/0", "demo/1"):
            np.testing.assert_allclose(new[key], old[key], rtol=0, atol=atol)
    # And on other windows than the golden one.
    audio = make_demo_soundscape(20.0, seed=9).audio
    for f in MEMBER_FILES:
        old_m, new_m = Model(bundle.file(f)), Model(rebuilt.file(f))
        for i0 in (0, N, 2 * N):
            np.testing.assert_allclose(
                new_m(audio[i0 : i0 + N]), old_m(audio[i0 : i0 + N]), rtol=0, atol=atol
            )
