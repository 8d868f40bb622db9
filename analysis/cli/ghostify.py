"""``ghostmaps ghostify``: replace pretrained convs by Ghost convs (optionally as planned under a budget), verify
on held-out images, and write the result."""

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
    load_for_cli,
    non_negative_int,
    out_folder,
    positive_int,
)
from analysis.convert.augment import MIXES
from analysis.convert.rebuild import GHOSTIFY_JSON, STATE_FILE
from analysis.convert.recover import BN_MODES, LOSSES
from analysis.convert.sequential import PRIORS, SequentialSettings


def run(args: argparse.Namespace) -> int:
    from analysis.convert.ghostify import ghostify
    from analysis.convert.verify import verify_replacement
    from analysis.plots import save_figure, verification

    if args.eval_views is not None and args.verify_images is None:
        raise GhostmapsError("--eval-views draws views of the --eval photos; add --eval IMAGES (e.g. --eval "
                             "samples:evaluation) or leave --eval-views out")
    same = args.verify_images is None
    if same and not args.eval_on_calibration and not args.plan:
        raise GhostmapsError("the report needs evaluation images the replacement was not fitted on: add --eval "
                             "IMAGES (e.g. --eval samples:evaluation beside --images samples:calibration), or "
                             "--eval-on-calibration to verify on the calibration images themselves (optimistic, "
                             "and said so in the report)")
    if not same and args.eval_on_calibration:
        raise GhostmapsError("--eval-on-calibration verifies on the calibration images, --eval on other ones: "
                             "pass one of them, not both")
    settings = _fit_settings(args)  # before anything is loaded: a bad combination fails at once
    model, preprocess, info = load_for_cli(args)
    source = _calib_source(args, preprocess)  # an ImageSource: whole photos held out, intervals over photos
    check = source if same else _eval_images(args, preprocess, source)
    # the plan's sensitivities come from a seeded half of the calibration photos, never from --eval: the
    # evaluation images then choose nothing, and the report on them is not biased by the choice
    plan = _plan(args, model, preprocess, source)
    if plan is not None and args.plan:
        return 0
    new, result = ghostify(model, layers=args.layers if plan is None else None,
                           ratio=args.ratio if plan is None else plan.ratios, dw_size=args.d,
                           init=None if args.init == "none" else "fit", calibration_images=source,
                           min_channels=args.min_channels, calibrate_steps=args.calibrate_steps,
                           mode=args.mode, reestimate_bn=args.bn_reestimate, consumer_refit=args.consumer_refit,
                           settings=settings)
    print(result)
    if not result.replaced:
        raise GhostmapsError("no conv was replaced (see the skipped list above); choose other --layers")
    new, recovered = _recover(args, model, new, source)
    note = ("verified on the calibration images, as asked (--eval-on-calibration): optimistic; pass --eval for "
            "held-out ones" if same else "verified on held-out images (they chose nothing: neither the fits nor "
            "the plan saw them)")
    report = verify_replacement(model, new, check, calibration=source,
                                allow_calibration=same, transform=preprocess, latency_repeats=args.latency_runs,
                                note=note)
    print(report)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(new.state_dict(), tmp)
    meta = {
        "model": info.to_dict(), "image_size": args.image_size, "calibration_images": args.images,
        "calibration_views": args.views, "evaluation_images": args.verify_images,
        "evaluation_views": args.eval_views, "plan": None if plan is None else plan.to_dict(),
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


def _fit_settings(args: argparse.Namespace) -> SequentialSettings | None:
    """``--fit-ridge``/``--fit-prior`` as the sequential fit's settings (None: neither given)."""
    if args.fit_ridge is None and args.fit_prior is None:
        return None
    if args.mode != "sequential" or args.init == "none":
        raise GhostmapsError("--fit-ridge and --fit-prior set the sequential fit: use them with --mode sequential "
                             "and --init fit (the defaults), or leave them out")
    default = SequentialSettings()
    return SequentialSettings(ridge=default.ridge if args.fit_ridge is None else args.fit_ridge,
                              prior=default.prior if args.fit_prior is None else args.fit_prior)


def _recover(args: argparse.Namespace, model: Any, new: Any, source: Any) -> tuple[Any, Any]:
    """``--recover-steps``: distil the ghostified copy from the original on the calibration images (unlabelled);
    returns the (recovered) model and the ``RecoverResult`` (None when off)."""
    if not args.recover_steps:
        return new, None
    from analysis.convert.recover import recover
    from analysis.data.batches import as_images

    calib = as_images(source, name="--images").tensor()  # decoded only when recover runs

    new, rec = recover(new, model, calib, steps=args.recover_steps, lr=args.recover_lr,
                       batch_size=args.recover_batch, loss=args.recover_loss, bn=args.recover_bn,
                       mix=args.recover_mix, seed=args.recover_seed, checkpoint=args.recover_checkpoint,
                       checkpoint_every=args.recover_checkpoint_every, resume=args.recover_resume,
                       device=args.device)
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
    p.add_argument("--recover-loss", choices=LOSSES, default="kl",
                   help="logits KL, features before pooling, or both (default: %(default)s)")
    p.add_argument("--recover-bn", choices=BN_MODES, default="train",
                   help="BatchNorm in train mode (statistics re-estimated) or frozen (default: %(default)s)")
    p.add_argument("--recover-mix", choices=MIXES, default=None,
                   help="mix each calibration view with another of its batch, teacher and student seeing the same "
                        "mixed image (default: no mixing)")
    p.add_argument("--recover-seed", type=int, default=0, help="seed of the batches and crops (default: %(default)s)")
    p.add_argument("--recover-checkpoint", metavar="PATH",
                   help="write the recovery's state to PATH atomically as it goes (resume with --recover-resume)")
    p.add_argument("--recover-checkpoint-every", type=positive_int, default=50,
                   help="steps between recovery checkpoints (default: %(default)s)")
    p.add_argument("--recover-resume", action="store_true",
                   help="continue the recovery from --recover-checkpoint (bit-identical to an uninterrupted run)")


def non_negative_number(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# -- planning under a budget and held-out evaluation (kept apart from run() so that merges stay easy) --------


def _budget(text: str) -> float:
    """argparse type: a budget, the fraction of the original's cost to keep, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected the fraction of the original's cost to keep, in (0, 1], got "
                                         f"{text!r}; e.g. 0.7")
    return value


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-macs", type=_budget, metavar="F",
                   help="plan first: replace the convs and ratios that keep at most F of the MACs at the least "
                        "held-out KL (analysis.plan_replacement), then ghostify them (overrides --layers' choice "
                        "within the candidates and --ratio)")
    p.add_argument("--budget-params", type=_budget, metavar="F", help="the same for the used parameters")
    p.add_argument("--plan", action="store_true", help="only measure and write the plan (plan.json, plan.csv, "
                                                       "plan.png); needs --budget-macs or --budget-params")
    p.add_argument("--plan-ratios", type=positive_int, nargs="+", default=[2, 3, 4], metavar="S",
                   help="ratios the plan may use per conv (default: 2 3 4)")


def _calib_source(args: argparse.Namespace, preprocess: Any) -> Any:
    """The calibration images as an ImageSource, built once per run: the photos are known, so the fit holds out
    whole photos and the overlap check compares whole photos."""
    from analysis.data.images import load_images

    return load_images(args.images, transform=preprocess, limit=args.limit, views=args.views)


def _eval_images(args: argparse.Namespace, preprocess: Any, calib: Any) -> Any:
    """``--eval``: a folder of class folders as its path (labelled, through ``analysis.data.labelled``), anything
    else as an ImageSource; refused when it shares a photo with the calibration images."""
    from analysis.data.images import load_images
    from analysis.data.labelled import evaluation_set
    from analysis.data.overlap import check_disjoint

    src = args.verify_images
    if len(src) == 1 and Path(src[0]).is_dir():
        evalset = evaluation_set(src[0], preprocess)
        if evalset.labelled:
            if args.eval_views is not None:
                raise GhostmapsError(f"--eval-views draws views of photos; {src[0]} is a labelled folder of class "
                                     "folders, evaluated image by image: leave --eval-views out")
            check_disjoint(calib, evalset.source)
            return src[0]
    images = load_images(src, transform=preprocess, limit=args.limit, views=args.eval_views)
    check_disjoint(calib, images)
    return images


def _plan(args: argparse.Namespace, model: Any, preprocess: Any, calib: Any) -> Any:
    """The plan under ``--budget-macs``/``--budget-params`` (None without a budget), printed and written; its
    sensitivities are measured on a seeded half of the calibration photos (``plan_replacement`` without
    ``eval_images``), so the evaluation images choose nothing."""
    from analysis.convert.plan import choose_plan, plan_replacement
    from analysis.plots import plan_tradeoff, save_figure

    if args.budget_macs is None and args.budget_params is None:
        if args.plan:
            raise GhostmapsError("--plan needs a budget: add --budget-macs 0.7 (or --budget-params)")
        return None
    plan = plan_replacement(model, calib, macs=args.budget_macs,
                            params=args.budget_params, ratios=args.plan_ratios, layers=args.layers, eval_images=None,
                            dw_size=args.d, preprocess=preprocess, min_channels=args.min_channels)
    print(plan)
    if not plan.ratios and not args.plan:
        raise GhostmapsError("the budget is met without replacing any conv; lower --budget-macs/--budget-params")
    out = Path(args.out)
    frontier = []
    key = "macs" if args.budget_macs is not None else "params"  # the frontier along the budget that was set
    for b in (0.95, 0.9, 0.8, 0.7, 0.6, 0.5):
        try:
            frontier.append(choose_plan(plan, **{key: b}))
        except GhostmapsError:
            break
    written = [atomic_write(out / "plan.json", plan.to_json() + "\n")]
    written.append(atomic_write(out / "plan.csv", plan.to_csv()))
    written += save_figure(plan_tradeoff(plan, frontier or None, title=f"plan for {args.model}"), out / "plan.png")
    for path in written:
        print(f"wrote {path}")
    return plan


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
    p.add_argument("--mode", choices=("sequential", "independent"), default="sequential",
                   help="'sequential': each conv fitted on the converted network's inputs, both halves refitted; "
                        "'independent': each conv on the original maps, intrinsic channels exact (default: "
                        "%(default)s)")
    p.add_argument("--bn-reestimate", action="store_true",
                   help="re-estimate the BN statistics after the replaced convs on the calibration images "
                        "(default: keep them; see docs/ghostify.md)")
    p.add_argument("--consumer-refit", action="store_true",
                   help="with --mode sequential: also re-solve by least squares each dense conv that consumes a "
                        "replaced conv and stays dense, so its output matches the original's (default: off)")
    p.add_argument("--fit-ridge", type=non_negative_number, default=None, metavar="R",
                   help=f"with --mode sequential: the refit's relative ridge (default: {SequentialSettings.ridge})")
    p.add_argument("--fit-prior", choices=PRIORS, default=None,
                   help="with --mode sequential: what the ridge pulls the refit toward, 'zero' or 'start' (the "
                        f"pretrained filters and closed-form cheap ops; default: {SequentialSettings.prior})")
    p.add_argument("--calibrate-steps", type=non_negative_int, default=0,
                   help="Adam steps of layer-wise MSE calibration per layer after the fit; needs --mode "
                        "independent (default: off)")
    _add_recover_args(p)
    p.add_argument("--min-channels", type=non_negative_int, default=16,
                   help="default layer choice: convs with at least this many outputs (default: %(default)s)")
    add_image_args(p, "calibration images", default="samples:calibration")  # disjoint from samples:evaluation
    p.add_argument("--eval", "--verify-images", dest="verify_images", nargs="+",
                   help="held-out evaluation images for the report (the plan never sees them); a folder of class "
                        "folders (named by class index) gives labelled accuracy too. Required unless "
                        "--eval-on-calibration")
    p.add_argument("--eval-on-calibration", action="store_true",
                   help="verify on the calibration images themselves (optimistic; refused unless asked for)")
    p.add_argument("--views", type=positive_int, metavar="N",
                   help="calibrate on N seeded random views in all (random resized crops and flips, seed 0), "
                        "spread over the calibration photos in turn, instead of each photo once; whole photos are "
                        "held out of the fit either way")
    p.add_argument("--eval-views", type=positive_int, metavar="N",
                   help="evaluate on N seeded views in all of the --eval photos (not with a labelled folder)")
    _add_plan_args(p)
    p.add_argument("--latency-runs", type=non_negative_int, default=5, help="timed forwards per model, 0 = skip "
                                                               "(default: %(default)s)")
    p.add_argument("--out", "-o", type=out_folder, default="ghostify-out", help="output folder (default: %(default)s)")
    p.set_defaults(func=run)
