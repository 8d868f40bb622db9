"""Evaluation images with labels where they exist, read through the one image adapter (``as_images``): an
ImageFolder-style folder (one sub-folder per class), a ``Dataset`` or ``DataLoader`` yielding ``(image, label)``,
a tensor with ``labels=``, or any unlabelled source (files, globs, ``"samples:evaluation"``, views).

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
from analysis._core.validation import check_positive_int
from analysis.data.batches import Images, as_images
from analysis.data.images import IMAGE_SUFFIXES, ImageSource, load_images

__all__ = ["EvalBatch", "EvaluationSet", "LabelError", "evaluation_set"]


class LabelError(GhostmapsError):
    """Labels that do not fit the model (outside its classes, or class folders that cannot be mapped)."""


@dataclass
class EvalBatch:
    """One batch: images (N x C x H x W), labels (N, long) or None, and each image's photo (for intervals)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    photos: list[str]


class EvaluationSet:
    """Images to evaluate on, with labels when the source has them (see the module docstring).

    ``images``: the adapter's ``Images``; ``source``: what the overlap check compares (an ``ImageSource`` for
    files and sample photos, else the tensor, Dataset or DataLoader); ``folder_classes``: the class folders'
    names (None for other sources); ``labelled``: whether labels exist (for a Dataset or DataLoader, whether its
    first item has one).
    """

    def __init__(self, images: Images, source: Any, description: str, labelled: bool,
                 folder_classes: list[str] | None = None, folder_of: dict[str, str] | None = None):
        self.images = images
        self.source = source
        self.description = description
        self.labelled = labelled
        self.folder_classes = folder_classes
        self._folder_of = folder_of
        self._photo_of = dict(zip(source.names, source.photo_names, strict=True)) \
            if isinstance(source, ImageSource) else None

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
        batch = next(iter(self.images.batches(max(1, n))), None)
        if batch is None:
            raise NoImagesError(f"no images to evaluate in {self.description}.")
        return batch.images[:max(1, n)]

    def batches(self, batch_size: int = 32, class_index: dict[str, int] | None = None) -> Iterator[EvalBatch]:
        """Yield :class:`EvalBatch` es of at most ``batch_size`` images (a DataLoader keeps its own batches);
        a folder's labels are mapped to class indices with ``class_index`` (from :meth:`class_index`)."""
        check_positive_int(batch_size, "batch_size")
        for b in self.images.batches(batch_size):
            labels = b.labels
            if self._folder_of is not None:
                if class_index is None:
                    raise LabelError("class folders need class_index= (EvaluationSet.class_index(num_classes)).")
                labels = torch.as_tensor([class_index[self._folder_of[n]] for n in b.names or []], dtype=torch.long)
            if self._photo_of is not None and b.names is not None:
                photos = [self._photo_of.get(n, n) for n in b.names]
            else:
                photos = [f"image {p}" for p in b.positions]
            yield EvalBatch(b.images, labels, photos)


def _class_folders(root: Path) -> list[Path] | None:
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return subs if subs and not loose else None


def _folder_set(root: Path, transform: Callable | None) -> EvaluationSet | None:
    folders = _class_folders(root)
    if folders is None:
        return None
    files: list[tuple[Path, str]] = []
    for folder in folders:
        files += [(p, folder.name) for p in sorted(folder.rglob("*"))
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise NoImagesError(f"the evaluation folder {root} has class folders ({', '.join(f.name for f in folders[:4])}"
                            f") but no image files in them; looked for {', '.join(sorted(IMAGE_SUFFIXES))}.")
    source = load_images([p for p, _ in files], transform)
    folder_of = dict(zip(source.names, [c for _, c in files], strict=True))
    classes = [f.name for f in folders if f.name in set(folder_of.values())]
    return EvaluationSet(as_images(source), source, f"{root} ({len(classes)} class folders)", True, classes,
                         folder_of)


def evaluation_set(images: Any, transform: Callable | None = None, labels: Any = None) -> EvaluationSet:
    """Wrap any evaluation source (module docstring) as an :class:`EvaluationSet`.

    ``transform`` preprocesses files and sample photos (default ImageNet evaluation preprocessing); tensors,
    Datasets and DataLoaders are taken as they are. ``labels`` gives class indices for a tensor.
    """
    from analysis.data.models import default_preprocess

    if isinstance(images, EvaluationSet):
        return images
    pre = transform or default_preprocess()
    if isinstance(images, (str, os.PathLike)) and Path(images).expanduser().is_dir():
        found = _folder_set(Path(images).expanduser(), pre)
        if found is not None:
            return found
    adapted = as_images(images, pre, name="images", labels=labels)
    source = adapted.source[0] if adapted.kind == "tensor" else adapted.source
    if adapted.kind == "source":
        return EvaluationSet(adapted, source, source.description, False)
    if adapted.kind == "tensor":
        return EvaluationSet(adapted, source, f"a tensor of {source.shape[0]} images", labels is not None)
    if isinstance(images, Iterator):  # a one-shot iterator: read it once, so that it can be compared and re-read
        parts = list(adapted.batches(64))
        if not parts:
            raise NoImagesError(f"the {type(images).__name__} yielded no images.")
        x = torch.cat([b.images for b in parts])
        has = all(b.labels is not None for b in parts)
        y = torch.cat([b.labels for b in parts]) if has else None
        return EvaluationSet(as_images(x, labels=y), x, f"{type(images).__name__} ({x.shape[0]} images)", has)
    first = next(iter(adapted.batches(1)), None)  # a Dataset or DataLoader: labelled when its first item is
    return EvaluationSet(adapted, images, type(images).__name__, first is not None and first.labels is not None)
