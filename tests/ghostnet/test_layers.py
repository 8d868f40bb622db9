"""GhostModule: shapes, a brute-force per-channel computation, the exposed halves, argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ghostnet import GhostModule
from tests.helpers import randomize_
from tests.oracles import ghost_module_brute_force


@settings(max_examples=12, deadline=None)
@given(
    in_ch=st.integers(1, 6),
    out_ch=st.integers(1, 9),
    ratio=st.integers(2, 4),
    kernel=st.sampled_from([1, 3]),
    dw=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 2),
    relu=st.booleans(),
    dilation=st.integers(1, 2),
)
def test_matchesghost_module_brute_force(in_ch, out_ch, ratio, kernel, dw, stride, relu, dilation):
    torch.manual_seed(0)
    gm = GhostModule(in_ch, out_ch, kernel, ratio, dw, stride, relu, dilation=dilation)
    randomize_(gm)
    gm.eval()
    x = torch.randn(2, in_ch, 9, 8)
    with torch.no_grad():
        out = gm(x)
        expected = ghost_module_brute_force(gm, x)
    assert out.shape == (2, out_ch, math.ceil(9 / stride), math.ceil(8 / stride))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("out_ch,ratio", [(16, 2), (7, 2), (10, 3), (13, 4)])
def test_channel_split_and_param_count(out_ch, ratio):
    gm = GhostModule(5, out_ch, kernel_size=3, ratio=ratio, dw_size=3)
    init = math.ceil(out_ch / ratio)
    new = init * (ratio - 1)
    assert (gm.init_channels, gm.new_channels) == (init, new)
    assert gm.cheap_operation[0].groups == init
    # closed form: primary k*k*in per intrinsic map, d*d per ghost map, 2 BN affine params per channel
    expected = init * 5 * 9 + new * 9 + 2 * (init + new)
    assert sum(p.numel() for p in gm.parameters()) == expected


def test_forward_parts_and_hooks_give_the_two_halves():
    torch.manual_seed(1)
    gm = GhostModule(4, 7, ratio=2).eval()  # odd out: ghost half is cut to 3 of 4 maps
    seen = {}
    hooks = [
        gm.primary_conv.register_forward_hook(lambda m, i, o: seen.__setitem__("primary", o.clone())),
        gm.cheap_operation.register_forward_hook(lambda m, i, o: seen.__setitem__("cheap", o.clone())),
    ]
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        out = gm(x)
        intrinsic, ghost = gm.forward_parts(x)
    for h in hooks:
        h.remove()
    assert intrinsic.shape[1] == 4 and ghost.shape[1] == 3
    torch.testing.assert_close(torch.cat([intrinsic, ghost], 1), out)
    torch.testing.assert_close(seen["primary"], intrinsic)
    torch.testing.assert_close(seen["cheap"][:, :3], ghost)


def test_is_not_a_conv2d_and_keys_are_official():
    gm = GhostModule(8, 16, relu=False)
    assert not isinstance(gm, nn.Conv2d)
    assert [type(m) for m in gm.modules() if isinstance(m, nn.Conv2d)] == [nn.Conv2d, nn.Conv2d]
    assert set(gm.state_dict()) >= {
        "primary_conv.0.weight",
        "primary_conv.1.running_var",
        "cheap_operation.0.weight",
        "cheap_operation.1.bias",
    }


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(ratio=1), "ratio"),
        (dict(ratio=0), "ratio"),
        (dict(dw_size=4), "dw_size"),
        (dict(dw_size=0), "dw_size"),
        (dict(out_channels=0), "out_channels"),
        (dict(in_channels=0), "in_channels"),
        (dict(stride=0), "stride"),
        (dict(kernel_size=0), "kernel_size"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_fix(kwargs, name):
    args = dict(in_channels=4, out_channels=8) | kwargs
    with pytest.raises(ValueError, match=name) as info:
        GhostModule(**args)
    assert "use" in str(info.value) or "pass" in str(info.value)
