"""``ghostmaps info``: parameters, MACs and a per-stage cost table of a model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from analysis._core.errors import GhostmapsError
from analysis.cli.common import add_model_args, positive_int


def run(args: argparse.Namespace) -> int:
    from analysis.convert.macs import count_macs, format_stage_table, stage_table
    from analysis.data.models import load_model

    model, _, info = load_model(args.model_name or args.model, weights=args.weights, device=args.device)
    form = "as loaded"
    if args.fused:
        from ghostnet.fuse import fuse

        try:
            model = fuse(model, channels_last=False)
        except ValueError as exc:  # a model torch.fx cannot trace
            raise GhostmapsError(f"--fused: {exc}") from None
        form = "fused (BN folded, re-parameterisable branches merged)"
    elif callable(getattr(model, "reparameterize", None)) and not getattr(model, "deployed", True):
        form = "training form (multi-branch); --fused counts the deploy form"
    size = (1, 3, args.input_size, args.input_size)
    report = count_macs(model, size)
    rows = stage_table(model, report=report)
    if args.json:
        print(json.dumps({"model": info.to_dict(), "form": form, "macs": report.total_macs, "params": report.params,
                          "registered_params": report.registered_params, "input_size": list(size),
                          "convention": report.convention, "stages": rows}, indent=2))
        return 0
    print(f"{info.name}  (weights: {info.weights}" + ("" if form == "as loaded" else f"; {form}") + ")")
    print(f"  params  {report.params:,} used by the forward pass ({report.registered_params:,} registered)")
    print(f"  MACs    {report.total_macs / 1e6:,.2f} M at {args.input_size}×{args.input_size} "
          f"(= {report.total_flops / 1e6:,.2f} M FLOPs counting 2 per multiply-add)")
    print(f"  counted {report.convention}")
    print()
    print(format_stage_table(rows))
    return 0


def register(sub: Any) -> None:
    """Add ``info`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("info", help="parameters, MACs and a per-stage cost table of a model",
                       description="Count the parameters a forward pass uses and the multiply-accumulates (MACs, "
                                   "the GhostNet paper's 'FLOPs') of MODEL, overall and per stage.")
    p.add_argument("model_name", nargs="?", metavar="MODEL",
                   help="torchvision name, a ghostnet name (ghostnet_100, ghostnetv2_100, ghostnetv3_100, "
                        "ghost_resnet50, ...), timm:NAME, or package.module:callable (default: mobilenet_v2)")
    add_model_args(p, weights_default="none")
    p.add_argument("--input-size", type=positive_int, default=224, help="input height and width (default: %(default)s)")
    p.add_argument("--fused", action="store_true",
                   help="count the deploy form: BNs folded and GhostNetV3's branches merged (ghostnet.fuse)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
