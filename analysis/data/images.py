"""Load photos to run through a network: files, folders, globs, or the built-in offline sample set.

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

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
SAMPLES = "samples"
# scikit-image photos that ship with the package (no download): natural scenes and objects.
SKIMAGE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera")


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
        """Number of candidate images (unreadable files are skipped while iterating)."""
        return len(self._items)

    def __repr__(self) -> str:
        return f"ImageSource({self.description}, {len(self)} images)"

    @property
    def names(self) -> list[str]:
        return [item.name for item in self._items]

    def __iter__(self) -> Iterator[NamedImage]:
        yielded = 0
        for item in self._items:
            try:
                img = item.opener()
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                warnings.warn(f"skipping {item.source}: not a readable image ({exc})", ImageSkippedWarning,
                              stacklevel=2)
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


def sample_images() -> list[tuple[str, np.ndarray]]:
    """The offline sample photos: scikit-learn's china and flower, plus scikit-image's natural photos
    (chelsea the cat, astronaut, coffee, rocket, camera) when scikit-image is installed."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = [(Path(f).stem, img) for f, img in zip(bunch.filenames, bunch.images, strict=True)]
    try:
        import skimage.data
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        try:
            photos.append((name, getattr(skimage.data, name)()))
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image version is simply not offered
            continue
    return photos


def _expand(source: str | os.PathLike) -> list[_Item]:
    if isinstance(source, str) and (source == SAMPLES or source.startswith(SAMPLES + ":")):
        photos = sample_images()
        wanted = [w for w in source.partition(":")[2].split(",") if w]
        known = [name for name, _ in photos]
        for w in wanted:
            if w not in known:
                raise GhostmapsError(f"no sample photo named {w!r}; the samples are: {', '.join(known)}.")
        chosen = [(n, a) for n, a in photos if not wanted or n in wanted]
        return [_Item(name, f"sample:{name}", _open_array(arr)) for name, arr in chosen]
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
) -> ImageSource:
    """Collect images from files, folders (recursive), globs, or ``"samples"``, preprocessed for a model.

    Args:
        sources: one source or a list of them. ``"samples"`` is the offline photo set (``sample_images``);
            ``"samples:chelsea,china"`` picks photos from it by name.
        transform: maps an RGB PIL image to a C×H×W tensor; default ImageNet evaluation preprocessing
            (pass ``load_model(...).preprocess`` to match a model).
        limit: keep at most this many images (in order).

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
    seen: dict[str, int] = {}
    unique = []
    for item in items:
        count = seen.get(item.name, 0) + 1
        seen[item.name] = count
        unique.append(item if count == 1 else _Item(f"{item.name}-{count}", item.source, item.opener))
    description = ", ".join(os.fspath(s) for s in sources)
    if not unique:
        raise NoImagesError(
            f"no image files found in {description}; looked for {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    return ImageSource(unique, transform or default_preprocess(), description)
