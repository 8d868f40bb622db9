"""``ghostmaps survey``: a whole network over a whole image set, written to a folder.

Everything is written under a temporary name and renamed when complete, so an interrupted run (Ctrl-C) leaves
no half-written file behind; files already there stay as they were until replaced whole.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def most_redundant(survey: Any) -> str:
    """The layer whose ghost fraction exceeds its null baseline the most (the first layer on ties)."""
    def excess(layer: Any) -> float:
        s = layer.redundancy.scores["ghost_fraction"]
        return s.observed - (s.baseline or 0.0)

    return max(survey, key=excess).name


def write_survey_outputs(survey: Any, out: str | Path, model: Any = None, images: Any = None,
                         heatmaps: list[str] | None = None, save: bool = True, compact: bool = False) -> list[Path]:
    """Write the survey file (``survey.pt``), the per-layer CSV, the JSON, the profile, heatmaps (default: the
    most redundant layer) and, given the model and images, a pair gallery of that layer. Returns the paths."""
    from .plots import pair_gallery, redundancy_profile, save_figure, similarity_heatmap
    from .survey import _atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if save:
        written.append(survey.save(out / "survey.pt", stats=True, groups=not compact))
    csv_path = out / "survey.csv"
    survey.to_csv(csv_path)
    written.append(csv_path)
    json_path = out / "survey.json"
    _atomic_write(json_path, (survey.to_json(indent=1) + "\n").encode())
    written.append(json_path)
    written += save_figure(redundancy_profile(survey), out / "profile.png")
    for layer in heatmaps or [most_redundant(survey)]:
        written += save_figure(similarity_heatmap(survey, layer), out / f"heatmap-{layer}.png")
        if model is not None and images is not None and len(survey[layer].pairs):
            fig = pair_gallery(survey, layer, model=model, images=images)
            written += save_figure(fig, out / f"gallery-{layer}.png")
    return written


def cmd_survey(args: argparse.Namespace) -> int:
    from .models import load_model
    from .survey import survey

    loaded = load_model(args.model, weights=args.weights, device=args.device)
    if args.heatmap:  # fail early, naming the layer, before the forward pass
        from .capture import resolve_layers
        from .errors import UnknownLayerError, did_you_mean

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
    """Add the ``survey`` subcommand."""
    from .cli import add_model_args
    from .scores import DEFAULT_THRESHOLD
    from .stats import DEFAULT_GROUPS

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
    p.add_argument("--metric", choices=("cosine", "pearson"), default="cosine",
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
    p.set_defaults(func=cmd_survey)


