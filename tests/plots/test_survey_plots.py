"""Survey figures (read back from the matplotlib objects) and the `ghostmaps survey` command."""

from __future__ import annotations

import csv
import json

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from analysis import GhostmapsError, Survey, plots, survey
from analysis.cli.main import main
from analysis.pipeline import survey_gallery
from analysis.plots import pair_colour
from tests.helpers import TinyNet


@pytest.fixture(scope="module")
def tiny_survey():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        model.conv1.weight[3] = 0.0  # channel 3 of conv1 is dead
        model.conv1.bias[3] = 0.0
        model.conv2.weight[5] = model.conv2.weight[2] * 2  # channel 5 of conv2 = 2 × channel 2 (+ bias)
        model.conv2.bias[5] = model.conv2.bias[2] * 2
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, survey(model, x, layers=["conv1", "conv2"], progress=False, threshold=0.95,
                            baseline="untrained", baseline_positions=None, rank99=True)


def test_redundancy_profile_draws_observed_baselines_band_and_halves(tiny_survey):
    _, _, s = tiny_survey
    fig = plots.redundancy_profile(s, scores=("mean_sq_similarity", "ghost_fraction", "rank99"))
    assert len(fig.axes) == 3
    smooth, threshold = fig.axes[0], fig.axes[1]
    want = [layer.redundancy.scores["mean_sq_similarity"] for layer in s]
    lines = {line.get_label(): line for line in smooth.lines}
    np.testing.assert_allclose(lines["observed"].get_ydata(), [w.observed for w in want])
    np.testing.assert_allclose(lines["noise-matched null (image pairs)"].get_ydata(), [w.null.value for w in want])
    np.testing.assert_allclose(lines["untrained network"].get_ydata(), [w.untrained.value for w in want])
    assert lines["noise-matched null (image pairs)"].get_linestyle() == "--"
    band = next(c for c in smooth.collections if isinstance(c, PolyCollection))  # the jackknife band
    assert "jackknife" in band.get_label()
    assert not any(isinstance(c, PolyCollection) for c in threshold.collections)  # no interval for thresholds
    halves = next(line for line in threshold.lines if line.get_label().startswith("split halves"))
    gf = [layer.redundancy.scores["ghost_fraction"].halves for layer in s]
    np.testing.assert_allclose(halves.get_ydata(), [h[0] for h in gf] + [h[1] for h in gf])
    ranks = next(line for line in fig.axes[2].lines if line.get_label() == "observed").get_ydata()
    np.testing.assert_allclose(ranks, [layer.redundancy.scores["rank99"].observed / layer.channels for layer in s])
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == ["conv1", "conv2"]
    with pytest.raises(GhostmapsError, match="unknown scores"):
        plots.redundancy_profile(s, scores=("nope",))
    with pytest.raises(GhostmapsError, match="rank99"):
        plots.redundancy_profile(s.rescore(rank99=False), scores=("rank99",))


def test_similarity_heatmap_is_reordered_outlined_and_marks_dead(tiny_survey):
    _, _, s = tiny_survey
    fig = plots.similarity_heatmap(s, "conv1")
    image = next(a for a in fig.axes[0].get_children() if isinstance(a, AxesImage))
    order = s["conv1"].groups.order
    assert order[-1] == 3  # the dead channel goes last
    np.testing.assert_allclose(image.get_array(), s["conv1"].similarity.to_numpy()[np.ix_(order, order)])
    labels = [p.get_label() for p in fig.axes[0].patches]
    assert "dead / constant" in labels
    fig2 = plots.similarity_heatmap(s, "conv2")
    boxes = [p for p in fig2.axes[0].patches if isinstance(p, Rectangle) and p.get_label().startswith("group")]
    groups = s["conv2"].groups
    assert [2, 5] in groups.multi and len(boxes) == len(groups.multi)
    assert mcolors.to_hex(boxes[0].get_edgecolor()) == pair_colour(0)


