"""fuse(model, flat=True): one flat forward of torch functions with the fused weights (no timings here)."""

from __future__ import annotations

import torch
from torch import nn

import ghostnet
from ghostnet import fuse
from ghostnet.flat import add_inplace, conv1x1, flatten
from tests.helpers import randomize_
from tests.helpers_v2v3 import randomize_rep_


def _calls(gm: torch.fx.GraphModule) -> set[str]:
    return {n.op for n in gm.graph.nodes}


def test_flat_v1_v2_v3_match_the_eval_model_and_keep_the_keys():
    for name in ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_050"):
        model = randomize_rep_(getattr(ghostnet, name)(), seed=3).eval()  # V3 branches scaled: outputs O(1)
        fused, flat = fuse(model), fuse(model, flat=True)
        assert isinstance(flat, torch.fx.GraphModule) and not flat.training
        assert "call_module" not in _calls(flat)  # every layer became a function call
        assert list(flat.state_dict()) == list(fused.state_dict())
        for x in (torch.randn(2, 3, 64, 64), torch.randn(1, 3, 48, 56).contiguous(memory_format=torch.channels_last)):
            with torch.inference_mode():
                expected = model(x)
                assert (flat(x) - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item()), name
                assert torch.equal(flat(x), flat(x))  # in-place ops never touch state or the input
    targets = {n.target for n in flat.graph.nodes if n.op == "call_function"}
    assert conv1x1 in targets and add_inplace in targets


def test_flat_never_changes_the_input_or_the_model():
    model = randomize_(ghostnet.ghostnet_050(), seed=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flat = fuse(model, flat=True)
    x = torch.randn(1, 3, 64, 64)
    x0 = x.clone()
    with torch.inference_mode():
        flat(x)
    assert torch.equal(x, x0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_conv1x1_is_the_conv_and_shared_operands_are_not_added_in_place():
    conv = nn.Conv2d(6, 5, 1).eval()
    x = torch.randn(2, 6, 7, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(conv1x1(x, conv.weight.flatten(1), conv.bias), conv(x), atol=1e-6)

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y + x, y * 2  # y is read twice: its add must not be in place

    model = Shared().eval()
    flat = flatten(model)
    assert add_inplace not in {n.target for n in flat.graph.nodes}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        for got, want in zip(flat(x), model(x), strict=True):
            assert torch.allclose(got, want)
    assert add_inplace(torch.ones(1, 3), torch.ones(2, 3)).shape == (2, 3)  # broadcasting: not in place
