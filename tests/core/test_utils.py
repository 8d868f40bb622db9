"""The shared helpers (validators, relative error, image batching, single entries), checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis._core.errors import GhostmapsError, did_you_mean
from analysis._core.numerics import relative_error
from analysis.convert.ghostify import GhostifyError
from analysis.data.batches import images_tensor
from analysis.hooks import single_entry
from ghostnet.validation import check_odd_size, check_ratio


def test_relative_error_matches_a_direct_formula():
    gen = torch.Generator().manual_seed(0)
    target, pred = torch.randn(3, 4, 5, 6, generator=gen), torch.randn(3, 4, 5, 6, generator=gen)
    t, p = target.numpy().astype(np.float64), pred.numpy().astype(np.float64)
    want = ((p - t) ** 2).sum() / ((t - t.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum()
    assert relative_error(pred, target) == pytest.approx(want, rel=1e-12)
    t2, p2 = t[:, :, 0, 0], p[:, :, 0, 0]  # 2-D: per-column means
    assert relative_error(pred[:, :, 0, 0], target[:, :, 0, 0]) == pytest.approx(
        ((p2 - t2) ** 2).sum() / ((t2 - t2.mean(0)) ** 2).sum(), rel=1e-12)
    const = torch.ones(2, 3, 4, 4)
    assert relative_error(const, const) == 0.0 and relative_error(const * 2, const) == math.inf


def test_one_relative_error_definition_and_edge_rule_for_verify_and_reconstruct():
    from analysis._core.numerics import REL_TOL, relative_from_sums
    from analysis.reconstruct import fit_cheap_op

    gen = torch.Generator().manual_seed(1)
    sse, ss = np.array([2.0, 0.0, 1e-14, 5.0]), np.array([4.0, 0.0, 0.0, 1e-13])
    sumsq = np.array([9.0, 3.0, 100.0, 1.0])
    # not constant: SSE / SS; constant (SS <= 1e-12 Σy²) and exact (SSE <= 1e-12 Σy²): 0; constant, inexact:
    # inf, or with the reconstruction's rule SSE over the floor 1e-12 Σy²
    np.testing.assert_array_equal(relative_from_sums(sse, ss, sumsq), [0.5, 0.0, 0.0, np.inf])
    np.testing.assert_allclose(relative_from_sums(sse, ss, sumsq, constant_target="floor"),
                               [0.5, 0.0, 0.0, 5.0 / (REL_TOL * 1.0)])
    assert relative_from_sums(1.0, 0.0, 0.0, constant_target="floor") == 1.0 / np.finfo(np.float64).tiny
    # relative_error is the same definition on tensors, and a cheap-op fit's rel_error is it on its prediction
    src, dst = (torch.randn(3, 6, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    fit = fit_cheap_op(src, dst, d=3)
    pred = fit.predict(src)
    assert relative_error(pred[:, None], dst[:, None]) == pytest.approx(fit.rel_error, rel=1e-9)
    const = torch.full((3, 1, 6, 7), 2.5, dtype=torch.float64)
    no_bias = fit_cheap_op(torch.zeros(3, 6, 7), const[:, 0], d=3, bias=False)
    assert relative_error(torch.zeros_like(const), const, constant_target="floor") == pytest.approx(
        no_bias.rel_error, rel=1e-9)


class _Source:
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def batches(self, n: int):
        for i in range(0, len(self.x), n):
            yield [str(i)], self.x[i:i + n]


def test_images_tensor_accepts_tensors_lists_and_sources():
    x = torch.randn(20, 3, 4, 4)
    keep = x.clone()
    assert images_tensor(x) is x
    assert images_tensor(x[0]).shape == (1, 3, 4, 4)
    assert torch.equal(images_tensor([x[0], x[1:3]]), x[:3])
    assert torch.equal(images_tensor(_Source(x)), x)
    assert torch.equal(x, keep)
    with pytest.raises(GhostifyError, match="calibration_images must be an N x C x H x W") as info:
        images_tensor(42, "calibration_images", GhostifyError)
    assert "int" in str(info.value)
    with pytest.raises(GhostmapsError, match="images must be a non-empty"):
        images_tensor(torch.zeros(0, 3, 4, 4), "images", GhostmapsError)
    with pytest.raises(ValueError, match="must be an N x C"):
        images_tensor(["a"])


def test_validators_raise_the_callers_error_and_accept_numpy_ints():
    assert check_ratio(np.int64(3)) == 3 and type(check_ratio(np.int64(3))) is int
    assert check_odd_size(np.int32(5), "dw_size") == 5
    for bad in (1, 2.0, True, "2"):
        with pytest.raises(GhostmapsError, match="each of ratios must be an int >= 2"):
            check_ratio(bad, "each of ratios", GhostmapsError)
    for bad in (0, 2, 3.0, False):
        with pytest.raises(GhostifyError, match="dw_size must be a positive odd int") as info:
            check_odd_size(bad, "dw_size", GhostifyError)
        assert "use e.g. 3" in str(info.value)


def test_did_you_mean_is_shared_with_analysis_errors():
    assert did_you_mean("conv_c", ["conv_a", "bn_a"]) == " Did you mean: conv_a?"
    assert did_you_mean("layer", ["x.layer1.conv"]) == " Did you mean: x.layer1.conv?"  # substring hit
    assert did_you_mean("zzz", ["conv_a"]) == ""


def test_single_entry_picks_one_layer_output():
    maps = {"a": torch.zeros(1, 2, 3, 3), "b": torch.zeros(1, 4), "r": torch.zeros(1), "r#1": torch.zeros(1),
            "t[0]": torch.zeros(1, 2, 3, 3)}
    name, tensor = single_entry(maps, "a", ndim=4)
    assert name == "a" and tensor is maps["a"]
    assert single_entry(maps, "t")[0] == "t[0]"
    with pytest.raises(GhostmapsError, match=r"produced no tensor output of its own; the maps hold 5 other "
                                             r"layer\(s\) \(a, b, r, r#1, …\): .* e.g. 'a'"):
        single_entry(maps, "c")  # e.g. a glob that captured several layers
    with pytest.raises(GhostmapsError, match=r"produced no tensor output for the given image"):
        single_entry({}, "c")
    with pytest.raises(GhostmapsError, match=r"gives 2 outputs \(r, r#1…\); pick one, e.g. 'r'"):
        single_entry(maps, "r")
    with pytest.raises(GhostmapsError, match=r"outputs shape \(1, 4\), not feature maps"):
        single_entry(maps, "b", ndim=4)


def test_the_validators_normalise_or_name_the_input_and_the_fix():
    from analysis._core import validation as v

    assert v.check_threshold(np.float32(0.5)) == 0.5 and type(v.check_threshold(1)) is float
    assert v.check_level(0.9) == 0.9 and v.check_positive_int(np.int64(4), "groups") == 4
    assert v.check_count(0, "bootstrap") == 0 and v.check_tol(0) == 0.0
    assert v.check_metric("pearson") == "pearson" and v.check_linkage("single") == "single"
    assert v.check_ratio(np.int64(3)) == 3 and v.check_odd_size(5, "dw_size") == 5
    bad = [(v.check_metric, ("euclid",), "unknown metric 'euclid'; use one of cosine, pearson"),
           (v.check_linkage, ("ward",), "unknown linkage 'ward'; use one of complete, average, single"),
           (v.check_threshold, (0.0,), r"threshold must be a \|similarity\| in \(0, 1\], got 0.0; e.g. 0.9"),
           (v.check_threshold, (True,), "threshold must be"),
           (v.check_level, (1.5,), r"level must be a confidence level in \(0, 1\), got 1.5; e.g. 0.95"),
           (v.check_positive_int, (0, "batch_size"), "batch_size must be an int of at least 1, got 0"),
           (v.check_positive_int, (2.0, "k", GhostmapsError, " (or None)"), r"k must be an int of at least 1 \(or None\)"),
           (v.check_count, (-1, "latency_runs", GhostmapsError, " (0 skips timing)"),
            r"latency_runs must be an int >= 0 \(0 skips timing\), got -1"),
           (v.check_count, (True, "bootstrap"), "bootstrap must be an int >= 0"),
           (v.check_tol, (float("nan"),), "tol must be a tolerance ≥ 0"),
           (v.check_ratio, (1,), "ratio must be an int >= 2"),
           (v.check_odd_size, (4,), "d must be a positive odd int")]
    for check, args, message in bad:
        with pytest.raises(GhostmapsError, match=message):
            check(*args)
    with pytest.raises(GhostifyError, match="calibrate_steps"):  # the caller's error class
        v.check_count(-1, "calibrate_steps", GhostifyError)


def test_one_metric_check_and_one_default_threshold_everywhere(tiny):
    from analysis import LayerStats, channel_similarity, ghost_groups, redundancy, survey
    from analysis._core.validation import DEFAULT_LEVEL, DEFAULT_THRESHOLD
    from analysis.survey.settings import check_settings

    maps = torch.rand(2, 3, 4, 4)
    calls = [lambda: channel_similarity(maps, metric="l2"), lambda: redundancy(maps, metric="l2"),
             lambda: LayerStats.from_maps(maps).similarity_matrix("l2"),
             lambda: survey(tiny, torch.rand(2, 3, 8, 8), metric="l2", progress=False)]
    messages = set()
    for call in calls:
        with pytest.raises(GhostmapsError, match="unknown metric") as info:
            call()
        messages.add(str(info.value))
    assert messages == {"unknown metric 'l2'; use one of cosine, pearson."}
    import inspect

    for fn in (ghost_groups, redundancy, check_settings, survey):
        assert inspect.signature(fn).parameters["threshold"].default == DEFAULT_THRESHOLD == 0.9
    for fn in (redundancy, check_settings, survey):
        assert inspect.signature(fn).parameters["level"].default == DEFAULT_LEVEL == 0.95
    from analysis.cli.main import build_parser

    assert build_parser().parse_args(["survey"]).threshold == DEFAULT_THRESHOLD


def test_every_analysis_error_is_a_ghostmaps_error_and_ghostnet_errors_are_value_errors():
    import analysis
    from analysis.convert.ghostify import GhostifyError
    from ghostnet.validation import GhostConfigError
    from ghostnet.weights import CheckpointMismatchError

    for name in ("NoImagesError", "UnknownLayerError", "WeightsUnavailableError"):
        assert issubclass(getattr(analysis, name), analysis.GhostmapsError)
    assert issubclass(GhostifyError, GhostmapsError) and issubclass(GhostmapsError, ValueError)
    assert issubclass(GhostConfigError, ValueError) and issubclass(CheckpointMismatchError, ValueError)
    assert not issubclass(GhostConfigError, GhostmapsError)  # ghostnet never imports analysis
