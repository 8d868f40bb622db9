"""Checkpoint loading: wrappers, prefixes, profiler leftovers, mismatch messages, offline pretrained."""

from __future__ import annotations

import os
import urllib.error

import pytest
import timm
import torch

import ghostnet
from ghostnet import ghostnet_050, ghostnet_100, ghostnet_130, load_checkpoint
from ghostnet.registry import model_cfg
from ghostnet.weights import (
    CheckpointMismatchError,
    PretrainedWeightsUnavailable,
    extract_state_dict,
)


@pytest.fixture(scope="module")
def timm_state():
    """A timm ghostnet_100 state dict with every float tensor randomized (a stand-in for real weights)."""
    gen = torch.Generator().manual_seed(5)
    sd = timm.create_model("ghostnet_100", pretrained=False).state_dict()
    return {k: torch.rand(v.shape, generator=gen) + 0.5 if v.is_floating_point() else v for k, v in sd.items()}


def _same(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in reference.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"state_dict_ema": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 0.1}},
        lambda sd: {"model": {"state_dict": {f"module.module.{k}": v for k, v in sd.items()}}},
        lambda sd: sd | {"total_ops": torch.zeros(1), "blocks.0.0.total_params": torch.zeros(1)},
        lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    ],
    ids=["plain", "state_dict", "model", "ema-module", "dp-module", "nested", "thop", "no-nbt"],
)
def test_unwraps_containers_prefixes_and_profiler_keys(timm_state, wrap):
    model = ghostnet_100()
    load_checkpoint(model, wrap(timm_state))
    expected = {k: v for k, v in timm_state.items() if not k.endswith("num_batches_tracked")}
    assert _same(model, expected)


def test_use_ema_prefers_the_ema_copy(timm_state):
    other = {k: v + 1 if v.is_floating_point() else v for k, v in timm_state.items()}
    checkpoint = {"state_dict": timm_state, "state_dict_ema": other}
    assert torch.equal(extract_state_dict(checkpoint)["conv_stem.weight"], timm_state["conv_stem.weight"])
    assert torch.equal(extract_state_dict(checkpoint, use_ema=True)["conv_stem.weight"], other["conv_stem.weight"])


def test_loads_from_a_file(tmp_path, timm_state):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": timm_state}, path)
    assert _same(load_checkpoint(ghostnet_100(), path), timm_state)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(ghostnet_100(), tmp_path / "missing.pth")


def test_wrong_width_lists_missing_unexpected_and_mismatched_keys(timm_state):
    model = ghostnet_050()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(timm_state)
    state["extra.weight"] = torch.zeros(3)
    del state["classifier.bias"]
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    message = str(info.value)
    assert "GhostNet(width=0.5)" in message
    assert "1 missing keys: classifier.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "('conv_stem.weight', (16, 3, 3, 3), (8, 3, 3, 3))" in message
    assert "ghostnet_050/100/130" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_non_strict_loads_what_fits(timm_state):
    model = ghostnet_100(num_classes=10)
    load_checkpoint(model, timm_state, strict=False)
    assert torch.equal(model.conv_stem.weight, timm_state["conv_stem.weight"])
    assert model.classifier.weight.shape == (10, 1280)


def test_not_a_state_dict():
    with pytest.raises(CheckpointMismatchError, match="no state dict found"):
        load_checkpoint(ghostnet_100(), {"epoch": 3, "arch": "ghostnet"})


def test_pretrained_offline_raises_a_clear_error(monkeypatch, tmp_path):
    original = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    try:
        with pytest.raises(PretrainedWeightsUnavailable) as info:
            ghostnet_100(pretrained=True)
    finally:
        torch.hub.set_dir(original)
    message = str(info.value)
    assert calls == [model_cfg("ghostnet_100").url]
    assert "huawei-noah/ghostnet/raw/master/ghostnet_pytorch/models/state_dict_73.98.pth" in calls[0]
    assert "ghostnet_100" in message
    assert os.path.join(str(tmp_path / "hub"), "checkpoints") in message
    assert "pretrained=False" in message and "load_checkpoint(model, local_path)" in message
    assert "online" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pretrained_uses_the_hub_cache(tmp_path, timm_state):
    """With the file already in the hub cache, pretrained=True loads it without touching the network."""
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(timm_state, cache / os.path.basename(model_cfg("ghostnet_100").url))
    original = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        model = ghostnet_100(pretrained=True)
    finally:
        torch.hub.set_dir(original)
    assert _same(model, timm_state)


@pytest.mark.parametrize("builder,name", [(ghostnet_050, "ghostnet_050"), (ghostnet_130, "ghostnet_130")])
def test_widths_without_released_weights_say_so(builder, name):
    with pytest.raises(ValueError, match=f"{name}: no pretrained weights were released"):
        builder(pretrained=True)


def test_exported_from_the_package():
    assert ghostnet.load_checkpoint is load_checkpoint
