"""The offline sample photos and their fixed split into a calibration set and an evaluation set.

Every photo here ships inside scikit-learn or scikit-image (no download). The pool is every bundled photograph
of a real scene or object whose shorter side is at least 256 px, the domain an ImageNet network was trained
on; synthetic images (checkerboard, blobs, colour wheel, logo, phantom), microscopy, medical, astronomy and
document images, and tiny ones (digits, faces at 25 px) are left out. scikit-image's ``cat`` is the same
array as ``chelsea`` and is offered once.

The split is fixed (by name, not drawn at run time) so that every test, notebook and benchmark fits on one set
and reports on the other:

- ``"samples:calibration"`` (6): chelsea, coffee, rocket, camera, coins, brick
- ``"samples:evaluation"`` (8): china, flower, astronaut, motorcycle, clock, moon, grass, gravel

Each set has colour and greyscale photos and one texture or more; the evaluation set is the larger one because
what is reported on it needs the most distinct photos. ``"samples"`` alone keeps meaning the seven classic
photos (china, flower, chelsea, astronaut, coffee, rocket, camera) it always meant; ``"samples:all"`` is
the whole pool.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import numpy as np

from analysis._core.errors import GhostmapsError, did_you_mean

__all__ = ["CALIBRATION", "CLASSIC", "EVALUATION", "SAMPLE_SETS", "load_photo", "photo_hash", "sample_names",
           "sample_photos"]


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")

    return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        value = getattr(skimage.data, name)()
        return value[0] if isinstance(value, tuple) else value  # stereo_motorcycle: (left, right, disparity)

    return load


# name -> loader; the order is the order photos are offered in.
_POOL: dict[str, Callable[[], np.ndarray]] = {
    "china": _sklearn("china"),
    "flower": _sklearn("flower"),
    "chelsea": _skimage("chelsea"),
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "camera": _skimage("camera"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "coins": _skimage("coins"),
    "clock": _skimage("clock"),
    "moon": _skimage("moon"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
}
_SKIMAGE = {n for n in _POOL if n not in ("china", "flower")}

CLASSIC = ("china", "flower", "chelsea", "astronaut", "coffee", "rocket", "camera")
CALIBRATION = ("chelsea", "coffee", "rocket", "camera", "coins", "brick")
EVALUATION = ("china", "flower", "astronaut", "motorcycle", "clock", "moon", "grass", "gravel")
SAMPLE_SETS: dict[str, tuple[str, ...]] = {
    "calibration": CALIBRATION,
    "evaluation": EVALUATION,
    "all": tuple(_POOL),
}


def _skimage_available() -> bool:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def sample_names(selection: str = "") -> list[str]:
    """The photo names a ``samples[:...]`` selection stands for.

    ``""`` gives the classic seven, ``"calibration"``, ``"evaluation"`` or ``"all"`` a named set, and
    ``"chelsea,china"`` those photos (in the samples' order: china, chelsea). Without scikit-image only the two scikit-learn photos exist; asking for
    a set that needs scikit-image then raises (a silently smaller evaluation set would mislead).
    """
    have_skimage = _skimage_available()
    if selection in SAMPLE_SETS:
        names = list(SAMPLE_SETS[selection])
        if not have_skimage and any(n in _SKIMAGE for n in names):
            raise GhostmapsError(f"the sample set {selection!r} needs scikit-image; pip install scikit-image.")
        return names
    if not selection:
        return [n for n in CLASSIC if have_skimage or n not in _SKIMAGE]
    wanted = [w for w in selection.split(",") if w]
    known = [n for n in _POOL if have_skimage or n not in _SKIMAGE]
    for w in wanted:
        if w not in known:
            raise GhostmapsError(
                f"no sample photo named {w!r}; the samples are: {', '.join(known)}, and the sets "
                f"{', '.join(SAMPLE_SETS)}.{did_you_mean(w, [*known, *SAMPLE_SETS])}"
            )
    return [n for n in known if n in wanted]  # in the samples' own order, each once


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """One sample photo by name as a read-only H×W[×3] uint8 array (decoded once per process)."""
    if name not in _POOL:
        raise GhostmapsError(f"no sample photo named {name!r}; the samples are: {', '.join(_POOL)}."
                             f"{did_you_mean(name, _POOL)}")
    arr = np.asarray(_POOL[name]())
    arr.flags.writeable = False
    return arr


def sample_photos(selection: str = "") -> list[tuple[str, np.ndarray]]:
    """``(name, H×W[×3] uint8 array)`` for each photo of a selection (see :func:`sample_names`); the arrays
    are copies the caller may change."""
    return [(name, load_photo(name).copy()) for name in sample_names(selection)]


def photo_hash(pixels: np.ndarray) -> str:
    """A content hash of an image's pixels (shape, dtype and bytes): equal arrays give equal hashes."""
    arr = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()[:32]
