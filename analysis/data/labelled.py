"""Evaluation images with labels where they exist: an ImageFolder-style folder (one sub-folder per class),
a ``torch.utils.data.Dataset`` or ``DataLoader`` yielding images or ``(image, label)``, a tensor with
``labels=``, or any unlabelled source ``load_images`` takes (files, globs, ``"samples:evaluation"``, views).

Class folders name their class either by its index in the model's output (``0``, ``17``, ``281``) or by a
name; names are mapped through ``class_names`` (the model's class names, in output order) when given, and
otherwise, as torchvision's ``ImageFolder`` does, by sorted order, which is only accepted when there are as
many folders as the model has outputs (a fine-tuned head).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from analysis._core.errors import GhostmapsError, NoImagesError
from analysis.data.images import IMAGE_SUFFIXES, ImageSource, load_images

__all__ = ["EvaluationSet", "LabelError", "evaluation_set"]


class LabelError(GhostmapsError):
    """Labels that do not fit the model (outside its classes, or class folders that cannot be mapped)."""


@dataclass
class EvalBatch:
    """One batch: images (N x C x H x W), labels (N, long) or None, and each image's photo (for intervals)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    photos: list[str]


class EvaluationSet:
    """Images to evaluate on, with labels when the source has them (see the module docstring)."""

    def __init__(self, kind: str, description: str, source: Any, labelled: bool, folder_classes: list[str] | None,
                 batches: Callable[[int], Iterator[tuple[torch.Tensor, Any, list[str]]]]):
        self.kind = kind
        self.description = description
        self.source = source  # what the overlap check compares (ImageSource, tensor, Dataset, ...)
        self.labelled = labelled
        self.folder_classes = folder_classes
        self._batches = batches

    def __repr__(self) -> str:
        return f"EvaluationSet({self.description}, {'labelled' if self.labelled else 'unlabelled'})"

    def class_index(self, num_classes: int, class_names: Sequence[str] | None = None) -> dict[str, int] | None:
        """Folder name -> class index for a model with ``num_classes`` outputs (None: not a class folder)."""
        if self.folder_classes is None:
            return None
        names = self.folder_classes
        if all(n.isdigit() for n in names):
            mapping = {n: int(n) for n in names}
        elif class_names is not None:
            lookup = {str(c): i for i, c in enumerate(class_names)}
            unknown = [n for n in names if n not in lookup]
            if unknown:
                raise LabelError(f"class folders {unknown[:5]} are not among the model's class names; rename them "
                                 "to class names or to class indices.")
            mapping = {n: lookup[n] for n in names}
        elif len(names) == num_classes:
            mapping = {n: i for i, n in enumerate(sorted(names))}
        else:
            raise LabelError(
                f"{len(names)} class folders ({', '.join(names[:4])}...) for a model with {num_classes} outputs: "
                "name each folder by its class index (e.g. 281 for ImageNet's tabby cat), or pass class_names= "
                "(the model's class names in output order).")
        bad = {n: i for n, i in mapping.items() if not 0 <= i < num_classes}
        if bad:
            raise LabelError(f"class folders {sorted(bad)[:5]} give labels outside the model's {num_classes} "
                             f"classes (0..{num_classes - 1}); rename or remove them.")
        return mapping

    def first_images(self, n: int) -> torch.Tensor:
        """The first (up to) ``n`` images as one tensor, labels ignored."""
        images, _, _ = next(iter(self._batches(max(1, n))))
        return images[:max(1, n)]

    def batches(self, batch_size: int = 32, class_index: dict[str, int] | None = None) -> Iterator[EvalBatch]:
        """Yield :class:`EvalBatch` es of at most ``batch_size`` images (a DataLoader keeps its own batches);
        a folder's labels are mapped to class indices with ``class_index`` (from :meth:`class_index`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GhostmapsError(f"batch_size must be a positive int, got {batch_size!r}.")
        for images, labels, photos in self._batches(batch_size):
            if isinstance(labels, list):
                if class_index is None:
                    raise LabelError("class folders need class_index= (EvaluationSet.class_index(num_classes)).")
                labels = torch.as_tensor([class_index[c] for c in labels], dtype=torch.long)
            yield EvalBatch(images, labels, photos)


def _as_label_tensor(labels: Any, n: int, name: str = "labels") -> torch.Tensor:
    t = torch.as_tensor(labels)
    if t.dim() != 1 or t.shape[0] != n or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise LabelError(f"{name} must be {n} integer class indices (one per image), got shape {tuple(t.shape)} "
                         f"and dtype {t.dtype}.")
    return t.long()


def _split_item(item: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
        return item[0], item[1]
    if isinstance(item, torch.Tensor):
        return item, None
    raise GhostmapsError(f"a Dataset/DataLoader must yield image tensors or (image, label) pairs, got "
                         f"{type(item).__name__}.")


def _class_folders(root: Path) -> list[Path] | None:
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return subs if subs and not loose else None


def _folder_set(root: Path, transform: Callable | None) -> EvaluationSet:
    folders = _class_folders(root)
    if folders is None:
        source = load_images(root, transform)
        return _source_set(source, None, str(root))
    files: list[tuple[Path, str]] = []
    for folder in folders:
        files += [(p, folder.name) for p in sorted(folder.rglob("*"))
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise NoImagesError(f"the evaluation folder {root} has class folders ({', '.join(f.name for f in folders[:4])}"
                            f") but no image files in them; looked for {', '.join(sorted(IMAGE_SUFFIXES))}.")
    source = load_images([p for p, _ in files], transform)
    classes = [c for _, c in files]
    set_ = _source_set(source, classes, f"{root} ({len(folders)} class folders)")
    set_.folder_classes = [f.name for f in folders if any(c == f.name for c in classes)]
    return set_


def _source_set(source: ImageSource, classes: list[str] | None, description: str) -> EvaluationSet:
    names = source.names
    photos = source.photo_names
    by_name = dict(zip(names, photos, strict=True))
    label_of = dict(zip(names, classes, strict=True)) if classes is not None else None

    def batches(batch_size: int) -> Iterator[tuple[torch.Tensor, Any, list[str]]]:
        for batch_names, x in source.batches(batch_size):
            labels = None if label_of is None else [label_of[n] for n in batch_names]
            yield x, labels, [by_name[n] for n in batch_names]

    return EvaluationSet("folder" if classes is not None else "images", description, source, classes is not None,
                         None, batches)


def evaluation_set(images: Any, transform: Callable | None = None, labels: Any = None) -> EvaluationSet:
    """Wrap any evaluation source (module docstring) as an :class:`EvaluationSet`.

    ``transform`` preprocesses files and sample photos (default ImageNet evaluation preprocessing); tensors,
    Datasets and DataLoaders are taken as they are. ``labels`` gives class indices for a tensor or a list of
    tensors.
    """
    if isinstance(images, EvaluationSet):
        return images
    if isinstance(images, (str, os.PathLike)) and Path(images).expanduser().is_dir():
        return _folder_set(Path(images).expanduser(), transform)
    if isinstance(images, ImageSource) or isinstance(images, (str, os.PathLike)) or (
            isinstance(images, (list, tuple)) and images and all(isinstance(s, (str, os.PathLike)) for s in images)):
        source = images if isinstance(images, ImageSource) else load_images(images, transform)
        if labels is not None:
            raise GhostmapsError("labels= goes with tensors; for image files use a folder of class folders.")
        return _source_set(source, None, source.description)
    if isinstance(images, torch.Tensor) or (isinstance(images, (list, tuple)) and images
                                            and all(isinstance(t, torch.Tensor) for t in images)):
        x = images if isinstance(images, torch.Tensor) else torch.cat(
            [t if t.dim() == 4 else t.unsqueeze(0) for t in images])
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[0] == 0:
            raise GhostmapsError(f"images must be a non-empty N x C x H x W tensor, got shape {tuple(x.shape)}.")
        y = None if labels is None else _as_label_tensor(labels, x.shape[0])

        def tensor_batches(batch_size: int) -> Iterator[tuple[torch.Tensor, Any, list[str]]]:
            for i in range(0, x.shape[0], batch_size):
                yield x[i:i + batch_size], None if y is None else y[i:i + batch_size], \
                    [f"image {k}" for k in range(i, min(i + batch_size, x.shape[0]))]

        return EvaluationSet("tensor", f"a tensor of {x.shape[0]} images", x, y is not None, None, tensor_batches)
    if isinstance(images, torch.utils.data.DataLoader) or isinstance(images, torch.utils.data.Dataset):
        return _dataset_set(images)
    raise GhostmapsError(f"cannot evaluate on {type(images).__name__}: pass a folder (class folders for labels), "
                         "files or globs, 'samples:evaluation', load_images(...), a tensor, a Dataset or a DataLoader.")


def _dataset_set(data: Any) -> EvaluationSet:
    loader = isinstance(data, torch.utils.data.DataLoader)
    try:
        first = next(iter(data)) if loader else data[0]
    except (IndexError, StopIteration):
        raise NoImagesError(f"the {type(data).__name__} yielded no images.") from None
    labelled = _split_item(first)[1] is not None

    def batches(batch_size: int) -> Iterator[tuple[torch.Tensor, Any, list[str]]]:
        index = 0
        if loader:
            for item in data:
                x, y = _split_item(item)
                x = x.unsqueeze(0) if x.dim() == 3 else x
                yield x, None if y is None else _as_label_tensor(y, x.shape[0]), \
                    [f"image {k}" for k in range(index, index + x.shape[0])]
                index += x.shape[0]
            return
        n = len(data)
        for start in range(0, n, batch_size):
            items = [_split_item(data[k]) for k in range(start, min(n, start + batch_size))]
            x = torch.stack([t for t, _ in items])
            y = None if not labelled else _as_label_tensor([int(lab) for _, lab in items], x.shape[0])
            yield x, y, [f"image {k}" for k in range(start, start + x.shape[0])]

    return EvaluationSet("dataloader" if loader else "dataset", type(data).__name__, data, labelled, None, batches)
