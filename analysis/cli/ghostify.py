"""``ghostmaps ghostify``: replace pretrained convs by Ghost convs, verify, and write the result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from analysis._core.errors import GhostmapsError
from analysis._core.io import atomic_path, atomic_write
from analysis.cli.common import (
    add_image_args,
    add_model_args,
    images_batch,
    load_for_cli,
    non_negative_int,
    positive_int,
)
from analysis.convert.rebuild import GHOSTIFY_JSON, STATE_FILE


def run(args: argparse.Namespace) -> int:
    from analysis.convert.ghostify import ghostify
    from analysis.convert.verify import verify_replacement
    from analysis.plots import save_figure, verification

    model, preprocess, info = load_for_cli(args)
    calib = images_batch(args.images, preprocess, args.limit)
    same = args.verify_images is None
    check = calib if same else images_batch(args.verify_images, preprocess, args.limit, "--verify-images")
    new, result = ghostify(model, layers=args.layers, ratio=args.ratio, dw_size=args.d,
                           init=None if args.init == "none" else "fit", calibration_images=calib,
                           min_channels=args.min_channels, calibrate_steps=args.calibrate_steps)
    print(result)
    if not result.replaced:
        raise GhostmapsError("no conv was replaced (see the skipped list above); choose other --layers")
    new, recovered = _recover(args, model, new, calib)
    note = ("verified on the calibration images (pass --verify-images for held-out ones)" if same
            else "verified on held-out images")
    report = verify_replacement(model, new, check, calibration=calib, allow_calibration=same,
                                latency_repeats=args.latency_runs, note=note)
    print(report)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(new.state_dict(), tmp)
    meta = {
        "model": info.to_dict(), "image_size": args.image_size, "calibration_images": args.images,
        "result": result.to_dict(),
        "rebuild": ("from analysis import load_ghostified; model = load_ghostified(DIR)  # or: "
                    "analysis.rebuild(load_model(model.name, weights=None).model, result.spec) then "
                    f"load_state_dict(torch.load(DIR/{STATE_FILE}))"),
    }
    written = [out / STATE_FILE, atomic_write(out / GHOSTIFY_JSON, json.dumps(meta, indent=2) + "\n"),
               atomic_write(out / "verification.json", report.to_json() + "\n")]
    written.append(atomic_write(out / "verification.csv", report.to_csv()))
    if recovered is not None:
        written += [atomic_write(out / "recover.json", recovered.to_json() + "\n"),
                    atomic_write(out / "recover.csv", recovered.to_csv())]
    fig = verification(report, title=f"ghostify {info.name}: {len(result.replaced)} convs, ratio {args.ratio}, "
                                      f"d {args.d}")
    written += save_figure(fig, out / "verification.png")
    for path in written:
        print(f"wrote {path}")
    return 0


def _recover(args: argparse.Namespace, model: Any, new: Any, calib: torch.Tensor) -> tuple[Any, Any]:
    """``--recover-steps``: distil the ghostified copy from the original on the calibration images (unlabelled);
    returns the (recovered) model and the ``RecoverResult`` (None when off)."""
    if not args.recover_steps:
        return new, None
    from analysis.convert.recover import recover

    new, rec = recover(new, model, calib, steps=args.recover_steps, lr=args.recover_lr,
                       batch_size=args.recover_batch, device=args.device)
    print(rec)
    return new, rec


def _add_recover_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recover-steps", type=non_negative_int, default=0,
                   help="after ghostify, this many steps of distillation from the original on the calibration "
                        "images (logits KL, seeded crops and flips, BN in train mode; writes recover.json/csv; default: off)")
    p.add_argument("--recover-lr", type=positive_float, default=1e-3, help="Adam's peak learning rate of the "
                                                                          "recovery (default: %(default)s)")
    p.add_argument("--recover-batch", type=positive_int, default=32, help="images per recovery step "
                                                                          "(default: %(default)s)")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(sub: Any) -> None:
    """Add ``ghostify`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("ghostify", help="replace pretrained convs by Ghost convs (training-free) and verify",
                       description="Replace the chosen convs by Ghost convolutions initialised from the "
                                   "pretrained filters (intrinsic channels kept exactly, cheap ops fitted in "
                                   "closed form on the images), verify the result against the original (params, "
                                   "MACs, per-layer error, logits, top-1 agreement, latency) and write the "
                                   "state dict, ghostify.json (how to rebuild), the report and its plot.")
    add_model_args(p)
    p.add_argument("--layers", "-l", nargs="+", help="conv names or globs, e.g. 'features.1[0-4].*' (default: every "
                                                     "dense conv with >= --min-channels outputs but the stem)")
    p.add_argument("--ratio", "-s", type=positive_int, default=2, help="Ghost ratio s (default: %(default)s)")
    p.add_argument("--d", type=positive_int, default=3, help="cheap depthwise kernel size (default: %(default)s)")
    p.add_argument("--init", choices=("fit", "none"), default="fit",
                   help="'fit' from the pretrained conv, 'none' random (default: %(default)s)")
    p.add_argument("--calibrate-steps", type=non_negative_int, default=0,
                   help="Adam steps of layer-wise MSE calibration per layer after the fit (default: off)")
    _add_recover_args(p)
    p.add_argument("--min-channels", type=non_negative_int, default=16,
                   help="default layer choice: convs with at least this many outputs (default: %(default)s)")
    add_image_args(p, "calibration images")
    p.add_argument("--verify-images", nargs="+", help="held-out images for the report (default: the calibration "
                                                      "images)")
    p.add_argument("--latency-runs", type=non_negative_int, default=5, help="timed forwards per model, 0 = skip "
                                                               "(default: %(default)s)")
    p.add_argument("--out", "-o", default="ghostify-out", help="output folder (default: %(default)s)")
    p.set_defaults(func=run)
