"""Model bundles, the TFLite runtime wrapper, and the separator/classifier stages."""
