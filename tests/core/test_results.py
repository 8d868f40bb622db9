"""The one Result protocol, checked on a small real instance of every result class: the same methods with the
same signatures, a JSON round trip through from_dict, CSV text equal to rows(), a frame equal to rows(), and one
clear error for to_frame without pandas."""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from analysis import MissingDependencyError
from analysis._core.results import Result, floats, plain
from analysis.convert.evaluate import Accuracy, Agreement, ClassLoss
from analysis.convert.ghostify import GhostifyResult, ReplacedLayer, SkippedLayer, ghostify
from analysis.convert.latency import Latency, LatencyRow, measure_latency
from analysis.convert.macs import MacsReport, ModuleCost, count_macs
from analysis.convert.verify import LayerCheck, VerificationReport, verify_replacement
from analysis.data.images import NamedImage
from analysis.data.models import ModelInfo
from analysis.hooks import LayerInfo, list_layers
from analysis.measure.groups import GhostGroups, ghost_groups
from analysis.measure.pairs import GhostPair, GhostPairs, ghost_pairs
from analysis.measure.scores import Redundancy, Score, redundancy
from analysis.measure.similarity import ChannelSimilarity, channel_similarity
from analysis.pipeline import Figure1Result, run_figure1
from analysis.reconstruct import (
    BestSources,
    CheapOpFit,
    CheapOpFits,
    Ghostability,
    IntrinsicChoice,
    RatioSuggestion,
    ReconstructionTable,
    Split,
    best_sources,
    choose_intrinsic,
    fit_cheap_op,
    ghostability,
    reconstruction_table,
    suggest_ratio,
)
from analysis.stats.intervals import Estimate, McNemar, mcnemar
from analysis.survey.result import LayerSurvey, Survey
from analysis.survey.run import survey
from tests.helpers import TinyNet

PROTOCOL = ("rows", "to_dict", "from_dict", "to_json", "to_csv", "to_frame")


