"""Training data: synthetic bird world, real-recording ingest, activity windows, pipelines.

Modules (see docs/data.md):

* :mod:`~modeltools.data.taxonomy` -- label table, derived/versioned label spaces
* :mod:`~modeltools.data.species`, :mod:`~modeltools.data.syllables` -- the synthetic world
* :mod:`~modeltools.data.recordings`, :mod:`~modeltools.data.scene`,
  :mod:`~modeltools.data.noise` -- focal recordings, soundscapes, noise beds
* :mod:`~modeltools.data.corpus` -- ``chorus-models synth``
* :mod:`~modeltools.data.ingest`, :mod:`~modeltools.data.audio_io`,
  :mod:`~modeltools.data.annotations` -- ``chorus-models ingest``
* :mod:`~modeltools.data.activity`, :mod:`~modeltools.data.melspec`,
  :mod:`~modeltools.data.windows`, :mod:`~modeltools.data.agreement` -- ``chorus-models activity``
* :mod:`~modeltools.data.dataset`, :mod:`~modeltools.data.splits` -- the dataset format, seeds
* :mod:`~modeltools.data.examples` (numpy), :mod:`~modeltools.data.pipeline` (tf.data)
* :mod:`~modeltools.data.xeno_canto` -- ``chorus-models fetch-xc``

Only :mod:`~modeltools.data.pipeline` uses TensorFlow, and only inside its functions.
Importing this package does no I/O.
"""

from __future__ import annotations

SAMPLE_RATE_HZ = 22050
