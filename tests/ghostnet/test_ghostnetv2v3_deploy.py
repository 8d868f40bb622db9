"""GhostNetV2 / V3 deploy: fuse (V3 re-parameterised first), ONNX Runtime, released weights via the hub cache."""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

import ghostnet
from ghostnet import GhostNetV3, fuse, ghostnetv2_100, ghostnetv2_130, ghostnetv3_100, load_checkpoint
from ghostnet.registry import model_cfg
from ghostnet.weights import CheckpointMismatchError, PretrainedWeightsUnavailable
from tests.helpers import onnx_and_torch_outputs
from tests.helpers_v2v3 import max_diff, randomize_rep_


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _image(size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["ghostnetv2_100", "ghostnetv3_050", "ghostnetv3_100"])
def test_fuse_keeps_outputs_and_leaves_no_bn_nor_branch(name):
    model = randomize_rep_(getattr(ghostnet, name)(), seed=7).eval()
    snapshot = copy.deepcopy(model.state_dict())
    fused = fuse(model)
    x = _image()
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert expected.abs().max() > 1e-2
    assert max_diff(got, expected) <= 1e-4
    assert _bns(fused) == 0 and not any("_rpr_" in n for n, _ in fused.named_modules())
    assert model.state_dict().keys() == snapshot.keys()  # the input model is untouched (V3 not deployed)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    assert type(fused) is type(model) and fused.blocks[6][0].ghost1.short_conv[0].bias is not None


def test_fused_v3_equals_fused_v2_with_the_same_weights():
    """V3's deploy network is V2's: load the folded V3 weights into a fused V2 and compare."""
    v3 = randomize_rep_(ghostnetv3_100(), seed=8).eval()
    fused_v3 = fuse(v3)
    fused_v2 = fuse(ghostnetv2_100())
    fused_v2.load_state_dict(fused_v3.state_dict())  # strict: same keys and shapes
    x = _image(seed=2)
    with torch.no_grad():
        assert max_diff(fused_v2(x), fused_v3(x)) <= 1e-5
        assert max_diff(fused_v3(x), v3(x)) <= 1e-4


@pytest.mark.parametrize(
    "name,fused",
    [("ghostnetv2_100", False), ("ghostnetv2_100", True), ("ghostnetv3_100", True)],
    ids=["v2-unfused", "v2-fused", "v3-fused"],
)
def test_onnx_export_matches_pytorch(tmp_path, name, fused):
    pytest.importorskip("onnxruntime")
    model = randomize_rep_(getattr(ghostnet, name)(), seed=3).eval()
    if fused:
        model = fuse(model)
    onnx_out, expected = onnx_and_torch_outputs(model, str(tmp_path / f"{name}.onnx"))
    assert np.abs(expected).max() > 1e-2
    assert np.abs(onnx_out - expected).max() <= 1e-4


@pytest.fixture
def hub_dir(tmp_path):
    """A private torch hub folder (nothing is ever downloaded in these tests)."""
    original = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(original)


def _release_like(state: dict[str, torch.Tensor]) -> dict:
    """A checkpoint shaped like the V2/V3 releases (timm train.py): wrappers, EMA copy, run args, thop keys."""
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in state.items()}
    plain = dict(state) | {"total_ops": torch.zeros(1, dtype=torch.float64), "blocks.0.0.total_params": torch.zeros(1)}
    return {
        "epoch": 299,
        "arch": "ghostnetv3",
        "state_dict": plain,
        "state_dict_ema": ema,
        "args": argparse.Namespace(model="ghostnetv3", lr=0.05, mean=(0.485, 0.456, 0.406)),
    }


@pytest.mark.parametrize("builder,name", [(ghostnetv2_130, "ghostnetv2_130"), (ghostnetv3_100, "ghostnetv3_100")])
def test_pretrained_loads_the_release_file_from_the_hub_cache(hub_dir, monkeypatch, builder, name):
    def no_network(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    state = randomize_rep_(builder(), seed=9).state_dict()
    torch.save(_release_like(state), hub_dir / os.path.basename(model_cfg(name).url))
    model = builder(pretrained=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # the plain (non-EMA) weights, as timm


def test_pretrained_deploy_loads_then_reparameterizes(hub_dir):
    reference = randomize_rep_(ghostnetv3_100(), seed=10).eval()
    torch.save(_release_like(reference.state_dict()), hub_dir / os.path.basename(model_cfg("ghostnetv3_100").url))
    model = ghostnetv3_100(pretrained=True, deploy=True).eval()
    assert isinstance(model, GhostNetV3) and model.deployed
    x = _image(seed=4)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= 1e-4


def test_pretrained_offline_raises_the_v1_message(hub_dir, monkeypatch):
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        ghostnetv3_100(pretrained=True)
    message = str(info.value)
    assert calls == [model_cfg("ghostnetv3_100").url]
    assert calls[0].startswith("https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/GhostNetV3/")
    assert "ghostnetv3_100" in message and str(hub_dir) in message
    assert "pretrained=False" in message and "load_checkpoint(model, local_path)" in message


@pytest.mark.parametrize("name", ["ghostnetv3_050", "ghostnetv3_130", "ghostnetv3_160"])
def test_widths_without_released_weights_say_so(name):
    with pytest.raises(ValueError, match=f"{name}: no pretrained weights were released"):
        getattr(ghostnet, name)(pretrained=True)


def test_load_checkpoint_file_with_ema_and_refused_pickles(tmp_path):
    state = randomize_rep_(ghostnetv2_100(), seed=11).state_dict()
    path = tmp_path / "ck_ghostnetv2_10.pth.tar"
    torch.save(_release_like(state), path)
    ema = load_checkpoint(ghostnetv2_100(), path, use_ema=True).state_dict()
    assert torch.equal(ema["conv_stem.weight"], state["conv_stem.weight"] + 1)

    # an arbitrary pickled object: weights_only refuses it, and the error says what to do
    torch.save({"state_dict": state, "saved": datetime.date(2024, 4, 17)}, tmp_path / "opaque.pth")
    with pytest.raises(CheckpointMismatchError, match="weights_only=False"):
        load_checkpoint(ghostnetv2_100(), tmp_path / "opaque.pth")