class Net(nn.Module):
    """Two dense convs to ghostify (``conv`` and ``head``) after a stem that is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.head = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.head(torch.relu(self.conv(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def _maps(seed: int = 0) -> torch.Tensor:
    """N x C x H x W maps with a dead channel and a near-copy pair (2 ~ 5)."""
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(seed)).relu()
    x[:, 0] = 0.0
    x[:, 5] = 0.9 * x[:, 2] + 0.05 * x[:, 3]
    return x


@pytest.fixture(scope="module")
def instances() -> dict[str, Result]:
    """One real instance of every result class, made by the functions that return them."""
    torch.manual_seed(0)
    maps = _maps()
    sim = channel_similarity(maps, layer="conv")
    pairs = ghost_pairs(sim, k=3)
    red = redundancy(maps, layer="conv")
    tiny = TinyNet().eval()
    x = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    surveyed = survey(tiny, x, layers=["conv1", "conv2"], baseline="untrained", baseline_positions=None,
                      progress=False)
    single = fit_cheap_op(maps[:, 2], maps[:, 5])
    batch = fit_cheap_op(maps[:, [2, 3]].transpose(0, 1), maps[:, [5, 4]].transpose(0, 1))
    suggestion = suggest_ratio(maps, max_error=10.0, ratios=(2, 3))
    net = Net().eval()
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    new, ghostified = ghostify(net, init="fit", calibration_images=images, min_channels=8)  # the stem is skipped
    report = verify_replacement(net, new, images, latency_runs=0, note="calibration images")
    labels = torch.tensor([0, 1, 2, 3])
    labelled = verify_replacement(net, new, images, labels=labels, latency_repeats=0, layer_images=0)
    lat = measure_latency(net, new, images, batch_sizes=(1, 2), repeats=2, warmup=0, threads=1)
    g = ghostability(maps, ratio=2)
    macs = count_macs(net, (1, 3, 8, 8))
    fig = run_figure1(tiny, layer="conv1", image=NamedImage("noise", x[0], "test"), k=2)
    made: dict[str, Result] = {
        "GhostPair": pairs[0], "GhostPairs": pairs, "GhostGroups": ghost_groups(sim, 0.8),
        "ChannelSimilarity": sim, "Score": red.scores["ghost_fraction"], "Redundancy": red,
        "LayerSurvey": surveyed["conv2"], "Survey": surveyed, "CheapOpFit": single, "CheapOpFits": batch,
        "BestSources": best_sources(maps), "Ghostability": g, "Split": g.split,
        "IntrinsicChoice": choose_intrinsic(np.random.default_rng(0).random((5, 5)), 2),
        "Estimate": labelled.agreement.top1, "McNemar": mcnemar(3, 1), "Agreement": labelled.agreement,
        "Accuracy": labelled.accuracy, "ClassLoss": ClassLoss(2, 5, 0.8, 0.6), "Latency": lat,
        "LatencyRow": lat.timings[0],
        "RatioSuggestion": suggestion, "ReconstructionTable": reconstruction_table(maps, pairs, ds=(1, 3), n_random=4),
        "ReplacedLayer": ghostified.replaced[0], "SkippedLayer": ghostified.skipped[0], "GhostifyResult": ghostified,
        "LayerCheck": report.layers[0], "VerificationReport": report, "ModuleCost": macs.modules[1],
        "MacsReport": macs, "LayerInfo": list_layers(tiny, (1, 3, 12, 12))[0],
        "ModelInfo": ModelInfo("tiny", "random", "module"), "Figure1Result": fig,
    }
    return made


CLASSES = [GhostPair, GhostPairs, GhostGroups, ChannelSimilarity, Score, Redundancy, LayerSurvey, Survey, CheapOpFit,
           CheapOpFits, BestSources, Ghostability, RatioSuggestion, ReconstructionTable, ReplacedLayer, SkippedLayer,
           GhostifyResult, LayerCheck, VerificationReport, ModuleCost, MacsReport, LayerInfo, ModelInfo, Figure1Result,
           Split, IntrinsicChoice, Estimate, McNemar, Agreement, Accuracy, ClassLoss, Latency, LatencyRow]
NAMES = [cls.__name__ for cls in CLASSES]


def test_every_class_is_covered(instances):
    assert sorted(instances) == sorted(NAMES)
    for cls in CLASSES:
        assert type(instances[cls.__name__]) is cls


def test_every_class_has_the_same_protocol_with_the_same_signatures():
    for cls in CLASSES:
        assert issubclass(cls, Result), cls
        for name in PROTOCOL:
            assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(Result, name)), (cls, name)


def _is_scalar(v: object) -> bool:
    return v is None or type(v) in (str, int, bool) or (type(v) is float and math.isfinite(v))


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip_through_from_dict(instances, name):
    obj = instances[name]
    cls = type(obj)
    data = obj.to_dict()
    assert json.loads(obj.to_json()) == data  # to_dict is JSON-native already: no tuples, NaN or numpy
    back = cls.from_dict(json.loads(obj.to_json(indent=None)))
    assert type(back) is cls and back == obj and back.to_dict() == data
    assert cls.from_dict(data) == obj


@pytest.mark.parametrize("name", NAMES)
def test_rows_csv_and_frame_agree(instances, name, tmp_path):
    obj = instances[name]
    rows = obj.rows()
    assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
    assert all(_is_scalar(v) for r in rows for v in r.values()), "rows hold flat plain values"
    assert all(list(r) == list(rows[0]) for r in rows), "every row has the same columns"
    if obj._COLUMNS:
        assert list(rows[0])[: len(obj._COLUMNS)] == list(obj._COLUMNS)
    text = obj.to_csv()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    path = tmp_path / "sub" / f"{name}.csv"
    assert obj.to_csv(path) == text and path.read_text(encoding="utf-8") == text
    assert obj.to_csv(str(path)) == text  # a str path works too
    assert not list(path.parent.glob(".*tmp"))
    import pandas as pd

    frame = obj.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(rows)
    columns = list(rows[0])
    if obj._INDEX:  # the Survey is indexed by layer
        assert frame.index.name == obj._INDEX
        frame = frame.reset_index()
        columns = [obj._INDEX, *(c for c in columns if c != obj._INDEX)]
    assert list(frame.columns) == columns

    def norm(v: object) -> object:
        return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v

    records = [{k: norm(v) for k, v in r.items()} for r in frame.to_dict("records")]
    assert records == [{k: norm(v) for k, v in r.items()} for r in rows]


def test_to_frame_without_pandas_raises_one_error_naming_to_csv(instances, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    for name, obj in instances.items():
        with pytest.raises(MissingDependencyError, match=r"pip install pandas.*to_csv\(\)") as info:
            obj.to_frame()
        assert isinstance(info.value, ImportError) and name in str(info.value)
        assert obj.to_csv()  # no pandas needed


def test_empty_tables_still_have_their_header():
    pairs = GhostPairs([], "cosine", "x")
    assert pairs.rows() == [] and pairs.to_csv() == "layer,rank,i,j,score,sparse\n"
    assert GhostPairs.from_dict(json.loads(pairs.to_json())) == pairs
    assert list(pairs.to_frame().columns) == ["layer", "rank", "i", "j", "score", "sparse"]


def test_plain_and_floats_turn_non_finite_numbers_into_none_and_back():
    data = plain({1: np.array([1.0, np.nan, np.inf]), "t": (np.int64(2), np.bool_(True)), "x": torch.ones(2)})
    assert data == {"1": [1.0, None, None], "t": [2, True], "x": [1.0, 1.0]}
    assert json.loads(json.dumps(data)) == data
    back = floats(data["1"], fill=math.inf)
    assert back.dtype == np.float64 and back[0] == 1.0 and np.isinf(back[1:]).all()
    assert np.isnan(floats([None])[0])


def test_non_finite_values_come_back_as_documented(instances):
    best = instances["BestSources"]
    assert np.isinf(best.error_matrix).any()  # i == j is never allowed
    data = json.loads(best.to_json())
    assert data["error_matrix"][0][0] is None
    np.testing.assert_array_equal(BestSources.from_dict(data).error_matrix, best.error_matrix)
    check = LayerCheck("c", "Conv2d", "GhostConv", math.inf, 0.5, 1.0, 10, 6)
    back = LayerCheck.from_dict(json.loads(check.to_json()))
    assert check.to_dict()["rel_error"] is None and math.isnan(back.rel_error) and back.to_dict() == check.to_dict()


def test_single_and_batched_fits_are_two_typed_classes(instances):
    single, batch = instances["CheapOpFit"], instances["CheapOpFits"]
    assert not single.batched and batch.batched and len(batch) == 2
    assert isinstance(single.mse, float) and single.kernel.shape == (3, 3)
    assert batch.mse.shape == (2,) and batch.kernel.shape == (2, 3, 3)
    first = batch[0]  # the first pair of the batch is the single fit (2 -> 5), up to rounding
    assert type(first) is CheapOpFit
    for k in ("kernel", "bias", "mse", "rel_error", "r2"):
        np.testing.assert_allclose(getattr(first, k), getattr(single, k), rtol=1e-9, atol=1e-12)
    assert [r["pair"] for r in batch.rows()] == [0, 1] and "k1_1" in single.rows()[0]


def test_survey_layers_are_complete_and_load_keeps_the_statistics(instances, tmp_path):
    result = instances["Survey"]
    for layer in result:
        assert isinstance(layer.groups, GhostGroups) and isinstance(layer.pairs, GhostPairs)
        assert layer.stats is not None
    back = Survey.load(result.save(tmp_path / "s.pt"))
    assert back == result and back["conv2"].stats is not None
    assert Survey.from_dict(result.to_dict())["conv2"].stats is None  # JSON keeps no statistics
    with pytest.raises(Exception, match="not a ghostmaps survey"):
        Survey.from_dict({**result.to_dict(), "format": "other"})


def test_record_is_its_fields_as_plain_data():
    import dataclasses
    import json
    from collections.abc import Mapping
    from typing import Any

    import numpy as np

    from analysis._core.results import Record

    @dataclasses.dataclass
    class Row(Record):
        name: str
        value: float
        count: int

        @classmethod
        def from_dict(cls, data: Mapping[str, Any]) -> Row:
            return cls(data["name"], float(data["value"]), int(data["count"]))

    r = Row("a", np.float32(0.5), np.int64(3))
    assert r.to_dict() == {"name": "a", "value": 0.5, "count": 3}
    assert type(r.to_dict()["count"]) is int and r.rows() == [r.to_dict()]
    assert Row.from_dict(json.loads(r.to_json())) == r
    assert Row("b", float("nan"), 1).to_dict()["value"] is None  # non-finite floats become None, as plain does
    assert r.to_csv() == "name,value,count\na,0.5,3\n"
