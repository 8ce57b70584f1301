"""EfficientNet backbone on the PCEN image, AutoPool over time, taxonomic heads (ALGORITHMS §2.5).

Graph: waveform (B, 110250) [+ low-pass envelope (B, 160) in training] -> :class:`Frontend`
(B, 501, 160) -> 1-channel image -> EfficientNet (our own builder: no ImageNet Rescaling /
Normalization layers in front of PCEN features, SAME padding, standard B0 stage table scaled by
width/depth) -> 1x1 conv to the embedding width and BN+swish -> mean over frequency ->
:class:`AutoPool` over time (per-channel learnable alpha) -> embedding -> dropout -> one Dense
(logits) per head: species, genus, family, order and ``bird`` (1 logit, bird vs no bird).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modeltools.classifier import frontend as fe
from modeltools.classifier.presets import ClassifierConfig

# (expand ratio, kernel, stride, output channels, repeats) -- EfficientNet-B0.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
SE_RATIO = 0.25
TAXONOMY_HEADS = ("species", "genus", "family", "order")
BIRD_HEAD = "bird"


def autopool(x: Any, alpha: Any, axis: int = 1) -> Any:
    """sum_t x_t softmax_t(alpha x_t) along ``axis``; ``alpha`` broadcasts over the last axis.

    alpha = 0 is the mean, alpha -> +inf the max, alpha < 0 a soft minimum. The maximum of
    alpha x is subtracted before exp, so large alpha x cannot overflow.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    z = x * tf.convert_to_tensor(alpha, tf.float32)
    z = z - tf.stop_gradient(tf.reduce_max(z, axis=axis, keepdims=True))
    w = tf.exp(z)
    return tf.reduce_sum(x * w, axis=axis) / tf.reduce_sum(w, axis=axis)


def _round_channels(c: float, width: float, divisor: int = 8) -> int:
    c *= width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return int(new)


def _layers() -> Any:
    import keras

    class Frontend(keras.layers.Layer):
        """Waveform (+ optional low-pass envelope) -> whitened PCEN mel (B, 501, 160)."""

        def __init__(self, channel_norm: bool = True, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.channel_norm = channel_norm

        def call(self, inputs: Any) -> Any:
            if isinstance(inputs, list | tuple):
                audio, lowpass = inputs
            else:
                audio, lowpass = inputs, None
            return fe.features(audio, lowpass, channel_norm=self.channel_norm)

        def compute_output_shape(self, input_shape: Any) -> tuple:
            shape = (
                input_shape[0]
                if isinstance(input_shape, list | tuple)
                and isinstance(input_shape[0], list | tuple)
                else input_shape
            )
            return (shape[0], fe.num_frames(int(shape[-1])), fe.MEL_BANDS)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "channel_norm": self.channel_norm}

    class AutoPool(keras.layers.Layer):
        """AutoPool over axis 1 with one learnable alpha per channel (last axis)."""

        def __init__(self, alpha_init: float = 0.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.alpha_init = alpha_init

        def build(self, input_shape: Any) -> None:
            self.alpha = self.add_weight(
                name="alpha",
                shape=(int(input_shape[-1]),),
                initializer=keras.initializers.Constant(self.alpha_init),
            )

        def call(self, x: Any) -> Any:
            return autopool(x, self.alpha, axis=1)

        def compute_output_shape(self, input_shape: Any) -> tuple:
            return (input_shape[0], input_shape[-1])

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "alpha_init": self.alpha_init}

    return Frontend, AutoPool


def _mbconv(x: Any, c_out: int, expand: int, kernel: int, stride: int, name: str) -> Any:
    from keras import layers

    c_in = int(x.shape[-1])
    h = x
    if expand != 1:
        h = layers.Conv2D(c_in * expand, 1, use_bias=False, name=f"{name}_expand")(h)
        h = layers.BatchNormalization(name=f"{name}_expand_bn")(h)
        h = layers.Activation("swish", name=f"{name}_expand_act")(h)
    h = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(h)
    h = layers.BatchNormalization(name=f"{name}_dw_bn")(h)
    h = layers.Activation("swish", name=f"{name}_dw_act")(h)
    se = max(1, int(c_in * SE_RATIO))
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(h)
    s = layers.Conv2D(se, 1, activation="swish", name=f"{name}_se_reduce")(s)
    s = layers.Conv2D(int(h.shape[-1]), 1, activation="sigmoid", name=f"{name}_se_expand")(s)
    h = layers.Multiply(name=f"{name}_se")([h, s])
    h = layers.Conv2D(c_out, 1, use_bias=False, name=f"{name}_project")(h)
    h = layers.BatchNormalization(name=f"{name}_project_bn")(h)
    if stride == 1 and c_in == c_out:
        h = layers.Add(name=f"{name}_add")([h, x])
    return h


