"""The one image adapter: every function that takes images (``survey``, ``ghostify``'s calibration,
``verify_replacement``, ``run_figure1``, the galleries, the CLI) turns them into batches here, so they all
accept the same sources.

``as_images(images, preprocess)`` takes

* a file, a folder (recursive), a glob, ``"samples"`` or ``"samples:NAME,…"``, or a list of those: read by
  ``load_images`` with ``preprocess`` (the model's; ``default_preprocess()`` for a bare ``nn.Module``);
* an ``ImageSource`` (``load_images``'s result) or a ``NamedImage``;
* an N×C×H×W tensor (a C×H×W tensor is one image);
* a list or tuple of image tensors (C×H×W) or batches (N×C×H×W);
* a map-style ``Dataset`` (each item one image), an ``IterableDataset``, a ``DataLoader`` or any iterable,
  yielding images, batches, ``(image, label)`` pairs or dicts with an ``"image"``/``"images"``/
  ``"pixel_values"``/``"input"`` tensor;
* an object with ``.batches(n)`` yielding ``(names, batch)``.

Labels come along where the source has them: the second entry of ``(image, label)`` items, a dict's
``label``/``labels``/``target``/``targets`` entry, or ``labels=`` for a tensor; ``ImageBatch.labels`` is then
a long tensor, one class index per image, else None.

Every image has a *position* in the whole set (0, 1, …, in order). ``Images.batches(batch_size, chunk=,
rank=, world=)`` yields one process's share with the positions: block ``position // chunk`` belongs to process
``block mod world`` (the survey's sharding; its image groups follow the positions too). Single images
(files, dataset items, C×H×W tensors) are stacked into batches of ``batch_size``; an N×C×H×W tensor is split
into them; the batches of a DataLoader or an iterable are used as they come.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch

from analysis._core.errors import GhostmapsError
from analysis._core.validation import check_positive_int
from analysis.data.images import ImageSource, NamedImage, load_images

__all__ = ["ImageBatch", "Images", "as_images", "images_tensor"]

Error = type[Exception]
_IMAGE_KEYS = ("image", "images", "pixel_values", "input")


class ImageBatch(NamedTuple):
    """One batch: the positions of its images in the whole set, the N×C×H×W tensor, the image names (None
    when the source has none) and the labels (a long tensor, or None when the source has none)."""

    positions: list[int]
    images: torch.Tensor
    names: list[str] | None
    labels: torch.Tensor | None = None


def _is_paths(images: Any) -> bool:
    if isinstance(images, (str, os.PathLike)):
        return True
    return (isinstance(images, Sequence) and not isinstance(images, torch.Tensor) and len(images) > 0
            and all(isinstance(s, (str, os.PathLike)) for s in images))


def _what(name: str) -> str:
    return (f"{name} must be an N x C x H x W tensor, a list of image tensors, a Dataset or DataLoader of images "
            "(or (image, label) pairs), analysis.load_images(...), or image files / folders / globs / 'samples'")


class Images:
    """Images from any source (:func:`as_images`): ``len`` (None when unknown, e.g. a generator), ``batches``
    for one process's share with positions, ``tensor()`` for all of them at once, ``first()``."""

    def __init__(self, kind: str, source: Any, length: int | None, limit: int | None, name: str,
                 error: Error) -> None:
        self.kind, self.source, self.limit, self.name, self.error = kind, source, limit, name, error
        self.length = length if limit is None or length is None else min(length, limit)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the number of images in this {type(self.source).__name__} is not known")
        return self.length

    def __repr__(self) -> str:
        return f"Images({self.kind}, {self.length if self.length is not None else '?'} images)"

    # -- items ------------------------------------------------------------------------------------------------
    def _tensor_of(self, item: Any) -> tuple[torch.Tensor, bool]:
        """The images in one yielded item as N×C×H×W, and whether it was a single C×H×W image."""
        x = _tensor_in(item)
        if x is None:
            raise self.error(f"{_what(self.name)}; it yielded {type(item).__name__}.")
        if x.dim() == 3:
            return x.unsqueeze(0), True
        if x.dim() != 4:
            raise self.error(f"{self.name} must hold N×C×H×W (or C×H×W) image tensors, got shape "
                             f"{tuple(x.shape)}.")
        return x, False

    def _image(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Item ``index`` of a map-style Dataset: one image, as 1×C×H×W, and its label (or None)."""
        item = self.source[index]
        x, _ = self._tensor_of(item)
        if x.shape[0] != 1:
            raise self.error(f"{self.name}: each Dataset item must be one image (C×H×W, or (image, label)); item "
                             f"{index} holds {x.shape[0]}. Pass a DataLoader to yield batches.")
        return x, _labels_in(item, 1, self.name, self.error)

    def _items(self, batch_size: int) -> Iterator[tuple[torch.Tensor, bool, list[str] | None, torch.Tensor | None]]:
        """(the images of one item as N×C×H×W, whether it was a single image, their names or None, their labels
        or None), in order, up to the limit."""
        left = self.limit
        for item in self.source.batches(batch_size) if self.kind == "named" else self.source:
            if left is not None and left <= 0:
                return
            names = None
            if self.kind == "named":
                names, item = list(item[0]), item[1]
            x, single = self._tensor_of(item)
            labels = None if self.kind == "named" else _labels_in(item, x.shape[0], self.name, self.error)
            if names is not None and len(names) != x.shape[0]:
                names = None  # not one name per image: no names
            if left is not None and x.shape[0] > left:
                x, names = x[:left], None if names is None else names[:left]
                labels = None if labels is None else labels[:left]
            if left is not None:
                left -= x.shape[0]
            yield x, single, names, labels

    # -- batches ----------------------------------------------------------------------------------------------
    def batches(self, batch_size: int = 16, *, chunk: int = 1, rank: int = 0, world: int = 1
                ) -> Iterator[ImageBatch]:
        """This process's share of the images (block ``position // chunk`` goes to process ``block mod world``)
        as ``ImageBatch(positions, images, names)``; see the module docstring for how batches are formed."""
        check_positive_int(batch_size, "batch_size")

        def mine(i: int) -> bool:
            return world == 1 or (i // chunk) % world == rank

        if self.kind == "tensor":
            x, names, labels = self.source
            idx = [i for i in range(x.shape[0]) if mine(i)]
            for s in range(0, len(idx), batch_size):
                part = idx[s:s + batch_size]
                yield ImageBatch(part, x[part], None if names is None else [names[i] for i in part],  # a copy
                                 None if labels is None else labels[part])
            return
        if self.kind == "source":
            position = {n: i for i, n in enumerate(self.source.names)}
            src = self.source if world == 1 else self.source.take([i for i in range(len(self.source)) if mine(i)])
            if len(src) == 0:  # fewer blocks than processes: this one has nothing to do (not an error)
                return
            for names, batch in src.batches(batch_size):
                yield ImageBatch([position[n] for n in names], batch, names)
            return
        if self.kind == "dataset":
            share = [i for i in range(self.length) if mine(i)]  # read only this process's items
            for s in range(0, len(share), batch_size):
                part = share[s:s + batch_size]
                items = [self._image(i) for i in part]
                labels = [y for _, y in items]
                yield ImageBatch(part, torch.cat([x for x, _ in items]), None,
                                 None if any(y is None for y in labels) else torch.cat(labels))
            return
        yield from self._stream(batch_size, mine)

    def _stream(self, batch_size: int, mine: Callable[[int], bool]) -> Iterator[ImageBatch]:
        """Single images stacked into batches, batches as they come (each cut to this process's share)."""
        seen = 0
        pending: list[tuple[int, torch.Tensor, str | None, torch.Tensor | None]] = []

        def flush() -> Iterator[ImageBatch]:
            if pending:
                names = [n for _, _, n, _ in pending]
                labels = [y for _, _, _, y in pending]
                yield ImageBatch([p for p, _, _, _ in pending], torch.cat([t for _, t, _, _ in pending]),
                                 None if None in names else names,
                                 None if any(y is None for y in labels) else torch.cat(labels))
                pending.clear()

        for x, single, names, labels in self._items(batch_size):
            n = x.shape[0]
            keep = [k for k in range(n) if mine(seen + k)]
            if single:
                if keep:
                    pending.append((seen, x, None if names is None else names[0], labels))
                    if len(pending) == batch_size:
                        yield from flush()
            else:
                yield from flush()
                if keep:
                    yield ImageBatch([seen + k for k in keep], x if len(keep) == n else x[keep],
                                     None if names is None else [names[k] for k in keep],
                                     None if labels is None else labels[keep])
            seen += n
        yield from flush()

    # -- all at once ------------------------------------------------------------------------------------------
    def tensor(self) -> torch.Tensor:
        """All the images as one non-empty N×C×H×W tensor (a tensor source is returned as it is)."""
        if self.kind == "tensor":
            x = self.source[0]
        else:
            parts = [b.images for b in self.batches(16)]
            x = torch.cat(parts) if parts else torch.zeros(0)
        if x.dim() != 4 or x.shape[0] == 0:
            raise self.error(f"{self.name} must be a non-empty N x C x H x W tensor, got shape {tuple(x.shape)}; "
                             "pass at least one image.")
        return x

    def spread(self, count: int = 8) -> list[torch.Tensor]:
        """Up to ``count`` images spread evenly over a map-style Dataset (first and last included), each C×H×W,
        read by index; other kinds give just the first image (a stream would have to be read in full)."""
        if self.kind != "dataset" or not self.length:
            return [self.first()[1]]
        positions = sorted({round(k * (self.length - 1) / max(count - 1, 1)) for k in range(count)})
        return [self._image(i)[0][0] for i in positions]

    def first(self) -> tuple[str, torch.Tensor]:
        """The first image, as (name, C×H×W tensor); the name is ``image-0`` when the source has none."""
        batch = next(iter(self.batches(1)), None)
        if batch is None:
            raise self.error(f"{self.name} holds no image; pass at least one.")
        return (batch.names[0] if batch.names else "image-0"), batch.images[0]


def _length(images: Any) -> int | None:
    """How many images a DataLoader (its sampler, less a dropped last batch) or a sized iterable yields."""
    for attr in ("sampler", "dataset"):
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


def as_images(images: Any, preprocess: Callable[[Any], torch.Tensor] | None = None, *, limit: int | None = None,
              name: str = "images", error: Error = GhostmapsError, labels: Any = None) -> Images:
    """``images`` from any source of the module docstring as ``Images``.

    Args:
        images: the source.
        preprocess: maps an RGB PIL image to a C×H×W tensor; needed for paths and ``"samples"`` (pass the
            model's, ``load_model(...).preprocess``, or ``analysis.data.models.default_preprocess()``).
        limit: use at most this many images (the first ones).
        name, error: the input's name and the error class for messages (e.g. ``"calibration_images"``,
            ``GhostifyError``).
        labels: class indices of a tensor's images (one per image); other sources carry their own.
    """
    if limit is not None:
        limit = check_positive_int(limit, "limit", error, " (a number of images, or None for all)")
    if _is_paths(images):
        if preprocess is None:
            raise error(f"{_what(name)}; got {type(images).__name__} of paths, which need a preprocess transform "
                        "(pass the model's preprocess, e.g. load_model(...).preprocess).")
        images = load_images(images, transform=preprocess, limit=limit)
    if labels is not None and not isinstance(images, torch.Tensor):
        raise error(f"{name}: labels= goes with an image tensor; a Dataset or DataLoader yields (image, label) "
                    "pairs itself, and a folder of class folders gives labels by folder.")
    if isinstance(images, NamedImage):
        return Images("tensor", (images.tensor.unsqueeze(0), [images.name], None), 1, limit, name, error)
    if isinstance(images, ImageSource):
        src = images if limit is None else images.take(range(min(limit, len(images))))
        return Images("source", src, len(src), None, name, error)
    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4:
            raise error(f"{name}: an image tensor must be N×C×H×W (or C×H×W), got shape {tuple(images.shape)}.")
        y = None if labels is None else _as_labels(labels, x.shape[0], name, error)
        n = x.shape[0]
        if limit is not None:
            x, y = x[:limit], None if y is None else y[:limit]
        return Images("tensor", (x, None, y), n, limit, name, error)
    if hasattr(images, "batches") and callable(images.batches):
        return Images("named", images, _sized(images), limit, name, error)
    if isinstance(images, torch.utils.data.DataLoader):
        return Images("loader", images, _length(images), limit, name, error)
    if isinstance(images, torch.utils.data.Dataset) and not isinstance(images, torch.utils.data.IterableDataset) \
            and _sized(images) is not None:
        return Images("dataset", images, len(images), limit, name, error)
    if isinstance(images, (list, tuple)):
        found = [_tensor_in(item) for item in images]
        length = None if any(t is None or t.dim() not in (3, 4) for t in found) else \
            sum(1 if t.dim() == 3 else int(t.shape[0]) for t in found)  # else: refused while reading
        return Images("iterable", images, length, limit, name, error)
    if isinstance(images, Iterable):
        return Images("iterable", images, _sized(images), limit, name, error)
    raise error(f"{_what(name)}; got {type(images).__name__}.")


def _tensor_in(item: Any) -> torch.Tensor | None:
    """The image tensor of one yielded item: the item, the first of an ``(images, labels, …)`` pair, or a dict's
    ``image``/``images``/``pixel_values``/``input`` entry; None when there is none."""
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        item = item[0]
    elif isinstance(item, dict):
        item = next((item[k] for k in _IMAGE_KEYS if isinstance(item.get(k), torch.Tensor)), item)
    return item if isinstance(item, torch.Tensor) else None


_LABEL_KEYS = ("label", "labels", "target", "targets")


def _as_labels(value: Any, n: int, name: str, error: Error) -> torch.Tensor:
    t = torch.as_tensor(value).reshape(-1) if not isinstance(value, torch.Tensor) else value.detach().reshape(-1)
    if t.numel() != n or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise error(f"{name}: labels must be one integer class index per image ({n}), got {t.numel()} values of "
                    f"dtype {t.dtype}.")
    return t.long().cpu()


def _labels_in(item: Any, n: int, name: str, error: Error) -> torch.Tensor | None:
    """The class labels of one yielded item (the second of an ``(images, labels)`` pair, or a dict's label
    entry), or None when it has none; a second entry that is not one integer per image (a float target, a
    string, a mask) is not a class label and gives None, so consumers that need no labels never fail on it."""
    value = None
    if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
        value = item[1]
    elif isinstance(item, dict):
        value = next((item[k] for k in _LABEL_KEYS if k in item), None)
    if value is None or isinstance(value, (str, dict)):
        return None
    try:
        return _as_labels(value, n, name, error)
    except (error, TypeError, ValueError, RuntimeError):
        return None


def _sized(images: Any) -> int | None:
    try:
        return len(images)
    except TypeError:
        return None


def images_tensor(images: Any, name: str = "images", error: Error = GhostmapsError,
                  preprocess: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """``images`` as one non-empty N x C x H x W tensor: ``as_images(images, preprocess, name=name,
    error=error).tensor()`` (a tensor comes back as it is; paths need ``preprocess``). Anything else raises
    ``error`` naming ``name``. The input is never changed."""
    return as_images(images, preprocess, name=name, error=error).tensor()
