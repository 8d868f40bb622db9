"""Figure 1: the grid, the boxes, determinism, and the end-to-end pipeline."""

from __future__ import annotations

import hashlib
import io

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from analysis import GhostmapsError, GhostPair, LayerInfo, plots, run_figure1, suggest_layer
from analysis.plots import pair_colour
from analysis.plots.figure1 import figure1_channels


def png_digest(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return hashlib.sha256(buf.getvalue()).hexdigest()


def framed(fig) -> dict[str, str]:
    """Channel title -> box colour, read back from the figure's axes."""
    out = {}
    for ax in fig.axes:
        boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
        if boxes:
            out[ax.get_title()] = mcolors.to_hex(boxes[0].get_edgecolor())
    return out


def test_figure1_boxes_pairs_in_matching_colours():
    maps = torch.rand(20, 6, 6, generator=torch.Generator().manual_seed(0))
    pairs = [GhostPair(2, 15, 0.9), GhostPair(4, 7, 0.8)]
    fig = plots.figure1(maps, pairs, max_channels=8)
    assert len(fig.axes) == 8
    assert framed(fig) == {"2": pair_colour(0), "15": pair_colour(0), "4": pair_colour(1), "7": pair_colour(1)}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["2 ~ 15  (0.900)", "4 ~ 7  (0.800)"]
    assert figure1_channels(20, pairs, 8) == [0, 1, 2, 3, 4, 5, 7, 15]
    flagged = plots.figure1(maps, [GhostPair(2, 15, 0.9), GhostPair(4, 7, 0.8, sparse=True)], max_channels=8)
    legend = [t.get_text() for t in flagged.legends[0].get_texts()]
    assert legend == ["2 ~ 15  (0.900)", "4 ~ 7  (0.800, sparse: APoZ ≥ 0.8)"]


def test_figure1_is_deterministic_and_saves_png_and_svg(tmp_path):
    maps = torch.rand(1, 9, 5, 5, generator=torch.Generator().manual_seed(1))
    pairs = [GhostPair(0, 8, 0.5)]
    assert png_digest(plots.figure1(maps, pairs)) == png_digest(plots.figure1(maps, pairs))
    written = plots.save_figure(plots.figure1(maps, pairs, image=torch.rand(3, 8, 8)), tmp_path / "f.png", svg=True)
    assert [p.name for p in written] == ["f.png", "f.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in written[1].read_bytes()[:500]
    assert not list(tmp_path.glob(".*tmp"))
    # a layer name with dots keeps them: two layers' figures never land on one file
    fig = plots.figure1(maps, pairs)
    a = plots.save_figure(fig, tmp_path / "fig_features.3.conv.0")[0]
    b = plots.save_figure(fig, tmp_path / "fig_features.3.conv.1")[0]
    assert (a.name, b.name) == ("fig_features.3.conv.0.png", "fig_features.3.conv.1.png") and a.exists()


def test_figure1_bad_input():
    with pytest.raises(GhostmapsError, match="C×H×W"):
        plots.figure1(torch.rand(2, 3, 4, 4))
    with pytest.raises(GhostmapsError, match="outside"):
        plots.figure1(torch.rand(3, 4, 4), [GhostPair(0, 5, 1.0)])


def test_suggest_layer_prefers_early_wide_activations():
    layers = [
        LayerInfo("conv", "Conv2d", (1, 32, 112, 112)),
        LayerInfo("a", "ReLU", (1, 16, 112, 112)),
        LayerInfo("b", "ReLU", (1, 64, 56, 56)),
        LayerInfo("b2", "ReLU", (1, 64, 56, 56)),
        LayerInfo("c", "ReLU", (1, 512, 7, 7)),
        LayerInfo("fc", "Linear", (1, 10)),
    ]
    assert suggest_layer(layers) == "b"
    assert suggest_layer(layers[:1]) == "conv"
    with pytest.raises(GhostmapsError, match="layer name"):
        suggest_layer(layers[-1:])


def test_run_figure1_end_to_end_on_the_pretrained_model(mobilenet, tmp_path):
    result = run_figure1(mobilenet, layer="features.3.conv.0", image="samples:chelsea", k=3)
    assert result.maps.shape == (144, 56, 56) and len(result.pairs) == 3
    best = result.pairs[0]
    # independent check of the best score: the Pearson correlation (the default) of the two flattened maps
    a, b = result.maps[best.i].flatten().double().numpy(), result.maps[best.j].flatten().double().numpy()
    assert best.score == pytest.approx(float(np.corrcoef(a, b)[0, 1]), abs=1e-6)
    apoz = (result.maps.flatten(1).abs() <= 1e-6).double().mean(1)
    assert [p.sparse for p in result.pairs] == [bool(max(apoz[p.i], apoz[p.j]) >= 0.8) for p in result.pairs]
    written = result.save(tmp_path / "fig.png")
    assert {p.suffix for p in written} == {".png", ".json"}
    assert result.to_dict()["layer"] == "features.3.conv.0" and result.to_dict()["metric"] == "pearson"
    with pytest.raises(GhostmapsError, match="not feature maps"):
        run_figure1(mobilenet, layer="classifier.1", image="samples:chelsea")
