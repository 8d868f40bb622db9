"""The CLI with timm's zoo (``--model timm:<name>``, random init and a local weights file, the offline error)
and ``info`` for GhostNetV2/V3. Small models and inputs keep it quick; the network is never touched."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.cli.main import main
from tests.data.test_models_timm import offline  # noqa: F401 - the fixture

timm = pytest.importorskip("timm")

SMALL = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A local weights file of timm's mobilenetv3_small_050 (a state dict of a random init, seed 3)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / f"{SMALL}.pth"
    torch.save(timm.create_model(SMALL).state_dict(), path)
    return path


def test_layers_of_a_timm_model(capsys):
    assert main(["layers", "timm:resnet50", "--grep", "layer1.*", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("timm:resnet50 (random), input 3×64×64")
    assert "layer1.0.conv1" in out and "layer1.2.act3" in out and "1×256×16×16" in out and "layer2." not in out
    assert main(["layers", "-m", f"timm:{SMALL}", "--grep", "Conv2d", "--input-size", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"name": "conv_stem", "type": "Conv2d", "shape": [1, 16, 32, 32]}


def test_info_of_a_timm_model(capsys):
    assert main(["info", "timm:resnet18", "--input-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == {"name": "timm:resnet18", "weights": "random", "source": "timm", "weights_file": None}
    assert data["params"] == 11_689_512 and data["macs"] == sum(row["macs"] for row in data["stages"])


def test_info_of_ghostnetv2_and_v3(capsys):
    assert main(["info", "ghostnetv2_100"]) == 0
    out = capsys.readouterr().out
    assert "6,156,908" in out and "167.05 M" in out  # docs/ghostnet.md, = timm's
    for stage in ("conv_stem", *(f"blocks.{i}" for i in range(10)), "conv_head", "classifier"):
        assert f"\n{stage} " in out, stage
    assert main(["info", "ghostnetv2_100", "--input-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["stages"]][2:12] == [f"blocks.{i}" for i in range(10)]
    assert data["macs"] == sum(r["macs"] for r in data["stages"]) and data["params"] == 6_156_908
    assert main(["info", "ghostnetv3_100"]) == 0
    out = capsys.readouterr().out
    assert "8,129,028" in out and "404.13 M" in out and "training form" in out and "blocks.9" in out
    assert main(["info", "ghostnetv3_100", "--fused"]) == 0  # the deploy form: V2's MACs
    out = capsys.readouterr().out
    assert "6,125,716" in out and "167.05 M" in out and "fused" in out


def test_survey_with_a_local_weights_file(tmp_path, capsys, small_weights):
    out = tmp_path / "survey"
    assert main(["survey", "-m", f"timm:{SMALL}", "-w", str(small_weights), "--limit", "2",
                 "--layers", "blocks.1.*.conv_*", "--no-progress", "-o", str(out)]) == 0
    data = json.loads((out / "survey.json").read_text())
    assert data["meta"]["model"] == f"timm:{SMALL}" and data["meta"]["weights"] == str(small_weights)
    assert data["meta"]["images"] == 2
    assert [layer["name"] for layer in data["layers"]][:3] == ["blocks.1.0.conv_pw", "blocks.1.0.conv_dw",
                                                                 "blocks.1.0.conv_pwl"]
    assert (out / "profile.png").is_file()


def test_figure1_random_and_with_a_weights_file(tmp_path, small_weights):
    for weights in ("none", str(small_weights)):
        png = tmp_path / f"f1-{weights == 'none'}.png"
        assert main(["figure1", "-m", f"timm:{SMALL}", "-w", weights, "--layer", "blocks.1.0.conv_pw",
                     "--pairs", "2", "--out", str(png)]) == 0
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["model"]["source"] == "timm" and len(meta["pairs"]) == 2
        assert meta["model"]["weights"] == ("random" if weights == "none" else weights)


def test_ghostify_a_timm_model(tmp_path, capsys):
    out = tmp_path / "ghostified"
    assert main(["ghostify", "-m", "timm:resnet18", "-w", "none", "--image-size", "64", "--limit", "2",
                 "--layers", "layer1.0.conv1", "--latency-runs", "0", "--eval-on-calibration", "-o", str(out)]) == 0
    meta = json.loads((out / "ghostify.json").read_text())
    assert meta["model"]["name"] == "timm:resnet18" and list(meta["result"]["spec"]["layers"]) == ["layer1.0.conv1"]
    from analysis import load_ghostified

    model = load_ghostified(out)  # rebuilt from the recorded timm:resnet18 spec
    assert type(model.layer1[0].conv1).__name__ == "GhostConv"


def test_offline_and_unknown_timm_models_exit_2(tmp_path, capsys, offline):  # noqa: F811 - the fixture
    assert main(["figure1", "-m", "timm:resnet18", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "pretrained weights for timm:resnet18" in err and str(offline) in err and "--weights none" in err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()
    assert main(["layers", "timm:resnet5o"]) == 2
    assert "resnet50" in capsys.readouterr().err
