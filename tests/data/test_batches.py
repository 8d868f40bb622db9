"""The one image adapter (analysis.data.batches): every kind of source gives the same images, with the same
positions and shares, through every consumer (survey, ghostify, verify, figure 1, galleries, the CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import GhostmapsError, load_images, run_figure1, survey, verify_replacement
from analysis.convert.ghostify import GhostifyError, ghostify
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess
from analysis.hooks import capture_maps

N = 7


def pictures(n: int = N, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": i % 5}


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __iter__(self):
        return iter(self.x)  # single C×H×W images


class Named:
    """Anything with .batches(n) yielding (names, batch)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def batches(self, n: int):
        for i in range(0, len(self.x), n):
            yield [f"img{k}" for k in range(i, min(i + n, len(self.x)))], self.x[i:i + n]


def sources(x: torch.Tensor) -> dict:
    """Factories (a generator is spent once) of every kind of in-memory source, and whether its length is known."""
    labels = torch.arange(len(x)) % 5  # class indices of the 5-class net
    return {
        "tensor": (lambda: x, True),
        "list of images": (lambda: [img for img in x], True),
        "tuple of batches": (lambda: (x[:3], x[3:]), True),
        "(image, label) dataset": (lambda: torch.utils.data.TensorDataset(x, labels), True),
        "dict dataset": (lambda: DictDataset(x), True),
        "dataloader": (lambda: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=3),
                       True),
        "generator": (lambda: (x[i:i + 2] for i in range(0, len(x), 2)), False),
        "iterable dataset": (lambda: Stream(x), False),
        "named batches": (lambda: Named(x), False),
    }


