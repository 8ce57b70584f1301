"""Sample-rate conversion, one-shot and streaming, with identical results.

Both use :func:`scipy.signal.resample_poly` with its default filter (a Kaiser-windowed sinc,
beta 5, ``20 * max(up, down) + 1`` taps at the up-sampled rate, zero-phase). The streaming
:class:`StreamResampler` gives, for *any* way of cutting the input into chunks, the same output as
one call on the whole signal (to float32 precision). It works by calling ``resample_poly`` on
segments that

* start at an input index that is a multiple of ``down`` (there the output grid and the input grid
  coincide, so segment output ``j`` is global output ``start * up / down + j``),
* carry enough input context on both sides that every kept output sees its full filter support, and
* are zero-padded only where the whole signal is: at its true start and at :meth:`flush`.

Outputs whose filter support is not complete yet are held back until more input arrives.
Computation is in float64; outputs are float32.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def _design_filter(up: int, down: int) -> np.ndarray:
    """The exact low-pass that ``resample_poly(x, up, down)`` designs by default (unscaled)."""
    # Imported here, not at module level: scipy.signal costs ~80 MB of RSS on import, and a
    # stream already at the model rate never needs it.
    from scipy.signal import firwin

    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    h.setflags(write=False)  # shared between instances through the cache
    return h


def _ratio(in_rate_hz: int, out_rate_hz: int) -> tuple[int, int]:
    if in_rate_hz <= 0 or out_rate_hz <= 0:
        raise ValueError(f"sample rates must be > 0, got {in_rate_hz} -> {out_rate_hz}")
    g = math.gcd(int(in_rate_hz), int(out_rate_hz))
    return int(out_rate_hz) // g, int(in_rate_hz) // g


def resample(x: np.ndarray, in_rate_hz: int, out_rate_hz: int) -> np.ndarray:
    """Resample a whole 1-D signal; float32 out, ``ceil(n * up / down)`` samples.

    Equal rates return ``x`` as float32 (no copy when it already is float32).
    """
    up, down = _ratio(in_rate_hz, out_rate_hz)
    if up == down:
        return np.asarray(x, dtype=np.float32)
    x64 = np.asarray(x, dtype=np.float64)
    if x64.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    # Passing the (same) designed filter avoids redesigning it; the result is identical.
    from scipy.signal import resample_poly

    y = resample_poly(x64, up, down, window=np.array(_design_filter(up, down)))
    return y.astype(np.float32)


class StreamResampler:
    """Stateful streaming resampler: ``process`` chunks, then ``flush`` once at the end.

    The concatenation of every ``process`` output and the ``flush`` output equals
    ``resample(whole_signal, in_rate_hz, out_rate_hz)``. ``flush`` ends the stream and resets the
    resampler, so the same object can start a new stream afterwards.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        self.in_rate_hz = int(in_rate_hz)
        self.out_rate_hz = int(out_rate_hz)
        self.up, self.down = _ratio(self.in_rate_hz, self.out_rate_hz)
        self.identity = self.up == self.down
        if not self.identity:
            self._h = _design_filter(self.up, self.down)
            half_len = (self._h.shape[0] - 1) // 2
            # The filter spans +-half_len samples at the up-sampled rate, i.e. +-half_len/up input
            # samples around an output's position; one extra sample covers the rounding.
            self._context = half_len // self.up + 2
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next ``process`` starts a new stream at index 0."""
        self._buf = np.zeros(0, dtype=np.float64)
        self._buf_start = 0  # absolute input index of _buf[0]
        self._n_in = 0  # input samples received so far
        self._n_out = 0  # output samples emitted so far

    @property
    def input_samples(self) -> int:
        return self._n_in

    @property
    def output_samples(self) -> int:
        return self._n_out

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed the next input chunk; return the outputs that are now final (maybe none)."""
        if self.identity:
            out = np.asarray(x, dtype=np.float32)
            self._n_in += out.shape[0]
            self._n_out += out.shape[0]
            return out
        x64 = np.asarray(x, dtype=np.float64).reshape(-1)
        if x64.shape[0]:
            self._buf = np.concatenate([self._buf, x64])
            self._n_in += x64.shape[0]
        # Output m sits at input position m * down / up and needs inputs up to
        # m * down / up + context; the complete ones are m * down < (n_in - context) * up.
        ready = self._n_in - self._context
        end = -(-ready * self.up // self.down) if ready > 0 else 0
        return self._emit(end, final=False)

    def flush(self) -> np.ndarray:
        """End of stream: return the remaining outputs (zero-padded past the end) and reset."""
        if self.identity:
            self.reset()
            return np.zeros(0, dtype=np.float32)
        end = -(-self._n_in * self.up // self.down)
        out = self._emit(end, final=True)
        self.reset()
        return out

    def _segment_start(self, m: int) -> int:
        """Input index (a multiple of ``down``) from which output ``m`` has full context."""
        # floor((m * down / up - context) / down) * down, computed in integers
        pos_num = m * self.down - self._context * self.up  # position * up
        if pos_num <= 0:
            return 0
        return (pos_num // (self.up * self.down)) * self.down

    def _emit(self, end: int, final: bool) -> np.ndarray:
        m0 = self._n_out
        if end <= m0:
            return np.zeros(0, dtype=np.float32)
        a = self._segment_start(m0)
        segment = self._buf[a - self._buf_start :]
        from scipy.signal import resample_poly  # cached after the first import

        y = resample_poly(segment, self.up, self.down, window=np.array(self._h))
        base = a * self.up // self.down  # global index of y[0]; exact since down divides a
        out = y[m0 - base : end - base].astype(np.float32)
        self._n_out = end
        if not final:
            keep_from = self._segment_start(end)
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return out
