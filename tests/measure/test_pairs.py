"""Ghost pairs against a brute-force search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis import GhostmapsError, channel_similarity, ghost_pairs
from tests.oracles import brute_force_exclusive


def test_exclusive_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    m = rng.uniform(-1, 1, (12, 12))
    m = (m + m.T) / 2
    got = [(p.i, p.j) for p in ghost_pairs(m, k=5)]
    assert got == brute_force_exclusive(m, 5)


def test_non_exclusive_returns_top_scores():
    rng = np.random.default_rng(1)
    m = rng.uniform(0, 1, (8, 8))
    m = (m + m.T) / 2
    pairs = ghost_pairs(m, k=6, exclusive=False)
    upper = np.sort(m[np.triu_indices(8, 1)])[::-1][:6]
    np.testing.assert_allclose([p.score for p in pairs], upper)


def test_absolute_and_min_score():
    m = np.eye(4)
    m[0, 1] = m[1, 0] = -0.9
    m[2, 3] = m[3, 2] = 0.5
    assert [(p.i, p.j) for p in ghost_pairs(m, k=1, absolute=True)] == [(0, 1)]
    assert ghost_pairs(m, k=1, absolute=True)[0].score == pytest.approx(-0.9)
    assert [(p.i, p.j) for p in ghost_pairs(m, k=1)] == [(2, 3)]
    assert len(ghost_pairs(m, k=None, min_score=0.6)) == 0


def test_planted_ghosts_are_found_and_dead_channels_never_pair():
    g = torch.Generator().manual_seed(0)
    maps = torch.relu(torch.randn(2, 16, 10, 10, generator=g))
    maps[:, 9] = 2.0 * maps[:, 3]
    maps[:, 12] = maps[:, 5] + 0.01 * torch.rand(2, 10, 10, generator=g)
    maps[:, 0] = 0.0
    maps[:, 1] = 0.0
    pairs = ghost_pairs(channel_similarity(maps, metric="pearson"), k=2)
    assert {(p.i, p.j) for p in pairs} == {(3, 9), (5, 12)}
    everything = ghost_pairs(channel_similarity(maps), k=None, exclusive=False)
    assert all(0 not in (p.i, p.j) and 1 not in (p.i, p.j) for p in everything)
    assert len(everything) == 14 * 13 // 2


def test_serialisation_and_printing():
    m = np.array([[1, 0.8, 0.1], [0.8, 1, 0.2], [0.1, 0.2, 1]])
    pairs = ghost_pairs(m, k=2)
    data = json.loads(pairs.to_json())
    assert data["pairs"][0] == {"i": 0, "j": 1, "score": 0.8, "sparse": False}
    assert "channel    0 ~ channel    1" in str(pairs)
    assert len(pairs) == 1  # exclusive: channel 2 has no free partner left


def test_bad_input():
    with pytest.raises(GhostmapsError, match="square"):
        ghost_pairs(np.zeros((3, 4)))
    with pytest.raises(GhostmapsError, match="k must"):
        ghost_pairs(np.eye(3), k=0)


def test_sparse_pairs_are_flagged_in_the_table_and_its_text():
    g = torch.Generator().manual_seed(1)
    maps = torch.relu(torch.randn(3, 6, 10, 10, generator=g))
    gate = torch.rand(3, 1, 10, 10, generator=g) < 0.1  # on at ~10% of the positions
    maps[:, 4] = maps[:, 0] * gate[:, 0] * 3.0  # a copy of channel 0, zero on ~90% of the positions...
    maps[:, 5] = maps[:, 4] * 2.0 + 0.0  # ...and its double: a perfect, but sparse, pair
    maps[:, 2] = maps[:, 1] * 0.5 + 0.01 * torch.rand(3, 10, 10, generator=g)  # a dense near-copy
    sim = channel_similarity(maps)
    apoz = (maps.transpose(0, 1).reshape(6, -1).abs() <= 1e-6).double().mean(1)
    np.testing.assert_allclose(sim.apoz.numpy(), apoz.numpy())
    assert sim.sparse.tolist() == [bool(a >= 0.8) for a in apoz]
    pairs = ghost_pairs(sim, k=2)
    flags = {(p.i, p.j): p.sparse for p in pairs}
    assert flags == {(4, 5): True, (1, 2): False}
    assert "sparse" in str(pairs) and json.loads(pairs.to_json())["pairs"][0]["sparse"] is True
    assert "sparse" in pairs[0].label and "sparse" not in pairs[1].label
