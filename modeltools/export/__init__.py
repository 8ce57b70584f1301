"""TFLite conversion, the parity gate and bundle writing (issue 6)."""
