"""reconstruction_table on held-out images: a target constant where it is reported is never a perfect fit,
and with ``groups`` the interval is over photos (views of one photo are not independent)."""

from __future__ import annotations

import math

import numpy as np
import torch

from analysis.reconstruct import reconstruction_table, split_maps


def _jackknife_ratio(a: np.ndarray, b: np.ndarray, codes: list[str]) -> tuple[float, float]:
    """Leave-one-group-out jackknife of sum(a) / sum(b), t with G - 1 df: an independent brute force."""
    from scipy import stats
    names = sorted(set(codes))
    loo = np.array([a[[c != g for c in codes]].sum() / b[[c != g for c in codes]].sum() for g in names])
    value = a.sum() / b.sum()
    g = len(names)
    se = math.sqrt((g - 1) / g * ((loo - loo.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, g - 1) * se
    return value - half, value + half


def test_a_target_dead_on_the_held_out_images_is_not_a_perfect_fit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    _, _, sp = split_maps(x, split=0.5, seed=0)
    x[:, 1] = 2 * x[:, 0] + 0.1 * x[:, 1]
    x[list(sp.eval_index), 1] = 0.0  # channel 1 is off on every held-out image, its op is not
    t = reconstruction_table(x, pairs=[(0, 1)], ds=(1, 3), n_random=0, split=0.5, seed=0)
    for r in t.records:
        assert r["rel_error_fit"] < 0.01  # a near-exact fit where it was fitted ...
        assert r["rel_error"] > 1.0 and r["r2"] < 0.0  # ... is no fit at all where it is reported
        assert r["rel_error_low"] <= r["rel_error"] <= r["rel_error_high"]


def test_interval_over_photos_when_groups_are_given():
    g = torch.Generator().manual_seed(0)
    photos = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    photos[:, 1] = photos[:, 0] * torch.linspace(0.2, 3, 8, dtype=torch.float64)[:, None, None] + 0.3 * photos[:, 1]
    x = photos.repeat_interleave(4, 0) + 0.01 * torch.randn(32, 3, 8, 8, generator=g, dtype=torch.float64)
    groups = [f"p{i // 4}" for i in range(32)]
    r = reconstruction_table(x, pairs=[(0, 1)], ds=(1,), n_random=0, split=0.5, seed=0, groups=groups).records[0]
    # the brute force: a 1x1 op (scale + bias) fitted by numpy lstsq on the fit photos, scored on the others
    fit_x, eval_x, sp = split_maps(x, split=0.5, seed=0, groups=groups)
    a = np.stack([fit_x[:, 0].reshape(-1).numpy(), np.ones(fit_x[:, 0].numel())], 1)
    w, *_ = np.linalg.lstsq(a, fit_x[:, 1].reshape(-1).numpy(), rcond=None)
    src, dst = eval_x[:, 0].numpy(), eval_x[:, 1].numpy()
    err = ((w[0] * src + w[1] - dst) ** 2).sum((1, 2))
    ss = ((dst - dst.mean()) ** 2).sum((1, 2))
    low, high = _jackknife_ratio(err, ss, [groups[i] for i in sp.eval_index])
    assert math.isclose(r["rel_error"], err.sum() / ss.sum(), rel_tol=1e-3)
    assert math.isclose(r["rel_error_low"], low, rel_tol=1e-3, abs_tol=1e-4)
    assert math.isclose(r["rel_error_high"], high, rel_tol=1e-3, abs_tol=1e-4)
    # over 4 photos the interval is much wider than over the 16 views (which would be too narrow)
    per_view = _jackknife_ratio(err, ss, [str(i) for i in range(len(err))])
    assert (high - low) > 2 * (per_view[1] - per_view[0])


def test_r2_pair_choice_splits_the_fit_images_by_photo(monkeypatch):
    """metric="r2" chooses pairs by a held-out R² inside the fit images: with groups, by photo there too."""
    import analysis.reconstruct.table as table

    seen = {}
    real = table.reconstructability

    def spy(maps, *args, **kwargs):
        seen["groups"] = kwargs.get("groups")
        return real(maps, *args, **kwargs)

    monkeypatch.setattr(table, "reconstructability", spy)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 4, 6, 6, generator=g, dtype=torch.float64)
    groups = [f"p{i // 3}" for i in range(24)]  # 8 photos, 3 views each
    t = reconstruction_table(x, pairs=1, ds=(3,), n_random=0, split=0.5, seed=0, groups=groups, metric="r2")
    held = set(t.split.eval_index)
    assert seen["groups"] == [p for i, p in enumerate(groups) if i not in held]
    reconstruction_table(x, pairs=1, ds=(3,), n_random=0, split=0.5, seed=0, metric="r2")
    assert seen["groups"] is None
