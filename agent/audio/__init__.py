"""Audio inputs: microphone, files, synthetic signals, all behind :class:`AudioSource`."""