def test_pair_gallery_shows_each_pair_on_each_image(tiny_survey):
    model, x, s = tiny_survey
    fig = survey_gallery(s, "conv2", model=model, images=x, k=2, n_images=3)
    assert len(fig.axes) == 2 * 2 * 3
    first = s["conv2"].pairs[0]
    assert {first.i, first.j} == {2, 5}
    with torch.no_grad():
        maps = model.conv2(torch.relu(model.bn1(model.conv1(x[:3]))))
    tile = fig.axes[2].images[0].get_array()  # row 0, image 1, channel i
    ref = maps[1, first.i].numpy()
    lo, hi = np.percentile(ref, [1, 99])
    np.testing.assert_allclose(tile, np.clip((ref - lo) / (hi - lo), 0, 1), atol=1e-6)
    fig2 = plots.pair_gallery(maps=maps, pairs=[(0, 1)], layer="conv2")
    assert len(fig2.axes) == 2 * 3
    with pytest.raises(GhostmapsError, match="outside"):
        plots.pair_gallery(maps=maps, pairs=[(0, 99)])
    with pytest.raises(GhostmapsError, match="survey and a layer"):
        plots.pair_gallery()
    with pytest.raises(GhostmapsError, match="needs the layer's maps"):
        plots.pair_gallery(pairs=[(0, 1)])
    with pytest.raises(GhostmapsError, match="image_names has 2 names for the 3 images"):
        plots.pair_gallery(maps=maps, pairs=[(0, 1)], image_names=["a", "b"])


