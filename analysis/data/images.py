"""Load photos to run through a network: files, folders, globs, or the built-in offline sample set
(``analysis.data.samples``: ``"samples"``, ``"samples:calibration"``, ``"samples:evaluation"``), optionally as
many seeded random views of each photo (``views=``, ``analysis.data.views``).

Every image becomes an RGB PIL image first (grayscale, palette, RGBA, CMYK, 16-bit and EXIF-rotated images
are converted), then the model's preprocessing makes it a tensor. A file that cannot be read is skipped with
an ``ImageSkippedWarning`` naming it; a source with no usable image at all raises ``NoImagesError``.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from analysis._core.errors import GhostmapsError, NoImagesError
from analysis._core.validation import check_positive_int
from analysis.data.models import default_preprocess
from analysis.data.samples import load_photo, photo_hash, sample_names, sample_photos
from analysis.data.views import ViewSpec, make_view

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
SAMPLES = "samples"


class ImageSkippedWarning(UserWarning):
    """An image file could not be read and was skipped."""


@dataclass
class NamedImage:
    """One preprocessed image: ``tensor`` is C×H×W; ``name`` is the file stem or sample name."""

    name: str
    tensor: torch.Tensor
    source: str


@dataclass(frozen=True)
class _Item:
    name: str
    source: str
    opener: Callable[[], Image.Image]
    photo: Callable[[], Image.Image] | None = None  # the whole photo a view was cut from (None: opener's image)
    photo_name: str | None = None


class ImageSource:
    """A lazily decoded, ordered collection of images (what ``load_images`` returns).

    Paths are resolved when it is made (so a missing path fails at once); images are decoded while iterating,
    so a folder of thousands of photos is never held in memory. Iterating yields ``NamedImage``s;
    ``batches(n)`` yields ``(names, N×C×H×W tensor)``.
    """

    def __init__(self, items: list[_Item], transform: Callable[[Image.Image], torch.Tensor], description: str):
        self._items = items
        self.transform = transform
        self.description = description

    def __len__(self) -> int:
        """Number of images: the candidates until iterating meets an unreadable file, which is then dropped."""
        return len(self._items)

    def __repr__(self) -> str:
        return f"ImageSource({self.description}, {len(self)} images)"

    @property
    def names(self) -> list[str]:
        return [item.name for item in self._items]

    @property
    def origins(self) -> list[str]:
        """Where each image comes from: its file path, ``sample:NAME`` or an array's description."""
        return [item.source for item in self._items]

    @property
    def photo_names(self) -> list[str]:
        """The photo each image comes from (a view's photo, else the image's own name): the unit that views
        of one photo share, e.g. for intervals that resample photos rather than views."""
        return [item.photo_name or item.name for item in self._items]

    def photo_hashes(self) -> dict[str, str]:
        """``{content hash: photo name}`` of the whole photos behind this source (views share their photo's
        hash), from the decoded RGB pixels; unreadable files are left out. Used to refuse evaluating on the
        photos a model was calibrated on."""
        hashes: dict[str, str] = {}
        seen: set[tuple[str, str]] = set()
        for item in self._items:
            if item.photo is not None:
                if (item.source, item.photo_name or "") in seen:
                    continue
                seen.add((item.source, item.photo_name or ""))
            try:
                img = (item.photo or item.opener)()
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue
            hashes.setdefault(photo_hash(np.asarray(img)), item.photo_name or item.name)
        return hashes

    def __iter__(self) -> Iterator[NamedImage]:
        yielded = 0
        for item in list(self._items):
            try:
                img = item.opener()
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                warnings.warn(f"skipping {item.source}: not a readable image ({exc})", ImageSkippedWarning,
                              stacklevel=2)
                # dropped from the source, so that names, photo_names, len and take describe the images
                # iterating yields (callers pair them with a stacked tensor of those images)
                self._items = [it for it in self._items if it is not item]
                continue
            yielded += 1
            yield NamedImage(item.name, self.transform(img), item.source)
        if yielded == 0:
            raise NoImagesError(
                f"no usable image in {self.description}; pass image files, a folder of images, a glob, or 'samples'."
            )

    def take(self, indices: Iterable[int]) -> ImageSource:
        """A source of the images at these positions (in this order), decoded as lazily."""
        return ImageSource([self._items[i] for i in indices], self.transform, self.description)

    def batches(self, batch_size: int = 16) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Yield ``(names, batch)`` with up to ``batch_size`` images stacked into one tensor."""
        check_positive_int(batch_size, "batch_size")
        names: list[str] = []
        tensors: list[torch.Tensor] = []
        for image in self:
            names.append(image.name)
            tensors.append(image.tensor)
            if len(tensors) == batch_size:
                yield names, torch.stack(tensors)
                names, tensors = [], []
        if tensors:
            yield names, torch.stack(tensors)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB: EXIF orientation applied, alpha composited on white,
    16/32-bit and float images rescaled to 0..255."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
            arr, top = arr - lo, max(hi - lo, 1e-12)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _open_file(path: Path) -> Callable[[], Image.Image]:
    def opener() -> Image.Image:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)

    return opener


def _open_array(array: np.ndarray) -> Callable[[], Image.Image]:
    def opener() -> Image.Image:
        arr = np.asarray(array)
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return to_rgb(Image.fromarray(arr))

    return opener


def sample_images(selection: str = "") -> list[tuple[str, np.ndarray]]:
    """The offline sample photos as ``(name, array)``: by default the classic seven (scikit-learn's china and
    flower, scikit-image's chelsea, astronaut, coffee, rocket and camera); ``"calibration"``, ``"evaluation"``,
    ``"all"`` or ``"chelsea,china"`` select others (``analysis.data.samples``)."""
    return sample_photos(selection)


def _open_sample(name: str) -> Callable[[], Image.Image]:
    def opener() -> Image.Image:
        return _open_array(load_photo(name))()

    return opener


def _open_view(item: _Item, spec: ViewSpec, index: int) -> Callable[[], Image.Image]:
    def opener() -> Image.Image:
        return make_view(item.opener(), spec, item.name, index)

    return opener


def _as_views(items: list[_Item], spec: ViewSpec) -> list[_Item]:
    """``spec.n`` views spread over the photos in turn: view i is view i // P of photo i % P."""
    return [
        _Item(f"{item.name}@{i // len(items)}", item.source, _open_view(item, spec, i // len(items)),
              photo=item.opener, photo_name=item.name)
        for i in range(spec.n)
        for item in [items[i % len(items)]]
    ]


def _expand(source: str | os.PathLike) -> list[_Item]:
    if isinstance(source, str) and (source == SAMPLES or source.startswith(SAMPLES + ":")):
        names = sample_names(source.partition(":")[2])
        return [_Item(name, f"sample:{name}", _open_sample(name)) for name in names]
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [_Item(p.stem, str(p), _open_file(p)) for p in files]
    if path.is_file():
        return [_Item(path.stem, str(path), _open_file(path))]
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        return [_Item(p.stem, str(p), _open_file(p)) for p in files]
    raise GhostmapsError(
        f"image source {text!r} is not a file, a folder, a glob or 'samples'; check the path."
    )


def load_images(
    sources: str | os.PathLike | Sequence[str | os.PathLike] = SAMPLES,
    transform: Callable[[Image.Image], Any] | None = None,
    limit: int | None = None,
    views: int | None = None,
    seed: int = 0,
) -> ImageSource:
    """Collect images from files, folders (recursive), globs, or ``"samples"``, preprocessed for a model.

    Args:
        sources: one source or a list of them. ``"samples"`` is the offline photo set (``sample_images``);
            ``"samples:chelsea,china"`` picks photos from it by name.
        transform: maps an RGB PIL image to a C×H×W tensor; default ImageNet evaluation preprocessing
            (pass ``load_model(...).preprocess`` to match a model).
        limit: keep at most this many images (in order; applied to the photos, before views are drawn).
        views: instead of each photo once, this many seeded random views (random resized crop, area 25-100%,
            aspect 3/4-4/3, then a left-right flip half the time) spread over the photos in turn; view names
            are ``photo@k``. ``load_images("samples:evaluation", views=256, seed=0)`` is the project's
            evaluation set.
        seed: the views' seed: view k of a photo depends only on (seed, photo name, k).

    Returns:
        An ``ImageSource``: iterate it for ``NamedImage``s or call ``.batches(n)``. Names are made unique
        (``cat``, ``cat-2``) when two files share a stem.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    items: list[_Item] = []
    for source in sources:
        items.extend(_expand(source))
    if limit is not None:
        items = items[:limit]
    taken = {item.name for item in items}  # a later file's own stem (cat-2) is never given to an earlier one
    seen: set[str] = set()
    unique = []
    for item in items:
        name, count = item.name, 1
        while name in seen or (count > 1 and name in taken):
            count += 1
            name = f"{item.name}-{count}"
        seen.add(name)
        unique.append(item if name == item.name else _Item(name, item.source, item.opener))
    description = ", ".join(os.fspath(s) for s in sources)
    if not unique:
        raise NoImagesError(
            f"no image files found in {description}; looked for {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    if views is not None:
        unique = _as_views(unique, ViewSpec(views, seed))
        description += f" ({views} views, seed {seed})"
    return ImageSource(unique, transform or default_preprocess(), description)
