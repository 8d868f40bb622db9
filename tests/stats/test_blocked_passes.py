"""The blocked (cache-sized) passes over a batch: ``scan_batch`` and the pairs' sums and differences give the
values of an independent numpy computation whatever the block size, including blocks that do not divide the
rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import GhostmapsError
from analysis.stats import GroupedStats, LayerStats
from analysis.stats import _kernel as kernel
from analysis.stats._fold import StreamFold


def signed_maps(seed: int, shape=(6, 7, 5, 9), dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[x.abs() < 0.4] = 0.0  # exact zeros, and values on both sides of the tolerance
    x[0, 1, 0, :3] = torch.tensor([1e-6, -1e-6, 2e-6], dtype=torch.float64)
    return x.to(dtype)


@pytest.mark.parametrize("budget", [1, 36, 100, 4 * 45 * 7, 1 << 30])  # 1 row, 1 row of float32s, 25 rows, ...
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_batch_matches_numpy_for_any_block(monkeypatch, budget, dtype):
    x = signed_maps(0, dtype=dtype)
    n, c = x.shape[:2]
    monkeypatch.setattr(kernel, "SCAN_BYTES", budget)
    scan = kernel.scan_batch(x.reshape(n, c, -1).contiguous(), 1e-6)
    a = x.reshape(n, c, -1).double().numpy()
    np.testing.assert_array_equal(scan.low.numpy(), a.min(axis=(0, 2)))
    np.testing.assert_array_equal(scan.high.numpy(), a.max(axis=(0, 2)))
    np.testing.assert_array_equal(scan.nonzero.numpy(), (np.abs(a) > 1e-6).sum(axis=(0, 2)))
    np.testing.assert_allclose(scan.shift.numpy(), a.mean(axis=2).mean(axis=0), rtol=1e-6, atol=1e-7)
    assert scan.shift.dtype == torch.float64


def test_scan_rows_sizes_blocks_by_bytes():
    like32, like64 = torch.empty(0), torch.empty(0, dtype=torch.float64)
    assert kernel.scan_rows(1000, 256, like32) == min(1000, kernel.SCAN_BYTES // 1024)
    assert kernel.scan_rows(1000, 256, like64) == min(1000, kernel.SCAN_BYTES // 2048)
    assert kernel.scan_rows(3, 1 << 30, like32) == 1  # a row larger than the budget: one row at a time
    assert kernel.scan_rows(3, 4, like32) == 3


def test_scan_batch_refuses_nan_in_a_later_block(monkeypatch):
    monkeypatch.setattr(kernel, "SCAN_BYTES", 16)
    x = signed_maps(1).reshape(6, 7, -1).contiguous()
    x[5, 6, 2] = float("nan")
    with pytest.raises(GhostmapsError, match="NaN or inf"):
        kernel.scan_batch(x, 1e-6)


@pytest.mark.parametrize("budget", [8, 200, 1 << 30])
def test_pair_rows_match_numpy(monkeypatch, budget):
    monkeypatch.setattr(kernel, "SCAN_BYTES", budget)
    g = torch.Generator().manual_seed(3)
    xa, xb = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    k = torch.randn(1, 5, 1, generator=g)
    u, v = torch.empty(5, 33), torch.empty(5, 33)
    part = StreamFold._pair_rows(xa, xb, k, u, v)
    a, b, kk = xa.double().numpy(), xb.double().numpy(), k.double().numpy()
    want_u = np.concatenate(list(a + b - 2 * kk), axis=1)  # the m images side by side, C × m·Q
    np.testing.assert_allclose(u.numpy(), want_u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v.numpy(), np.concatenate(list(a - b), axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(part.numpy(), want_u.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_blocking_does_not_change_the_statistics(monkeypatch):
    """A whole stream folded with tiny blocks equals the same stream folded with whole-batch passes."""
    x = signed_maps(2, shape=(12, 6, 4, 4))

    def fold() -> GroupedStats:
        stats = GroupedStats(groups=3, chunk=2)
        for s in range(0, 12, 4):
            stats.update(x[s:s + 4], s)
        return stats.finish()

    whole = fold()
    monkeypatch.setattr(kernel, "SCAN_BYTES", 24)
    blocked = fold()
    for name in ("gram", "cross", "group_gram", "group_cross", "sums", "pair_sums", "min", "max", "nonzero", "shift"):
        assert torch.equal(getattr(whole, name), getattr(blocked, name)), name


@pytest.mark.parametrize("channels", [5, 300, 600])
def test_moved_and_mirrored_grams_are_exactly_symmetric(channels):
    """A shifted Gram matrix rounds (i, j) and (j, i) in different orders and a BLAS product x xᵀ may too: the
    kernels mirror the upper triangle (``_mirror`` for what the scores read, ``LayerStats`` on every update and
    shift), so those matrices are symmetric bit for bit, and equal to the float64 numpy values."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(channels, 37, generator=g, dtype=torch.float64)
    gram = x @ x.T
    gram = (gram + gram.T) / 2  # exactly symmetric, as the kernels keep it
    sums, delta = torch.randn(channels, generator=g, dtype=torch.float64), torch.randn(channels, generator=g,
                                                                                      dtype=torch.float64)
    moved = kernel._mirror(kernel._reshift_gram(gram, sums, 37.0, delta))
    assert torch.equal(moved, moved.T)
    up = np.triu(gram.numpy() + np.outer(delta, sums) + np.outer(sums, delta) + 37.0 * np.outer(delta, delta))
    np.testing.assert_allclose(np.triu(moved.numpy()), up, rtol=1e-12, atol=1e-9)
    rough = gram + torch.randn(channels, channels, generator=g, dtype=torch.float64) * 1e-9  # not symmetric
    full = kernel._mirror(rough)
    assert torch.equal(full, full.T) and torch.equal(full.triu(), rough.triu())
    layer = LayerStats().update(torch.randn(3, channels, 4, 5, generator=g, dtype=torch.float64))
    layer.update(torch.randn(2, channels, 4, 5, generator=g, dtype=torch.float64) + 3.0)
    for m in (layer.gram, layer.with_shift(torch.randn(channels, generator=g, dtype=torch.float64)).gram):
        assert torch.equal(m, m.T)
