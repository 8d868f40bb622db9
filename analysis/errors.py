"""Exceptions for bad user input: each message names the input and the way to fix it."""

from __future__ import annotations

from ghostnet._utils import close_matches, did_you_mean

__all__ = ["GhostmapsError", "NoImagesError", "UnknownLayerError", "WeightsUnavailableError", "close_matches",
           "did_you_mean"]


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
