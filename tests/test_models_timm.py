"""timm's zoo by name (``timm:<name>``): random init, timm's preprocessing, its Hugging Face cache, local
weights files, the offline and missing-timm errors; GhostNetV2/V3 by name. The network is never touched."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from PIL import Image

from analysis import GhostmapsError, WeightsUnavailableError, load_model

timm = pytest.importorskip("timm")

SMALL = "mobilenetv3_small_050"  # 1.6M params; its default tag is lamb_in1k


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Hugging Face / torch hub cache, HF offline mode, and sockets that refuse to connect."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))

    def no_network(*args, **kwargs):
        raise OSError("the network is off in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def put_in_hf_cache(cache, repo: str, state: dict[str, torch.Tensor]):
    """Write ``state`` where huggingface_hub keeps ``repo``'s model.safetensors (refs/main -> a snapshot)."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    path = folder / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_random_init_is_seeded_and_uses_timms_preprocessing():
    loaded = load_model("timm:test_resnet", weights=None)
    assert type(loaded.model).__name__ == "ResNet" and not loaded.model.training
    assert loaded.info.name == "timm:test_resnet" and loaded.info.source == "timm"
    assert loaded.info.weights == "random" and loaded.info.weights_file is None
    again = load_model("timm:test_resnet", weights=None).model
    other = load_model("timm:test_resnet", weights=None, seed=1).model
    assert torch.equal(loaded.model.fc.weight, again.fc.weight) and not torch.equal(again.fc.weight, other.fc.weight)
    state = torch.get_rng_state()
    load_model("timm:test_resnet", weights=None)
    assert torch.equal(state, torch.get_rng_state())
    # test_resnet's data config: 160 px, crop 0.95, bilinear, mean = std = 0.5 (not ImageNet's 224 / 0.875)
    config = timm.data.resolve_model_data_config(loaded.model)
    assert config["input_size"] == (3, 160, 160) and config["mean"] == (0.5, 0.5, 0.5)
    reference = timm.data.create_transform(**config)
    image = Image.new("RGB", (300, 240), (200, 30, 90))
    ours = loaded.preprocess(image)
    assert ours.shape == (3, 160, 160) and torch.equal(ours, reference(image))
    assert abs(ours[0, 0, 0].item() - (200 / 255 - 0.5) / 0.5) < 1e-5


def test_pretrained_weights_come_from_the_hf_cache_offline(offline):
    source = timm.create_model(SMALL)
    with torch.no_grad():
        source.classifier.weight.normal_()
    path = put_in_hf_cache(offline, f"timm/{SMALL}.lamb_in1k", source.state_dict())
    loaded = load_model(f"timm:{SMALL}")
    assert loaded.info.weights == f"hf-hub:timm/{SMALL}.lamb_in1k" and loaded.info.source == "timm"
    assert loaded.info.weights_file == str(path)
    assert torch.equal(loaded.model.classifier.weight, source.classifier.weight)


def test_offline_without_weights_names_the_model_the_cache_and_the_ways_out(offline):
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("timm:resnet18")
    text = str(info.value)
    assert "timm:resnet18" in text and "timm/resnet18.a1_in1k" in text and str(offline) in text
    assert "HF_HUB_OFFLINE is set" in text
    assert "weights=None" in text and "--weights none" in text and "local checkpoint" in text and "online" in text


def test_a_local_weights_file(tmp_path):
    source = timm.create_model("test_resnet")
    with torch.no_grad():
        source.fc.weight.normal_()
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    loaded = load_model("timm:test_resnet", weights=str(path))
    assert torch.equal(loaded.model.fc.weight, source.fc.weight)
    assert loaded.info.weights == str(path) and loaded.info.weights_file == str(path) and loaded.info.source == "timm"
    assert loaded.preprocess(Image.new("RGB", (200, 200))).shape == (3, 160, 160)
    with pytest.raises(GhostmapsError, match="does not fit"):
        load_model(f"timm:{SMALL}", weights=path)


def test_unknown_names_tags_and_weights_say_what_exists():
    with pytest.raises(GhostmapsError, match="unknown timm model 'resnet5o'.*resnet50"):
        load_model("timm:resnet5o", weights=None)
    with pytest.raises(GhostmapsError, match="no pretrained tag 'nope'.*resnet18.a1_in1k"):
        load_model("timm:resnet18.nope", weights=None)
    with pytest.raises(GhostmapsError, match="timm has no pretrained weights for 'botnet50ts_256'"):
        load_model("timm:botnet50ts_256")
    with pytest.raises(GhostmapsError, match="timm:<name>.<tag>"):
        load_model("timm:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(GhostmapsError, match="names no timm model"):
        load_model("timm:", weights=None)
    with pytest.raises(GhostmapsError, match="timm:<name>"):
        load_model("resnet5o")  # a torchvision typo points at the timm spec too


def test_without_timm_a_timm_spec_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(GhostmapsError, match=r"pip install 'ghostmaps\[timm\]'"):
        load_model("timm:resnet18", weights=None)
    assert load_model("resnet18", weights=None).info.source == "torchvision"  # the rest works without it


def test_ghostnetv2_and_v3_by_name_with_their_registry_preprocessing():
    import ghostnet
    from ghostnet.registry import model_cfg

    for name, cls in (("ghostnetv2_100", ghostnet.GhostNetV2), ("ghostnetv3_100", ghostnet.GhostNetV3)):
        loaded = load_model(name, weights=None)
        assert isinstance(loaded.model, cls) and loaded.info.source == "ghostmaps" and loaded.info.weights == "random"
        cfg = model_cfg(name)
        x = loaded.preprocess(Image.new("RGB", (320, 256), (255, 255, 255)))
        assert x.shape == cfg.input_size
        assert abs(x[0, 0, 0].item() - (1 - cfg.mean[0]) / cfg.std[0]) < 1e-5
        with torch.inference_mode():
            assert loaded.model(x[None]).shape == (1, cfg.num_classes)
