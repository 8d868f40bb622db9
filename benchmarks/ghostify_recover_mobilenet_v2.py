"""Issue 10's recover target on pretrained mobilenet_v2: all 34 dense convs ghostified (s = 2, d = 3,
``init="fit"``), then ``recover`` by distillation from the original on unlabelled calibration views, within
10 minutes on 2 CPU cores; top-1 agreement with the original on >= 256 evaluation views (target >= 90%).

* calibration: ``--calib-views`` seeded views of ``samples:calibration`` (6 photos), seed 0; ghostify's
  sequential fit uses ``--fit-views`` views of them (seed 0, whole photos held out for its reported errors),
  recover all of them;
* evaluation: ``--eval-views`` seeded views of ``samples:evaluation`` (8 other photos), seed 1, never seen
  by the fits nor by recover (``verify_replacement`` checks the two sets are disjoint by content);
* agreement, logits cosine and KL with intervals over photos, training-free and after recover, and the time
  of each stage. ``--bn``, ``--loss``, ``--lr``, ``--mix`` set recover's options; ``--cache DIR`` keeps
  the ghostified network (keyed by the fit's settings and a hash of the fit's code) so that several recover settings start from one fit.
* ``--diagnose-data`` (a diagnostic, never a result): recover on *other* seeded views (seed 2) of the 8
  evaluation photos instead of the calibration views, then verify on the evaluation views as before (the
  overlap is allowed and the report says "OVERLAP ALLOWED"). If agreement then rises far above the
  calibration-trained run, what recover lacks is data like the evaluation photos, not steps; if it does not,
  ten minutes of steps are too few even on the right photos.

Run:  python benchmarks/ghostify_recover_mobilenet_v2.py [--steps 300] [--image-size 224] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import analysis
from analysis.convert.augment import MIXES
from analysis.convert.ghostify import ghostify
from analysis.convert.recover import BN_MODES, LOSSES, recover
from analysis.convert.sequential import PRIORS, SequentialSettings
from analysis.convert.verify import verify_replacement
from analysis.data.batches import as_images
from analysis.data.models import default_preprocess


def line(name: str, report: object) -> str:
    ag = report.agreement  # type: ignore[attr-defined]
    return (f"  {name:<14} top-1 agreement {ag.top1.value:.1%} [{ag.top1.low:.1%}, {ag.top1.high:.1%}], top-5 "
            f"{ag.top5.value:.1%}, logits cosine {ag.logits_cosine.value:.3f} [{ag.logits_cosine.low:.3f}, "
            f"{ag.logits_cosine.high:.3f}], KL {ag.logits_kl.value:.3f} nats ({ag.n_images} views of {ag.n_photos} "
            "photos)")


def _fit_code_hash() -> str:
    """A short hash of the code the fit can run (every module of ``analysis`` and ``ghostnet``, whose
    ``GhostConv`` is pickled in the cache): a cached network fitted by other code is not reused."""
    import hashlib

    import ghostnet

    digest = hashlib.sha256()
    for package in (analysis, ghostnet):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib-views", type=int, default=256)
    p.add_argument("--fit-views", type=int, default=128)
    p.add_argument("--eval-views", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--loss", default="kl", choices=LOSSES)
    p.add_argument("--bn", default="train", choices=BN_MODES)
    p.add_argument("--mix", default=None, choices=MIXES, help="mix each view with a partner")
    p.add_argument("--ridge", type=float, default=SequentialSettings.ridge, help="the sequential fit's relative ridge")
    p.add_argument("--prior", default=SequentialSettings.prior, choices=PRIORS, help="what the fit's ridge pulls toward")
    p.add_argument("--cache", type=Path, default=None, help="a folder to keep the ghostified network in")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--diagnose-data", action="store_true",
                   help="recover on other views of the evaluation photos (a diagnostic: data or steps?)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    loaded = analysis.load_model("mobilenet_v2")
    model = loaded.model
    pre = (loaded.preprocess if args.image_size == 224 else
           default_preprocess(resize=round(args.image_size * 256 / 224), crop=args.image_size))
    calib = analysis.load_images("samples:calibration", transform=pre, views=args.calib_views, seed=0)
    evals = analysis.load_images("samples:evaluation", transform=pre, views=args.eval_views, seed=1)
    x_calib = as_images(calib).tensor()
    print(f"mobilenet_v2 at {args.image_size}px: {len(calib)} calibration views (6 photos), {len(evals)} evaluation "
          f"views (8 photos), {torch.get_num_threads()} threads")

    st = SequentialSettings(ridge=args.ridge, prior=args.prior)
    default = st == SequentialSettings()
    fit_tag = "" if default else f"ridge{args.ridge:g}_{args.prior}_"  # the default fit keeps its old name
    cached = None if args.cache is None else args.cache / (f"ghost_{args.image_size}px_{args.fit_views}views_"
                                                          f"{fit_tag}{_fit_code_hash()}.pt")
    t = time.perf_counter()
    if cached is not None and cached.is_file():
        ghost = torch.load(cached, weights_only=False)  # written by this script (a pickled module)
        print(f"ghostify: the network fitted before, from {cached}")
    else:
        fit = analysis.load_images("samples:calibration", transform=pre, views=args.fit_views, seed=0)
        ghost, result = ghostify(model, ratio=2, dw_size=3, init="fit", calibration_images=fit, settings=st)
        print(f"ghostify: {len(result.replaced)} dense convs replaced in {time.perf_counter() - t:.0f} s "
              f"(sequential fit on {args.fit_views} views; {result.heldout})")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(ghost, cached)
    t_fit = time.perf_counter() - t
    before = verify_replacement(model, ghost, evals, calibration=calib, latency_repeats=0, layer_images=0)

    train, train_set = x_calib, calib
    if args.diagnose_data:
        train_set = analysis.load_images("samples:evaluation", transform=pre, views=args.calib_views, seed=2)
        train = as_images(train_set).tensor()
        print(f"DIAGNOSTIC: recover on {len(train_set)} other views (seed 2) of the 8 evaluation photos")
    t = time.perf_counter()
    recovered, rec = recover(ghost, model, train, steps=args.steps, lr=args.lr, batch_size=args.batch,
                             loss=args.loss, bn=args.bn, mix=args.mix, progress=False)
    t_rec = time.perf_counter() - t
    print(rec)
    after = verify_replacement(model, recovered, evals, calibration=train_set, latency_repeats=0, layer_images=0,
                               allow_calibration=args.diagnose_data)
    print("\nSUMMARY (evaluation views; calibration: " + after.calibration + ")")
    print(line("training-free", before))
    print(line("recovered", after))
    ok = after.agreement.top1.value >= 0.9 and t_rec <= 600 and not args.diagnose_data
    print(f"  target (agreement >= 90% after recover within 10 min on 2 cores): {'MET' if ok else 'NOT MET'} "
          f"({after.agreement.top1.value:.1%}, recover {t_rec:.0f} s)")
    print(f"  params {after.params_before:,} -> {after.params_after:,}; MACs {after.macs_before / 1e6:.0f}M -> "
          f"{after.macs_after / 1e6:.0f}M")
    print(f"  time: ghostify {t_fit:.0f} s, recover {t_rec:.0f} s ({args.steps} steps of {args.batch}), total "
          f"{time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
