"""MixIT bird-sound separation: learned basis + TDCN++ + mixture consistency (docs/separation.md).

Submodules: ``presets`` (configs, cost count), ``model`` (Keras model), ``losses`` (thresholded
SNR, MixIT, mixture consistency, SI-SNR), ``metrics``/``evaluate`` (SI-SNRi, MoMi), ``train``.
Importing this package does not import TensorFlow; ``model`` and ``train`` do.
"""
