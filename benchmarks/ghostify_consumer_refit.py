"""Training-free ghostify of pretrained mobilenet_v2 with and without the consumer refit (issue 10).

For each layer set, the sequential fit (s = 2, d = 3, default settings) is run twice: as it is, and with
``consumer_refit=True`` (each dense conv that consumes a replaced conv and stays dense is re-solved by least
squares on the converted inputs against the original outputs). Fitted on seeded views of the calibration
photos; every agreement number is on seeded views of the evaluation photos (disjoint by content), with 95 %
intervals over photos (views of one photo are not independent); the consumers' errors are on the held-out
calibration photo (left out of the consumer's fit and of its keep-or-not decision, which a validation split of
the fit photos makes; the replaced convs before it were refitted on it, ``refit_all``).

Run: ``OMP_NUM_THREADS=2 python benchmarks/ghostify_consumer_refit.py [--calib 128] [--eval 128] [--size 128]``
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis import load_images, load_model
from analysis.convert import ghostify, verify_replacement
from analysis.data.models import default_preprocess
from analysis.stats.intervals import mean_interval

SETS = {
    "features.10-14 (10 convs)": ["features.1[0-4].*"],
    "features.10-14 expansions (5 convs)": ["features.1[0-4].conv.0.0"],
    "features.10-14 projections (5 convs)": ["features.1[0-4].conv.2"],
    "features.11.conv.0.0 alone": ["features.11.conv.0.0"],
    "features.14.conv.2 alone": ["features.14.conv.2"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=128, help="calibration views (default: %(default)s)")
    p.add_argument("--eval", type=int, default=128, help="evaluation views (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="input size (default: %(default)s)")
    p.add_argument("--sets", nargs="+", choices=range(len(SETS)), type=int, default=list(range(len(SETS))),
                   help="which layer sets, by index (default: all)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model("mobilenet_v2").model
    pre = default_preprocess(round(args.size * 256 / 224), args.size)
    cal_src = load_images("samples:calibration", pre, views=args.calib, seed=0)
    ev_src = load_images("samples:evaluation", pre, views=args.eval, seed=1)
    calib = torch.cat([b for _, b in cal_src.batches(64)])
    ev = torch.cat([b for _, b in ev_src.batches(64)])
    photos = ev_src.photo_names
    with torch.no_grad():
        ref = model.eval()(ev)
    print(f"mobilenet_v2, s=2, d=3, {calib.shape[0]} calibration views of {args.size}^2, {args.eval} evaluation "
          f"views; threads {torch.get_num_threads()}")
    for i, (tag, layers) in enumerate(SETS.items()):
        if i not in args.sets:
            continue
        per_view = []
        for refit in (False, True):
            t0 = time.perf_counter()
            new, res = ghostify(model, layers=layers, init="fit", calibration_images=cal_src, consumer_refit=refit)
            secs = time.perf_counter() - t0
            rep = verify_replacement(model, new, ev_src, calibration=cal_src, latency_repeats=0, layer_images=0)
            a = rep.agreement
            t1, cos, kl = a.top1, a.logits_cosine, a.logits_kl
            print(f"{tag:<38} refit {'on ' if refit else 'off'} top-1 agreement {t1.value:6.1%} [{t1.low:.1%}, "
                  f"{t1.high:.1%}]  logits cosine {cos.value:.3f} [{cos.low:.3f}, {cos.high:.3f}]  KL {kl.value:.3f} "
                  f"[{kl.low:.3f}, {kl.high:.3f}]  ({secs:.0f} s)", flush=True)
            with torch.no_grad():
                out = new(ev)
            kl = torch.nn.functional.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True,
                                            reduction="none").sum(1)
            per_view.append(((out.argmax(1) == ref.argmax(1)).double(), kl.double()))
            for c in res.consumers:
                val = ("n/a" if c.validation_error_before is None or c.validation_error_after is None else
                       f"{c.validation_error_before:.3f} -> {c.validation_error_after:.3f}")
                print(f"    consumer {c.name:<22} of {' '.join(c.producers)}: held-out post-BN error "
                      f"{c.heldout_error_before:.3f} -> {c.heldout_error_after:.3f} ({c.n_fit} fit positions); "
                      f"validation {val}: {'applied' if c.applied else 'not applied'}", flush=True)
        (t_off, k_off), (t_on, k_on) = per_view
        dt, dk = mean_interval((t_on - t_off).numpy(), groups=photos), mean_interval((k_on - k_off).numpy(),
                                                                                     groups=photos)
        print(f"    paired on - off: top-1 agreement {dt.value:+.1%} [{dt.low:+.1%}, {dt.high:+.1%}], KL "
              f"{dk.value:+.3f} [{dk.low:+.3f}, {dk.high:+.3f}] nats (over {len(set(photos))} photos)", flush=True)


if __name__ == "__main__":
    main()