def test_survey_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["survey", "--images", "samples:chelsea,china", "--layers", "features.1.conv.0.0",
                 "features.2.conv.0.0", "--out", str(out), "--baseline", "untrained", "--baseline-every", "1",
                 "--baseline-positions", "0", "--baseline-bn-images", "2", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "features.2.conv.0.0" in printed and "written to" in printed
    assert "untrained baseline: every image pair, all positions, BatchNorm re-estimated on 2 images" in printed
    rows = list(csv.DictReader((out / "survey.csv").open()))
    assert [r["layer"] for r in rows] == ["features.1.conv.0.0", "features.2.conv.0.0"]
    assert all(r["images"] == "2" for r in rows)
    loaded = Survey.load(out / "survey.pt")
    assert loaded.names == ["features.1.conv.0.0", "features.2.conv.0.0"] and loaded.meta["images"] == 2
    meta = json.loads((out / "survey.json").read_text())["meta"]
    assert meta["model"] == "mobilenet_v2" and meta["metric"] == "pearson" and meta["baseline"] == "untrained"
    assert meta["baseline_every"] == 1 and meta["baseline_positions"] is None and meta["baseline_bn_images"] == 2
    assert all(r["metric"] == "pearson" and r["mean_sq_similarity_untrained"] != "" for r in rows)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "profile.png" in pngs and any(p.startswith("heatmap-") for p in pngs)
    assert any(p.startswith("gallery-") for p in pngs)
    assert not list(out.glob(".*"))  # no temporary files left


def test_survey_command_interrupted_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import analysis.plots.profile as profile

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(profile, "redundancy_profile", interrupted)
    monkeypatch.setattr(plots, "redundancy_profile", interrupted)
    out = tmp_path / "run"
    code = main(["survey", "--weights", "none", "--images", "samples:chelsea", "--layers", "features.0.0",
                 "--out", str(out), "--no-progress"])
    assert code == 130
    assert sorted(p.name for p in out.iterdir()) == ["survey.csv", "survey.json", "survey.pt"]
    Survey.load(out / "survey.pt")  # what is there is whole


def test_survey_command_bad_layer_is_exit_code_2(tmp_path, capsys):
    assert main(["survey", "--weights", "none", "--images", "samples:chelsea", "--layers", "nolayer",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert "nolayer" in capsys.readouterr().err


def test_survey_command_bad_heatmap_layer_fails_before_the_forward_pass(tmp_path, monkeypatch, capsys):
    import importlib

    survey_module = importlib.import_module("analysis.survey.run")  # the module the command calls

    def never(*args, **kwargs):
        raise AssertionError("the survey ran before --heatmap was checked")

    monkeypatch.setattr(survey_module, "survey", never)
    assert main(["survey", "--weights", "none", "--images", "samples:chelsea", "--layers", "features.0.0",
                 "--heatmap", "features.1.conv.0.0", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "features.1.conv.0.0" in capsys.readouterr().err


def test_save_figure_interrupted_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from analysis._core.io import atomic_write

    fig = plt.figure()
    target = tmp_path / "profile.png"
    atomic_write(target, b"old")

    def interrupted(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fig), "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plots.save_figure(fig, target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["profile.png"]
    plt.close(fig)


def test_profile_panels_say_which_way_is_redundant(tiny_survey):
    _, _, s = tiny_survey
    fig = plots.redundancy_profile(s, scores=("ghost_fraction", "participation_ratio", "rank99", "ratio", "groups",
                                              "mean_sq_similarity"))
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert [lab.endswith("↑ more redundant") for lab in labels] == [True, False, False, True, False, True]
    assert all(lab.endswith("↓ more redundant") for lab in labels[1:3] + labels[4:5])


def test_gallery_tiles_are_scaled_by_percentiles_not_by_one_hot_pixel():
    from analysis.plots.gallery import scaled_tile

    x = np.random.default_rng(0).uniform(0, 1, size=(20, 20))
    x[0, 0] = 1000.0  # one hot border pixel
    tile = scaled_tile(x)
    lo, hi = np.percentile(x, [1, 99])
    np.testing.assert_allclose(tile, np.clip((x - lo) / (hi - lo), 0, 1))
    assert tile[1:, 1:].std() > 0.25  # min–max scaling would squash the rest to ≈ 0.001


def test_gallery_of_a_reused_module_names_its_outputs():
    model = TinyNet().eval()
    with pytest.raises(GhostmapsError, match="gives 2 outputs"):
        survey_gallery(None, layer="relu", model=model, images=torch.randn(2, 3, 8, 8), pairs=[(0, 1)])


def test_pearson_is_the_default_the_json_of_every_command_shows(tmp_path, capsys):
    fig = tmp_path / "f1.png"
    assert main(["figure1", "--weights", "none", "--layer", "features.1.conv.0.0", "--out", str(fig)]) == 0
    assert json.loads(fig.with_suffix(".json").read_text())["metric"] == "pearson"
    fit = tmp_path / "fit"
    assert main(["fit", "--weights", "none", "--layer", "features.1.conv.0.0", "--pairs", "1", "--d", "1",
                 "--random", "2", "--images", "samples:chelsea,china", "--out", str(fit)]) == 0
    assert json.loads((fit / "table1.json").read_text())["metric"] == "pearson"
    assert "most pearson-similar" in capsys.readouterr().out


def test_survey_command_checkpoints_and_resumes(tmp_path, capsys):
    ckpt = tmp_path / "run.ckpt"
    argv = ["survey", "--weights", "none", "--images", "samples:chelsea,china,coffee", "--layers", "features.0.0",
            "--no-progress", "--checkpoint", str(ckpt), "--checkpoint-every", "1", "--batch-size", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0 and ckpt.is_file()
    assert main([*argv, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (Survey.load(tmp_path / d / "survey.pt") for d in ("a", "b"))
    assert b.meta["resumed_from"] == 3 and a.to_dict()["layers"] == b.to_dict()["layers"]
    assert main([*argv, "--out", str(tmp_path / "c"), "--resume", "--groups", "4"]) == 2  # other settings
    assert "another settings" in capsys.readouterr().err


def test_headline_is_the_largest_excess_over_the_untrained_network_with_its_interval_above_zero():
    from analysis.measure.groups import GhostGroups
    from analysis.measure.pairs import GhostPairs
    from analysis.measure.scores import Baseline, Redundancy, Score
    from analysis.pipeline import headline
    from analysis.survey.result import LayerSurvey

    def layer(name, excess, low, raw):
        scores = {"mean_sq_similarity": Score(raw, raw - 0.01, raw + 0.01, Baseline(0.0, raw, raw - 0.01, raw + 0.01),
                                              Baseline(raw - excess, excess, low, excess + 0.01)),
                  "ratio": Score(1.0)}
        red = Redundancy(4, 4, [], [], 8, "pearson", 0.9, scores, layer=name)
        return LayerSurvey(name, (4, 2, 2), red, GhostGroups([0, 1, 2, 3], [[0], [1], [2], [3]], 0.9),
                           GhostPairs([], "pearson", name))

    s = Survey({n: layer(n, *v) for n, v in {"a": (0.05, 0.01, 0.9), "b": (0.08, -0.02, 0.2),
                                             "c": (0.06, 0.02, 0.1)}.items()})
    name, sentence = headline(s)
    assert name == "c" and "above 0" in sentence  # not "a" (highest raw score), not "b" (interval includes 0)
    s.layers.pop("c")
    s.layers.pop("a")
    name, sentence = headline(s)
    assert name == "b" and "includes 0" in sentence
    s = Survey({"d": layer("d", 0.04, None, 0.3)})  # no interval at all (groups=1): said so, not "includes 0"
    name, sentence = headline(s)
    assert name == "d" and "no interval to judge by" in sentence and "includes 0" not in sentence


def test_survey_command_on_a_layer_without_spatial_maps_writes_everything_but_a_gallery(tmp_path):
    out = tmp_path / "run"
    code = main(["survey", "--images", "samples:chelsea,china", "--layers", "classifier.1", "--out", str(out),
                 "--no-progress"])  # pretrained (offline): its logits have pairs to show
    assert code == 0  # it used to fail after writing the rest, on the gallery of an N×C output
    names = sorted(p.name for p in out.iterdir())
    assert "heatmap-classifier.1.png" in names and not any(n.startswith("gallery") for n in names)
