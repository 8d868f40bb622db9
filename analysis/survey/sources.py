"""Image sources for a survey: how many images a source holds and its batches for one process's share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from analysis._core.errors import GhostmapsError
from analysis.data.images import ImageSource


# -- image sources ------------------------------------------------------------------------------------------
def _tensor_of(item: Any) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        for key in ("image", "images", "pixel_values", "input"):
            if isinstance(item.get(key), torch.Tensor):
                return item[key]
    raise GhostmapsError(f"the image source yielded {type(item).__name__}; yield N×C×H×W tensors or "
                         "(images, labels) pairs.")


def _source_length(images: Any) -> int | None:
    if isinstance(images, torch.Tensor):
        return 1 if images.dim() == 3 else int(images.shape[0])
    if isinstance(images, ImageSource):
        return len(images)
    for attr in ("sampler", "dataset"):  # a DataLoader: the sampler says how many images it yields
        part = getattr(images, attr, None)
        if part is not None:
            try:
                n = len(part)
            except TypeError:
                continue
            size = getattr(images, "batch_size", None)
            if getattr(images, "drop_last", False) and isinstance(size, int) and size > 0:
                n -= n % size  # the last, partial batch is never yielded
            return n
    return None


def _batches(images: Any, batch_size: int, chunk: int, rank: int, world: int, start: int = 0
             ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (image positions in the whole set, batch) for this process's share: block b = position // chunk
    belongs to process b mod world. Images before position ``start`` are left out (a resumed survey): files
    and tensors are not even read; other sources are read and dropped."""

    def mine(i: int) -> bool:
        return i >= start and (i // chunk) % world == rank

    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4:
            raise GhostmapsError(f"an image tensor must be N×C×H×W (or C×H×W), got shape {tuple(images.shape)}.")
        idx = [i for i in range(x.shape[0]) if mine(i)]
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            yield part, x[part]
        return
    if isinstance(images, ImageSource):
        position = {name: i for i, name in enumerate(images.names)}
        src = images
        if world > 1 or start > 0:
            share = [it for i, it in enumerate(images._items) if mine(i)]
            if not share:  # fewer blocks than processes (or all done): nothing to do here (not an error)
                return
            src = ImageSource(share, images.transform, images.description)
        for names, batch in src.batches(batch_size):
            yield [position[n] for n in names], batch
        return
    if not isinstance(images, Iterable):
        raise GhostmapsError(f"cannot read images from {type(images).__name__}; pass a path, 'samples', a list of "
                             "paths, an ImageSource, an N×C×H×W tensor or a DataLoader.")
    seen = 0
    for item in images:  # a DataLoader or any iterable of batches; with several processes each keeps its share
        x = _tensor_of(item)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        n = x.shape[0]
        keep = [k for k in range(n) if mine(seen + k)]
        if keep:
            yield [seen + k for k in keep], (x if len(keep) == n else x[keep])
        seen += n


def _limited(images: Iterable[Any], limit: int) -> Iterator[torch.Tensor]:
    left = limit
    for item in images:
        if left <= 0:
            return
        x = _tensor_of(item)
        x = x.unsqueeze(0) if x.dim() == 3 else x
        yield x[:left]
        left -= x.shape[0]
