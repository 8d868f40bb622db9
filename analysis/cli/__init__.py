"""The ``ghostmaps`` command: ``main`` and one thin module per subcommand."""

from analysis.cli.main import main

__all__ = ["main"]
