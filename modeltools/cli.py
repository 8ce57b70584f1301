"""``chorus-models``: the model tools' command line.

One function per subcommand: ``_add_<name>(subparsers)`` declares it, ``_run_<name>(args)`` does
it and returns an exit status. To add a subcommand, write both and list them in ``_COMMANDS``.
Errors a user can act on become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.errors import ChorusError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEMO_BUNDLE_DIR = REPO_ROOT / "agent" / "bundles" / "demo"
DEFAULT_TEST_MODELS_DIR = REPO_ROOT / "tests" / "data" / "models"


def _add_build_demo_bundle(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build-demo-bundle", help="build the hand-set demo model bundle (separator + 2 classifiers)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DEMO_BUNDLE_DIR,
        help="bundle folder to (re)write (default: %(default)s)",
    )
    return p


def _run_build_demo_bundle(args: argparse.Namespace) -> int:
    from modeltools.packaging.demo_bundle import build_demo_bundle

    out = build_demo_bundle(args.out)
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        log.info("  %-28s %9d bytes", f.relative_to(out).as_posix(), f.stat().st_size)
    return 0


def _add_build_test_models(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build-test-models", help="write the tiny .tflite models the runtime tests use"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_TEST_MODELS_DIR,
        help="folder to write them to (default: %(default)s)",
    )
    return p


def _run_build_test_models(args: argparse.Namespace) -> int:
    from modeltools.packaging.demo_bundle import build_test_models

    build_test_models(args.out)
    return 0


Adder = Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
Runner = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[Adder, Runner]] = [
    (_add_build_demo_bundle, _run_build_demo_bundle),
    (_add_build_test_models, _run_build_test_models),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="chorus-models", description="Chorus model tools (training side)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in _COMMANDS:
        add(sub).set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit status (0 ok, 2 error)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args))
    except ChorusError as exc:
        print(f"chorus-models: error: {exc}", file=sys.stderr)
    except ModuleNotFoundError as exc:
        print(
            f"chorus-models: error: {exc.name} is not installed "
            "(install the train extra: pip install 'chorus[train]')",
            file=sys.stderr,
        )
    except OSError as exc:
        print(f"chorus-models: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
