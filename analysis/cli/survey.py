"""``ghostmaps survey``: a whole network over a whole image set, written to a folder (atomically)."""

from __future__ import annotations

import argparse
from typing import Any

from analysis._core.validation import DEFAULT_METRIC, DEFAULT_THRESHOLD, METRICS
from analysis.cli.common import add_model_args, out_folder, positive_int
from analysis.pipeline import write_survey_outputs
from analysis.stats import DEFAULT_GROUPS


def run(args: argparse.Namespace) -> int:
    from analysis.data.models import load_model
    from analysis.survey.run import survey

    loaded = load_model(args.model, weights=args.weights, device=args.device)
    if args.heatmap:  # fail early, naming the layer, before the forward pass
        from analysis._core.errors import UnknownLayerError, did_you_mean
        from analysis.hooks import resolve_layers

        surveyed = resolve_layers(loaded.model, args.layers)
        for name in args.heatmap:
            if name.split("#")[0].split("[")[0] not in surveyed:
                raise UnknownLayerError(f"--heatmap {name!r} is not among the surveyed layers "
                                        f"({args.layers!r}).{did_you_mean(name, surveyed)}")
    result = survey(loaded, args.images, layers=args.layers, metric=args.metric, threshold=args.threshold,
                    batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
                    groups=args.groups, limit=args.limit, seed=args.seed, distributed=args.distributed,
                    positions=args.positions, baseline=args.baseline, baseline_every=args.baseline_every,
                    baseline_positions=None if args.baseline_positions == 0 else args.baseline_positions,
                    baseline_bn_images=args.baseline_bn_images, rank99=args.rank99,
                    checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume)
    if result.meta.get("world_size", 1) > 1:
        import os

        if int(os.environ.get("RANK", "0")) != 0:
            return 0
    print(result)
    from analysis.pipeline import headline

    print(headline(result)[1])
    layers = args.heatmap or None
    for name in layers or []:
        result[name]  # noqa: B018 - fail early, naming the layer, before writing anything
    written = write_survey_outputs(result, args.out, model=loaded, images=args.images, heatmaps=layers,
                                   compact=args.compact)
    print(f"survey of {result.meta['images']} images written to {args.out}/:")
    for path in written:
        print(f"  {path}")
    return 0


def register(sub: Any) -> None:
    """Add ``survey`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser(
        "survey", help="redundancy of every layer over an image set, with baselines and intervals",
        description="Stream the images through the model, accumulate per-layer channel statistics (no feature "
                    "maps are kept), and score each layer's redundancy against a noise-matched null (each image "
                    "against its pair partner) and, with --baseline untrained, against the same architecture "
                    "untrained, with jackknife intervals over image groups. Writes survey.pt (reload with "
                    "analysis.Survey.load), survey.csv, survey.json, profile.png, and a heatmap and pair gallery "
                    "of the headline layer (largest excess with its interval above 0).")
    add_model_args(p)
    p.add_argument("--images", "-i", default="samples",
                   help="image files, folders, globs, or samples[:NAME,...] (default: %(default)s)", nargs="+")
    p.add_argument("--layers", "-l", default=["Conv2d"], nargs="+",
                   help="layer names, globs or a module type (default: Conv2d)")
    p.add_argument("--out", "-o", type=out_folder, default="ghostmaps-out/survey", help="output folder (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                   help="channel similarity: pearson is invariant to the per-channel scale and offset a following "
                        "BN removes; cosine is biased upwards for non-negative maps (default: %(default)s)")
    p.add_argument("--threshold", "-t", type=float, default=DEFAULT_THRESHOLD,
                   help="|similarity| at which channels are ghosts, τ (default: %(default)s)")
    p.add_argument("--batch-size", "-b", type=int, default=16, help="images per forward (default: %(default)s)")
    p.add_argument("--groups", type=positive_int, default=DEFAULT_GROUPS,
                   help="image groups the jackknife leaves out one at a time; 1 for no intervals "
                        "(default: %(default)s)")
    p.add_argument("--baseline", choices=("untrained",),
                   help="also survey the architecture re-initialised, BN re-estimated on the images, and score "
                        "every layer's excess over it")
    p.add_argument("--baseline-every", type=positive_int, default=2, metavar="N",
                   help="survey the untrained network on every N-th image pair (default: %(default)s)")
    p.add_argument("--baseline-positions", type=int, default=256, metavar="M",
                   help="positions per image folded for the untrained network; 0 for all (default: %(default)s)")
    p.add_argument("--baseline-bn-images", type=positive_int, default=16, metavar="N",
                   help="images the untrained network's BatchNorm statistics are re-estimated on "
                        "(default: %(default)s)")
    p.add_argument("--positions", type=positive_int,
                   help="fold this many random positions per image (an unbiased estimate; faster on large maps)")
    p.add_argument("--rank99", action="store_true", help="also compute rank99 (O(C³) per layer)")
    p.add_argument("--limit", type=positive_int, help="use at most this many images")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the untrained network and of --positions (default: %(default)s)")
    p.add_argument("--checkpoint", help="write the accumulators to this file as the survey goes (atomically)")
    p.add_argument("--checkpoint-every", type=positive_int, default=50,
                   help="batches between checkpoints (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--heatmap", nargs="+", metavar="LAYER",
                   help="layers to draw heatmaps and galleries for (default: the headline layer)")
    p.add_argument("--compact", action="store_true",
                   help="leave the per-group matrices out of survey.pt (smaller file; a later rescore has no "
                        "intervals)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: split the images over the processes and all-reduce the statistics")
    p.set_defaults(func=run)


