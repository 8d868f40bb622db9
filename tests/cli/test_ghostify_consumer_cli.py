"""`ghostmaps ghostify --consumer-refit` and the sequential fit's options end to end on a tiny model (tests.helpers:PlanNet)."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.cli.main import main

TINY = ["-m", "tests.helpers:PlanNet", "--image-size", "32", "--latency-runs", "0", "--layers", "convs.2"]


def test_consumer_refit_is_written_and_the_saved_model_has_it(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--views", "24", "--eval",
                 "samples:evaluation", "--eval-views", "16", "--consumer-refit", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the CLI passes the photos on: whole photos are held out of the fit (here one of 6, 4 of the 24 views)
    assert "whole photos held out: coins (4 of 24 images, 1 of 6 photos)" in printed
    assert "consumer convs.3 (of convs.2) refitted (validation error " in printed
    meta = json.loads((out / "ghostify.json").read_text())
    assert (meta["calibration_views"], meta["evaluation_views"]) == (24, 16)
    (c,) = meta["result"]["consumers"]
    assert c["name"] == "convs.3" and c["producers"] == ["convs.2"] and c["n_fit"] > 0
    assert c["n_validation"] > 0 and c["validation"].startswith("of the 20 fit images, whole photos for the decision")
    assert c["validation_error_after"] < c["validation_error_before"] and c["applied"]
    from analysis import load_ghostified, load_images
    from analysis.convert import ghostify
    from analysis.data.models import default_preprocess
    from tests.helpers import PlanNet

    rebuilt = load_ghostified(out)  # the refitted consumer's weights and BN mean travel in the state dict
    src = load_images("samples:calibration", default_preprocess(37, 32), views=24)
    x = torch.cat([b for _, b in src.batches()])
    direct, res = ghostify(PlanNet(), layers=["convs.2"], init="fit", calibration_images=src, consumer_refit=True)
    assert not torch.equal(direct.convs[3].weight, PlanNet().convs[3].weight)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), direct(x), rtol=1e-5, atol=1e-5)
    plain = json.loads(json.dumps(res.to_dict()))["consumers"]
    assert plain == meta["result"]["consumers"]


def test_consumer_refit_with_the_independent_mode_exits_2(tmp_path, capsys):
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--mode", "independent",
                 "--consumer-refit", "--eval-on-calibration", "--out", str(tmp_path / "x")]) == 2
    assert "consumer_refit=True needs init='fit' and mode='sequential'" in capsys.readouterr().err


def test_views_without_eval_are_verified_over_their_photos_and_eval_views_need_eval(tmp_path, capsys):
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--views", "12", "--eval-on-calibration",
                 "--out", str(tmp_path / "v")]) == 0
    printed = capsys.readouterr().out
    assert "verification on 12 images (6 photos)" in printed  # not 12 "photos": views of one photo share it
    assert "verified on the calibration images" in printed
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--eval-views", "8", "--out",
                 str(tmp_path / "w")]) == 2
    assert "--eval-views draws views of the --eval photos; add --eval IMAGES" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_fit_ridge_and_prior_reach_the_fit_and_the_report(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--views", "12", "--eval",
                 "samples:evaluation", "--eval-views", "8", "--fit-ridge", "0.5", "--fit-prior", "start",
                 "--out", str(out)]) == 0
    assert "ridge 0.5 toward start" in capsys.readouterr().out
    st = json.loads((out / "ghostify.json").read_text())["result"]["settings"]
    assert (st["ridge"], st["prior"]) == (0.5, "start")
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--views", "12", "--eval",
                 "samples:evaluation", "--out", str(out / "d")]) == 0
    st = json.loads((out / "d" / "ghostify.json").read_text())["result"]["settings"]
    assert (st["ridge"], st["prior"]) == (1e-3, "zero")  # the defaults, recorded too


def test_fit_prior_needs_the_sequential_fit(tmp_path, capsys):
    for flag in (["--fit-prior", "start"], ["--fit-ridge", "0.001"]):  # even the default value, given explicitly
        assert main(["ghostify", *TINY, "--images", "samples:calibration", "--mode", "independent", *flag,
                     "--eval", "samples:evaluation", "--out", str(tmp_path / "x")]) == 2
        assert "--fit-ridge and --fit-prior set the sequential fit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ghostify", *TINY, "--fit-ridge", "-1"])
    assert "expected a number >= 0, got '-1'" in capsys.readouterr().err