KINDS = list(sources(pictures()))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_the_same_images_positions_and_shares(kind):
    x = pictures()
    make, sized = sources(x)[kind]
    images = as_images(make())
    assert images.length == (N if sized else None)
    assert images.tensor() is x if kind == "tensor" else torch.equal(images.tensor(), x)
    limited = as_images(make(), limit=5)
    assert torch.equal(limited.tensor(), x[:5]) and limited.length == (5 if sized else None)
    for batch_size in (1, 2, 4):
        got = list(as_images(make()).batches(batch_size))
        assert [p for b in got for p in b.positions] == list(range(N))
        assert all(torch.equal(b.images, x[b.positions]) for b in got)
        assert all(len(b.positions) <= max(batch_size, 4) for b in got)  # a loader's or generator's own batches
    # two processes, blocks of two images: image i goes to process (i // 2) % 2, with its position
    for rank in (0, 1):
        share = list(as_images(make()).batches(3, chunk=2, rank=rank, world=2))
        positions = [p for b in share for p in b.positions]
        assert positions == [i for i in range(N) if (i // 2) % 2 == rank]
        assert all(torch.equal(b.images, x[b.positions]) for b in share)
    name, first = as_images(make()).first()
    assert torch.equal(first, x[0]) and name == ("img0" if kind == "named batches" else "image-0")


def _write_folder(tmp_path) -> list:
    gen = np.random.default_rng(0)
    paths = []
    for k in range(3):
        path = tmp_path / "photos" / f"p{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(gen.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_paths_folders_globs_and_samples_need_a_preprocess_and_match_load_images(tmp_path):
    paths = _write_folder(tmp_path)
    pre = default_preprocess(18, 16)
    want = torch.stack([img.tensor for img in load_images(tmp_path / "photos", transform=pre)])
    for src in (tmp_path / "photos", str(tmp_path / "photos" / "*.png"), [str(p) for p in paths],
                load_images(tmp_path / "photos", transform=pre)):
        got = as_images(src, pre)
        assert got.length == 3 and torch.equal(got.tensor(), want)
        assert [n for b in got.batches(2) for n in b.names] == ["p0", "p1", "p2"]
    assert torch.equal(as_images(paths[1], pre).tensor(), want[1:2])
    share = list(as_images(tmp_path / "photos", pre).batches(2, chunk=1, rank=1, world=2))
    assert [b.positions for b in share] == [[1]] and torch.equal(share[0].images, want[1:2])
    chelsea = as_images("samples:chelsea", pre)
    assert chelsea.first()[0] == "chelsea" and chelsea.tensor().shape == (1, 3, 16, 16)
    with pytest.raises(GhostmapsError, match="need a preprocess"):
        as_images("samples")
    with pytest.raises(GhostifyError, match="calibration_images must be an N x C x H x W"):
        as_images(3.5, name="calibration_images", error=GhostifyError)
    with pytest.raises(GhostmapsError, match="each Dataset item must be one image"):
        as_images(torch.utils.data.TensorDataset(pictures().view(7, 1, 3, 16, 16).expand(7, 2, 3, 16, 16))).tensor()
    with pytest.raises(GhostmapsError, match="it yielded str"):
        as_images([torch.zeros(3, 4, 4), "x"]).tensor()


@pytest.fixture(scope="module")
def fitted():
    from tests.helpers import TinyNet, randomize_

    torch.manual_seed(0)
    net = randomize_(TinyNet()).eval()
    x = pictures()
    new, res = ghostify(net, layers="conv2", init="fit", calibration_images=x)
    return net, x, new, res


@pytest.mark.parametrize("kind", KINDS)
def test_every_consumer_reads_every_kind_like_the_tensor(kind, fitted):
    net, x, new, res = fitted
    make, _ = sources(x)[kind]
    # ghostify's calibration
    _, got = ghostify(net, layers="conv2", init="fit", calibration_images=make())
    assert got.replaced[0].intrinsic == res.replaced[0].intrinsic
    assert got.replaced[0].fit_error == pytest.approx(res.replaced[0].fit_error, rel=1e-9)
    # verify
    a, b = verify_replacement(net, new, make(), latency_runs=0), verify_replacement(net, new, x, latency_runs=0)
    assert a.n_images == N and b.summary().keys() <= a.summary().keys()  # labelled sources add accuracy
    assert (a.accuracy is not None) == (kind in ("(image, label) dataset", "dict dataset", "dataloader"))
    for key, value in b.summary().items():
        # a DataLoader's own batches of 3 round float32 convs slightly differently from one batch of all; an
        # interval's bound (mean - t * se) can lose relative precision by cancellation, hence the tiny abs
        assert a.summary()[key] == (value if value is None or isinstance(value, str)
                                    else pytest.approx(value, rel=1e-6, abs=1e-9)), key
    # the survey
    s, t = survey(net, make(), layers="conv2", progress=False), \
        survey(net, x, layers="conv2", progress=False)
    assert s.meta["images"] == N
    np.testing.assert_allclose(s["conv2"].similarity.matrix, t["conv2"].similarity.matrix, atol=1e-6)
    # figure 1 (the first image) and the gallery maps (the first three)
    fig = run_figure1(net, layer="conv2", image=make(), k=2)
    assert torch.equal(fig.maps, capture_maps(net, "conv2", x[:1])["conv2"][0])
    from analysis.pipeline import layer_maps

    maps, _ = layer_maps(net, "conv2", make(), n_images=3)
    assert torch.equal(maps, capture_maps(net, "conv2", x[:3])["conv2"])


def test_ghostify_and_verify_read_samples_like_the_cli(fitted):
    net = fitted[0]
    new, res = ghostify(net, layers="conv2", init="fit", calibration_images="samples")
    photos = torch.stack([img.tensor for img in load_images("samples", transform=default_preprocess())])
    _, same = ghostify(net, layers="conv2", init="fit", calibration_images=photos)
    assert res.replaced[0].intrinsic == same.replaced[0].intrinsic
    assert res.replaced[0].fit_error == pytest.approx(same.replaced[0].fit_error, rel=1e-9)
    report = verify_replacement(net, new, "samples:chelsea,china", latency_runs=0)
    assert report.n_images == 2 and report.input_size == (2, 3, 224, 224)
    from analysis.cli.common import images_batch

    small = default_preprocess(73, 64)
    assert torch.equal(images_batch(["samples:china", "samples:chelsea"], small, None),  # the samples order
                       as_images("samples:chelsea,china", small).tensor())
    _, small_res = ghostify(net, layers="conv2", init="fit", calibration_images="samples", preprocess=small)
    assert small_res.replaced[0].fit_error != res.replaced[0].fit_error  # the given preprocess was used


def test_labels_come_along_where_the_source_has_them():
    x = pictures()
    y = torch.arange(len(x)) % 3
    for src in (torch.utils.data.TensorDataset(x, y), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                batch_size=3), DictDataset(x), [(x[:4], y[:4]), (x[4:], y[4:])]):
        got = [b.labels for b in as_images(src).batches(2)]
        want = y if not isinstance(src, DictDataset) else torch.arange(len(x)) % 5
        assert torch.equal(torch.cat(got), want), type(src).__name__
    assert torch.equal(torch.cat([b.labels for b in as_images(x, labels=y).batches(4)]), y)
    assert all(b.labels is None for b in as_images(x).batches(4))
    floats = torch.utils.data.TensorDataset(x, torch.rand(len(x)))  # a regression target is not a class label
    assert all(b.labels is None for b in as_images(floats).batches(4))
    with pytest.raises(GhostmapsError, match="one integer class index per image"):
        as_images(x, labels=y[:3])
    with pytest.raises(GhostmapsError, match="labels= goes with an image tensor"):
        as_images([x[0]], labels=y[:1])


def test_evaluation_set_says_whether_a_dataset_or_loader_is_labelled():
    from analysis.data.labelled import evaluation_set

    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    pairs = torch.utils.data.TensorDataset(x, y)
    plain = [x[i] for i in range(4)]  # a list of image tensors: no labels
    assert evaluation_set(pairs).labelled and evaluation_set(torch.utils.data.DataLoader(pairs, batch_size=2)).labelled
    assert not evaluation_set(plain).labelled
