"""Separator model: shapes, dilations/receptive field, norms, consistency, cost counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from modeltools.separation.presets import PRESETS, SeparatorConfig, count_cost, get_preset

pytestmark = pytest.mark.needs_tf
tf = pytest.importorskip("tensorflow")

from modeltools.separation.model import (  # noqa: E402
    ScalarNorm,
    Separator,
    build_separator,
    export_function,
    stft_basis,
)


def test_paper_preset_matches_algorithms_md() -> None:
    cfg = PRESETS["paper"]
    assert (cfg.window, cfg.hop, cfg.num_coeffs, cfg.num_sources) == (22, 11, 256, 4)
    assert (cfg.bottleneck, cfg.hidden, cfg.repeats, cfg.blocks_per_repeat) == (256, 512, 4, 8)
    assert cfg.dilations == [1, 2, 4, 8, 16, 32, 64, 128] * 4
    assert cfg.receptive_field_frames == 2041  # 1 + 2 * 4 * 255
    assert cfg.num_frames(110250) == 10022
    assert cfg.norm == "instance_norm" and cfg.consistency == "pred_source"


def test_bad_presets_are_refused() -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError):
        get_preset("nope")
    with pytest.raises(ConfigError):
        SeparatorConfig(window=22, hop=10)  # overlap-add needs window % hop == 0
    with pytest.raises(ConfigError):
        SeparatorConfig(norm="batch")
    with pytest.raises(ConfigError, match="activation"):
        SeparatorConfig(activation="gelu")


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm": "none", "consistency": "uniform", "repeats": 2, "num_sources": 3},
        {"norm": "none", "activation": "relu", "mask_logit_clip": 8.0},
    ],
)
def test_param_count_matches_keras(overrides: dict) -> None:
    cfg = dataclasses.replace(get_preset("tiny"), **overrides)
    model = build_separator(cfg, num_samples=cfg.hop * 40)
    assert model.count_params() == count_cost(cfg)["params"]


def test_edge_presets_are_much_cheaper_than_paper() -> None:
    paper = count_cost(PRESETS["paper"])["macs"]
    for name in ("edge", "edge-long", "edge-small", "edge-stft256"):
        assert count_cost(PRESETS[name])["macs"] < paper / 30
        assert PRESETS[name].receptive_field_s > 0.5  # still sees most of a song phrase


def test_edge_long_trades_frames_for_width_at_about_the_cost_of_edge() -> None:
    edge, long = count_cost(PRESETS["edge"]), count_cost(PRESETS["edge-long"])
    assert long["frames"] * 2 == edge["frames"]  # hop 32 vs 16 on 110,250 samples
    assert 1.0 < long["macs"] / edge["macs"] < 1.3
    assert long["elementwise"] < edge["elementwise"]
    assert PRESETS["edge-long"].receptive_field_s == pytest.approx(
        2 * PRESETS["edge"].receptive_field_s
    )


def test_edge_stft256_trades_frames_for_width_from_a_fourier_start() -> None:
    edge, stft = PRESETS["edge"], PRESETS["edge-stft256"]
    c_edge, c_stft = count_cost(edge), count_cost(stft)
    assert c_stft["frames"] * 8 == pytest.approx(c_edge["frames"], abs=8)  # hop 128 vs 16
    assert c_stft["macs"] < c_edge["macs"] and c_stft["elementwise"] < c_edge["elementwise"] / 3
    assert stft.receptive_field_s > 5.0  # the whole 5-s window
    # Its Fourier start is invertible: (256, 128, 512) is one of the shapes that
    # test_stft_basis_reconstructs_the_input_exactly runs through the model.
    assert stft.basis_init == "stft"


@pytest.mark.parametrize("consistency", ["pred_source", "uniform", "magsq", "none"])
def test_output_shape_and_consistency(consistency: str) -> None:
    cfg = dataclasses.replace(get_preset("tiny"), consistency=consistency)
    model = Separator(cfg)
    x = tf.random.normal([3, 1001], seed=1)  # not a frame multiple: output is cropped back
    y = model(x).numpy()
    assert y.shape == (3, cfg.num_sources, 1001)
    residual = np.abs(y.sum(axis=1) - x.numpy()).max()
    if consistency == "none":
        assert residual > 1e-3
    else:
        assert residual < 1e-5


def test_blocks_have_the_preset_dilations_and_init_scales() -> None:
    cfg = dataclasses.replace(get_preset("tiny"), repeats=2, blocks_per_repeat=4)
    model = build_separator(cfg, num_samples=cfg.hop * 40)
    assert [b.depthwise.dilation_rate[0] for b in model.blocks] == cfg.dilations
    scales = [float(b.down_scale.scale.numpy()[0]) for b in model.blocks]
    np.testing.assert_allclose(scales, [0.9**i for i in range(cfg.num_blocks)], rtol=1e-6)
    alphas = [float(np.ravel(b.act1.get_weights()[0])[0]) for b in model.blocks]
    np.testing.assert_allclose(alphas, 0.1, rtol=1e-6)
    assert all(b.act1.get_weights()[0].size == 1 for b in model.blocks)  # scalar PReLU


def test_receptive_field_is_what_the_preset_says() -> None:
    # An impulse in the bottleneck input of a stack of blocks changes exactly the frames
    # within the receptive field (depthwise 'same' conv, symmetric).
    cfg = get_preset("tiny")  # 1 x 3 blocks, dilations 1, 2, 4 -> 1 + 2 * 7 = 15 frames
    assert cfg.receptive_field_frames == 15
    frames, centre = 64, 32
    base = np.random.default_rng(0).normal(size=(1, frames, cfg.bottleneck)).astype(np.float32)
    bumped = base.copy()
    bumped[0, centre] += 5.0

    def core(h: np.ndarray) -> np.ndarray:
        t = tf.constant(h)
        for block in model.blocks:
            t = block(t)
        return t.numpy()

    # Instance norm mixes all frames (not causal): switch norms off to see the conv reach.
    model = build_separator(dataclasses.replace(cfg, norm="none"), num_samples=cfg.hop * 64)
    diff = np.abs(core(bumped) - core(base)).max(axis=-1)[0]
    changed = np.nonzero(diff > 1e-6)[0]
    half = (cfg.receptive_field_frames - 1) // 2
    assert changed.min() == centre - half and changed.max() == centre + half


@pytest.mark.parametrize("kind", ["instance_norm", "global_layer_norm", "layer_norm"])
def test_scalar_norm_statistics(kind: str) -> None:
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(2, 50, 6)).astype(np.float32)
    layer = ScalarNorm(kind, eps=1e-3)
    y = layer(x).numpy()
    axes = {"instance_norm": (1,), "global_layer_norm": (1, 2), "layer_norm": (2,)}[kind]
    m = x.mean(axis=axes, keepdims=True)
    v = x.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-3), atol=1e-4)
    assert [w.shape for w in layer.weights] == [(1,), (1,)]  # scalar gamma and beta


def test_overlap_add_matches_numpy() -> None:
    cfg = get_preset("tiny")
    model = Separator(cfg)
    frames = np.random.default_rng(4).normal(size=(1, 2, 9, cfg.window)).astype(np.float32)
    n = 8 * cfg.hop + cfg.window - 3
    got = model.overlap_add(tf.constant(frames), n).numpy()
    want = np.zeros((1, 2, 8 * cfg.hop + cfg.window))
    for f in range(9):
        want[..., f * cfg.hop : f * cfg.hop + cfg.window] += frames[:, :, f]
    np.testing.assert_allclose(got, want[..., :n], atol=1e-5)


@pytest.mark.parametrize(
    ("window", "hop", "coeffs"),
    [(32, 16, 128), (64, 32, 256), (256, 128, 512), (22, 11, 256), (32, 8, 64), (8, 8, 16)],
)
def test_stft_basis_reconstructs_the_input_exactly(window: int, hop: int, coeffs: int) -> None:
    cfg = get_preset("tiny", window=window, hop=hop, num_coeffs=coeffs, basis_init="stft")
    model = build_separator(cfg, num_samples=2000)
    analysis, synthesis = stft_basis(window, hop, coeffs)
    np.testing.assert_array_equal(model.encoder.kernel.numpy(), analysis)
    np.testing.assert_array_equal(model.decoder.kernel.numpy(), synthesis)
    n = hop * 150 + window  # whole frames: no end padding to account for
    x = np.random.default_rng(5).normal(size=(1, n)).astype(np.float32)
    coeffs_ = model.encoder(tf.expand_dims(x, -1))
    assert float(tf.reduce_min(coeffs_)) >= 0.0  # still a rectified (non-negative) code
    y = model.overlap_add(model.decoder(tf.expand_dims(coeffs_, 1)), n).numpy()[0, 0]
    edge = window - hop  # covered by fewer than window/hop frames at either end
    np.testing.assert_allclose(y[edge : n - edge], x[0, edge : n - edge], atol=1e-5)
    # A random basis is nowhere near invertible by its own decoder.
    rand = build_separator(dataclasses.replace(cfg, basis_init="random"), num_samples=2000)
    c = rand.encoder(tf.expand_dims(x, -1))
    y_rand = rand.overlap_add(rand.decoder(tf.expand_dims(c, 1)), n).numpy()[0, 0]
    assert np.abs(y_rand - x[0]).max() > 0.1


def test_stft_basis_refuses_shapes_it_cannot_invert() -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="basis_init"):
        SeparatorConfig(window=40, hop=20, num_coeffs=64, basis_init="stft")  # 32 rows < 40
    with pytest.raises(ConfigError, match="basis_init"):
        SeparatorConfig(basis_init="dct")
    with pytest.raises(ValueError, match="num_coeffs"):
        stft_basis(32, 16, 48)
    assert get_preset("edge").basis_init == "random"  # the paper's init stays the default


def test_export_function_has_a_static_batch() -> None:
    cfg = get_preset("tiny")
    model = build_separator(cfg, num_samples=512)
    fn = export_function(model, 512)
    assert fn.inputs[0].shape.as_list() == [1, 512]
    assert not fn.variables  # frozen
    assert fn.outputs[0].shape.as_list() == [1, cfg.num_sources, 512]


def test_tflite_conversion_is_builtin_only_and_matches_keras() -> None:
    import collections

    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    cfg = get_preset("tiny")
    model = build_separator(cfg, num_samples=800)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([export_function(model, 800)])
    interp = interpreter_mod.Interpreter(model_content=converter.convert())
    interp.allocate_tensors()
    ops = collections.Counter(op["op_name"] for op in interp._get_ops_details())
    assert ops["PRELU"] == 2 * cfg.num_blocks and ops["DEPTHWISE_CONV_2D"] == cfg.num_blocks
    for bad in ("NEG", "VAR_HANDLE", "BATCH_MATMUL", "SPACE_TO_BATCH_ND", "TRANSPOSE_CONV"):
        assert bad not in ops
    assert not any(name.startswith("Flex") for name in ops)
    x = np.random.default_rng(5).normal(scale=0.1, size=(1, 800)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)


def test_edge_int8_is_edge_without_norms_or_prelu() -> None:
    edge, int8 = PRESETS["edge"], PRESETS["edge-int8"]
    assert (int8.norm, int8.activation, int8.mask_logit_clip) == ("none", "relu", 8.0)
    same = ("window", "hop", "num_coeffs", "bottleneck", "hidden", "repeats", "blocks_per_repeat")
    assert all(getattr(edge, k) == getattr(int8, k) for k in same)
    cfg = dataclasses.replace(int8, repeats=1, blocks_per_repeat=2)
    model = build_separator(cfg, num_samples=cfg.hop * 40)
    block = model.blocks[0]
    assert block.norm1 is None and isinstance(block.act1, tf.keras.layers.ReLU)
    assert block.up.use_bias  # the norm's offset is gone: the up projection has a bias instead


def test_mask_logit_clip_bounds_the_masks() -> None:
    """Clamp at 0: every mask is sigmoid(0) = 0.5, so without consistency all sources are equal;
    without a clamp they differ. The call argument overrides the preset's value."""
    cfg = dataclasses.replace(get_preset("tiny"), consistency="none", mask_logit_clip=0.0)
    model = build_separator(cfg, num_samples=cfg.hop * 40)
    x = tf.random.normal([2, cfg.hop * 40], seed=3)
    y = model(x).numpy()
    np.testing.assert_allclose(y, np.repeat(y[:, :1], cfg.num_sources, axis=1), atol=1e-6)
    free = model(x, mask_logit_clip=1e9).numpy()
    assert np.abs(free - free[:, :1]).max() > 1e-4
