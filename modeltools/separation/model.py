"""The separator as Keras 3 layers (ALGORITHMS.md §1.2-1.5).

waveform (B, T) -> learned analysis basis (Conv1D, no bias, ReLU) -> TDCN++ core ->
sigmoid masks (B, M, F, N) x coefficients -> learned synthesis basis (Dense per frame) ->
overlap-add -> (B, M, T) -> mixture-consistency projection.

Conversion-friendly by construction (DEPENDENCIES.md §7): norms written by hand as
``(x - m) * rsqrt(v + eps) * g + b`` (no NEG), scalar PReLU, no ``None``/integer slicing
(``tf.expand_dims``/``tf.unstack`` instead), overlap-add as shifted pads + add instead of
Conv1DTranspose. The learnable scalars (:class:`Scale`) sit right after a bias-free Dense,
so the exporter can fold them into the kernel. For TFLite export call :func:`export_function`
(static batch).
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from modeltools.separation.losses import mixture_consistency
from modeltools.separation.presets import SeparatorConfig


class Scale(keras.layers.Layer):
    """A learnable scalar multiplier (SS-net scale layers); foldable into the previous kernel."""

    def __init__(self, init: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init = float(init)

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(
            name="scale", shape=(1,), initializer=keras.initializers.Constant(self.init)
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.scale


class ScalarNorm(keras.layers.Layer):
    """Normalisation with scalar gamma/beta (SS-net ``LayerNormalizationScalarParams``).

    Input ``(B, F, C)``. ``instance_norm``: statistics over frames per (example, channel);
    ``global_layer_norm``: over frames and channels; ``layer_norm``: over channels per frame.
    Statistics span the whole input window, so the separator is not causal/streamable; the
    agent runs it on fixed 5-s windows.
    """

    _AXES: ClassVar[dict[str, list[int]]] = {
        "instance_norm": [1],
        "global_layer_norm": [1, 2],
        "layer_norm": [2],
    }

    def __init__(self, kind: str = "instance_norm", eps: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in self._AXES:
            raise ValueError(f"unknown norm {kind!r}")
        self.kind, self.eps = kind, float(eps)

    def build(self, input_shape: Any) -> None:
        self.gamma = self.add_weight(name="gamma", shape=(1,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(1,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        axes = self._AXES[self.kind]
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=axes, keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + self.eps) * self.gamma + self.beta


def _prelu(init: float, name: str) -> keras.layers.PReLU:
    # One scalar slope per use (shared over frames and channels), init 0.1 (SS-net).
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(init), shared_axes=[1, 2], name=name
    )


def _activation(cfg: SeparatorConfig, name: str) -> keras.layers.Layer:
    # ReLU for int8 presets: LiteRT/XNNPACK have no fast int8 PRELU (a reference kernel, ~17x
    # slower than int8 ReLU on a (6890, 128) tensor here; docs/performance.md).
    if cfg.activation == "relu":
        return keras.layers.ReLU(name=name)
    return _prelu(cfg.prelu_init, name)


class TDCNBlock(keras.layers.Layer):
    """One TDCN++ block: dense-up x s1, PReLU, norm, dilated depthwise conv, PReLU, norm,
    dense-down x s2, residual (activation before norm: ``norm_after_act=True``).

    Without a norm, the up projection gets a bias (the norm's offset played that role).
    """

    def __init__(self, cfg: SeparatorConfig, index: int, dilation: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dilation = dilation
        norm = cfg.norm != "none"
        self.up = keras.layers.Dense(cfg.hidden, use_bias=not norm, name="up")
        self.up_scale = Scale(1.0, name="up_scale")
        self.act1 = _activation(cfg, "prelu1")
        self.act2 = _activation(cfg, "prelu2")
        self.norm1 = ScalarNorm(cfg.norm, cfg.norm_eps, name="norm1") if norm else None
        self.norm2 = ScalarNorm(cfg.norm, cfg.norm_eps, name="norm2") if norm else None
        # 'same' padding with kernel 3 = symmetric zero padding of `dilation` frames.
        self.depthwise = keras.layers.DepthwiseConv1D(
            cfg.kernel_size, dilation_rate=dilation, padding="same", use_bias=True, name="dw"
        )
        self.down = keras.layers.Dense(cfg.bottleneck, use_bias=False, name="down")
        self.down_scale = Scale(cfg.scale_decay**index, name="down_scale")

    def call(self, h: tf.Tensor) -> tf.Tensor:
        y = self.act1(self.up_scale(self.up(h)))
        if self.norm1 is not None:
            y = self.norm1(y)
        z = self.act2(self.depthwise(y))
        if self.norm2 is not None:
            z = self.norm2(z)
        return h + self.down_scale(self.down(z))


class Separator(keras.Model):
    """MixIT separator: ``model(waveform (B, T))`` -> separated sources ``(B, M, T)``.

    The output already satisfies mixture consistency (sums to the input) unless the preset's
    ``consistency`` is ``"none"``.
    """

    def __init__(self, cfg: SeparatorConfig, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", f"separator_{cfg.name}"), **kwargs)
        self.cfg = cfg
        self.encoder = keras.layers.Conv1D(
            cfg.num_coeffs,
            cfg.window,
            strides=cfg.hop,
            use_bias=False,
            activation="relu",
            padding="valid",
            name="encoder",
        )
        self.bottleneck = keras.layers.Dense(
            cfg.bottleneck, use_bias=True, bias_initializer="zeros", name="bottleneck"
        )
        self.bottleneck_scale = Scale(1.0, name="bottleneck_scale")
        self.blocks = [TDCNBlock(cfg, b, d, name=f"block{b}") for b, d in enumerate(cfg.dilations)]
        for b, block in enumerate(self.blocks):
            # Also as attributes: tf.train.Checkpoint does not follow Keras 3's list tracking,
            # so without these the blocks' weights would silently be left out of checkpoints.
            setattr(self, f"block{b}", block)
        # Source-major columns: j * N + k -> source j, coefficient k. No bias: no mask prior.
        self.mask_head = keras.layers.Dense(
            cfg.num_sources * cfg.num_coeffs, use_bias=False, name="mask_head"
        )
        self.decoder = keras.layers.Dense(cfg.window, use_bias=False, name="decoder")
        self.source_weights = (
            keras.layers.Dense(cfg.num_sources, use_bias=False, name="pred_source")
            if cfg.consistency == "pred_source"
            else None
        )

    def _frames_padded(self, num_samples: int) -> int:
        f = self.cfg.num_frames(num_samples)
        return (f - 1) * self.cfg.hop + self.cfg.window

    def overlap_add(self, frames: tf.Tensor, num_samples: int) -> tf.Tensor:
        """(B, M, F, W) frames with hop H -> (B, M, num_samples); W = k*H, shifted pads + add."""
        cfg = self.cfg
        k = cfg.window // cfg.hop
        shape = tf.shape(frames)
        f = frames.shape[2]
        parts = tf.unstack(tf.reshape(frames, [shape[0], shape[1], f, k, cfg.hop]), axis=3)
        out = None
        for j, part in enumerate(parts):  # part j of frame i lands in segment i + j
            padded = tf.pad(part, [[0, 0], [0, 0], [j, k - 1 - j], [0, 0]])
            out = padded if out is None else out + padded
        wave = tf.reshape(out, [shape[0], shape[1], (f + k - 1) * cfg.hop])
        return wave[:, :, :num_samples]

    def call(
        self, waveform: tf.Tensor, training: bool = False, mask_logit_clip: float | None = None
    ) -> tf.Tensor:
        """``mask_logit_clip``: clamp the mask logits to +-this before the sigmoid (default: the
        preset's ``mask_logit_clip``; the export may set one for a preset trained without).

        Trained logits reach the thousands on some frames while the useful range is about
        +-8 (sigmoid(8) = 0.9997): an int8 tensor calibrated on that range has a step of ~20
        and turns every mask into 0 or 1. Clamping changes the float output by < 4e-4 of a
        coefficient and gives the int8 logits a step of 2c/255.
        """
        cfg = self.cfg
        x = tf.convert_to_tensor(waveform, tf.float32)
        num_samples = x.shape[-1]
        pad = self._frames_padded(num_samples) - num_samples
        coeffs = self.encoder(tf.expand_dims(tf.pad(x, [[0, 0], [0, pad]]), -1))  # (B, F, N)
        h = self.bottleneck_scale(self.bottleneck(coeffs))
        for block in self.blocks:
            h = block(h)
        f = coeffs.shape[1]
        logits = tf.reshape(self.mask_head(h), [-1, f, cfg.num_sources, cfg.num_coeffs])
        clip = mask_logit_clip if mask_logit_clip is not None else cfg.mask_logit_clip
        if clip is not None:
            logits = tf.clip_by_value(logits, -clip, clip)
        masks = tf.sigmoid(tf.transpose(logits, [0, 2, 1, 3]))  # (B, M, F, N)
        masked = masks * tf.expand_dims(coeffs, 1)
        sources = self.overlap_add(self.decoder(masked), num_samples)  # (B, M, T)
        if cfg.consistency == "none":
            return sources
        if cfg.consistency == "pred_source":
            weights = tf.nn.softmax(self.source_weights(tf.reduce_mean(h, axis=1)), axis=-1)
            return mixture_consistency(x, sources, weights)
        return mixture_consistency(x, sources, cfg.consistency)


def build_separator(cfg: SeparatorConfig, num_samples: int | None = None) -> Separator:
    """A built :class:`Separator` (weights created by one call on zeros of ``num_samples``),
    its bases set by :func:`init_basis` when the preset asks for ``basis_init="stft"``."""
    model = Separator(cfg)
    n = num_samples or cfg.example_samples
    model(tf.zeros([1, n]))
    if cfg.basis_init == "stft":
        init_basis(model)
    return model


def stft_basis(window: int, hop: int, num_coeffs: int) -> tuple[np.ndarray, np.ndarray]:
    """(analysis kernel (W, 1, N), synthesis kernel (N, W)) of a rectified Fourier frame.

    P = N/2 rows of an orthonormal real DFT of size P >= W (cosines and sines, oversampled
    P/W times), restricted to the W samples of a frame, so the rows form a tight frame:
    ``Q.T @ Q = I``. Each row is windowed by w[n] = sqrt(2/k) sin(pi (n + 1/2) / W) (k = W/H
    >= 2: w² of the k overlapping frames sums to 1; k = 1: no window) and used twice, as +row
    and -row, so the encoder's ReLU keeps the positive and the negative part of each coefficient and
    relu(a) - relu(-a) = a. The synthesis rows are the same windowed rows (with the sign), so
    encoder -> synthesis -> overlap-add returns the input exactly wherever k frames overlap
    (all but the first and the last W - H samples of the framed signal).
    """
    if num_coeffs % 2 or num_coeffs < 2 * window or window % hop:
        raise ValueError(
            f"an STFT basis needs num_coeffs even and >= 2 x window, window a multiple of hop; "
            f"got window {window}, hop {hop}, num_coeffs {num_coeffs}"
        )
    k = window // hop
    p = num_coeffs // 2
    n = np.arange(window)
    rows = [np.full(window, 1.0 / np.sqrt(p))]
    for f in range(1, (p + 1) // 2):
        arg = 2.0 * np.pi * f * n / p
        rows += [np.sqrt(2.0 / p) * np.cos(arg), np.sqrt(2.0 / p) * np.sin(arg)]
    if p % 2 == 0:
        rows.append(np.cos(np.pi * n) / np.sqrt(p))
    q = np.stack(rows)  # (P, W), orthonormal columns
    # k = 1: frames do not overlap and a rectangular window is exact.
    w = np.sqrt(2.0 / k) * np.sin(np.pi * (n + 0.5) / window) if k > 1 else np.ones(window)
    rows_w = np.concatenate([q, -q]) * w  # (N, W)
    return rows_w.T[:, None, :].astype(np.float32), rows_w.astype(np.float32)


def init_basis(model: Separator) -> None:
    """Set the encoder and decoder kernels to :func:`stft_basis` (both stay learnable).

    The masks still start at about 0.5, so the untrained separator outputs ~MoM/4 per source;
    what it no longer has to learn is an invertible analysis/synthesis pair.
    """
    cfg = model.cfg
    analysis, synthesis = stft_basis(cfg.window, cfg.hop, cfg.num_coeffs)
    model.encoder.kernel.assign(analysis)
    model.decoder.kernel.assign(synthesis)


def export_function(model: Separator, num_samples: int, batch_size: int = 1) -> Any:
    """A frozen concrete function with a static ``(batch_size, num_samples)`` input for TFLite.

    Weights become constants: without freezing the converter keeps resource variables
    (VAR_HANDLE/READ_VARIABLE, NaN output when run), Dense layers on 3-D inputs stay
    BATCH_MATMUL and Keras' PReLU stays NEG + RELU (NEG has no int8 kernel). Frozen, the edge
    model converts to builtins only (FULLY_CONNECTED, PRELU, native dilated DEPTHWISE_CONV_2D)
    and matches Keras to < 1e-6. Use with ``tf.lite.TFLiteConverter.from_concrete_functions``.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    @tf.function(input_signature=[tf.TensorSpec([batch_size, num_samples], tf.float32)])
    def separate(waveform: tf.Tensor) -> tf.Tensor:
        return model(waveform, training=False)

    return convert_variables_to_constants_v2(separate.get_concrete_function())
