"""Whether two image sets share images, by content: the check that keeps results off the images they were
fitted on.

Two ``ImageSource``s (``load_images``) are compared by the pixels of the whole photos behind them, so a view
of ``chelsea`` in one and another view of ``chelsea`` in the other do overlap. Anything else (a tensor, a list
of tensors, a Dataset or DataLoader yielding images or ``(image, label)``) is compared image by image on the
preprocessed tensors: that finds the same preprocessed image in both, not two different crops of one photo,
so pass ``ImageSource``s where photos are at stake.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from analysis._core.errors import GhostmapsError

__all__ = ["OverlapError", "check_disjoint", "shared_images"]


class OverlapError(GhostmapsError):
    """Two image sets that must be disjoint (calibration and evaluation) share images."""


def _tensor_hash(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:32]


def _images_of(item: Any) -> torch.Tensor:
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        item = item[0]  # (image, label) pairs
    if not isinstance(item, torch.Tensor):
        raise GhostmapsError(f"cannot compare images of type {type(item).__name__}; pass tensors, "
                             "load_images(...), or a Dataset/DataLoader of image tensors.")
    return item.unsqueeze(0) if item.dim() == 3 else item


def _tensor_hashes(images: Any) -> dict[str, str]:
    hashes: dict[str, str] = {}
    if hasattr(images, "batches"):
        for names, batch in images.batches(16):
            for name, t in zip(names, batch, strict=True):
                hashes.setdefault(_tensor_hash(t), name)
        return hashes
    if isinstance(images, torch.Tensor):
        images = [images]
    index = 0
    for item in images:
        for t in _images_of(item):
            hashes.setdefault(_tensor_hash(t), f"image {index}")
            index += 1
    return hashes


def shared_images(a: Any, b: Any) -> list[str]:
    """Names (as ``a`` calls them) of the images ``a`` and ``b`` have in common: photos for two
    ``ImageSource``s, preprocessed images otherwise (module docstring)."""
    if hasattr(a, "photo_hashes") and hasattr(b, "photo_hashes"):
        ha, hb = a.photo_hashes(), b.photo_hashes()
    else:
        ha, hb = _tensor_hashes(a), _tensor_hashes(b)
    return sorted(ha[h] for h in set(ha) & set(hb))


def check_disjoint(calibration: Any, evaluation: Any, *, allow_overlap: bool = False) -> list[str]:
    """Raise ``OverlapError`` when ``evaluation`` shares images with ``calibration`` (unless ``allow_overlap``);
    returns the shared names (empty when disjoint)."""
    shared = shared_images(calibration, evaluation)
    if shared and not allow_overlap:
        listed = ", ".join(shared[:8]) + (", ..." if len(shared) > 8 else "")
        raise OverlapError(
            f"the evaluation images share {len(shared)} image(s) with the calibration images ({listed}); a "
            "result measured on the images a model was fitted on overstates it. Evaluate on other images, e.g. "
            "load_images('samples:evaluation', views=256) after calibrating on 'samples:calibration', or pass "
            "allow_calibration=True to do it knowingly."
        )
    return shared
