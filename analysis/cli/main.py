"""The ``ghostmaps`` command. Exit codes: 0 success, 2 bad usage or input, 130 interrupted."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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


def thp_mode(root: str | os.PathLike[str] = "/") -> str:
    """The kernel's transparent-huge-page mode (``"always"``, ``"madvise"``, ``"never"``), ``"off"`` where the
    2 MiB size or this process has THP switched off, ``"unknown"`` where the kernel does not say (not Linux).
    ``root``: where ``sys`` and ``proc`` are (a test points it at a fake tree). Benchmarks print it, tests skip
    on it: whether :func:`_huge_pages` can have any effect here."""
    base = Path(root)
    enabled = base / "sys/kernel/mm/transparent_hugepage/enabled"
    text = enabled.read_text() if enabled.exists() else ""
    mode = text[text.find("[") + 1:text.find("]")] if "[" in text else "unknown"
    size = base / "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled"
    if size.exists() and "[never]" in size.read_text():
        return "off"
    status = base / "proc/self/status"
    if status.exists() and "THP_enabled:\t0" in status.read_text():
        return "off"
    return mode


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
    except OSError as exc:  # a path that cannot be read or written (permissions, a file where a folder goes)
        where = f" ({exc.filename!r})" if getattr(exc, "filename", None) else ""
        print(f"ghostmaps {args.command}: error: {exc.strerror or exc}{where}; check the path and its folders",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
