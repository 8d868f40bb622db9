"""GhostNetV2 / V3: parity with timm at every width, re-parameterisation, sizes, attention capture, keys."""

from __future__ import annotations

import pytest
import torch
from timm.utils import reparameterize_model
from torch import nn

from ghostnet import (
    GhostBottleneck,
    GhostModule,
    GhostModuleV2,
    GhostModuleV3,
    GhostNetV2,
    GhostNetV3,
    fuse,
    ghostnet_100,
    ghostnetv2_100,
    ghostnetv3_100,
    load_checkpoint,
)
from ghostnet.reparam import ConvBn, merge_branches
from ghostnet.weights import CheckpointMismatchError
from tests.helpers import randomize_
from tests.helpers_v2v3 import (
    V2_WIDTHS,
    V3_WIDTHS,
    count_macs,
    count_params,
    max_diff,
    ours,
    randomize_rep_,
    timm_reference,
)

SIZE = 64  # small inputs keep the parity tests quick on 2 CPU cores; the 224 counts are in docs/ghostnet.md


def _image(batch: int = 2, size: int = SIZE, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("width", sorted(V2_WIDTHS))
def test_v2_matches_timm(width):
    name = V2_WIDTHS[width]
    reference = timm_reference(name, seed=int(width * 10))
    model = ours(name).eval()
    assert isinstance(model, GhostNetV2) and model.width == width
    load_checkpoint(model, reference.state_dict())  # strict: our (official) keys are timm's
    x = _image()
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert expected.abs().max() > 1e-2
    assert max_diff(got, expected) <= 1e-5
    assert count_params(model) == count_params(reference)


@pytest.mark.parametrize("width", sorted(V3_WIDTHS))
def test_v3_matches_timm_in_training_and_deploy_form(width):
    name = V3_WIDTHS[width]
    reference = timm_reference(name, seed=int(width * 10) + 1)
    model = ours(name).eval()
    assert isinstance(model, GhostNetV3) and not model.deployed
    load_checkpoint(model, reference.state_dict())  # strict, timm's branch ``bn1`` mapped to the official ``bn``
    assert count_params(model) == count_params(reference)
    x = _image()
    with torch.no_grad():
        expected, trained = reference(x), model(x)
    assert expected.abs().max() > 1e-2
    assert max_diff(trained, expected) <= 1e-5

    folded_reference = reparameterize_model(reference)  # timm's own branch folding (a copy)
    assert model.reparameterize() is model and model.deployed
    with torch.no_grad():
        deployed, expected_deployed = model(x), folded_reference(x)
    assert max_diff(deployed, trained) <= 1e-4  # re-parameterisation keeps the function
    assert max_diff(deployed, expected_deployed) <= 1e-5  # and gives timm's folded model
    ref_sd, our_sd = folded_reference.state_dict(), model.state_dict()
    assert ref_sd.keys() == our_sd.keys()
    for key, value in ref_sd.items():
        torch.testing.assert_close(our_sd[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert count_params(model) == count_params(folded_reference)
    assert not any("_rpr_" in n for n, _ in model.named_modules())


def test_deploy_form_loads_timms_folded_weights():
    folded_reference = reparameterize_model(timm_reference("ghostnetv3_050", seed=2))
    model = ours("ghostnetv3_050", deploy=True).eval()
    assert model.deployed
    load_checkpoint(model, folded_reference.state_dict())
    x = _image()
    with torch.no_grad():
        assert max_diff(model(x), folded_reference(x)) <= 1e-5


def test_macs_match_timm_and_v3_deploys_to_v2():
    v2, v3 = ghostnetv2_100(), ghostnetv3_100()
    ref_v2, ref_v3 = timm_reference("ghostnetv2_100", 0), timm_reference("ghostnetv3_100", 0)
    assert count_macs(v2, SIZE) == count_macs(ref_v2, SIZE)
    assert count_macs(v3, SIZE) == count_macs(ref_v3, SIZE)
    train_macs = count_macs(v3, SIZE)
    v3.reparameterize()
    assert count_macs(v3, SIZE) == count_macs(v2, SIZE) < train_macs / 2
    # after BN folding V2 and V3 are the same network, parameter for parameter
    fused_v2, fused_v3 = fuse(v2).state_dict(), fuse(v3).state_dict()
    assert {k: v.shape for k, v in fused_v2.items()} == {k: v.shape for k, v in fused_v3.items()}


def test_dfc_attention_sits_on_ghost1_of_every_bottleneck_but_the_first_two():
    for model in (ghostnetv2_100(), ghostnetv3_100()):
        blocks = [m for m in model.modules() if isinstance(m, GhostBottleneck)]
        assert len(blocks) == 16
        assert [getattr(b.ghost1, "attention", False) for b in blocks] == [False, False] + [True] * 14
        assert not any(isinstance(b.ghost2, GhostModuleV2) and b.ghost2.attention for b in blocks)
    sd = ghostnetv2_100().state_dict()
    assert len(sd) == 764  # facts §3.2: the official ghostnetv2() has the same 764 keys as timm
    assert "blocks.1.0.ghost1.short_conv.0.weight" not in sd
    assert tuple(sd["blocks.2.0.ghost1.short_conv.0.weight"].shape) == (72, 24, 1, 1)
    assert tuple(sd["blocks.2.0.ghost1.short_conv.2.weight"].shape) == (72, 1, 1, 5)
    assert tuple(sd["blocks.2.0.ghost1.short_conv.4.weight"].shape) == (72, 1, 5, 1)
    v3_keys = ghostnetv3_100().state_dict()
    assert len(v3_keys) == 1956  # facts §3.2: official v3 keys after the thop filter
    assert "blocks.1.0.dw_rpr_conv.2.bn.running_var" in v3_keys
    assert "blocks.1.0.ghost1.cheap_rpr_skip.weight" in v3_keys


@pytest.mark.parametrize("builder", [ghostnetv2_100, ghostnetv3_100], ids=["v2", "v3"])
@pytest.mark.parametrize("deploy", [False, True], ids=["train-form", "fused"])
def test_attention_map_is_capturable_with_a_forward_hook(builder, deploy):
    model = randomize_rep_(builder(), seed=4).eval()
    if deploy:
        model = fuse(model)
    gate_name = "blocks.6.0.ghost1.gate"
    gate = model.get_submodule(gate_name)
    assert isinstance(gate, nn.Sigmoid)
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def hook(module, inputs, output):
            seen[key] = output
            seen[key + "_in"] = inputs[0]

        return hook

    hooks = [gate.register_forward_hook(keep("attn")), model.blocks[6][0].ghost1.register_forward_hook(keep("out"))]
    with torch.no_grad():
        model(_image(batch=1, size=96))
    for hook in hooks:
        hook.remove()
    attn, out = seen["attn"], seen["out"]
    assert attn.shape == out.shape == (1, 200, 6, 6)  # mid channels of blocks.6.0 at 96 / 16
    assert attn.min() > 0 and attn.max() < 1
    ghost1 = model.blocks[6][0].ghost1
    with torch.no_grad():
        intrinsic, ghost = ghost1.forward_parts(seen["out_in"], gated=False)
        torch.testing.assert_close(torch.cat([intrinsic, ghost], 1) * attn, out)  # the map gates the output
        torch.testing.assert_close(torch.cat(ghost1.forward_parts(seen["out_in"]), 1), out)


@pytest.mark.parametrize("out_channels", [16, 7], ids=["even", "odd-cut"])
@pytest.mark.parametrize("relu", [True, False])
def test_ghost_module_v3_reparameterizes_exactly(out_channels, relu):
    module = randomize_rep_(GhostModuleV3(6, out_channels, relu=relu, attention=True), seed=5).eval()
    x = torch.randn(2, 6, 9, 11, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before = module(x)
        parts_before = module.forward_parts(x, gated=False)
        module.reparameterize()
        after = module(x)
        parts_after = module.forward_parts(x, gated=False)
    assert module.deployed and before.shape == (2, out_channels, 9, 11)
    assert max_diff(after, before) <= 1e-5
    assert [p.shape[1] for p in parts_after] == [4 if out_channels == 7 else 8, 3 if out_channels == 7 else 8]
    for a, b in zip(parts_after, parts_before, strict=True):
        assert max_diff(a, b) <= 1e-5
    assert list(module.primary_conv._modules) == (["0", "2"] if relu else ["0"])
    assert module.reparameterize() is module  # idempotent


def test_merge_branches_against_an_explicit_sum():
    torch.manual_seed(0)
    branches = [ConvBn(5, 5, 3, groups=5), ConvBn(5, 5, 3, groups=5), ConvBn(5, 5, 1, groups=5)]
    skip = nn.BatchNorm2d(5)
    randomize_(nn.ModuleList([*branches, skip])).eval()
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        expected = sum(b(x) for b in branches) + skip(x)
        merged = merge_branches(branches, skip=skip)
        assert merged.kernel_size == (3, 3) and merged.groups == 5 and merged.bias is not None
        assert max_diff(merged(x), expected) <= 1e-5
    with pytest.raises(ValueError, match="identity"):
        merge_branches([ConvBn(3, 5, 3)], skip=nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="line up"):
        merge_branches([ConvBn(5, 5, 3), ConvBn(5, 5, 3, stride=2)])


def test_wrong_width_strict_loading_lists_the_keys():
    wider = timm_reference("ghostnetv2_130", seed=0).state_dict()
    model = ghostnetv2_100()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, wider)
    message = str(info.value)
    assert "GhostNetV2(width=1.0)" in message and "shape mismatches" in message
    assert "('conv_stem.weight', (20, 3, 3, 3), (16, 3, 3, 3))" in message
    assert "ghostnetv2_100/130/160" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    with pytest.raises(CheckpointMismatchError) as info:  # v1 weights into V2: the DFC keys are missing
        load_checkpoint(ghostnetv2_100(), ghostnet_100().state_dict())
    assert "missing keys: blocks.2.0.ghost1.short_conv.0.weight" in str(info.value)

    trained = ghostnetv3_100().state_dict()
    with pytest.raises(CheckpointMismatchError) as info:  # training-form weights into a deployed model
        load_checkpoint(ghostnetv3_100(deploy=True), trained)
    message = str(info.value)
    assert "missing keys: " in message and "primary_conv.0.bias" in message
    assert "unexpected keys: " in message and "primary_rpr_conv.0.conv.weight" in message
    assert "deploy (re-parameterised) form" in message and "before reparameterize()" in message


def test_v2_module_without_attention_is_a_v1_module():
    torch.manual_seed(0)
    plain, v2 = GhostModule(8, 12), GhostModuleV2(8, 12, attention=False)
    assert plain.state_dict().keys() == v2.state_dict().keys() and v2.gate is None
    v2.load_state_dict(plain.state_dict())
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(v2.eval()(x), plain.eval()(x))
    with pytest.raises(RuntimeError, match="attention=False"):
        v2.attention_map(x, (6, 6))


@pytest.mark.parametrize("builder", [ghostnetv2_100, lambda: GhostNetV3(width=0.5)], ids=["v2", "v3-0.5"])
def test_training_step_reaches_every_parameter(builder):
    model = builder().train()
    loss = model(_image(batch=2, size=SIZE)).logsumexp(1).mean()
    loss.backward()
    # every parameter is in the graph (a BN bias right before a conv + train-mode BN on a 1x1 map, as in
    # the last DFC branches at 64x64, legitimately gets an exactly-zero gradient, so only presence is checked)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    branch_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if "_rpr_" in n or "short_conv" in n]
    assert branch_grads and sum(g > 0 for g in branch_grads) > 0.9 * len(branch_grads)
