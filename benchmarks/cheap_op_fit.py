"""Benchmark: closed-form cheap-op fits for every channel pair of a layer vs. per-pair Adam training.

Layer: C channels of H x H maps over N images (default 96 x 56 x 56, 8 images), random but structured:
half the channels are ReLU(smoothed Gaussian noise), the other half planted ghosts, ReLU(random 3 x 3 conv
of a base channel + bias + a little noise).

* Closed form: ``best_sources(maps, d)`` fits all C * (C - 1) ordered pairs at once (shifted Gram products,
  batched normal equations in float64).
* Adam: ``nn.Conv2d(1, 1, d, padding=d // 2)`` trained full-batch for ``--steps`` steps on a random sample of
  pairs; the time for all C * (C - 1) pairs is extrapolated from the sample (said so in the output).

The MSE of both is compared on the sampled pairs (closed form must be no worse).

Run:  OMP_NUM_THREADS=1 python benchmarks/cheap_op_fit.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from analysis.reconstruct import best_sources, fit_cheap_op


def make_layer(c: int, size: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nb = c - c // 2
    x = torch.randn(n * nb, 1, size + 6, size + 6, generator=g)
    base = torch.relu(F.conv2d(x, torch.ones(1, 1, 7, 7) / 49).reshape(n, nb, size, size) * 3)
    ghosts = []
    for k in range(c // 2):
        src = base[:, k % nb]
        w = torch.randn(1, 1, 3, 3, generator=g) / 3
        b = 0.1 * torch.randn(1, generator=g)
        noise = 0.05 * torch.randn(n, size, size, generator=g)
        ghosts.append(F.conv2d(src[:, None], w, b, padding=1)[:, 0] + noise)
    maps = torch.cat([base, torch.stack(ghosts, dim=1)], dim=1)
    return torch.relu(maps).contiguous()


def adam_fit(src: torch.Tensor, dst: torch.Tensor, d: int, steps: int, lr: float) -> float:
    net = torch.nn.Conv2d(1, 1, d, padding=d // 2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    s, t = src[:, None], dst[:, None]
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(net(s), t)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.mse_loss(net(s), t).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--sample", type=int, default=8, help="pairs trained with Adam (time extrapolated)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    maps = make_layer(args.channels, args.size, args.images, args.seed)
    c = args.channels
    n_pairs = c * (c - 1)
    print(f"layer: {args.images} x {c} x {args.size} x {args.size} float32, d={args.d}, "
          f"{n_pairs} ordered pairs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    best_sources(maps[:, :4], d=args.d)  # warm-up
    t0 = time.perf_counter()
    res = best_sources(maps, d=args.d)
    t_closed = time.perf_counter() - t0
    print(f"closed form, all {n_pairs} pairs (best_sources): {t_closed:.2f} s")

    rng = np.random.default_rng(args.seed)
    pairs = []
    while len(pairs) < args.sample:
        i, j = (int(v) for v in rng.choice(c, size=2, replace=False))
        pairs.append((i, j))
    adam_mse, closed_mse = [], []
    t0 = time.perf_counter()
    for i, j in pairs:
        adam_mse.append(adam_fit(maps[:, i], maps[:, j], args.d, args.steps, args.lr))
    t_adam_sample = time.perf_counter() - t0
    var = maps.double().var(dim=(0, 2, 3), unbiased=False).numpy()
    for i, j in pairs:
        f = fit_cheap_op(maps[:, i], maps[:, j], d=args.d)
        # cross-check: the all-pairs result holds the same fit
        assert abs(res.error_matrix[i, j] - f.rel_error) <= 1e-6 * max(1.0, f.rel_error), (i, j)
        assert abs(res.error_matrix[i, j] * var[j] - f.mse) <= 1e-6 * max(f.mse, 1e-12), (i, j)
        closed_mse.append(f.mse)
    per_pair = t_adam_sample / len(pairs)
    t_adam_all = per_pair * n_pairs
    adam_mse_a, closed_mse_a = np.array(adam_mse), np.array(closed_mse)
    print(f"Adam ({args.steps} steps, lr {args.lr}): {len(pairs)} sampled pairs took {t_adam_sample:.2f} s "
          f"({per_pair:.3f} s/pair); EXTRAPOLATED to all {n_pairs} pairs: {t_adam_all:.0f} s")
    print(f"speed-up (extrapolated Adam / closed form): {t_adam_all / t_closed:.0f}x")
    print(f"MSE on the {len(pairs)} sampled pairs: closed form mean {closed_mse_a.mean():.6g}, "
          f"Adam mean {adam_mse_a.mean():.6g}; closed form <= Adam on "
          f"{int((closed_mse_a <= adam_mse_a * (1 + 1e-6)).sum())}/{len(pairs)} pairs; "
          f"worst ratio closed/Adam {np.max(closed_mse_a / adam_mse_a):.4f}")
    planted = res.source[c - c // 2:]
    base_of = [k % (c - c // 2) for k in range(c // 2)]
    print(f"planted ghosts whose best source is their base channel: {int((planted == base_of).sum())}/{c // 2}; "
          f"median rel. error of best source: ghosts {np.median(res.rel_error[c - c // 2:]):.4f}, "
          f"base channels {np.median(res.rel_error[:c - c // 2]):.4f}")


if __name__ == "__main__":
    main()
