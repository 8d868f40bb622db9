"""GhostNet: exact sizes from the reference facts, official state-dict keys, parity with timm, features."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import ghostnet
from ghostnet import GhostBottleneck, GhostNet, SqueezeExcite, ghostnet_050, ghostnet_100, ghostnet_130
from ghostnet.layers import make_divisible
from tests.helpers import randomize_

# From /work/shared/reference/ghostnet-facts.md §3.4 (measured on the official code and timm).
FACT_PARAMS = {0.5: 2_587_292, 1.0: 5_182_508, 1.3: 7_358_820}
BUILDERS = {0.5: ghostnet_050, 1.0: ghostnet_100, 1.3: ghostnet_130}
TIMM_NAMES = {0.5: "ghostnet_050", 1.0: "ghostnet_100", 1.3: "ghostnet_130"}


@pytest.mark.parametrize("width", [0.5, 1.0, 1.3])
def test_param_counts_match_the_reference(width):
    model = BUILDERS[width]()
    assert sum(p.numel() for p in model.parameters()) == FACT_PARAMS[width]
    assert model.width == width


def test_state_dict_keys_are_the_official_ones():
    sd = ghostnet_100().state_dict()
    assert len(sd) == 512  # facts §2.9: 272 parameters + 80 BNs x 3 buffers
    expected_shapes = {  # facts Appendix A
        "conv_stem.weight": (16, 3, 3, 3),
        "blocks.0.0.ghost1.primary_conv.0.weight": (8, 16, 1, 1),
        "blocks.6.3.se.conv_reduce.weight": (120, 480, 1, 1),
        "blocks.6.3.shortcut.0.weight": (80, 1, 3, 3),
        "blocks.6.3.shortcut.2.weight": (112, 80, 1, 1),
        "blocks.7.0.conv_dw.weight": (672, 1, 5, 5),
        "blocks.7.0.bn_dw.running_var": (672,),
        "blocks.8.3.ghost2.cheap_operation.0.weight": (80, 1, 3, 3),
        "blocks.9.0.conv.weight": (960, 160, 1, 1),
        "blocks.9.0.bn1.weight": (960,),
        "conv_head.bias": (1280,),
        "classifier.weight": (1000, 1280),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    shortcut_blocks = {k.split(".shortcut")[0] for k in sd if ".shortcut." in k}
    assert shortcut_blocks == {"blocks.1.0", "blocks.3.0", "blocks.5.0", "blocks.6.3", "blocks.7.0"}


@pytest.mark.parametrize("width", [0.5, 1.0, 1.3])
def test_outputs_match_timm_with_its_weights(width):
    reference = randomize_(timm.create_model(TIMM_NAMES[width], pretrained=False), seed=int(width * 10)).eval()
    ours = BUILDERS[width]().eval()
    ghostnet.load_checkpoint(ours, reference.state_dict())  # strict
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 1e-2  # not a degenerate all-zero comparison
    assert (got - expected).abs().max().item() <= 1e-5


def test_make_divisible_matches_the_resolved_channel_plan():
    # facts §2.8: mid/out channels at widths 0.5 and 1.3
    assert [make_divisible(v * 0.5, 4) for v in (16, 48, 72, 120, 200, 184, 672, 960)] == [8, 24, 36, 60, 100, 92, 336, 480]
    assert [make_divisible(v * 1.3, 4) for v in (16, 48, 72, 200, 184, 480, 672)] == [20, 64, 92, 260, 240, 624, 872]
    assert [make_divisible(v * 0.25, 4) for v in (72, 120, 872, 1248)] == [20, 32, 220, 312]


def test_squeeze_excite_uses_the_hard_sigmoid_gate():
    torch.manual_seed(0)
    se = SqueezeExcite(8).eval()
    assert se.reduced_channels == 4
    x = torch.randn(2, 8, 5, 5) * 3
    pooled = x.mean(dim=(2, 3), keepdim=True)
    gate_in = se.conv_expand(torch.relu(se.conv_reduce(pooled)))
    with torch.no_grad():
        torch.testing.assert_close(se(x), x * F.relu6(gate_in + 3) / 6)


def test_bottleneck_structure():
    identity = GhostBottleneck(16, 48, 16, 3, 1)
    assert len(identity.shortcut) == 0 and identity.conv_dw is None and identity.se is None
    down = GhostBottleneck(16, 48, 24, 5, 2, se_ratio=0.25)
    assert down.conv_dw.stride == (2, 2) and down.conv_dw.groups == 48 and down.conv_dw.kernel_size == (5, 5)
    assert down.se is not None and len(down.shortcut) == 4
    assert not down.ghost2.use_relu and down.ghost1.use_relu
    x = torch.randn(1, 16, 10, 10)
    assert down(x).shape == (1, 24, 5, 5)
    with pytest.raises(ValueError, match="stride"):
        GhostBottleneck(16, 48, 24, 3, 3)


def test_stage_features():
    model = ghostnet_100().eval()
    assert model.stage_names == ["act1"] + [f"blocks.{i}" for i in range(10)]
    channels = [i["num_chs"] for i in model.feature_info]
    assert channels == [16, 16, 24, 24, 40, 40, 80, 112, 160, 160, 960]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(x)
        features = model.forward_features(x)
        logits = model(x)
    for info in model.feature_info:
        out = stages[info["module"]]
        assert out.shape == (1, info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
        assert isinstance(model.get_submodule(info["module"]), nn.Module)
    torch.testing.assert_close(stages["blocks.9"], features)
    assert logits.shape == (1, 1000)


def test_constructor_arguments():
    model = GhostNet(width=1.0, num_classes=10, dropout=0.0)
    assert model.classifier.out_features == 10
    with pytest.raises(ValueError, match="width"):
        GhostNet(width=0)
    with pytest.raises(ValueError, match="dropout"):
        GhostNet(dropout=1.0)


def test_ghostnet_package_never_imports_analysis():
    import subprocess
    import sys

    code = "import sys, ghostnet, ghostnet.fuse, ghostnet.weights; print(any(m.split('.')[0] == 'analysis' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lists_every_constructor_with_its_metadata():
    from ghostnet import registry

    names = registry.list_models()
    assert {"ghostnet_050", "ghostnet_100", "ghostnet_130", "ghost_vgg16", "ghost_resnet56", "ghost_resnet50"} <= set(names)
    for name in names:
        cfg = registry.model_cfg(name)
        assert cfg.name == name and len(cfg.input_size) == 3 and len(cfg.mean) == len(cfg.std) == 3
        assert cfg.resize >= cfg.input_size[-1]
    assert registry.model_cfg("ghostnet_100").url.endswith("state_dict_73.98.pth")
    assert registry.model_cfg("ghostnet_050").url is None
    cifar = registry.model_cfg("ghost_resnet56")
    assert cifar.input_size == (3, 32, 32) and cifar.num_classes == 10 and cifar.resize == 32
    model = registry.create_model("ghostnet_050", num_classes=7)
    assert isinstance(model, GhostNet) and model.classifier.out_features == 7
    with pytest.raises(ValueError, match=r"Did you mean: .*ghostnet_100"):
        registry.model_cfg("ghostnet_10")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model()(ghostnet_100)


def test_load_model_takes_preprocessing_from_the_registry():
    from PIL import Image

    from analysis import load_model

    loaded = load_model("ghost_resnet56", weights=None)
    x = loaded.preprocess(Image.new("RGB", (64, 48), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    # red in CIFAR normalisation: (1 - mean) / std on the red channel, (0 - mean) / std elsewhere
    assert float(x[0, 0, 0]) == pytest.approx((1 - 0.4914) / 0.2470, rel=1e-4)
    assert float(x[1, 0, 0]) == pytest.approx(-0.4822 / 0.2435, rel=1e-4)
