"""From per-channel classifier scores to detection events."""
