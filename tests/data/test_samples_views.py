"""The offline calibration/evaluation split, seeded views, and the overlap check between image sets."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from analysis import GhostmapsError, load_images
from analysis.data import CALIBRATION, EVALUATION, OverlapError, check_disjoint, shared_images
from analysis.data.models import default_preprocess
from analysis.data.samples import load_photo, sample_names
from analysis.data.views import ViewSpec, crop_box, make_view

pytest.importorskip("skimage")
SMALL = default_preprocess(36, 32)  # small tensors keep the view tests fast


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()


def test_calibration_and_evaluation_share_no_photo():
    cal = {_sha(load_photo(n)) for n in CALIBRATION}
    ev = {_sha(load_photo(n)) for n in EVALUATION}
    assert len(cal) == len(CALIBRATION) and len(ev) == len(EVALUATION)  # no duplicate inside a set either
    assert not cal & ev
    assert len(EVALUATION) >= 8 and len(CALIBRATION) >= 6
    assert sorted(sample_names("all")) == sorted({*sample_names(), *CALIBRATION, *EVALUATION})
    # through the loader: the photos behind the sets, by content
    assert shared_images(load_images("samples:calibration"), load_images("samples:evaluation")) == []
    for name in (*CALIBRATION, *EVALUATION):
        arr = load_photo(name)
        assert arr.dtype == np.uint8 and min(arr.shape[:2]) >= 256


def test_views_are_deterministic_distinct_and_independent_of_the_set():
    a = torch.cat([b for _, b in load_images("samples:evaluation", SMALL, views=48, seed=0).batches(48)])
    again = torch.cat([b for _, b in load_images("samples:evaluation", SMALL, views=48, seed=0).batches(48)])
    other = torch.cat([b for _, b in load_images("samples:evaluation", SMALL, views=48, seed=1).batches(48)])
    assert torch.equal(a, again)
    flat = a.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(48) * 1e9).min() > 1e-3  # 48 views, pairwise distinct
    assert all(not torch.equal(x, y) for x, y in zip(a, other, strict=True))  # another seed, other crops
    source = load_images("samples:evaluation", SMALL, views=48)
    assert source.names[:2] == ["china@0", "flower@0"] and source.names[8] == "china@1"
    assert source.photo_names[8] == "china" and len(source) == 48
    # view k of china does not depend on which other photos are asked for
    alone = torch.cat([b for _, b in load_images("samples:china", SMALL, views=6).batches(6)])
    assert torch.equal(alone[1], a[8]) and torch.equal(alone[5], a[40])


def test_a_view_is_the_seeded_crop_of_the_photo():
    from PIL import Image

    photo = load_photo("china")
    img = Image.fromarray(photo)
    spec = ViewSpec(100, seed=3)
    areas, flips = [], 0
    for k in range(100):
        (left, top, right, bottom), flip = crop_box(img.width, img.height, spec, "china", k)
        assert 0 <= left < right <= img.width and 0 <= top < bottom <= img.height
        areas.append((right - left) * (bottom - top) / (img.width * img.height))
        assert 3 / 4 - 0.02 <= (right - left) / (bottom - top) <= 4 / 3 + 0.02
        flips += flip
        if k < 5:
            expected = photo[top:bottom, left:right]
            expected = expected[:, ::-1] if flip else expected
            assert np.array_equal(np.asarray(make_view(img, spec, "china", k)), expected)
    assert 0.24 <= min(areas) and max(areas) <= 1.0 and np.std(areas) > 0.1
    assert 30 <= flips <= 70  # a fair coin over 100 views


def test_overlap_is_found_by_content_and_refused():
    cal = load_images("samples:calibration", SMALL, views=12, seed=0)
    other_views = load_images("samples:chelsea,china", SMALL, views=4, seed=7)
    assert shared_images(other_views, cal) == ["chelsea"]  # other crops, same photo
    with pytest.raises(OverlapError, match="chelsea.*allow_calibration"):
        check_disjoint(cal, other_views)
    assert check_disjoint(cal, other_views, allow_overlap=True) == ["chelsea"]
    assert check_disjoint(cal, load_images("samples:evaluation", SMALL, views=16)) == []
    # tensors are compared image by image
    x = torch.randn(5, 3, 8, 8)
    assert shared_images(x[:3], [x[2], x[4]]) == ["image 2"]
    with pytest.raises(OverlapError):
        check_disjoint(x, [(x[1], 0)])
    assert check_disjoint(x[:2], x[2:]) == []


def test_bad_view_arguments():
    with pytest.raises(GhostmapsError, match="views"):
        load_images("samples:china", views=0)
    with pytest.raises(GhostmapsError, match="seed"):
        load_images("samples:china", views=3, seed=-1)
    with pytest.raises(GhostmapsError, match="evaluation"):
        load_images("samples:evaluaton")
