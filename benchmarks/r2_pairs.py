"""Benchmark: reconstructability pairs (``metric="r2"``) against Pearson pairs on real layers, pretrained and
untrained.

Pretrained mobilenet_v2 (offline weights) and an untrained copy of it (seeded re-initialisation, BN statistics
re-estimated on the calibration views). For each layer, maps are captured on seeded views of the calibration
photos (``samples:calibration``: the pairs are *chosen* there) and of the evaluation photos
(``samples:evaluation``: every number printed is measured there). ``reconstruction_table`` chooses the 8 most
similar exclusive pairs by each metric on the calibration maps, fits the 3 x 3 cheap op on them and reports
its relative error (SSE / centred SS of the target channel, the layer's own units, pre-BN) on the evaluation
maps, beside 64 random ordered pairs of live channels. Printed: the mean over the chosen pairs with a 95 % t
interval *over those pairs* (how much the chosen pairs differ from each other, not image-sampling noise: the
pairs are fixed; ``reconstruction_table`` gives each pair's own jackknife interval over images), and the
random row's mean with its t interval over its 64 pairs (a random sample of pairs, so that one is a proper
interval for the mean over all pairs). ``sN``: N of the chosen pairs are sparse (a channel zero on >= 80 % of
the fit positions; their fit rests on few positions).

Run:  PYTHONPATH=. python benchmarks/r2_pairs.py [--fit-views 48 --eval-views 48]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis import capture_maps, load_images, load_model
from analysis.data.batches import as_images
from analysis.reconstruct import reconstruction_table
from analysis.stats.intervals import mean_interval
from analysis.survey.baseline import reestimate_batchnorm, untrained_copy

LAYERS = ["features.2.conv.0.0", "features.5.conv.0.0", "features.10.conv.0.0", "features.16.conv.0.0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit-views", type=int, default=48)
    ap.add_argument("--eval-views", type=int, default=48)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, pre, _ = load_model("mobilenet_v2")
    fit_x = as_images(load_images("samples:calibration", pre, views=args.fit_views, seed=0)).tensor()
    eval_x = as_images(load_images("samples:evaluation", pre, views=args.eval_views, seed=1)).tensor()
    untrained = untrained_copy(model, seed=0)
    reestimate_batchnorm(untrained, fit_x.split(16))
    print(f"mobilenet_v2: pairs chosen on {fit_x.shape[0]} calibration views, measured on {eval_x.shape[0]} "
          f"evaluation views (other photos); d = 3, relative error in the conv's own units (pre-BN); "
          f"{args.pairs} pairs per metric, 64 random pairs; {args.threads} threads")
    print(f"{'network':<10} {'layer':<22} {'C':>5}  {'pearson pairs':>25}  {'r2 pairs':>25}  {'random pairs':>22}  "
          f"{'time':>6}")
    for label, net in (("pretrained", model), ("untrained", untrained)):
        fit_maps = capture_maps(net, LAYERS, fit_x)
        eval_maps = capture_maps(net, LAYERS, eval_x)
        for name in LAYERS:
            t0 = time.perf_counter()
            cells, random_cell = [], ""
            for metric in ("pearson", "r2"):  # the random baseline does not depend on the metric: once
                t = reconstruction_table(fit_maps[name], args.pairs, ds=(3,), n_random=64 if metric == "pearson" else 0,
                                         metric=metric, heldout=eval_maps[name])
                chosen = [r for r in t.rows() if r["kind"] == "pair"]
                errs = [r["rel_error"] for r in chosen]
                est = mean_interval(errs)
                sparse = sum(bool(r["sparse"]) for r in chosen)
                cells.append(f"{np.mean(errs):.3f} [{est.low:.3f}, {est.high:.3f}] s{sparse}")
                for rnd in (r for r in t.rows() if r["kind"] == "random"):
                    random_cell = f"{rnd['rel_error']:.3f} [{rnd['rel_error_low']:.3f}, {rnd['rel_error_high']:.3f}]"
            c = fit_maps[name].shape[1]
            print(f"{label:<10} {name:<22} {c:>5}  {cells[0]:>25}  {cells[1]:>25}  {random_cell:>22}  "
                  f"{time.perf_counter() - t0:>5.1f}s", flush=True)


if __name__ == "__main__":
    main()
