"""GroupedStats (image groups, image pairs for the noise-matched null, position subsets) against independent
numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import GhostmapsError
from analysis.stats import GroupedStats, LayerStats, block_size, position_subset


def relu_maps(seed: int, shape=(11, 5, 4, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g, dtype=torch.float64) + 0.2)


def brute(maps: np.ndarray, members: list[int], shift: np.ndarray) -> dict[str, np.ndarray]:
    """Gram, pair cross product (pairs (2j, 2j + 1) both in ``members``), sums and pair sums, by loops."""
    n, c = maps.shape[:2]
    y = maps.reshape(n, c, -1) - shift[None, :, None]
    gram = sum(y[i] @ y[i].T for i in members)
    cross = np.zeros((c, c))
    pair_sums = np.zeros(c)
    paired = 0
    for i in members:
        if i % 2 == 0 and i + 1 in members:
            a, b = y[i], y[i + 1]
            cross += a @ b.T + b @ a.T
            pair_sums += a.sum(1) + b.sum(1)
            paired += 2
    return {"gram": gram, "cross": cross, "sums": sum(y[i].sum(1) for i in members), "pair_sums": pair_sums,
            "paired": paired}


def about(stats: GroupedStats, groups: list[int] | None = None, centre: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(Gram, cross) of ``stats`` about one raw centre, whatever their shift (off-diagonal cross only)."""
    m = stats.moments(groups)
    c = torch.full_like(m.shift, centre)
    g, h = m.centred("pearson", c - m.shift)
    h = h.numpy().copy()
    np.fill_diagonal(h, 0.0)
    return g.numpy(), h


def fill(maps: torch.Tensor, batch: int, groups: int = 3, chunk: int = 2) -> GroupedStats:
    stats = GroupedStats(groups=groups, chunk=chunk)
    for start in range(0, maps.shape[0], batch):
        stats.update(maps[start:start + batch], start)
    return stats.finish()


def check(stats: GroupedStats, maps: torch.Tensor, groups: list[int] | None, members: list[int], atol: float):
    m = stats.moments(groups)
    want = brute(maps.numpy(), members, stats.shift.numpy())
    off = ~np.eye(maps.shape[1], dtype=bool)  # the null's diagonal is never used
    np.testing.assert_allclose(m.gram.numpy(), want["gram"], atol=atol, rtol=1e-6)
    np.testing.assert_allclose(m.cross.numpy()[off], want["cross"][off], atol=atol, rtol=1e-6)
    np.testing.assert_allclose(m.sums.numpy(), want["sums"], atol=atol)
    np.testing.assert_allclose(m.pair_sums.numpy(), want["pair_sums"], atol=atol)
    p = maps[0, 0].numel()
    assert m.count == len(members) * p and m.pair_count == want["paired"] * p and m.images == len(members)


