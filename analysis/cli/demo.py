"""``ghostmaps demo``: Figure 1 and a survey of pretrained mobilenet_v2 on the sample photos, offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analysis.cli.common import out_folder, positive_int

DEMO_OUT = Path("ghostmaps-out") / "demo"


def run(args: argparse.Namespace) -> int:
    from analysis.data.models import load_model
    from analysis.pipeline import run_figure1

    out = Path(args.out)
    print("ghostmaps demo: pretrained mobilenet_v2 (offline weights) on the sample photos")
    loaded = load_model("mobilenet_v2", weights="default")
    print(f"  model   {loaded.info.name}  weights {loaded.info.weights}")
    result = run_figure1(loaded, image="samples:chelsea", k=args.pairs)
    print(f"  layer   {result.layer}  maps {'×'.join(map(str, result.maps.shape))}  image {result.image}")
    print(result.pairs)
    written = result.save(out / "figure1.png")
    print(f"Figure 1 and its pairs are in {out}/:")
    for path in written:
        print(f"  {path}")
    from analysis.pipeline import headline, write_survey_outputs
    from analysis.survey.run import survey

    print("survey: every Conv2d output over the sample photos, Pearson similarity, against the noise-matched null "
          "and the same architecture untrained (BN re-estimated on the photos), jackknife intervals over images")
    result = survey(loaded, "samples", baseline="untrained", baseline_every=1, baseline_positions=None,
                    progress=False)
    print(result)
    name, sentence = headline(result)
    print(f"headline: {sentence}")
    for path in write_survey_outputs(result, out, model=loaded, images="samples", save=False, heatmaps=[name]):
        print(f"  {path}")
    return 0


def register(sub: Any) -> None:
    """Add ``demo`` to the ``ghostmaps`` subcommands."""
    p = sub.add_parser("demo", help="Figure 1 and a redundancy survey of pretrained mobilenet_v2, offline",
                       description="Run pretrained mobilenet_v2 (offline weights) on the sample photos, pick an "
                                   "early layer with many channels, and write the Figure 1 PNG and a JSON of the "
                                   "ghost pairs into an output folder; then survey every conv over the photos "
                                   "against the noise-matched null and the untrained architecture, and write the "
                                   "per-layer scores (CSV, JSON) and the redundancy plots beside it.")
    p.add_argument("--out", "-o", type=out_folder, default=str(DEMO_OUT), help="output folder (default: %(default)s)")
    p.add_argument("--pairs", "-k", type=positive_int, default=3, help="ghost pairs to mark (default: %(default)s)")
    p.set_defaults(func=run)
