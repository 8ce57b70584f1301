"""The paper's bird classifier: PCEN mel frontend, EfficientNet + AutoPool, taxonomic heads.

Modules: :mod:`frontend` (mel/PCEN/whitening, ALGORITHMS.md §2.1-2.3), :mod:`model`
(backbone, AutoPool, heads), :mod:`losses`, :mod:`train`, :mod:`ensemble`, :mod:`presets`,
:mod:`evaluate`. Importing the package does not import TensorFlow.
"""
