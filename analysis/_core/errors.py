"""Exceptions for bad user input: each message names the input and the way to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["GhostmapsError", "MissingDependencyError", "NoImagesError", "UnknownLayerError",
           "WeightsUnavailableError", "close_matches", "did_you_mean"]


class GhostmapsError(ValueError):
    """Bad input from the user (a model, layer, image or option). The CLI turns it into exit code 2."""


class UnknownLayerError(GhostmapsError, KeyError):
    """A layer name or pattern matched no module of the model."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(GhostmapsError):
    """Pretrained weights could not be found locally nor downloaded."""


class NoImagesError(GhostmapsError):
    """An image source yielded no usable image."""


class MissingDependencyError(GhostmapsError, ImportError):
    """An optional package (e.g. pandas for ``to_frame``) is not installed; the message names the package and
    what works without it. Also an ``ImportError``, so ``except ImportError`` catches it."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look like ``word`` (difflib ratio, then substring hits)."""
    candidates = list(dict.fromkeys(candidates))
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if len(found) < n:
        low = word.lower()
        found += [c for c in candidates if low and low in c.lower() and c not in found][: n - len(found)]
    return found


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean: a, b?' suffix for an error message, or '' when nothing is close."""
    found = close_matches(word, candidates)
    return f" Did you mean: {', '.join(found)}?" if found else ""
