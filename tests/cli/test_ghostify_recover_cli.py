"""`ghostmaps ghostify --recover-steps`: ghostify, recover on the calibration images, verify on held-out ones."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.cli.main import main
from analysis.convert.rebuild import load_ghostified

SMALL = ["--image-size", "64", "--limit", "3", "--latency-runs", "0"]


def test_ghostify_with_recovery_end_to_end(tmp_path, capsys):
    rec = tmp_path / "rec"
    assert main(["ghostify", "--layers", "features.1[67].conv.2", "--images", "samples:calibration",
                 "--verify-images", "samples:evaluation", *SMALL, "--recover-steps", "3", "--recover-lr", "1e-3",
                 "--recover-batch", "2", "--out", str(rec)]) == 0
    text = capsys.readouterr().out
    assert "recover: 3 steps" in text and "held-out" in text
    doc = json.loads((rec / "recover.json").read_text())
    assert doc["steps"] == 3 and len(doc["losses"]) == 3 and doc["settings"]["batch_size"] == 2
    assert (rec / "recover.csv").read_text().startswith("step,loss\n")
    # the saved weights are the recovered ones: the fit copies the original filters of the intrinsic channels
    # into the primary conv exactly, and recovery has moved them
    from analysis import load_model

    original = dict(load_model("mobilenet_v2").model.named_modules())
    saved = dict(load_ghostified(rec).named_modules())
    meta = json.loads((rec / "ghostify.json").read_text())
    for layer in meta["result"]["replaced"]:
        fitted = original[layer["name"]].weight.detach()[layer["intrinsic"]]
        assert not torch.equal(saved[layer["name"]].primary.weight.detach(), fitted)
        assert saved[layer["name"]].primary.weight.shape == fitted.shape
    report = json.loads((rec / "verification.json").read_text())
    assert report["calibration"].startswith("disjoint")


def test_recovery_options_reach_recover_and_a_run_resumes(tmp_path, capsys):
    ckpt = tmp_path / "rec.ckpt"
    argv = ["ghostify", "--layers", "features.16.conv.2", "--images", "samples:calibration", "--eval",
            "samples:evaluation", *SMALL, "--latency-runs", "0", "--recover-steps", "2", "--recover-batch", "2",
            "--recover-loss", "both", "--recover-bn", "freeze", "--recover-mix", "cutmix", "--recover-seed", "3", "--recover-checkpoint",
            str(ckpt), "--recover-checkpoint-every", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0 and ckpt.is_file()
    settings = json.loads((tmp_path / "a" / "recover.json").read_text())["settings"]
    assert (settings["loss"], settings["bn"], settings["mix"], settings["seed"]) == ("both", "freeze", "cutmix", 3)
    assert main([*argv, "--recover-resume", "--out", str(tmp_path / "b")]) == 0  # finished: nothing left to do
    a, b = (torch.load(tmp_path / d / "model_state.pt", weights_only=True) for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()


@pytest.mark.parametrize("argv,words", [
    (["--recover-steps", "-1"], ["--recover-steps", "integer >= 0"]),
    (["--recover-lr", "0"], ["--recover-lr", "positive number"]),
    (["--recover-batch", "0"], ["--recover-batch", "positive integer"]),
])
def test_bad_recover_options_are_usage_errors(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["ghostify", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
