"""`ghostmaps ghostify --plan / --budget-macs / --eval` end to end on a tiny model (tests.helpers:PlanNet)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from analysis.cli.main import main

TINY = ["-m", "tests.helpers:PlanNet", "--image-size", "32", "--latency-runs", "0"]
SPLIT = ["--images", "samples:calibration", "--eval", "samples:evaluation"]


def _folder(root, classes, per_class=2):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{c}-{k}.png")
    return root


def test_plan_only_writes_the_plan(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["ghostify", *TINY, *SPLIT, "--plan", "--budget-macs", "0.7", "--plan-ratios", "2", "4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # the sensitivities come from a seeded half of the calibration photos: the --eval images choose nothing
    assert "plan under MACs <= 70%" in text and "held-out images (seeded split (seed 0): 3 photos)" in text
    plan = json.loads((out / "plan.json").read_text())
    assert plan["macs_after"] <= 0.7 * plan["macs_before"] and plan["ratios"]
    assert {o["ratio"] for o in plan["options"]} == {2, 4} and plan["n_evaluation"] == 3
    assert (out / "plan.csv").read_text().startswith("name,ratio,kl,")
    assert (out / "plan.png").stat().st_size > 0
    assert not (out / "model_state.pt").exists() and not (out / "verification.json").exists()


def test_budget_macs_ghostifies_the_plan_and_verifies_held_out(tmp_path):
    out = tmp_path / "g"
    assert main(["ghostify", *TINY, *SPLIT, "--budget-macs", "0.75", "--budget-params", "0.9",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "ghostify.json").read_text())
    plan = meta["plan"]
    assert {r["name"]: r["ratio"] for r in meta["result"]["replaced"]} == plan["ratios"]
    report = json.loads((out / "verification.json").read_text())
    # the converted network's own count meets the budget and is what the plan predicted
    assert report["macs_after"] == plan["macs_after"] <= 0.75 * report["macs_before"]
    assert report["params_after"] == plan["params_after"] <= 0.9 * report["params_before"]
    assert report["note"].startswith("verified on held-out images (they chose nothing") and \
        "disjoint" in report["calibration"]
    from analysis import load_ghostified  # the saved model rebuilds with each conv's own ratio

    rebuilt = load_ghostified(out)
    assert {n: m.ratio for n, m in rebuilt.named_modules() if type(m).__name__ == "GhostConv"} == plan["ratios"]


def test_eval_class_folders_give_labelled_accuracy(tmp_path, capsys):
    folder = _folder(tmp_path / "eval", ["3", "7"])
    out = tmp_path / "l"
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--layers", "convs.3", "--eval",
                 str(folder), "--out", str(out)]) == 0
    report = json.loads((out / "verification.json").read_text())
    assert report["accuracy"] is not None and report["n_images"] == 4
    assert "labelled: top-1 original" in capsys.readouterr().out
    # views are drawn of photos; a labelled folder is evaluated image by image
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--layers", "convs.3", "--eval",
                 str(folder), "--eval-views", "8", "--out", str(tmp_path / "v")]) == 2
    assert "leave --eval-views out" in capsys.readouterr().err


@pytest.mark.parametrize("classes,per_class,words", [
    (["3", "12"], 1, ["outside the model's 10 classes", "12"]),
    (["3"], 0, ["no image files", "eval"]),
    ([], 0, ["no image files found in", "eval"]),
])
def test_bad_evaluation_folders_exit_2(tmp_path, capsys, classes, per_class, words):
    folder = _folder(tmp_path / "eval", classes, per_class)
    folder.mkdir(exist_ok=True)
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--layers", "convs.3", "--eval",
                 str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_overlapping_calibration_and_evaluation_exit_2(tmp_path, capsys):
    assert main(["ghostify", *TINY, "--images", "samples:calibration", "--eval", "samples:chelsea,china",
                 "--budget-macs", "0.8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "share 1 image" in err and "chelsea" in err and not (tmp_path / "o").exists()


def test_plan_without_budget_and_unreachable_budget_exit_2(tmp_path, capsys):
    assert main(["ghostify", *TINY, *SPLIT, "--plan", "--out", str(tmp_path / "o")]) == 2
    assert "--plan needs a budget" in capsys.readouterr().err
    assert main(["ghostify", *TINY, *SPLIT, "--plan", "--budget-macs", "0.2", "--plan-ratios", "2",
                 "--layers", "convs.4", "--out", str(tmp_path / "o")]) == 2
    assert "cannot be met" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "x"])
def test_a_budget_outside_0_1_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ghostify", "--budget-macs", value])
    assert exc.value.code == 2
    assert "--budget-macs" in (err := capsys.readouterr().err) and "(0, 1]" in err
