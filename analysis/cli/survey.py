"""``ghostmaps survey``: a whole network over a whole image set, written to a folder (atomically)."""

from __future__ import annotations

import argparse
from typing import Any

from analysis._core.validation import DEFAULT_THRESHOLD, METRICS
from analysis.cli.common import add_model_args
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
                    bootstrap=args.bootstrap, groups=args.groups, limit=args.limit, seed=args.seed,
                    distributed=args.distributed)
    if result.meta.get("world_size", 1) > 1:
        import os

        if int(os.environ.get("RANK", "0")) != 0:
            return 0
    print(result)
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
                    "maps are kept), and score each layer's redundancy against a cross-image null baseline with "
                    "bootstrap intervals. Writes survey.pt (reload with analysis.Survey.load), survey.csv, "
                    "survey.json, profile.png, and a heatmap and pair gallery of the most redundant layer.")
    add_model_args(p)
    p.add_argument("--images", "-i", default="samples",
                   help="image files, folders, globs, or samples[:NAME,...] (default: %(default)s)", nargs="+")
    p.add_argument("--layers", "-l", default=["Conv2d"], nargs="+",
                   help="layer names, globs or a module type (default: Conv2d)")
    p.add_argument("--out", "-o", default="ghostmaps-out/survey", help="output folder (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default="cosine",
                   help="channel similarity (default: %(default)s)")
    p.add_argument("--threshold", "-t", type=float, default=DEFAULT_THRESHOLD,
                   help="|similarity| at which channels are ghosts, τ (default: %(default)s)")
    p.add_argument("--batch-size", "-b", type=int, default=16, help="images per forward (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=100,
                   help="bootstrap replicates for the intervals, 0 for none (default: %(default)s)")
    p.add_argument("--groups", type=int, default=DEFAULT_GROUPS,
                   help="image groups the bootstrap redraws (default: %(default)s)")
    p.add_argument("--limit", type=int, help="use at most this many images")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--heatmap", nargs="+", metavar="LAYER",
                   help="layers to draw heatmaps and galleries for (default: the most redundant)")
    p.add_argument("--compact", action="store_true",
                   help="leave the per-group matrices out of survey.pt (smaller file; a later rescore has no "
                        "intervals)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: split the images over the processes and all-reduce the statistics")
    p.set_defaults(func=run)


