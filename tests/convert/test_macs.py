"""analysis.macs: MACs against a brute-force formula and the reference facts; params counted over use."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis.convert.macs import CONVENTION, count_macs, format_stage_table, stage_table
from ghostnet import ghostnet_050, ghostnet_100, ghostnet_130
from tests.oracles import brute_force_macs


@pytest.mark.parametrize(
    "builder,shape",
    [
        (ghostnet_050, (1, 3, 96, 96)),
        (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 64, 64)),
        (lambda: torchvision.models.mobilenet_v3_small(), (1, 3, 64, 80)),
    ],
    ids=["ghostnet_050", "resnet18", "mobilenet_v3_small"],
)
def test_matches_brute_force(builder, shape):
    torch.manual_seed(0)
    model = builder()
    x = torch.randn(shape)
    report = count_macs(model, x)
    assert report.total_macs == brute_force_macs(model, x)
    assert report.total_flops == 2 * brute_force_macs(model, x)  # the 2-per-MAC convention
    assert report.input_size == shape


@pytest.mark.parametrize(
    "builder,expected_mmacs",
    [(ghostnet_050, 42.33), (ghostnet_100, 141.15), (ghostnet_130, 227.00)],  # facts §3.4
)
def test_ghostnet_macs_match_the_reference(builder, expected_mmacs):
    report = count_macs(builder(), (3, 224, 224))
    assert abs(report.total_macs / 1e6 - expected_mmacs) < 0.005
    assert report.input_size == (1, 3, 224, 224)


def test_breakdown_per_module_matches_the_reference_split():
    report = count_macs(ghostnet_100())
    # facts §3.4 breakdown at width 1.0: conv_head 1.23M, FC 1.28M MACs; facts §2.9 parameter split
    assert report.module("conv_head").macs == 960 * 1280
    assert report.module("classifier").macs == 1280 * 1000
    assert report.module("classifier").params == 1_281_000
    assert report.module("conv_head").params == 1_230_080
    assert report.module("").macs == report.total_macs and report.module("").params == report.params
    blocks = report.module("blocks")
    assert blocks.params == 5_182_508 - 1_281_000 - 1_230_080 - 16 * 27 - 32
    assert [m.name for m in report.modules][:3] == ["", "conv_stem", "bn1"]  # execution order
    with pytest.raises(KeyError, match="no module named"):
        report.module("nope")


class OfficialStyleGhost(nn.Conv2d):
    """Like the official Ghost-ResNet module: a Conv2d subclass whose registered weight1/bn1 never run."""

    def __init__(self) -> None:
        super().__init__(4, 8, 3, padding=1)
        self.weight1 = nn.Parameter(torch.randn(4, 4, 3, 3))
        self.bn1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return torch.cat([y, self.conv2(y)], 1)


class SharedAndUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ghost = OfficialStyleGhost()
        self.shared = nn.Conv2d(8, 8, 1)
        self.never_called = nn.Linear(100, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.shared(self.ghost(x)))


def test_params_count_only_what_forward_uses():
    model = SharedAndUnused()
    model.train()
    report = count_macs(model, (2, 4, 5, 5))
    used = (4 * 4 * 9 + 4) + (4 * 9 + 4) + (8 * 8 + 8)  # conv1, conv2, shared once
    assert report.params == used
    assert report.registered_params == sum(p.numel() for p in model.parameters())
    assert report.registered_params - report.params == 8 * 4 * 9 + 8 + 4 * 4 * 9 + 2 * 4 + 100 * 100 + 100
    assert report.total_macs == 2 * 25 * (4 * 4 * 9 + 4 * 9 + 2 * 8 * 8)
    # state restored: still training, no hooks left
    assert all(m.training for m in model.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert "never_called" not in [m.name for m in report.modules]


def test_report_is_plain_data_and_names_the_convention():
    report = count_macs(ghostnet_050(), (1, 3, 64, 64))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total_macs"] == report.total_macs and data["convention"] == CONVENTION
    assert "FLOPs / 2" in report.convention and "params" in report.convention
    assert data["modules"][0] == {"name": "", "type": "GhostNet", "macs": report.total_macs, "params": report.params}
    assert "MACs" in str(report)


def test_stage_table_expands_ghostnet_blocks_and_sums_to_the_totals():
    model = ghostnet_100()
    rows = stage_table(model, (1, 3, 224, 224))
    names = [r["name"] for r in rows]
    assert names == ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(10)] + ["conv_head", "classifier"]
    assert sum(r["params"] for r in rows) == 5_182_508
    assert abs(sum(r["macs"] for r in rows) / 1e6 - 141.15) < 0.005
    assert abs(sum(r["macs_share"] for r in rows) - 1) < 1e-9
    text = format_stage_table(rows)
    assert "blocks.6" in text and "5,182,508" in text and "141.15" in text
    plain = [r["name"] for r in stage_table(model, (1, 3, 64, 64), expand=[])]
    assert "blocks" in plain and "blocks.0" not in plain
    with pytest.raises(ValueError, match="expand names"):
        stage_table(model, (1, 3, 64, 64), expand=["layer9"])


def test_stage_table_rest_row_holds_root_parameters():
    class RootParam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x * self.scale.view(1, 3, 1, 1))

    rows = stage_table(RootParam(), (1, 3, 4, 4))
    assert [(r["name"], r["params"]) for r in rows] == [("conv", 16), ("(rest)", 3)]


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        count_macs(ghostnet_050(), (224, 224))


def test_count_macs_leaves_the_global_rng_alone():
    model = ghostnet_050()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    report = count_macs(model, (1, 3, 64, 64))
    assert torch.equal(torch.get_rng_state(), state)
    assert report.total_macs == count_macs(model, torch.randn(1, 3, 64, 64)).total_macs  # values do not matter


@pytest.mark.parametrize("size", [(224, 224), (1, 3, 0, 8), 224, ("a", 3, 8, 8)])
def test_bad_input_size_is_a_ghostmaps_error(size):
    with pytest.raises(GhostmapsError, match="input_size") as info:
        count_macs(nn.Conv2d(3, 4, 1), size)
    assert "(1, 3, 224, 224)" in str(info.value)


def test_stage_table_bad_expand_is_a_ghostmaps_error():
    with pytest.raises(GhostmapsError, match="expand names"):
        stage_table(nn.Sequential(nn.Conv2d(3, 4, 1)), (1, 3, 4, 4), expand=["nope"])


def test_stage_table_reuses_a_given_report(monkeypatch):
    import analysis.convert.macs as macs

    model = ghostnet_050()
    report = count_macs(model, (1, 3, 64, 64))
    want = stage_table(model, (1, 3, 64, 64))
    calls = []
    monkeypatch.setattr(macs, "count_macs", lambda *a, **k: calls.append(a))
    assert stage_table(model, report=report) == want and calls == []


def test_info_command_counts_macs_once(monkeypatch, capsys):
    import analysis.convert.macs as macs
    from analysis.cli.main import main

    calls = []
    real = macs.count_macs

    def counting(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(macs, "count_macs", counting)
    assert main(["info", "ghostnet_050", "--weights", "none", "--input-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert calls == [((1, 3, 64, 64),)]
    assert data["macs"] == sum(row["macs"] for row in data["stages"]) == real(ghostnet_050(), (1, 3, 64, 64)).total_macs