@pytest.mark.parametrize("batch", [1, 3, 4, 11])
def test_gram_and_null_cross_products_equal_loops_over_images_and_pairs(batch):
    maps = relu_maps(0)  # 11 images: five pairs and one odd image out
    stats = fill(maps, batch)
    check(stats, maps, None, list(range(11)), 1e-10)
    for k, members in enumerate([[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]):  # group (i // 2) mod 3
        check(stats, maps, [k], members, 2e-5)  # float32 group vectors
    total = stats.total()
    flat = maps.numpy().transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_allclose(total.mean.numpy(), flat.mean(1), rtol=1e-10)
    np.testing.assert_allclose(total.apoz.numpy(), (np.abs(flat) <= 1e-6).mean(1))
    np.testing.assert_array_equal(total.max.numpy(), flat.max(1))
    assert not stats.pending and not stats.estimated


def test_order_within_the_stream_does_not_matter_even_when_a_pair_is_split():
    maps = relu_maps(1, (10, 4, 3, 3))
    a = fill(maps, 10)
    b = GroupedStats(groups=3, chunk=2)
    for part in ([7, 2, 9], [0, 5, 1, 8], [3, 6, 4]):  # 7 before 6, 2 before 3, 9 before 8: pairs completed later
        b.update(maps[part], part)
    assert not b.finish().pending
    for groups in (None, [0], [1], [2]):
        for x, y in zip(about(b, groups), about(a, groups), strict=True):
            np.testing.assert_allclose(x, y, atol=1e-5)
        assert b.moments(groups).pair_count == a.moments(groups).pair_count


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_merge_is_associative_and_matches_one_pass(dtype, atol):
    maps = relu_maps(6, (9, 5, 3, 3)).to(dtype)
    parts = [GroupedStats(groups=3, chunk=2).update(maps[s], s.start) for s in (slice(0, 3), slice(3, 6),
                                                                                 slice(6, 9))]
    whole = fill(maps, 9)
    before = parts[0].gram.clone()
    a, b, c = parts
    for merged in ((a + b) + c, a + (b + c)):  # the pairs (2, 3) and (6, 7) straddle the parts
        merged.finish()
        for groups in (None, [0], [1], [2]):
            for x, y in zip(about(merged, groups), about(whole, groups), strict=True):
                np.testing.assert_allclose(x, y, atol=atol * 10 if groups is None else 1e-5)  # float32 groups
            assert merged.moments(groups).pair_count == whole.moments(groups).pair_count
        assert torch.equal(merged.nonzero, whole.nonzero) and torch.equal(merged.max, whole.max)
    assert torch.equal(a.gram, before)


def test_with_shift_keeps_the_moments_about_any_centre():
    maps = relu_maps(2)
    stats = fill(maps, 4)
    moved = stats.with_shift(torch.full((5,), 3.0, dtype=torch.float64))
    for groups in (None, [0], [2]):
        for x, y in zip(about(moved, groups, -1.0), about(stats, groups, -1.0), strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-6)


def test_a_checkpointed_state_continues_exactly_like_an_uninterrupted_one():
    maps = relu_maps(3)
    whole = fill(maps, 3)
    first = GroupedStats(groups=3, chunk=2)
    for start in (0, 3):  # images 0–5: three whole pairs
        first.update(maps[start:start + 3], start)
    assert first.pending == {}  # 0..5 are three whole pairs
    first.update(maps[6:7], 6)
    assert list(first.pending) == [3]  # image 6 waits for image 7
    back = GroupedStats.from_state_dict(first.state_dict())
    for start in (7, 10):
        back.update(maps[start:start + 3], start)
    back.finish()
    again = GroupedStats(groups=3, chunk=2)
    for start in (0, 3):
        again.update(maps[start:start + 3], start)
    again.update(maps[6:7], 6)
    for start in (7, 10):
        again.update(maps[start:start + 3], start)
    again.finish()
    for name in ("gram", "cross", "group_gram", "group_cross", "sums", "pair_sums", "count", "pair_count"):
        assert torch.equal(getattr(back, name), getattr(again, name)), name
    for x, y in zip(about(back), about(whole), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-10)


def test_block_size_is_even_so_pairs_never_straddle_groups():
    assert block_size(7, 16) == 2 and block_size(64, 16) == 4 and block_size(100, 16) == 6
    assert block_size(10_000, 16) == 16 and block_size(None) == 2
    for n in range(1, 300, 7):
        for k in (1, 3, 8, 16):
            chunk = block_size(n, k)
            assert chunk % 2 == 0 and len({(i // chunk) % k for i in range(n)}) == min(k, -(-n // 2)) or chunk == 16
    with pytest.raises(GhostmapsError, match="even"):
        GroupedStats(chunk=3)


@pytest.mark.parametrize("owned", [False, True])
def test_wide_layers_use_the_blocked_product_and_still_match(owned):
    maps = relu_maps(8, (4, 300 if owned else 700, 2, 2)).float()  # 2 and 4 row blocks
    reference = maps.clone()
    stats = GroupedStats(groups=2, chunk=2).update(maps, owned=owned).finish()
    assert torch.equal(maps, reference)  # read, never changed (``owned`` or not: the fold makes no shifted copy)
    for groups, members in ((None, [0, 1, 2, 3]), ([0], [0, 1]), ([1], [2, 3])):
        m = stats.moments(groups)
        want = brute(reference.double().numpy(), members, stats.shift.numpy())
        np.testing.assert_allclose(m.gram.numpy(), want["gram"], rtol=1e-4, atol=1e-3)
        off = ~np.eye(maps.shape[1], dtype=bool)
        np.testing.assert_allclose(m.cross.numpy()[off], want["cross"][off], rtol=1e-4, atol=1e-3)


def test_position_subsets_give_an_unbiased_estimate_and_say_so():
    maps = relu_maps(4, (6, 3, 8, 8))
    exact = fill(maps, 6).total().second_moment.numpy()
    estimates = []
    for seed in range(300):
        s = GroupedStats(groups=3, chunk=2, positions=16, seed=seed).update(maps).finish()
        assert s.estimated and s.total().count == 6 * 64
        estimates.append(s.total().second_moment.numpy())
    mean = np.mean(estimates, axis=0)
    spread = np.std(estimates, axis=0) / np.sqrt(len(estimates))
    assert np.all(np.abs(mean - exact) < 4 * spread + 1e-9)  # unbiased: within 4 standard errors everywhere
    assert np.abs(estimates[0] - exact).max() > 10 * np.abs(mean - exact).max() / np.sqrt(300)  # one is noisy
    # both images of a pair use the same positions (so their cross product lines up), seeded by the pair
    one = GroupedStats(groups=1, chunk=2, positions=16, seed=5).update(maps[:2]).finish()
    idx = position_subset(5, 0, 64, 16)
    y = maps[:2].reshape(2, 3, 64)[:, :, idx] - one.shift.view(1, 3, 1)
    want = (y[0] @ y[1].T + y[1] @ y[0].T) * 4.0
    off = ~torch.eye(3, dtype=torch.bool)
    np.testing.assert_allclose(one.moments().cross.numpy()[off], want.numpy()[off], rtol=1e-6)
    whole = GroupedStats(groups=1, chunk=2, positions=64).update(maps).finish()
    assert not whole.estimated  # maps no larger than the subset are folded whole


def test_memory_is_the_stated_formula_and_collapsing_drops_the_groups():
    stats = fill(relu_maps(5, (8, 40, 3, 3)), 4, groups=4)
    c, k = 40, 4
    # float64 totals (Gram, cross) + per group two float32 C×C matrices (one row block below 256 channels) +
    # per-group and per-channel vectors
    assert stats.nbytes() == 16 * c * c + k * 2 * 4 * c * c + 16 * k * c + 24 * k + 8 + 32 * c
    wide = fill(relu_maps(5, (4, 600, 1, 1)), 4, groups=4)  # 4 row blocks of 150: 5/8 of C² per group matrix
    assert wide.nbytes() == 16 * 600 ** 2 + k * 2 * 4 * (5 * 600 ** 2 // 8) + 16 * k * 600 + 24 * k + 8 + 32 * 600
    small = stats.collapsed()
    assert small.group_gram is None and small.nbytes() == 16 * c * c + 16 * c + 24 + 8 + 32 * c
    np.testing.assert_allclose(small.moments().cross.numpy(), stats.moments().cross.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [5, 300])  # 300: the blocked symmetric product (2 row blocks)
def test_grouped_total_is_layer_stats_and_both_are_the_numpy_moments(dtype, channels):
    g = torch.Generator().manual_seed(11)
    maps = (torch.relu(torch.randn(7, channels, 3, 4, generator=g, dtype=torch.float64)) * 3 + 0.5).to(dtype)
    maps[:, 1] = 0.0  # a dead channel and many exact zeros
    grouped, layer = GroupedStats(groups=3, chunk=2), LayerStats()  # the pair (2, 3) straddles two batches
    for s in (slice(0, 2), slice(2, 3), slice(3, 7)):
        grouped.update(maps[s], s.start)
        layer.update(maps[s])
    total = grouped.total()
    # float64 numpy; the shift is the first batch's channel means (rounded to the working precision)
    x = maps.double().numpy().transpose(1, 0, 2, 3).reshape(channels, -1)
    first = x[:, :2 * 12].mean(1)
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for stats in (total, layer):
        assert stats.count == 7 * 12 and stats.images == 7 and stats.channels == channels
        # the means to within the working precision (any shift gives the same moments; it only avoids cancellation)
        np.testing.assert_allclose(stats.shift.numpy(), first, rtol=3e-7 if dtype == torch.float32 else 1e-14)
        y = x - stats.shift.numpy()[:, None]
        want = {"gram": y @ y.T, "sums": y.sum(1), "nonzero": (np.abs(x) > 1e-6).sum(1), "min": x.min(1),
                "max": x.max(1)}
        for name, value in want.items():
            got = getattr(stats, name).numpy()
            if name in ("nonzero", "min", "max"):
                np.testing.assert_array_equal(got, value, err_msg=name)
            else:
                np.testing.assert_allclose(got, value, err_msg=name, **tol)
        np.testing.assert_allclose(stats.second_moment.numpy() * stats.count, x @ x.T, **tol)
        np.testing.assert_allclose(stats.mean.numpy() * stats.count, x.sum(1), **tol)
    for name in ("shift", "nonzero", "min", "max"):
        assert torch.equal(getattr(total, name), getattr(layer, name)), name
    np.testing.assert_allclose(total.gram.numpy(), layer.gram.numpy(), **tol)
    assert torch.equal(layer.gram, layer.gram.T) and torch.equal(total.gram, total.gram.T)


def _state(stats: GroupedStats | LayerStats) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in stats.__dict__.items()}


def _assert_same_state(stats: GroupedStats | LayerStats, before: dict) -> None:
    for k, v in before.items():
        now = stats.__dict__[k]  # the held state (reading a C×C field would settle streaming sums)
        assert torch.equal(now, v) if isinstance(v, torch.Tensor) else now == v, k


@pytest.mark.parametrize("kind", [GroupedStats, LayerStats])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_both_statistics_refuse_a_bad_first_or_later_batch_before_anything_changes(kind, bad):
    poisoned = relu_maps(1)
    poisoned[2, 3, 1, 1] = bad
    for stats in (kind(), kind().update(relu_maps(0))):  # a fresh one (no channels yet) and a filled one
        before = _state(stats)
        with pytest.raises(GhostmapsError, match=r"NaN or inf values \(channels \[3\]"):
            stats.update(poisoned)
        _assert_same_state(stats, before)
    fresh = kind()
    with pytest.raises(GhostmapsError, match="NaN or inf"):
        fresh.update(poisoned)
    fresh.update(relu_maps(0, (2, 3, 2, 2)))  # a refused first batch fixed nothing, not even the channels
    assert fresh.channels == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_refused_batch_leaves_the_statistics_unchanged(bad):
    stats = fill(relu_maps(0), batch=5)
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in stats.__dict__.items()
              if k != "pending"}
    poisoned = relu_maps(1)
    poisoned[2, 3, 1, 1] = bad
    with pytest.raises(GhostmapsError, match="NaN or inf"):
        stats.update(poisoned, 20)
    for k, v in before.items():
        now = stats.__dict__[k]  # the held state (reading a C×C field would settle streaming sums)
        assert torch.equal(now, v) if isinstance(v, torch.Tensor) else now == v, k


def test_errors_and_copies():
    stats = fill(relu_maps(7), 3)
    with pytest.raises(GhostmapsError, match="channels"):
        stats.update(torch.zeros(1, 3, 4, 3))
    with pytest.raises(GhostmapsError, match="N×C×H×W"):
        stats.update(torch.zeros(2, 5, 1))
    with pytest.raises(GhostmapsError, match="empty"):
        GroupedStats().total()
    with pytest.raises(GhostmapsError, match="positions"):
        GroupedStats(positions=0)
    moved = stats.to("cpu")
    moved.gram += 1.0
    assert not torch.equal(moved.gram, stats.gram)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_statistics_score_like_cpu_ones():
    from analysis.measure.scores import redundancy

    maps = relu_maps(0, (12, 5, 4, 4))
    cpu, gpu = fill(maps, 3), fill(maps.cuda(), 3)
    a, b = redundancy(cpu), redundancy(gpu)
    for k, s in a.scores.items():
        assert b.scores[k].observed == pytest.approx(s.observed, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("channels", [5, 300])
def test_recentring_while_settling_equals_moving_the_settled_statistics(channels):
    maps = (relu_maps(4, (10, channels, 3, 3)) * 2 + 0.7).float()
    fast, slow = GroupedStats(groups=3, chunk=2), GroupedStats(groups=3, chunk=2)
    for lo, hi in ((0, 3), (3, 7), (7, 10)):  # the pairs (2, 3) and (6, 7) straddle two batches
        fast.update(maps[lo:hi], lo)
        slow.update(maps[lo:hi], lo)
    fast.finish(recentre=True)
    slow.finish()
    moved = slow.with_shift(slow.shift + slow.sums.sum(0) / slow.count.sum())
    np.testing.assert_allclose(fast.shift.numpy(), moved.shift.numpy(), rtol=1e-12)
    for groups in (None, [0], [1, 2]):
        a, b = fast.moments(groups), moved.moments(groups)
        scale = float(b.gram.diagonal().max())
        np.testing.assert_allclose(a.gram.numpy(), b.gram.numpy(), atol=1e-6 * scale)
        np.testing.assert_allclose(a.cross.numpy(), b.cross.numpy(), atol=1e-6 * scale)
        np.testing.assert_allclose(a.sums.numpy(), b.sums.numpy(), atol=1e-6 * scale)
    # about its own mean the centred sums vanish, and the moments are still the brute-force ones
    assert np.abs(fast.sums.sum(0).numpy()).max() < 1e-6 * float(fast.count.sum())
    want = brute(maps.double().numpy(), list(range(10)), fast.shift.numpy())
    scale = float(np.abs(want["gram"]).max())
    np.testing.assert_allclose(fast.moments().gram.numpy(), want["gram"], atol=1e-6 * scale)
    off = ~np.eye(channels, dtype=bool)
    np.testing.assert_allclose(fast.moments().cross.numpy()[off], want["cross"][off], atol=1e-6 * scale)


def test_reading_mid_stream_settles_and_the_stream_goes_on_exactly():
    maps = relu_maps(5, (12, 7, 3, 3))
    whole = fill(maps, 4)
    part = GroupedStats(groups=3, chunk=2)
    part.update(maps[:4], 0)
    assert part.live_u is not None and part.__dict__["gram"] is None  # streaming layout, nothing settled
    assert part.total().count == 4 * 9  # reading settles
    assert part.live_u is None and part.__dict__["gram"] is not None
    for start in (4, 8):
        part.update(maps[start:start + 4], start)  # new streaming sums, added to the settled ones at the end
    part.finish()
    for groups in (None, [0], [2]):
        for x, y in zip(about(part, groups), about(whole, groups), strict=True):
            np.testing.assert_allclose(x, y, atol=1e-10 if groups is None else 1e-5)  # float32 group vectors
