"""Every CLI command runs end to end, in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis.cli.main import main


def test_demo_writes_figure_and_pairs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    png, js = tmp_path / "ghostmaps-out/demo/figure1.png", tmp_path / "ghostmaps-out/demo/figure1.json"
    assert png.stat().st_size > 10_000 and str(png.relative_to(tmp_path)) in out
    data = json.loads(js.read_text())
    assert data["model"]["weights"].endswith("IMAGENET1K_V1") and len(data["pairs"]) == 3
    assert all(0.0 < p["score"] <= 1.0 for p in data["pairs"])
    rows = (tmp_path / "ghostmaps-out/demo/survey.csv").read_text().splitlines()
    assert len(rows) == 1 + 52  # a header and every Conv2d of mobilenet_v2
    assert (tmp_path / "ghostmaps-out/demo/profile.png").stat().st_size > 10_000


def test_figure1_command(tmp_path, capsys):
    out = tmp_path / "f1.png"
    code = main(["figure1", "--layer", "features.2.conv.0", "--pairs", "2", "--metric", "pearson",
                 "--out", str(out), "--svg"])
    assert code == 0
    assert out.exists() and out.with_suffix(".svg").exists()
    assert len(json.loads(out.with_suffix(".json").read_text())["pairs"]) == 2
    assert "wrote" in capsys.readouterr().out


def test_figure1_with_an_image_file(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype("uint8")).save(tmp_path / "x.jpg")
    assert main(["figure1", "--weights", "none", "--image", str(tmp_path / "x.jpg"),
                 "--out", str(tmp_path / "o.png")]) == 0


def test_layers_command_table_and_json(capsys):
    assert main(["layers", "resnet18", "--input-size", "64", "--grep", "layer1.0.*"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.relu#1" in out and "1×64×16×16" in out
    assert main(["layers", "--json", "--grep", "Conv2d"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 52 and rows[0] == {"name": "features.0.0", "type": "Conv2d", "shape": [1, 32, 112, 112]}


def test_bad_input_exits_2_with_a_message(capsys, tmp_path):
    assert main(["figure1", "--layer", "features.3.conv.O", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "unknown layer" in err and "features.3.conv.0" in err and "Traceback" not in err
    assert main(["layers", "resnet5o"]) == 2
    assert "resnet50" in capsys.readouterr().err
    assert main(["figure1", "--image", str(tmp_path / "none.jpg")]) == 2
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["figure1", "--metric", "nope"])
    assert exc.value.code == 2


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "layers", "figure1"):
        assert command in result.stdout


def test_info_command_counts_ghostnet_like_the_paper(capsys):
    assert main(["info", "ghostnet_100"]) == 0
    out = capsys.readouterr().out
    assert "5,182,508" in out and "141.15 M" in out and "blocks.6" in out
    assert main(["info", "resnet18", "--input-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 11_689_512 and data["stages"][0]["name"] == "conv1"
    assert data["macs"] == sum(row["macs"] for row in data["stages"])
    assert main(["info", "ghostnet_050", "--weights", "default"]) == 2
    assert "no pretrained weights" in capsys.readouterr().err


def test_bad_sizes_and_devices_exit_2(capsys):
    import torch

    for argv in (["layers", "--input-size", "0"], ["info", "--input-size", "-3"], ["figure1", "--pairs", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            main(["info", "--device", "cuda"])
        assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["fit", "--pairs", "1"], ["survey", "--limit", "2"], ["demo"],
                                     ["ghostify", "--plan"]])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "is a file" in err and str(blocker) in err
    assert blocker.read_text() == "mine"  # nothing of the user's is touched


def test_figure1_output_file_checks(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    for out, what in ((tmp_path / "afile" / "fig.png", "is a file, not a folder"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit):
            main(["figure1", "--out", str(out)])
        assert what in capsys.readouterr().err


def test_os_errors_are_reported_without_a_traceback(monkeypatch, capsys):
    import analysis.cli.layers as layers_cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/root/x.json")

    monkeypatch.setattr(layers_cli, "run", denied)
    assert main(["layers", "mobilenet_v2"]) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "/root/x.json" in err and "Traceback" not in err
