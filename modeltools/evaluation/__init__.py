"""Evaluation: the paper's classification metrics (and, later, the evaluate command's reports).

Importing this package does no I/O and does not import TensorFlow.
"""

from __future__ import annotations
