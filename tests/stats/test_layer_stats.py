"""Similarity and streaming statistics against independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import GhostmapsError, LayerStats, channel_similarity
from tests.oracles import numpy_similarity


def random_maps(seed: int = 0, shape=(4, 7, 5, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g) + 0.3)


@pytest.mark.parametrize("metric", ["cosine", "pearson"])
def test_similarity_matches_brute_force_loop(metric):
    maps = random_maps()
    got = channel_similarity(maps, metric=metric).matrix.numpy()
    np.testing.assert_allclose(got, numpy_similarity(maps.numpy(), metric), atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "pearson"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_streamed_batches_equal_concatenated_maps(metric, batch):
    maps = random_maps(1, (8, 6, 4, 4))
    stats = LayerStats()
    for start in range(0, 8, batch):
        stats.update(maps[start:start + batch])
    ref = maps.numpy().transpose(1, 0, 2, 3).reshape(6, -1).astype(np.float64)
    np.testing.assert_allclose(stats.similarity_matrix(metric).numpy(), numpy_similarity(maps.numpy(), metric),
                               atol=1e-6)
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats.std.numpy(), ref.std(1), rtol=1e-5)
    np.testing.assert_allclose(stats.apoz.numpy(), (np.abs(ref) <= 1e-6).mean(1))
    assert stats.images == 8 and stats.count == 8 * 16


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_merge_is_associative_and_matches_one_pass(dtype, atol):
    maps = random_maps(2, (9, 5, 3, 3)).to(dtype)
    a, b, c = (LayerStats.from_maps(maps[s]) for s in (slice(0, 2), slice(2, 5), slice(5, 9)))
    whole = LayerStats.from_maps(maps)
    left, right = (a + b) + c, a + (b + c)
    for merged in (left, right):
        np.testing.assert_allclose(merged.covariance.numpy(), whole.covariance.numpy(), atol=atol)
        np.testing.assert_allclose(merged.second_moment.numpy(), whole.second_moment.numpy(), atol=atol)
        assert merged.count == whole.count and merged.images == 9
        assert torch.equal(merged.nonzero, whole.nonzero)
        assert torch.equal(merged.max, whole.max) and torch.equal(merged.min, whole.min)
    before = a.gram.clone()
    _ = a + b
    assert torch.equal(a.gram, before)  # merging never changes its inputs


def test_pearson_is_accurate_for_channels_with_a_large_offset():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 1, 8, 8, generator=g)
    maps = torch.cat([base + 1e4, 0.5 * base + 1e4 + 0.1 * torch.randn(6, 1, 8, 8, generator=g)], dim=1)
    stats = LayerStats()
    for k in range(6):
        stats.update(maps[k:k + 1].float())
    ref = numpy_similarity(maps.double().numpy(), "pearson")
    assert stats.similarity_matrix("pearson")[0, 1].item() == pytest.approx(ref[0, 1], abs=1e-6)


def test_planted_duplicates_are_the_most_similar():
    maps = random_maps(4, (3, 10, 8, 8))
    maps[:, 7] = maps[:, 2] * 3.0
    sim = channel_similarity(maps, metric="pearson").matrix
    sim.fill_diagonal_(-2)
    assert divmod(int(sim.argmax()), 10) in {(2, 7), (7, 2)}


def test_dead_and_constant_channels_are_masked_never_nan():
    maps = random_maps(5, (2, 6, 4, 4))
    maps[:, 1] = 0.0
    maps[:, 4] = 0.0
    maps[:, 3] = 2.5
    for metric in ("cosine", "pearson"):
        sim = channel_similarity(maps, metric=metric)
        assert not torch.isnan(sim.matrix).any()
        assert sim.dead.tolist() == [False, True, False, False, True, False]
        assert sim.constant.tolist() == [False, False, False, True, False, False]
        assert sim.matrix[[1, 3, 4]].abs().sum() == 0 and sim.matrix[:, [1, 3, 4]].abs().sum() == 0
        assert sim.matrix[0, 0] == 1 and sim.matrix[1, 1] == 0


@pytest.mark.parametrize("shape", [(3, 1, 5, 5), (4, 6, 1, 1), (1, 5, 7, 7)])
def test_degenerate_shapes(shape):
    sim = channel_similarity(random_maps(6, shape))
    assert sim.matrix.shape == (shape[1], shape[1]) and torch.isfinite(sim.matrix).all()


def test_all_zero_layer_and_fp16_input():
    zero = channel_similarity(torch.zeros(2, 4, 3, 3))
    assert zero.dead.all() and zero.matrix.abs().sum() == 0
    maps = random_maps(7)
    half = channel_similarity(maps.half(), metric="cosine").matrix
    np.testing.assert_allclose(half.numpy(), numpy_similarity(maps.half().float().numpy(), "cosine"), atol=1e-5)


def test_pearson_is_the_default_and_ignores_each_channels_scale_and_offset():
    maps = random_maps(9)
    sim = channel_similarity(maps)
    assert sim.metric == "pearson"
    np.testing.assert_allclose(sim.matrix.numpy(), numpy_similarity(maps.numpy(), "pearson"), atol=1e-6)
    affine = maps * torch.tensor([3.0, 0.5, 2.0, 1.0, 7.0, 0.1, 4.0]).view(1, -1, 1, 1) + torch.arange(7.0).view(1, -1, 1, 1)
    np.testing.assert_allclose(channel_similarity(affine).matrix.numpy(), sim.matrix.numpy(), atol=1e-5)
    cosine = channel_similarity(affine, metric="cosine").matrix  # cosine moves with the offsets a BN removes
    assert (cosine - channel_similarity(maps, metric="cosine").matrix).abs().max() > 0.1


def test_bad_input_is_a_clear_error():
    with pytest.raises(GhostmapsError, match="metric"):
        channel_similarity(random_maps(), metric="euclid")
    with pytest.raises(GhostmapsError, match="N×C×H×W"):
        channel_similarity(torch.zeros(2, 3, 4, 5, 6))
    with pytest.raises(GhostmapsError, match="empty"):
        LayerStats().covariance  # noqa: B018
    stats = LayerStats.from_maps(random_maps())
    with pytest.raises(GhostmapsError, match="channels"):
        stats.update(torch.zeros(1, 3, 2, 2))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_similarity_properties(n, c, hw, seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.relu(torch.randn(n, c, hw, hw, generator=g))
    for metric in ("cosine", "pearson"):
        sim = channel_similarity(maps, metric=metric)
        m = sim.matrix
        assert torch.isfinite(m).all() and torch.allclose(m, m.T) and m.abs().max() <= 1.0
        assert torch.equal(m.diagonal(), sim.valid.double())


def test_to_dict_and_json_round_trip():
    import json

    sim = channel_similarity(random_maps(), layer="x")
    data = json.loads(sim.to_json())
    assert data["layer"] == "x" and len(data["matrix"]) == 7
    assert np.allclose(sim.to_numpy(), np.array(data["matrix"]))
    assert "channels=7" in repr(sim)


def test_non_finite_maps_are_refused():
    maps = random_maps()
    maps[0, 2, 1, 1] = float("nan")
    with pytest.raises(GhostmapsError, match=r"NaN or inf values \(channels \[2\]"):
        channel_similarity(maps)
    maps[0, 2, 1, 1] = float("inf")
    with pytest.raises(GhostmapsError, match="NaN or inf"):
        LayerStats().update(maps)


def test_mean_and_second_moment_are_exact_for_large_offsets():
    g = torch.Generator().manual_seed(8)
    maps = (torch.randn(3, 4, 6, 6, generator=g) + 1000.0).float()
    stats = LayerStats.from_maps(maps)
    ref = maps.double().numpy().transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(stats.second_moment.numpy(), ref @ ref.T / ref.shape[1], rtol=1e-9)
