"""Training-free ghostify of pretrained mobilenet_v2 (s = 2, d = 3): does the converted network still agree?

Fits on seeded views of the calibration photos, reports on seeded views of the evaluation photos (disjoint
photos, checked by content). Targets (issue 10): features.10-14's dense convs, top-1 agreement >= 95 %; all 34
dense convs (sequential + BN re-estimation), agreement >= 70 % and logits cosine >= 0.9. The old independent
fit is run beside it. Every number is printed; intervals are 95 % (Clopper-Pearson, or over photos for
views). Per layer: the held-out (calibration views left out of the fit) post-BN error before and after the
refit, in forward order.

Run: ``OMP_NUM_THREADS=2 python benchmarks/ghostify_mobilenet_v2.py [--calib 512] [--eval 256] [--size 224]``
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis import load_images, load_model
from analysis.convert import ghostify, verify_replacement
from analysis.convert.bn import reestimate_bn
from analysis.convert.sequential import PRIORS, SequentialSettings
from analysis.data.models import default_preprocess


def _batch(source) -> torch.Tensor:
    return torch.cat([b for _, b in source.batches(64)])


def _line(tag: str, rep, secs: float) -> str:
    a = rep.agreement
    t1, cos, kl = a.top1, a.logits_cosine, a.logits_kl
    return (f"{tag:<56} top-1 agreement {t1.value:6.1%} [{t1.low:.1%}, {t1.high:.1%}]  logits cosine "
            f"{cos.value:.3f} [{cos.low:.3f}, {cos.high:.3f}]  KL {kl.value:.3f}  MACs x{rep.macs_ratio:.3f} "
            f"params x{rep.params_ratio:.3f}  ({secs:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=512, help="calibration views (default: %(default)s)")
    p.add_argument("--eval", type=int, default=256, help="evaluation views (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="input size (default: %(default)s)")
    p.add_argument("--positions", type=int, default=8192, help="fit positions per layer (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=2, help="refit alternations (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-3, help="relative ridge (default: %(default)s)")
    p.add_argument("--prior", choices=PRIORS, default=SequentialSettings.prior,
                   help="what the ridge pulls the refit toward (default: %(default)s)")
    p.add_argument("--track-bn", action="store_true",
                   help="set each refitted conv's BN to its refitted output's statistics during the fit")
    p.add_argument("--only", choices=("all", "mid", "both"), default="both", help="which layer sets")
    p.add_argument("--skip-independent", action="store_true", help="do not run the old independent fit")
    p.add_argument("--independent-calib", type=int, default=64,
                   help="calibration views for the independent fit, which holds every chosen conv's full output "
                        "maps in memory (default: %(default)s)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model("mobilenet_v2").model
    pre = default_preprocess(round(args.size * 256 / 224), args.size)
    cal_src = load_images("samples:calibration", pre, views=args.calib, seed=0)
    ev_src = load_images("samples:evaluation", pre, views=args.eval, seed=1)
    calib = _batch(cal_src)
    print(f"mobilenet_v2, s=2, d=3, {calib.shape[0]} calibration views of {calib.shape[-1]}^2 "
          f"(samples:calibration), {args.eval} evaluation views (samples:evaluation); threads "
          f"{torch.get_num_threads()}")
    st = SequentialSettings(positions=args.positions, iterations=args.iterations, ridge=args.ridge,
                            track_bn=args.track_bn, prior=args.prior)
    print(f"sequential settings: {st}")
    sets = {"mid": ["features.1[0-4].*"], "all": None}
    chosen = ["mid", "all"] if args.only == "both" else [args.only]
    for which in chosen:
        modes = ["sequential"] if which == "mid" or args.skip_independent else ["sequential", "independent"]
        for mode in modes:
            t0 = time.perf_counter()
            # the sequential fit gets the views themselves: it knows their photos and holds whole ones out
            fit_on = cal_src if mode == "sequential" else calib[:args.independent_calib]
            new, res = ghostify(model, layers=sets[which], ratio=2, dw_size=3, init="fit", calibration_images=fit_on,
                                mode=mode, reestimate_bn=False, settings=st)
            secs = time.perf_counter() - t0
            tag = f"{which} ({len(res.replaced)} convs) {mode} ({len(fit_on)} views)"
            if res.heldout is not None:
                print(f"  fit errors held out: {res.heldout}")
            rep = verify_replacement(model, new, ev_src, calibration=cal_src, latency_repeats=0, layer_images=0)
            print(_line(tag, rep, secs), flush=True)
            t0 = time.perf_counter()  # the same fit, then the BN statistics after the first replaced conv
            reestimate_bn(new, fit_on, after=res.names, batch_size=st.batch_size)
            secs += time.perf_counter() - t0
            rep = verify_replacement(model, new, ev_src, calibration=cal_src, latency_repeats=0, layer_images=0)
            print(_line(f"{tag} + BN re-est.", rep, secs), flush=True)
            if mode == "sequential":
                for r in res.replaced:
                    print(f"    {r.name:<22} held-out post-BN error {r.start_error:.3f} -> {r.fit_error:.3f} "
                          f"(ghosts {r.ghost_error:.3f})", flush=True)

if __name__ == "__main__":
    main()
