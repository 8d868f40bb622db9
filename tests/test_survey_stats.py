"""GroupedStats (image groups + position sums) against independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import GhostmapsError
from analysis.stats import GroupedStats, LayerStats, block_size


def relu_maps(seed: int, shape=(10, 5, 4, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g, dtype=torch.float64) + 0.2)


def np_moments(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ x xᵀ and Σ x over all positions of all images (brute force, float64)."""
    n, c = maps.shape[:2]
    flat = maps.transpose(1, 0, 2, 3).reshape(c, -1)
    return flat @ flat.T, flat.sum(1)


def fill(maps: torch.Tensor, batch: int, groups: int = 4, chunk: int = 2) -> GroupedStats:
    stats = GroupedStats(groups=groups, chunk=chunk)
    for start in range(0, maps.shape[0], batch):
        stats.update(maps[start:start + batch], start)
    return stats


@pytest.mark.parametrize("batch", [1, 3, 10])
def test_total_and_groups_do_not_depend_on_batch_size(batch):
    maps = relu_maps(0)
    stats = fill(maps, batch)
    raw, sums = np_moments(maps.numpy())
    total = stats.total()
    m = maps.shape[0] * 12
    np.testing.assert_allclose(total.second_moment.numpy(), raw / m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total.mean.numpy(), sums / m, rtol=1e-10)
    assert total.images == 10 and total.count == m
    flat = maps.numpy().transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_allclose(total.apoz.numpy(), (np.abs(flat) <= 1e-6).mean(1), rtol=1e-12)  # many zeros
    np.testing.assert_array_equal(total.min.numpy(), flat.min(1))
    np.testing.assert_array_equal(total.max.numpy(), flat.max(1))
    # image i is in group (i // 2) % 4: images {0,1,8,9}, {2,3}, {4,5}, {6,7}
    for k, members in enumerate([[0, 1, 8, 9], [2, 3], [4, 5], [6, 7]]):
        raw_k, sums_k = np_moments(maps.numpy()[members])
        group = stats.group(k)
        assert group.images == len(members)
        np.testing.assert_allclose(group.second_moment.numpy() * group.count, raw_k, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(group.mean.numpy() * group.count, sums_k, rtol=1e-10, atol=1e-10)


def test_explicit_positions_and_order_do_not_matter():
    maps = relu_maps(1)
    a = fill(maps, 4)
    b = GroupedStats(groups=4, chunk=2)
    perm = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    b.update(maps[perm[:6]], perm[:6])
    b.update(maps[perm[6:]], perm[6:])
    np.testing.assert_allclose(b.total().covariance.numpy(), a.total().covariance.numpy(), atol=1e-12)
    for k in range(4):
        np.testing.assert_allclose(b.group(k).second_moment.numpy(), a.group(k).second_moment.numpy(), atol=1e-6)


def test_resample_equals_the_moments_of_repeated_images():
    maps = relu_maps(2, (6, 4, 3, 3))
    stats = fill(maps, 2, groups=6, chunk=1)  # one image per group
    weights = torch.tensor([2.0, 0.0, 1.0, 3.0, 0.0, 0.0])
    repeated = maps[[0, 0, 2, 3, 3, 3]].numpy()
    raw, sums = np_moments(repeated)
    rep = stats.resample(weights)
    assert rep.images == 6 and rep.count == 6 * 9
    np.testing.assert_allclose(rep.second_moment.numpy() * rep.count, raw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rep.mean.numpy() * rep.count, sums, rtol=1e-9)


def test_cross_image_moment_is_the_brute_force_average_over_pairs_of_different_images():
    maps = relu_maps(3, (5, 4, 2, 3)).numpy()
    stats = GroupedStats(groups=2, chunk=1).update(torch.from_numpy(maps))
    n, c = maps.shape[:2]
    expected = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            total = sum((maps[a, i] * maps[b, j]).sum() for a in range(n) for b in range(n) if a != b)
            expected[i, j] = total / (n * (n - 1)) / maps[0, 0].size
    np.fill_diagonal(expected, (maps.transpose(1, 0, 2, 3).reshape(c, -1) ** 2).mean(1))
    np.testing.assert_allclose(stats.cross_image_moment().numpy(), expected, rtol=1e-10)
    assert GroupedStats().update(torch.from_numpy(maps[:1])).cross_image_moment() is None


def test_mixed_image_sizes_drop_only_the_baseline():
    stats = GroupedStats().update(relu_maps(4, (2, 3, 4, 4)))
    stats.update(relu_maps(5, (2, 3, 5, 5)), 2)
    assert stats.position_sums is None and stats.cross_image_moment() is None
    assert stats.total().images == 4


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_merge_is_associative_and_matches_one_pass(dtype, atol):
    maps = relu_maps(6, (9, 5, 3, 3)).to(dtype)
    parts = []
    for s in (slice(0, 2), slice(2, 5), slice(5, 9)):
        parts.append(GroupedStats(groups=3, chunk=1).update(maps[s], s.start))
    whole = GroupedStats(groups=3, chunk=1).update(maps, 0)
    a, b, c = parts
    before = a.gram.clone()
    for merged in ((a + b) + c, a + (b + c)):
        np.testing.assert_allclose(merged.total().covariance.numpy(), whole.total().covariance.numpy(), atol=atol)
        np.testing.assert_allclose(merged.cross_image_moment().numpy(), whole.cross_image_moment().numpy(),
                                   atol=atol)
        for k in range(3):
            np.testing.assert_allclose(merged.group(k).covariance.numpy(), whole.group(k).covariance.numpy(),
                                       atol=1e-5)
        assert torch.equal(merged.nonzero, whole.nonzero) and torch.equal(merged.max, whole.max)
    assert torch.equal(a.gram, before)


def test_state_dict_round_trip_and_errors():
    stats = fill(relu_maps(7), 3)
    back = GroupedStats.from_state_dict(stats.state_dict())
    assert torch.equal(back.gram, stats.gram) and back.spatial == stats.spatial and back.chunk == 2
    with pytest.raises(GhostmapsError, match="channels"):
        stats.update(torch.zeros(1, 3, 4, 3))
    with pytest.raises(GhostmapsError, match="N×C×H×W"):
        stats.update(torch.zeros(2, 5, 1))
    with pytest.raises(GhostmapsError, match="empty"):
        GroupedStats().total()
    with pytest.raises(GhostmapsError, match="at least 1"):
        GroupedStats(groups=0)


def test_block_size():
    assert block_size(7, 8) == 1 and block_size(64, 8) == 8 and block_size(10_000, 8) == 16
    assert block_size(None) == 1  # unknown length: image i goes to group i mod K


@pytest.mark.parametrize("owned", [False, True])
def test_wide_layers_use_the_blocked_product_and_still_match(owned):
    maps = relu_maps(8, (3, 300 if owned else 700, 2, 2)).float()  # 2 and 4 blocks of the symmetric product
    reference = maps.clone()
    stats = GroupedStats(groups=2, chunk=1).update(maps, owned=owned)
    raw, _ = np_moments(reference.double().numpy())
    np.testing.assert_allclose(stats.total().second_moment.numpy() * 12, raw, rtol=1e-4, atol=1e-4)
    assert torch.equal(stats.total().gram, stats.total().gram.T)
    assert torch.equal(maps, reference) != owned  # only an owned batch is used up
    raw0, _ = np_moments(reference.double().numpy()[[0, 2]])  # group 0 holds images 0 and 2
    group0 = stats.group(0)
    np.testing.assert_allclose(group0.second_moment.numpy() * group0.count, raw0, rtol=1e-4, atol=1e-4)


def test_to_copies_every_tensor_and_merge_accepts_other_devices():
    stats = fill(relu_maps(0), batch=3)
    moved = stats.to("cpu")
    assert moved.device == torch.device("cpu") and moved.gram is not stats.gram
    moved.gram += 1.0
    assert not torch.equal(moved.gram, stats.gram)  # a copy: the original is untouched
    other = fill(relu_maps(1), batch=4)
    merged = stats.merge(other.to("cpu"))
    gram, _ = np_moments(torch.cat([relu_maps(0), relu_maps(1)]).numpy())
    np.testing.assert_allclose(merged.total().second_moment.numpy() * merged.total_count, gram, rtol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_statistics_score_like_cpu_ones_and_merge_across_devices():
    from analysis.measure.scores import redundancy

    maps = relu_maps(0)
    cpu = fill(maps, batch=3)
    gpu = fill(maps.cuda(), batch=3)
    a, b = redundancy(cpu, bootstrap=20), redundancy(gpu, bootstrap=20)
    for k, s in a.scores.items():
        assert b.scores[k].observed == pytest.approx(s.observed, rel=1e-6, abs=1e-9)
    merged = gpu.merge(fill(relu_maps(1), batch=2))
    assert merged.device.type == "cuda" and merged.gram.device.type == "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [5, 300])  # 300: the blocked symmetric product (2 row blocks)
def test_grouped_total_is_layer_stats_and_both_are_the_numpy_moments(dtype, channels):
    g = torch.Generator().manual_seed(11)
    maps = (torch.relu(torch.randn(7, channels, 3, 4, generator=g, dtype=torch.float64)) * 3 + 0.5).to(dtype)
    maps[:, 1] = 0.0  # a dead channel and many exact zeros
    grouped, layer = GroupedStats(groups=3, chunk=1), LayerStats()
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
        np.testing.assert_allclose(stats.shift.numpy(), first, rtol=1e-7 if dtype == torch.float32 else 1e-14)
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
        now = getattr(stats, k)
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
    maps = relu_maps(0)
    stats = fill(maps, batch=5)
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in stats.__dict__.items()}
    poisoned = relu_maps(1)
    poisoned[2, 3, 1, 1] = bad
    with pytest.raises(GhostmapsError, match="NaN or inf"):
        stats.update(poisoned, 10)
    for k, v in before.items():
        now = getattr(stats, k)
        assert torch.equal(now, v) if isinstance(v, torch.Tensor) else now == v, k
    stats.update(relu_maps(1), 10)  # and it goes on as if the bad batch never came
    gram, _ = np_moments(torch.cat([maps, relu_maps(1)]).numpy())
    np.testing.assert_allclose(stats.total().second_moment.numpy() * stats.total_count, gram, rtol=1e-10)


def test_the_shift_is_set_once_and_survives_a_file_round_trip():
    stats = fill(relu_maps(0), batch=4)
    assert stats.started
    back = GroupedStats.from_state_dict({k: v for k, v in stats.state_dict().items() if k != "started"})
    assert back.started  # an older file without the flag: known from its counts
    back.update(relu_maps(1), 10)
    assert torch.equal(back.shift, stats.shift)
