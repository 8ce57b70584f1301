"""Chorus field agent: capture audio, separate it with MixIT, classify every channel, report birds.

Importing this package does no I/O and never imports TensorFlow.
"""

from __future__ import annotations

import os

# The agent's parallelism is the interpreters' ``inference.num_threads``. numpy's bundled
# OpenBLAS would otherwise start one thread per core for the frontend's small matrix products,
# and they spin against the interpreters' threads (a 3x slower frontend under load, measured).
# This has to happen before numpy is first imported; an explicit environment setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
