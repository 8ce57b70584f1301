"""Chorus field agent: capture audio, separate it with MixIT, classify every channel, report birds.

Importing this package does no I/O and never imports TensorFlow.
"""

from __future__ import annotations

__version__ = "0.1.0"
