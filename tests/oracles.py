"""Independent reference computations the tests compare the library against: plain loops and closed forms
in float64 numpy (or plain torch ops called by hand), written without the library's own kernels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ghostnet import GhostModule


def numpy_similarity(maps: np.ndarray, metric: str) -> np.ndarray:
    """Brute force: a Python loop over channel pairs on the flattened maps, in float64."""
    n, c = maps.shape[:2]
    flat = [maps[:, k].reshape(-1).astype(np.float64) for k in range(c)]
    if metric == "pearson":
        flat = [f - f.mean() for f in flat]
    out = np.zeros((c, c))
    for a in range(c):
        for b in range(c):
            out[a, b] = flat[a] @ flat[b] / np.sqrt((flat[a] @ flat[a]) * (flat[b] @ flat[b]))
    return out


def brute_force_exclusive(matrix: np.ndarray, k: int) -> list[tuple[int, int]]:
    c = matrix.shape[0]
    ranked = sorted(itertools.combinations(range(c), 2), key=lambda p: (-matrix[p], p))
    chosen, used = [], set()
    for a, b in ranked:
        if a in used or b in used:
            continue
        chosen.append((a, b))
        used |= {a, b}
        if len(chosen) == k:
            break
    return chosen


def brute_force_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Sum over Conv2d / Linear calls of output elements x (multiplies per output element)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def brute_scores(sim: np.ndarray, valid: np.ndarray, cov: np.ndarray, tau: float) -> dict[str, float]:
    idx = np.flatnonzero(valid)
    fraction = np.mean([any(abs(sim[i, j]) >= tau for j in idx if j != i) for i in idx])
    lam = np.sort(np.clip(np.linalg.eigvalsh(cov[np.ix_(idx, idx)]), 0, None))[::-1]
    rank99 = next(k + 1 for k in range(len(lam)) if lam[:k + 1].sum() >= 0.99 * lam.sum())
    pairs = [abs(sim[i, j]) for a, i in enumerate(idx) for j in idx[a + 1:]]
    return {"ghost_fraction": fraction, "participation_ratio": lam.sum() ** 2 / (lam ** 2).sum(),
            "rank99": rank99, "mean_abs_similarity": np.mean(pairs)}


def brute_bc(values: list[float], observed: float, level: float) -> tuple[float, float]:
    from scipy.stats import norm

    b = len(values)
    ties = [abs(v - observed) <= 1e-6 * abs(observed) for v in values]  # float32 replicates: a near-tie is a tie
    below = sum(1 for v, t in zip(values, ties, strict=True) if v < observed and not t) + 0.5 * sum(ties)
    p = min(max(below / b, 0.5 / b), 1 - 0.5 / b)
    z0 = norm.ppf(p)
    qs = [norm.cdf(2 * z0 + norm.ppf(a)) for a in ((1 - level) / 2, (1 + level) / 2)]
    ordered = sorted(values)
    return linear_quantile(ordered, qs[0]), linear_quantile(ordered, qs[1])


def ghost_module_brute_force(gm: GhostModule, x: torch.Tensor) -> torch.Tensor:
    """Each output channel computed on its own from the paper's definition: intrinsic channel i is a
    full conv of x with filter i; ghost channel j is a d x d filter on intrinsic channel j // (s - 1)."""
    conv, bn = gm.primary_conv[0], gm.primary_conv[1]
    act = torch.relu if gm.use_relu else (lambda t: t)
    k = gm.kernel_size
    intrinsic = []
    for i in range(gm.init_channels):
        y = F.conv2d(x, conv.weight[i : i + 1], stride=gm.stride, padding=gm.dilation * (k // 2), dilation=gm.dilation)
        intrinsic.append(act(_eval_bn_channel(y[:, 0], bn, i)))
    cheap, cbn = gm.cheap_operation[0], gm.cheap_operation[1]
    ghosts = []
    for j in range(gm.new_channels):
        src = intrinsic[j // (gm.ratio - 1)][:, None]
        y = F.conv2d(src, cheap.weight[j : j + 1], padding=gm.dw_size // 2)
        ghosts.append(act(_eval_bn_channel(y[:, 0], cbn, j)))
    return torch.stack(intrinsic + ghosts, dim=1)[:, : gm.out_channels]


def linear_quantile(sorted_values: list[float], q: float) -> float:
    """numpy's default (linear) quantile, by hand."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _eval_bn_channel(x: torch.Tensor, bn: nn.BatchNorm2d, c: int) -> torch.Tensor:
    """Eval BN of a single channel c, written out."""
    return (x - bn.running_mean[c]) / torch.sqrt(bn.running_var[c] + bn.eps) * bn.weight[c] + bn.bias[c]
