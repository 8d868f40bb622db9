"""A long survey loses nothing: killed with SIGKILL mid-run and resumed from its checkpoint, it gives exactly the
uninterrupted result; a checkpoint made for another model, layer set, image source or settings is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from analysis import GhostmapsError, survey
from tests.helpers import TinyNet

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"layers": ["conv1", "conv2"], "batch_size": 4, "baseline": "untrained", "baseline_positions": None,
            "checkpoint_every": 1, "progress": False}


class SlowTinyNet(TinyNet):
    """TinyNet whose forward takes a while (the same weights and state dict names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.15)
        return super().forward(x)


def model(seed: int = 0, slow: bool = False) -> TinyNet:
    """TinyNet with seeded weights; ``slow`` (the same weights) for the run that gets killed."""
    torch.manual_seed(seed)
    return (SlowTinyNet() if slow else TinyNet()).eval()


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(40, 3, 10, 10, generator=torch.Generator().manual_seed(seed))


CHILD = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    torch.set_num_threads(1)
    from analysis import survey
    from tests.survey.test_survey_checkpoint import SETTINGS, images, model
    survey(model(slow=True), images(), checkpoint={path!r}, **SETTINGS)
    print("finished")
""")


def test_a_killed_survey_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    path = tmp_path / "run.ckpt"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not path.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a batch or two more, so the kill lands between (or during) checkpoint writes
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, (out, err)  # killed, not finished
    assert b"finished" not in out and path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name != path.name and not p.name.startswith(".")]
    resumed = survey(model(), images(), checkpoint=path, resume=True, **SETTINGS)
    assert 0 < resumed.meta["resumed_from"] < 40
    whole = survey(model(), images(), **{**SETTINGS, "checkpoint_every": 50})
    assert resumed.to_dict()["layers"] == whole.to_dict()["layers"]
    for name in ("conv1", "conv2"):
        for a, b in ((resumed[name].stats, whole[name].stats), (resumed[name].baseline_stats, whole[name].baseline_stats)):
            for key in ("gram", "cross", "group_gram", "group_cross", "sums", "pair_sums", "count", "nonzero", "min",
                        "max"):
                assert torch.equal(getattr(a, key), getattr(b, key)), (name, key)


def test_a_checkpoint_for_something_else_is_refused_naming_what(tmp_path):
    path = tmp_path / "run.ckpt"
    fast = {**SETTINGS, "baseline": None}
    net = TinyNet().eval()
    survey(net, images()[:8], checkpoint=path, **fast)
    again = survey(net, images()[:8], checkpoint=path, resume=True, **fast)  # finished: nothing left to fold
    assert again.meta["resumed_from"] == 8
    torch.manual_seed(3)
    for kwargs, what in (({"model": TinyNet().eval()}, "model"),
                         ({"layers": ["conv2"]}, "layer set"),
                         ({"images": images(2)[:8]}, "image source"),
                         ({"groups": 4}, "settings")):
        call = {**fast, "model": net, "images": images()[:8], **kwargs}
        with pytest.raises(GhostmapsError, match=f"another {what}"):
            survey(call.pop("model"), call.pop("images"), checkpoint=path, resume=True, **call)
    changed = images()[:8].clone()
    changed[7, 0, 0, 0] += 1.0  # a tensor that differs only in its last image is another source
    with pytest.raises(GhostmapsError, match="another image source"):
        survey(net, changed, checkpoint=path, resume=True, **fast)
    with pytest.raises(GhostmapsError, match="checkpoint=PATH"):
        survey(net, images()[:8], resume=True, **fast)
    old = torch.load(path, weights_only=True)
    old["version"] = 2
    torch.save(old, path)
    with pytest.raises(GhostmapsError, match="another version of ghostmaps"):
        survey(net, images()[:8], checkpoint=path, resume=True, **fast)


def test_image_files_rewritten_since_the_checkpoint_are_another_source(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = torch.Generator().manual_seed(4)
    for k in range(4):
        pixels = (torch.rand(12, 12, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"p{k}.png")
    fast = {**SETTINGS, "baseline": None}
    net, path = TinyNet().eval(), tmp_path / "run.ckpt"
    survey(net, str(folder), checkpoint=path, **fast)
    assert survey(net, str(folder), checkpoint=path, resume=True, **fast).meta["resumed_from"] == 4
    pixels = (torch.rand(16, 16, 3, generator=rng) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(folder / "p2.png")  # same name, new content
    with pytest.raises(GhostmapsError, match="another image source"):
        survey(net, str(folder), checkpoint=path, resume=True, **fast)


def test_a_dataset_differing_past_its_first_image_is_another_source(tmp_path):
    path = tmp_path / "run.ckpt"
    fast = {**SETTINGS, "baseline": None}
    net = TinyNet().eval()
    x = images()[:16]
    survey(net, TensorDataset(x), checkpoint=path, **fast)
    assert survey(net, TensorDataset(x.clone()), checkpoint=path, resume=True, **fast).meta["resumed_from"] == 16
    other = x.clone()
    other[8:] = images(2)[8:16]  # the same length and first images, other images from the middle on
    with pytest.raises(GhostmapsError, match="another image source"):
        survey(net, TensorDataset(other), checkpoint=path, resume=True, **fast)


def test_images_spread_reads_evenly_spaced_dataset_items():
    from analysis.data.batches import as_images

    x = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    got = as_images(TensorDataset(x)).spread(4)
    assert [float(t[0, 0, 0]) for t in got] == [0.0, 3.0, 6.0, 9.0]  # round(k·9/3)
    assert len(as_images(x).spread(4)) == 1  # a tensor source: its first image only
