"""Benchmark: the intrinsic-channel choice on real layers, and the held-out d-curve.

Pretrained mobilenet_v2 (offline weights), maps of dense convs captured on calibration views
(``samples:calibration``) for fitting and on evaluation views (``samples:evaluation``) for the held-out report;
errors in post-BN units (the conv's own BN), ghost channels only.

1. Choice: for s = 2 the old greedy pick (facility location + exact assignment) against the capacitated
   choice (exact minimum-weight perfect matching, or the matching heuristic on large layers), and for s = 3
   greedy against capacitated + swaps (+ exact MILP on small layers). Printed: the objective (summed post-BN
   SSE of the ghosts on the fit images), the held-out ghost error, and the time.
2. Gap of the s = 2 heuristic: against the exact matching where it runs, and against the assignment
   relaxation's lower bound everywhere.
3. The held-out d-curve of ``reconstruction_table`` on features.16.conv.0.2 (7 x 7 maps): in-sample and
   held-out relative error for d = 1, 3, 5, 7 of the 8 most Pearson-similar pairs (chosen on the fit views).

Run:  PYTHONPATH=. python benchmarks/intrinsic_choice.py [--fit-views 64 --eval-views 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis import capture_maps, load_images, load_model
from analysis.reconstruct import choose_intrinsic, reconstruction_table
from analysis.reconstruct.heldout import Split, channel_weights
from analysis.reconstruct.lstsq import _pair_fits
from analysis.reconstruct.structure import _from_fits

LAYERS = ["features.1.conv.1", "features.2.conv.0.0", "features.3.conv.0.0", "features.5.conv.2",
          "features.7.conv.0.0", "features.10.conv.0.0", "features.14.conv.0.0", "features.16.conv.0.0"]


def bn_after(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The BatchNorm that follows conv ``name`` inside its Sequential (mobilenet_v2's layout)."""
    parent, _, idx = name.rpartition(".")
    return model.get_submodule(parent)[int(idx) + 1]


def batch(source) -> torch.Tensor:
    return torch.cat([b for _, b in source.batches(32)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit-views", type=int, default=64)
    ap.add_argument("--eval-views", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exact-up-to", type=int, default=384, help="also run the exact matching up to this C")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, pre, _ = load_model("mobilenet_v2")
    fit_x = batch(load_images("samples:calibration", pre, views=args.fit_views, seed=0))
    eval_x = batch(load_images("samples:evaluation", pre, views=args.eval_views, seed=1))
    fit_maps = capture_maps(model, LAYERS + ["features.16.conv.0.2"], fit_x)
    eval_maps = capture_maps(model, LAYERS + ["features.16.conv.0.2"], eval_x)
    print(f"mobilenet_v2, fit on {fit_x.shape[0]} calibration views, held out on {eval_x.shape[0]} evaluation "
          f"views, d = 3, post-BN units, ghost channels only, {args.threads} threads")
    print("\n1. choice: objective = summed post-BN ghost SSE on the fit views (lower is better); held-out ghost "
          "error")
    print(f"{'layer':<22}{'C':>5} {'s':>2}  {'greedy obj':>11} {'new obj':>11} {'gain':>6}  "
          f"{'greedy held':>11} {'new held':>9}  {'method':<48} {'t new':>6}")
    gaps = []
    for name in LAYERS:
        x, h = fit_maps[name], eval_maps[name]
        bn = bn_after(model, name)
        c = x.shape[1]
        w = channel_weights(bn, c)
        fits = _pair_fits(x, 3, 1e-8)  # the fits are shared by every choice (ghostability would redo them)
        split = Split("held-out maps", x.shape[0], h.shape[0])
        for s in (2, 3):
            t0 = time.perf_counter()
            new = _from_fits(fits, h, split, s, w, "auto", None, 0.95)
            t_new = time.perf_counter() - t0
            old = _from_fits(fits, h, split, s, w, "greedy", None, 0.95)
            go, gn = old.choice["cost"], new.choice["cost"]
            print(f"{name:<22}{c:>5} {s:>2}  {go:>11.5g} {gn:>11.5g} {1 - gn / go:>6.1%}  {old.ghost_error:>11.4f} "
                  f"{new.ghost_error:>9.4f}  {new.choice['method']:<48} {t_new:>5.1f}s")
        # heuristic gap for s = 2
        cost = fits.sse * w[None, :]
        t0 = time.perf_counter()
        heur = choose_intrinsic(cost, 2, "heuristic")
        t_h = time.perf_counter() - t0
        exact = None
        if c <= args.exact_up_to:
            t0 = time.perf_counter()
            exact = choose_intrinsic(cost, 2, "exact")
            t_e = time.perf_counter() - t0
        gaps.append((name, c, heur.cost, heur.lower_bound, exact.cost if exact else None, t_h,
                     t_e if exact else None))
    print("\n2. s = 2 matching heuristic: gap to the exact matching and to the assignment lower bound")
    print(f"{'layer':<22}{'C':>5}  {'heuristic':>11} {'exact':>11} {'gap exact':>9} {'gap LB':>8} {'t heur':>7} "
          f"{'t exact':>8}")
    for name, c, hc, lb, ec, th, te in gaps:
        ge = "" if ec is None else f"{hc / ec - 1:.2%}"
        print(f"{name:<22}{c:>5}  {hc:>11.5g} {'' if ec is None else f'{ec:.5g}':>11} {ge:>9} {hc / lb - 1:>8.2%} "
              f"{th:>6.1f}s {'' if te is None else f'{te:.1f}s':>8}")
    print("\n3. held-out d-curve, features.16.conv.0.2 (7 x 7 maps), 8 Pearson pairs chosen on the fit views")
    t = reconstruction_table(fit_maps["features.16.conv.0.2"], 8, ds=(1, 3, 5, 7), n_random=64,
                             heldout=eval_maps["features.16.conv.0.2"])
    for kind in ("pair", "random"):
        rows = [r for r in t.records if r["kind"] == kind]
        for d in t.ds:
            rd = [r for r in rows if r["d"] == d]
            held = np.mean([r["rel_error"] for r in rd])
            fit = np.mean([r["rel_error_fit"] for r in rd])
            print(f"  {kind:<6} d={d}: held-out {held:.4f}   in-sample {fit:.4f}")
    print(t)


if __name__ == "__main__":
    main()
