"""argparse ``type=`` helpers shared by the ``chorus-models`` commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def comma_list(known: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """A ``type=`` for a comma list of ``known`` names: ``"a,b"`` -> ``("a", "b")``; an unknown
    or empty list is one argparse error naming the bad entries and the known ones."""

    def parse(text: str) -> tuple[str, ...]:
        out = tuple(f.strip() for f in text.split(",") if f.strip())
        bad = [f for f in out if f not in known]
        if bad or not out:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(bad) or '(none)'}; known: {', '.join(known)}"
            )
        return out

    return parse
