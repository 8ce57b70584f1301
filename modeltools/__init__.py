"""Chorus model tools: training, evaluation, conversion and packaging (workstation side).

May import :mod:`agent` (the bundle manifest, the demo species); the agent never imports this.
Importing this package does no I/O and does not import TensorFlow.
"""

from __future__ import annotations
