"""``ghostmaps figure1``: GhostNet's Figure 1 for a layer and an image."""

from __future__ import annotations

import argparse
from typing import Any

from analysis._core.validation import DEFAULT_METRIC, METRICS
from analysis.cli.common import add_model_args, out_file, positive_int


def run(args: argparse.Namespace) -> int:
    from analysis.data.models import load_model
    from analysis.pipeline import run_figure1

    loaded = load_model(args.model, weights=args.weights, device=args.device)
    result = run_figure1(loaded, layer=args.layer, image=args.image, k=args.pairs, metric=args.metric,
                         max_channels=args.max_channels, device=args.device)
    written = result.save(args.out, svg=args.svg)
    print(result.pairs)
    for path in written:
        print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    """Add ``figure1`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("figure1", help="draw GhostNet's Figure 1 for a layer and an image",
                       description="Capture one layer's feature maps for one image, find the most similar "
                                   "(mutually exclusive) channel pairs, and draw the maps with the pairs boxed "
                                   "in matching colours. Writes FILE (PNG) and FILE.json with the pair scores.")
    add_model_args(p)
    p.add_argument("--layer", "-l", help="layer name (see `ghostmaps layers`); default: an early layer with "
                                          "many channels")
    p.add_argument("--image", "-i", default="samples:chelsea",
                   help="image file, or samples:NAME for a built-in photo (default: %(default)s)")
    p.add_argument("--pairs", "-k", type=positive_int, default=3, help="ghost pairs to mark (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                   help="channel similarity: pearson is invariant to the per-channel scale and offset a following "
                        "BN removes; cosine is biased upwards for non-negative maps (default: %(default)s)")
    p.add_argument("--max-channels", type=positive_int, default=64, help="tiles to show (default: %(default)s)")
    p.add_argument("--out", "-o", type=out_file, default="figure1.png", help="output PNG (default: %(default)s)")
    p.add_argument("--svg", action="store_true", help="also write an SVG beside the PNG")
    p.set_defaults(func=run)
