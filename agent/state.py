"""Where the agent keeps its state (outbox, clips, installed models)."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else ``$XDG_STATE_HOME/chorus``,
    else ``~/.local/state/chorus``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])  # systemd lists several, colon-separated
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "chorus"
