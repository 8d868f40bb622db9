"""`ghostmaps fit` and `ghostmaps ghostify` end to end (offline mobilenet_v2, small sample photos)."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.cli.main import main
from analysis.convert.rebuild import load_ghostified

SMALL = ["--image-size", "64", "--limit", "3"]


def test_fit_end_to_end(tmp_path, capsys):
    out = tmp_path / "fit"
    rc = main(["fit", "--layer", "features.3.conv.0.2", "--pairs", "2", "--d", "1", "3", "--random", "8",
               *SMALL, "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "d=1: held-out" in text and "d=3: held-out" in text and "random (n=8)" in text
    assert "not comparable" in text
    doc = json.loads((out / "table1.json").read_text())
    assert doc["layer"] == "features.3.conv.0.2" and doc["shape"] == [3, 144, 16, 16]
    split = doc["table"]["split"]
    assert split["kind"] == "seeded split" and split["by_photo"] and split["n_fit"] + split["n_eval"] == 3
    rows = doc["table"]["rows"]
    assert len(rows) == 2 * 3  # (2 pairs + baseline) x 2 kernel sizes
    pairs = {(r["src"], r["dst"]) for r in rows if r["kind"] == "pair"}
    assert pairs == {(p["i"], p["j"]) for p in doc["pairs"]}
    assert all(isinstance(p["sparse"], bool) for p in doc["pairs"])
    for p in pairs:  # a 3x3 kernel contains the 1x1 one: in-sample the error can only drop
        e = {r["d"]: r["rel_error_fit"] for r in rows if (r["src"], r["dst"]) == p}
        assert e[3] <= e[1] + 1e-9
    assert (out / "table1.csv").read_text().startswith("kind,src,dst,d,rel_error,")


def test_fit_with_explicit_heldout_images(tmp_path, capsys):
    rc = main(["fit", "--layer", "features.3.conv.0.2", "--pairs", "1", "--d", "3", "--random", "2",
               "--images", "samples:calibration", "--heldout", "samples:evaluation", *SMALL, "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "table1.json").read_text())
    assert doc["table"]["split"]["kind"] == "held-out maps" and doc["heldout_images"] == 3


def test_fit_default_layer_prints_table(capsys):
    assert main(["fit", "--d", "3", "--pairs", "1", "--random", "4", *SMALL]) == 0
    assert "random (n=4)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,words", [
    (["fit", "--layer", "features.3.conv.0.2", "--d", "2"], ["odd"]),
    (["fit", "--layer", "feature.99"], ["unknown layer"]),
    (["ghostify", "--layers", "features.2.conv.1.0"], ["depthwise"]),
    (["ghostify", "--layers", "features.2.conv.2", "--ratio", "1"], ["ratio"]),
    (["ghostify", "--layers", "classifier.1"], ["not a Conv2d"]),
    (["ghostify", "--images", "/no/such/folder"], ["/no/such/folder"]),
])
def test_bad_input_exits_2(argv, words, tmp_path, capsys):
    extra = ["--out", str(tmp_path), "--eval-on-calibration"] if argv[0] == "ghostify" else []
    assert main([*argv, *SMALL, *extra]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_ghostify_end_to_end(tmp_path, capsys):
    out = tmp_path / "g"
    rc = main(["ghostify", "--layers", "features.1[67].conv.2", "--ratio", "2", "--latency-runs", "1",
               *SMALL, "--eval-on-calibration", "--out", str(out)])
    assert rc == 0
    assert "top-1 agreement" in capsys.readouterr().out
    for name in ("model_state.pt", "ghostify.json", "verification.json", "verification.csv", "verification.png"):
        assert (out / name).stat().st_size > 0
    meta = json.loads((out / "ghostify.json").read_text())
    assert [r["name"] for r in meta["result"]["replaced"]] == ["features.16.conv.2", "features.17.conv.2"]
    report = json.loads((out / "verification.json").read_text())
    assert report["params_after"] < report["params_before"] and report["n_images"] == 3
    assert "calibration images" in report["note"]
    # the saved model rebuilds and gives the same logits as a fresh ghostify in Python
    from analysis import load_images, load_model
    from analysis.convert.ghostify import ghostify
    from analysis.data.models import default_preprocess

    rebuilt = load_ghostified(out)
    model = load_model("mobilenet_v2").model
    src = load_images("samples:calibration", transform=default_preprocess(73, 64), limit=3)  # the default
    x = torch.cat([b for _, b in src.batches()])
    # the CLI passes the photos on (whole photos held out), as an ImageSource does in Python
    direct, res = ghostify(model, layers="features.1[67].conv.2", init="fit", calibration_images=src)
    assert res.heldout == meta["result"]["heldout"] and res.heldout.startswith("whole photos held out")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), direct(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv,words", [
    (["fit", "--pairs", "0"], ["--pairs", "positive integer"]),
    (["fit", "--random", "-1"], ["--random", "integer >= 0"]),
    (["fit", "--d", "3", "x"], ["--d", "positive integer"]),
    (["ghostify", "--limit", "0"], ["--limit", "positive integer"]),
    (["ghostify", "--image-size", "-64"], ["--image-size", "positive integer"]),
    (["ghostify", "--ratio", "0"], ["--ratio", "positive integer"]),
    (["ghostify", "--calibrate-steps", "-3"], ["--calibrate-steps", "integer >= 0"]),
    (["ghostify", "--min-channels", "-1"], ["--min-channels", "integer >= 0"]),
    (["ghostify", "--latency-runs", "1.5"], ["--latency-runs", "integer >= 0"]),
])
def test_bad_numbers_are_usage_errors(argv, words, capsys, tmp_path, monkeypatch):
    """Rejected by argparse (exit 2 and a message) before any model is loaded."""
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the checkout
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_zero_counts_are_accepted():
    from analysis.cli.main import build_parser

    args = build_parser().parse_args(["ghostify", "--calibrate-steps", "0", "--latency-runs", "0",
                                      "--min-channels", "0"])
    assert (args.calibrate_steps, args.latency_runs, args.min_channels) == (0, 0, 0)
    assert build_parser().parse_args(["fit", "--random", "0"]).random == 0


def test_a_ghostify_error_is_a_clean_exit_2(capsys, tmp_path):
    """GhostifyError is a GhostmapsError: main reports it (exit 2, no traceback) without a re-wrap."""
    code = main(["ghostify", "--weights", "none", "--images", "samples:chelsea", "--image-size", "32",
                 "--layers", "nothing*", "--eval-on-calibration", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "ghostmaps ghostify: error: layer pattern 'nothing*' matches no module" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_verifying_on_the_calibration_images_is_refused_unless_asked(capsys, tmp_path):
    argv = ["ghostify", "--weights", "none", "--images", "samples:chelsea", "--image-size", "32", "--layers",
            "features.1[67].conv.2", "--latency-runs", "0"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "add --eval IMAGES" in err and "--eval-on-calibration" in err and not (tmp_path / "a").exists()
    assert main([*argv, "--eval", "samples:china", "--eval-on-calibration", "--out", str(tmp_path / "b")]) == 2
    assert main([*argv, "--eval-on-calibration", "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "verification.json").read_text())
    assert "as asked (--eval-on-calibration): optimistic" in report["note"]