def backbone(x: Any, width: float, depth: float, embedding_dim: int) -> Any:
    """EfficientNet feature map (B, T/32, F/32, embedding_dim) of an image (B, T, F, 1)."""
    from keras import layers

    x = layers.Conv2D(
        _round_channels(STEM_CHANNELS, width),
        3,
        strides=2,
        padding="same",
        use_bias=False,
        name="stem_conv",
    )(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_act")(x)
    for i, (expand, kernel, stride, c, repeats) in enumerate(B0_STAGES):
        for j in range(math.ceil(repeats * depth)):
            x = _mbconv(
                x,
                _round_channels(c, width),
                expand,
                kernel,
                stride if j == 0 else 1,
                name=f"block{i + 1}{chr(ord('a') + j)}",
            )
    x = layers.Conv2D(embedding_dim, 1, use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    return layers.Activation("swish", name="top_act")(x)


def build_classifier(
    cfg: ClassifierConfig,
    num_classes: dict[str, int],
    batch_size: int | None = None,
    training_inputs: bool = True,
    num_samples: int = fe.WINDOW_SAMPLES,
) -> Any:
    """The Keras classifier: inputs ``audio`` (+ ``lowpass`` if ``training_inputs``).

    Outputs a dict of logits: ``species``/``genus``/``family``/``order`` (B, C_head) and
    ``bird`` (B, 1). For TFLite export build with ``batch_size=1, training_inputs=False``
    and copy the weights (same layers, same order).
    """
    import keras
    from keras import layers

    frontend_cls, autopool_cls = _layers()
    width, depth = cfg.scaling
    audio = keras.Input((num_samples,), batch_size=batch_size, name="audio")
    inputs: dict[str, Any] = {"audio": audio}
    if training_inputs:
        lowpass = keras.Input((fe.MEL_BANDS,), batch_size=batch_size, name="lowpass")
        inputs["lowpass"] = lowpass
        feats = frontend_cls(cfg.channel_norm, name="frontend")([audio, lowpass])
    else:
        feats = frontend_cls(cfg.channel_norm, name="frontend")(audio)
    x = layers.Reshape((fe.num_frames(num_samples), fe.MEL_BANDS, 1), name="image")(feats)
    x = backbone(x, width, depth, cfg.embedding_dim)
    x = layers.Lambda(lambda t: _mean_freq(t), name="freq_mean")(x)
    emb = autopool_cls(cfg.autopool_alpha_init, name="autopool")(x)
    h = layers.Dropout(cfg.dropout, name="dropout")(emb) if cfg.dropout > 0 else emb
    # Output biases start at the log-odds of a 1-in-C prior (not 0, i.e. p = 0.5): with
    # Adam's epsilon 0.01 and the mean over classes, walking biases from 0 to about -log(C)
    # would otherwise take thousands of steps before the features start to matter.
    outputs = {
        head: layers.Dense(
            num_classes[head],
            bias_initializer=keras.initializers.Constant(-math.log(max(num_classes[head] - 1, 1))),
            name=f"{head}_logits",
        )(h)
        for head in TAXONOMY_HEADS
    }
    outputs[BIRD_HEAD] = layers.Dense(1, name="bird_logits")(h)
    outputs["embedding"] = emb
    return keras.Model(inputs, outputs, name=f"classifier_{cfg.name}")


def _mean_freq(t: Any) -> Any:
    import tensorflow as tf

    return tf.reduce_mean(t, axis=2)


def count_params(model: Any) -> int:
    """Trainable + non-trainable parameters."""
    return int(sum(np.prod(w.shape) for w in model.weights))


def count_macs(model: Any, include_frontend: bool = True) -> dict[str, int]:
    """Multiply-accumulates per example: conv/depthwise/dense layers (+ the frontend's)."""
    from keras import layers

    out: dict[str, int] = {"network": 0}
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            o = layer.output.shape
            out["network"] += int(o[1] * o[2] * kh * kw * o[3])
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            o = layer.output.shape
            cin = int(layer.input.shape[-1])
            out["network"] += int(o[1] * o[2] * kh * kw * cin * o[3])
        elif isinstance(layer, layers.Dense):
            shape = layer.input.shape
            lead = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
            out["network"] += lead * int(shape[-1]) * int(layer.units)
    if include_frontend:
        out.update(fe.frontend_macs())
    out["total"] = sum(out.values())
    return out
