"""Image loading: formats, conversions, unreadable files, sources."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import GhostmapsError, ImageSkippedWarning, NoImagesError, load_images, sample_images
from analysis.data.images import to_rgb


def identity_tensor(img: Image.Image) -> torch.Tensor:
    """Unnormalised 3×H×W tensor in 0..255, so the conversions can be checked by value."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)


def load_one(path) -> torch.Tensor:
    return next(iter(load_images(path, transform=identity_tensor))).tensor


def test_grayscale_palette_rgba_and_16bit_convert_to_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    out = load_one(tmp_path / "gray.png")
    assert out.shape == (3, 6, 8) and torch.equal(out[0], out[2]) and out[0, 1, 2].item() == gray[1, 2]

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: composited on white
    rgba[0, 0] = (10, 20, 30, 255)  # opaque pixel keeps its colour
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_one(tmp_path / "rgba.png")
    assert out[:, 1, 1].tolist() == [255, 255, 255] and out[:, 0, 0].tolist() == [10, 20, 30]

    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = load_one(tmp_path / "deep.png")
    assert out[0, 0, 0].item() == 0 and out[0, 3, 3].item() == 255 and out[0, 1, 3].item() == round(7 * 17)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    out = load_one(tmp_path / "pal.png")
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 0, 1].tolist() == [0, 0, 255]


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :5] = 255  # a white band on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_one(tmp_path / "rot.jpg")
    assert out.shape == (3, 30, 10)  # width and height swapped
    assert out[0, :5].mean() > 200 and out[0, -5:].mean() < 50  # the band is now at the top


def test_unreadable_files_are_skipped_with_a_warning_naming_them(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "good.jpg")
    (tmp_path / "notes.png").write_text("this is text, not a PNG")
    good = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(good[: len(good) // 2])
    with pytest.warns(ImageSkippedWarning) as record:
        names = [image.name for image in load_images(tmp_path, transform=identity_tensor)]
    assert names == ["good"]
    text = " ".join(str(w.message) for w in record)
    assert "notes.png" in text and "broken.jpg" in text


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_text("nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSkippedWarning)
        with pytest.raises(NoImagesError, match="no usable image"):
            list(load_images(tmp_path / "a.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="no image files"):
        load_images(tmp_path / "empty")
    with pytest.raises(GhostmapsError, match="not a file, a folder"):
        load_images(tmp_path / "missing.jpg")
    with pytest.raises(GhostmapsError, match="chelsea"):
        load_images("samples:chelsey")


def test_folders_globs_unique_names_and_batches(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).save(tmp_path / sub / "x.png")
    (tmp_path / "a" / "README.txt").write_text("ignored: not an image suffix")
    source = load_images(tmp_path)
    assert source.names == ["x", "x-2"] and len(source) == 2
    assert load_images(str(tmp_path / "**" / "*.png")).names == ["x", "x-2"]
    batches = list(source.batches(1))
    assert [names for names, _ in batches] == [["x"], ["x-2"]] and batches[0][1].shape == (1, 3, 224, 224)
    with pytest.raises(GhostmapsError, match="batch_size"):
        next(source.batches(0))


def test_offline_samples():
    names = [name for name, _ in sample_images()]
    assert names[:2] == ["china", "flower"] and "chelsea" in names
    source = load_images("samples", limit=3)
    assert len(source) == 3 and "3 images" in repr(source)
    first = next(iter(source))
    assert first.tensor.shape == (3, 224, 224) and first.source == "sample:china"


def test_to_rgb_float_image():
    img = Image.fromarray(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), mode="F")
    arr = np.asarray(to_rgb(img))
    assert arr.shape == (4, 4, 3) and arr.min() == 0 and arr.max() == 255


def test_renamed_duplicates_never_take_another_files_name(tmp_path):
    """0/cat.png, 1/cat.png, 2/cat-2.png: the second cat must not become 'cat-2' (the third file's name), or
    labels and positions keyed by name would point at the wrong image."""
    for cls, name, value in (("0", "cat.png", 10), ("1", "cat.png", 120), ("2", "cat-2.png", 240)):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / cls / name)
    src = load_images(tmp_path)
    assert len(set(src.names)) == 3
    by_origin = dict(zip([o.split(str(tmp_path))[1] for o in src.origins], src.names, strict=True))
    assert by_origin["/0/cat.png"] == "cat" and by_origin["/2/cat-2.png"] == "cat-2"
    assert by_origin["/1/cat.png"] not in ("cat", "cat-2")


def test_an_unreadable_file_leaves_names_aligned_with_the_images_read(tmp_path):
    for k, value in enumerate((10, 120, 240)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / f"p{k}.png")
    (tmp_path / "p1b_broken.jpg").write_text("not a jpeg")  # sorts between p1 and p2
    src = load_images(tmp_path, transform=lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float())
    assert len(src) == 4  # candidates, before anything is decoded
    with pytest.warns(ImageSkippedWarning, match="p1b_broken"):
        images = list(src)
    assert [im.name for im in images] == src.names == src.photo_names == ["p0", "p1", "p2"]
    assert len(src) == 3 and [float(im.tensor[0, 0, 0]) for im in images] == [10.0, 120.0, 240.0]
