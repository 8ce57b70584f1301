"""Domain exceptions. The CLI turns each into one clear line and a non-zero exit."""

from __future__ import annotations


class ChorusError(Exception):
    """Base class for errors a user can act on (bad config, bad bundle, bad audio)."""

    exit_code = 1


class ConfigError(ChorusError):
    """The configuration is invalid. ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class BundleError(ChorusError):
    """A model bundle is missing, corrupt, or does not match its manifest."""

    exit_code = 2


class AudioSourceError(ChorusError):
    """An audio input cannot be opened or read (missing file, unknown device...)."""

    exit_code = 2


class RuntimeUnavailableError(ChorusError):
    """No TFLite interpreter (or a requested delegate) is installed."""

    exit_code = 2
