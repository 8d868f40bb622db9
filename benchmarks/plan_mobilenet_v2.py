"""Benchmark: a replacement plan for pretrained mobilenet_v2 under a MAC budget, and how well it predicts.

1. ``plan_replacement``: every dense conv but the stem (34) at s = 2, 3, 4, each replaced alone
   (``ghostify(init="fit")`` on seeded views of ``samples:calibration``), its mean KL(original || replaced) on
   seeded views of ``samples:evaluation`` (disjoint photos; interval over the 8 photos) and its MAC saving;
   then the exact knapsack at ``--budget`` (default 0.7 of the MACs). Printed: the whole sensitivity table
   and the plan; the same table re-planned at other budgets (nothing re-measured).
2. The plan converted in one ``ghostify(ratio=plan.ratios)`` call and verified on the evaluation views:
   the counted MAC fraction (must equal the predicted one and meet the budget) and the measured KL and
   top-1 agreement beside the predicted loss (the sum of single-layer KLs: an approximation).

Run:  PYTHONPATH=. python benchmarks/plan_mobilenet_v2.py [--image-size 128 --calibration-views 24
      --evaluation-views 64 --budget 0.7 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis import count_macs, ghostify, load_images, load_model, verify_replacement
from analysis.convert.plan import choose_plan, plan_replacement
from analysis.data.models import default_preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--calibration-views", type=int, default=24)
    ap.add_argument("--evaluation-views", type=int, default=64)
    ap.add_argument("--budget", type=float, default=0.7)
    ap.add_argument("--ratios", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="folder for plan.json / plan.csv (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model("mobilenet_v2").model
    pre = default_preprocess(resize=round(args.image_size * 256 / 224), crop=args.image_size)
    calib = load_images("samples:calibration", transform=pre, views=args.calibration_views, seed=0)
    held = load_images("samples:evaluation", transform=pre, views=args.evaluation_views, seed=1)
    print(f"mobilenet_v2 (torchvision IMAGENET1K_V1), {args.image_size}x{args.image_size}; calibration: "
          f"{len(calib)} views of {len(set(calib.photo_names))} photos; evaluation: {len(held)} views of "
          f"{len(set(held.photo_names))} other photos; ratios {args.ratios}, d = 3; {args.threads} thread(s)")

    t0 = time.perf_counter()
    plan = plan_replacement(model, calib, macs=args.budget, eval_images=held, ratios=args.ratios, progress=True)
    t_plan = time.perf_counter() - t0
    print(plan)
    print(f"measured {len(plan.options)} options in {t_plan:.0f} s; knapsack gap {plan.gap:.3g} nats")
    if args.out:
        from analysis._core.io import atomic_write

        plan.to_csv(f"{args.out}/plan.csv")
        atomic_write(f"{args.out}/plan.json", plan.to_json() + "\n")
        print(f"wrote {args.out}/plan.csv and plan.json")

    print("\nthe same table under other MAC budgets (predicted loss = sum of single-layer KL):")
    for b in (0.95, 0.9, 0.8, 0.7, 0.6, 0.5):
        try:
            p = choose_plan(plan, macs=b)
        except Exception as exc:  # noqa: BLE001 - print why a budget is out of reach
            print(f"  macs <= {b:.0%}: {exc}")
            continue
        by_ratio = {s: sum(1 for v in p.ratios.values() if v == s) for s in args.ratios}
        print(f"  macs <= {b:.0%}: {len(p.ratios):2d} convs {by_ratio}, MACs kept {p.macs_fraction:.1%}, params "
              f"kept {p.params_fraction:.1%}, predicted KL {p.predicted_loss:.4f} (optimum >= "
              f"{p.loss_lower_bound:.4f})")

    t0 = time.perf_counter()
    new, res = ghostify(model, ratio=plan.ratios, init="fit", calibration_images=calib)
    report = verify_replacement(model, new, held, calibration=calib, latency_repeats=0, transform=pre)
    t_conv = time.perf_counter() - t0
    one = next(iter(held.batches(1)))[1]
    before, after = count_macs(model, one), count_macs(new, one)
    print(f"\nthe plan at macs <= {args.budget:.0%} converted in one ghostify call ({t_conv:.0f} s with verification):")
    print(f"  counted MACs {after.total_macs / before.total_macs:.2%} of the original (predicted "
          f"{plan.macs_fraction:.2%}); params {after.params / before.params:.2%} (predicted "
          f"{plan.params_fraction:.2%})")
    ag = report.agreement
    print(f"  predicted loss (sum of single-layer KL) {plan.predicted_loss:.4f} nats; measured KL {ag.logits_kl} "
          f"nats; top-1 agreement {ag.top1} ({ag.top1.method}); logits cosine {ag.logits_cosine}")


if __name__ == "__main__":
    main()
