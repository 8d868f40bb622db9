"""Checkpoints of a running survey: the accumulators of every layer (and of the untrained baseline, with that
network's state and seed), the number of images folded so far, and what they belong to (a fingerprint of the
model, the layer set, the image source and the settings), written atomically, so ``resume=True`` continues
exactly where an interrupted survey stopped, and refuses a checkpoint made for something else."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from analysis._core.errors import GhostmapsError
from analysis._core.payload import digest, read_payload, state_fingerprint, write_payload
from analysis.data.batches import Images
from analysis.stats import GroupedStats

FORMAT = "ghostmaps-survey-checkpoint"
VERSION = 3  # 2: streaming accumulators (analysis.stats._live); 3: files by size and mtime, tensors whole

__all__ = ["load_checkpoint", "model_fingerprint", "save_checkpoint", "source_fingerprint"]


model_fingerprint = state_fingerprint


def one_shot(images: Any) -> bool:
    """Whether ``images`` can be read only once (an iterator or generator, not a tensor, list or DataLoader)."""
    return isinstance(images, Iterator)


def _stamp(origin: str) -> Any:
    """A file's size and modification time (a file rewritten since the checkpoint is another source); other
    origins (samples, arrays) as they are."""
    try:
        st = os.stat(origin)
    except (OSError, ValueError):
        return origin
    return (origin, st.st_size, st.st_mtime_ns)


def source_fingerprint(images: Images, raw: Any) -> str:
    """A hash saying which image source this is: image files by name, size and modification time; a tensor by
    all its values; a Dataset or DataLoader (which would have to be read in full) by its kind, its length and
    the values of images spread over it (a map-style Dataset: 8, first and last included; a DataLoader or
    stream: the first)."""
    if one_shot(raw):
        raise GhostmapsError("checkpoint/resume needs an image source that can be read again from the start (files, "
                             "a tensor, a Dataset or DataLoader), not a one-shot iterator.")
    if images.kind == "source":
        return digest("files", images.length, tuple(images.source.names),
                      tuple(_stamp(o) for o in images.source.origins))
    if images.kind == "tensor":
        return digest("tensor", images.length, images.source[0])
    return digest(images.kind, images.length, *images.spread())


def save_checkpoint(path: str | os.PathLike, *, identity: dict[str, Any], done: int, order: list[str],
                    found: dict[str, GroupedStats], baseline: dict[str, GroupedStats] | None,
                    baseline_state: dict[str, torch.Tensor] | None) -> Path:
    """Write the checkpoint atomically (a crash mid-write leaves the previous one whole)."""
    payload = {"format": FORMAT, "version": VERSION, "identity": identity, "done": int(done), "order": list(order),
               "stats": {name: found[name].state_dict() for name in order},
               "baseline": None if baseline is None else {k: v.state_dict() for k, v in baseline.items()},
               "baseline_state": None if baseline_state is None else
               {k: v.detach().cpu() for k, v in baseline_state.items()}}
    return write_payload(path, payload)


_WHAT = {"model": "model (its weights differ)", "layers": "layer set", "source": "image source",
         "settings": "settings"}


def load_checkpoint(path: str | os.PathLike, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check that it belongs to this survey: the same model, layer set, image source and
    settings; otherwise a ``GhostmapsError`` naming what differs."""
    path = Path(path)
    payload = read_payload(path, FORMAT, "survey checkpoint")
    if payload.get("version") != VERSION:
        raise GhostmapsError(f"the checkpoint {path} was written by another version of ghostmaps (format "
                             f"{payload.get('version')!r}, this one reads {VERSION}); delete it and survey afresh.")
    saved = payload["identity"]
    for key in ("model", "layers", "source", "settings"):
        if saved.get(key) != identity.get(key):
            detail = "" if key == "model" else f": checkpoint {saved.get(key)!r}, this survey {identity.get(key)!r}"
            raise GhostmapsError(f"the checkpoint {path} was made for another {_WHAT[key]}{detail}; resume with the "
                                 "same model, layers, images and settings, or delete it to start afresh.")
    payload["stats"] = {k: GroupedStats.from_state_dict(v) for k, v in payload["stats"].items()}
    if payload.get("baseline") is not None:
        payload["baseline"] = {k: GroupedStats.from_state_dict(v) for k, v in payload["baseline"].items()}
    return payload
