"""Model loading: offline pretrained weights, random init, callables, modules, checkpoints, clear errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from analysis import GhostmapsError, WeightsUnavailableError, load_images, load_model
from analysis.data import models as models_mod

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
PALACE = 698


def top1(model, preprocess, source: str) -> int:
    image = next(iter(load_images(source, transform=preprocess)))
    with torch.inference_mode():
        return int(model(image.tensor.unsqueeze(0)).argmax())


def test_offline_pretrained_mobilenet_recognises_real_photos(mobilenet):
    model, preprocess, info = mobilenet
    assert info.weights == "MobileNet_V2_Weights.IMAGENET1K_V1" and not model.training
    assert info.weights_file.endswith("mobilenet_v2-b0353104.pth")
    assert top1(model, preprocess, "samples:chelsea") in CAT_CLASSES
    assert top1(model, preprocess, "samples:china") == PALACE


def test_offline_weights_hash_is_checked(monkeypatch):
    name = "mobilenet_v2-b0353104.pth"
    package, rel, _ = models_mod.OFFLINE_WEIGHTS[name]
    monkeypatch.setitem(models_mod.OFFLINE_WEIGHTS, name, (package, rel, "0" * 64))
    with pytest.raises(WeightsUnavailableError, match="SHA-256"):
        models_mod.offline_weights_file(name)


def test_random_init_is_seeded():
    a = load_model("resnet18", weights=None).model
    b = load_model("resnet18", weights=None).model
    c = load_model("resnet18", weights=None, seed=1).model
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)
    state = torch.get_rng_state()
    load_model("resnet18", weights=None)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_missing_weights_offline_give_a_helpful_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("resnet18")
    text = str(info.value)
    assert "resnet18" in text and str(tmp_path / "hub" / "checkpoints") in text
    assert "weights=None" in text and "local checkpoint" in text and "online" in text


def test_unknown_names_list_close_matches():
    with pytest.raises(GhostmapsError, match="resnet50"):
        load_model("resnet5o")
    with pytest.raises(GhostmapsError, match="IMAGENET1K_V1"):
        load_model("mobilenet_v2", weights="IMAGENET9K")
    with pytest.raises(GhostmapsError, match="cannot import"):
        load_model("no_such_package.models:build")
    with pytest.raises(GhostmapsError, match="has no attribute"):
        load_model("torchvision.models:resnet1800")


def test_callable_spec_and_module_spec():
    loaded = load_model("torchvision.models:mobilenet_v3_small", weights=None)
    assert isinstance(loaded.model, torchvision.models.MobileNetV3) and loaded.info.source == "callable"
    mine = torchvision.models.resnet18(weights=None).train()
    got = load_model(mine)
    assert mine.training and not got.model.training  # the user's module is copied, not changed
    assert got.model is not mine and torch.equal(got.model.fc.weight, mine.fc.weight)
    with pytest.raises(GhostmapsError, match="random initialisation"):
        load_model(mine, weights=None)


def test_checkpoint_path_with_wrappers(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model("resnet18", weights=str(path))
    assert torch.equal(loaded.model.fc.weight, source.fc.weight) and loaded.info.weights_file == str(path)
    with pytest.raises(GhostmapsError, match="does not fit") as info:
        load_model("resnet34", weights=path)
    assert "missing" in str(info.value)
    with pytest.raises(GhostmapsError, match="does not exist"):
        load_model("resnet18", weights=str(tmp_path / "nope.pth"))
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    with pytest.raises(GhostmapsError, match="cannot read"):
        load_model("resnet18", weights=tmp_path / "bad.pth")


def test_ghostnet_family_by_name(monkeypatch, tmp_path):
    import ghostnet

    loaded = load_model("ghostnet_100", weights=None)
    assert isinstance(loaded.model, ghostnet.GhostNet) and loaded.info.source == "ghostmaps"
    assert torch.equal(loaded.model.conv_stem.weight, load_model("ghostnet_100", weights=None).model.conv_stem.weight)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match="ghostnet_100"):
        load_model("ghostnet_100")
    with pytest.raises(GhostmapsError, match="no pretrained weights"):
        load_model("ghostnet_130")


def test_weights_that_cannot_apply_are_rejected():
    with pytest.raises(GhostmapsError, match="ready-made nn.Module"):
        load_model(torchvision.models.resnet18(weights=None), weights="IMAGENET1K_V1")
    with pytest.raises(GhostmapsError, match="cannot be applied to model spec"):
        load_model("torchvision.models:resnet18", weights="IMAGENET1K_V1")


def test_as_loaded_accepts_results_names_and_modules(mobilenet):
    from PIL import Image

    from analysis.data.models import as_loaded

    assert as_loaded(mobilenet) is mobilenet
    net = torchvision.models.resnet18(weights=None)
    wrapped = as_loaded(net)
    assert wrapped.model is net and wrapped.info.weights == "as given"
    assert wrapped.preprocess(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
    with pytest.raises(GhostmapsError, match="nn.Module"):
        as_loaded(42)
