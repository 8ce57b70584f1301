"""tf.data input pipelines for separator and classifier training.

The only data module that uses TensorFlow, and only inside its functions (importing this
module does not import TensorFlow). Each pipeline is

    Dataset.range(start, stop) -> map(example i, parallel, deterministic) -> batch -> prefetch

where example ``i`` is a pure function of (seed, i) computed by
:class:`~modeltools.data.examples.ClassifierExamples` or
:class:`~modeltools.data.examples.SeparatorExamples` in numpy (audio reads and numpy math
release the GIL, so parallel map calls overlap). Two runs with the same seed give identical
batches; ``start`` lets a resumed training run continue the same stream.

Classifier elements: ``audio`` (B, 110250) float32 waveform; ``lowpass`` (B, 160) mel
low-pass envelope for the frontend (ones when not applied); ``species|genus|family|order``
(B, C_head) multi-hot; ``<head>_mask`` (B, C_head) loss masks; ``noise_only`` (B,).
Separator elements: ``mom`` (B, 110250) mixture of mixtures and ``mixtures`` (B, 2, 110250).
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf


class ExampleSource(Protocol):
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...
    def shapes(self) -> dict[str, tuple[int, ...]]: ...
    def example_list(self, index: int) -> list[np.ndarray]: ...


class _ExitGuard:
    """Lets live pipelines go quiet before the interpreter finalizes.

    A tf.data iterator still alive at exit is destroyed during interpreter finalization; if a
    map thread is then inside (or entering) our Python function it can never get the GIL and
    the process hangs. At exit (atexit runs before finalization) we therefore answer every
    further call at once with zeros, and wait until no call has been running for a moment:
    by then the prefetch buffers are full and no thread will call into Python again.
    """

    def __init__(self) -> None:
        self.closing = False
        self.active = 0
        self.last_s = 0.0
        self.lock = threading.Lock()
        self.registered = False

    def register(self) -> None:
        # After TensorFlow is imported: atexit runs handlers in reverse order, so ours runs
        # before TensorFlow's own.
        if not self.registered:
            atexit.register(self.drain)
            self.registered = True

    def drain(self, quiet_s: float = 0.1, max_s: float = 3.0) -> None:
        self.closing = True
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.active == 0 and time.monotonic() - self.last_s > quiet_s:
                    return
            time.sleep(0.01)


_GUARD = _ExitGuard()


def make_dataset(
    source: ExampleSource,
    batch_size: int,
    num_examples: int | None = None,
    start: int = 0,
    parallel_calls: int | None = None,
    prefetch: int | None = None,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """A batched, prefetching tf.data.Dataset of ``source``'s examples ``start, start+1, ...``.

    ``num_examples`` None means endless (epochs follow each other; each has its own window
    order). ``parallel_calls``/``prefetch`` None mean AUTOTUNE.
    """
    import tensorflow as tf

    keys = source.keys()
    shapes = source.shapes()
    stop = start + num_examples if num_examples is not None else np.iinfo(np.int64).max
    autotune = tf.data.AUTOTUNE

    guard = _GUARD
    guard.register()
    zeros = [np.zeros(shapes[k], np.float32) for k in keys]

    def example(j: Any) -> list[np.ndarray]:
        with guard.lock:
            guard.active += 1
        try:
            return zeros if guard.closing else source.example_list(int(j))
        finally:
            with guard.lock:
                guard.active -= 1
                guard.last_s = time.monotonic()

    def load(i: Any) -> list[Any]:
        return tf.numpy_function(example, [i], [tf.float32] * len(keys), stateful=False)

    def to_dict(*xs: Any) -> dict[str, Any]:
        return {k: tf.ensure_shape(x, shapes[k]) for k, x in zip(keys, xs, strict=True)}

    ds = tf.data.Dataset.range(start, stop)
    ds = ds.map(load, num_parallel_calls=parallel_calls or autotune, deterministic=True)
    ds = ds.map(to_dict, num_parallel_calls=autotune, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(prefetch or autotune)
    opts = tf.data.Options()
    opts.deterministic = True
    return ds.with_options(opts)


def classifier_dataset(source: ExampleSource, batch_size: int = 32, **kwargs: Any) -> Any:
    """tf.data pipeline over :class:`~modeltools.data.examples.ClassifierExamples`."""
    return make_dataset(source, batch_size, **kwargs)


def separator_dataset(source: ExampleSource, batch_size: int = 8, **kwargs: Any) -> Any:
    """tf.data pipeline over :class:`~modeltools.data.examples.SeparatorExamples`."""
    return make_dataset(source, batch_size, **kwargs)
