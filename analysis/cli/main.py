"""The ``ghostmaps`` command. Exit codes: 0 success, 2 bad usage or input, 130 interrupted."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from analysis import __version__
from analysis._core.errors import GhostmapsError

#: The subcommands, in the order ``ghostmaps --help`` lists them; each is a module of this package with
#: ``register(subparsers)`` (adds its parser, ``set_defaults(func=run)``) and ``run(args) -> exit code``.
COMMANDS: tuple[str, ...] = ("demo", "layers", "info", "figure1", "survey", "fit", "ghostify")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghostmaps",
        description="How redundant are a CNN's feature maps? Find GhostNet-style ghost pairs and draw them.",
        epilog="Start with `ghostmaps demo` (offline). Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"ghostmaps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name in COMMANDS:
        importlib.import_module(f"analysis.cli.{name}").register(sub)
    return parser


def _huge_pages() -> None:
    """Ask PyTorch's CPU allocator for transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``; Linux only, and only
    where the kernel's THP mode allows ``madvise``) unless the variable is set. It is read once, at torch's
    first allocation, so this must run before torch is imported; in a process that has imported it already it
    changes nothing. Large activations and accumulators are fresh memory on every batch, and first touching
    4 KiB pages dominates on some machines (docs/survey.md, "Huge pages"). ``THP_MEM_ALLOC_ENABLE=0`` opts
    out."""
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ghostmaps`` console script."""
    _huge_pages()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except GhostmapsError as exc:
        print(f"ghostmaps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
