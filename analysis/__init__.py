"""ghostmaps.analysis: measure how redundant a CNN's feature maps are, and replace them by Ghost ops.

The sub-packages follow the data flow (each imports only those below it; see docs/architecture.md):
``data`` (models, images) -> ``hooks`` (capture) -> ``stats`` (streaming moments) -> ``measure``
(similarity, pairs, groups, scores) -> ``survey`` (a network over an image set) | ``reconstruct`` (cheap-op
fits) -> ``convert`` (ghostify, verify, MACs) -> ``plots`` -> ``pipeline`` -> ``cli``.

The names below are the curated public API. They are imported on first use (PEP 562), so ``import
analysis`` is cheap and pulls in neither matplotlib nor a sub-package you do not use. ``analysis.survey``
is both the ``survey`` package and callable as the ``survey()`` function.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # _core
    "GhostmapsError": "analysis._core.errors", "MissingDependencyError": "analysis._core.errors",
    "NoImagesError": "analysis._core.errors",
    "UnknownLayerError": "analysis._core.errors", "WeightsUnavailableError": "analysis._core.errors",
    "eval_mode": "analysis._core.modes",
    # data
    "LoadedModel": "analysis.data.models", "ModelInfo": "analysis.data.models", "load_model": "analysis.data.models",
    "ImageSkippedWarning": "analysis.data.images", "ImageSource": "analysis.data.images",
    "NamedImage": "analysis.data.images", "load_images": "analysis.data.images",
    "sample_images": "analysis.data.images", "OverlapError": "analysis.data.overlap",
    "check_disjoint": "analysis.data.overlap", "shared_images": "analysis.data.overlap",
    # hooks
    "LayerInfo": "analysis.hooks", "capture": "analysis.hooks", "capture_maps": "analysis.hooks",
    "list_layers": "analysis.hooks",
    # stats
    "GroupedStats": "analysis.stats", "LayerStats": "analysis.stats",
    # measure
    "ChannelSimilarity": "analysis.measure.similarity", "channel_similarity": "analysis.measure.similarity",
    "GhostPair": "analysis.measure.pairs", "GhostPairs": "analysis.measure.pairs",
    "ghost_pairs": "analysis.measure.pairs", "GhostGroups": "analysis.measure.groups",
    "ghost_groups": "analysis.measure.groups", "Redundancy": "analysis.measure.scores",
    "Score": "analysis.measure.scores", "redundancy": "analysis.measure.scores",
    # survey
    "LayerSurvey": "analysis.survey.result", "Survey": "analysis.survey.result",
    # reconstruct
    "best_sources": "analysis.reconstruct", "fit_cheap_op": "analysis.reconstruct",
    "ghostability": "analysis.reconstruct", "reconstruction_table": "analysis.reconstruct",
    "suggest_ratio": "analysis.reconstruct",
    # convert
    "GhostifyResult": "analysis.convert.ghostify", "ghostify": "analysis.convert.ghostify",
    "rebuild": "analysis.convert.rebuild", "load_ghostified": "analysis.convert.rebuild",
    "VerificationReport": "analysis.convert.verify", "verify_replacement": "analysis.convert.verify",
    "MacsReport": "analysis.convert.macs", "count_macs": "analysis.convert.macs",
    "ReplacementPlan": "analysis.convert.plan", "plan_replacement": "analysis.convert.plan",
    "choose_plan": "analysis.convert.plan",
    "RecoverResult": "analysis.convert.recover", "recover": "analysis.convert.recover",
    # pipeline
    "Figure1Result": "analysis.pipeline", "run_figure1": "analysis.pipeline", "suggest_layer": "analysis.pipeline",
}
#: sub-packages reachable as attributes (``analysis.plots.figure1``; ``analysis.survey(...)`` calls the survey)
_SUBMODULES = ("cli", "convert", "data", "hooks", "measure", "pipeline", "plots", "reconstruct", "stats", "survey")

__all__ = sorted([*_EXPORTS, "plots", "survey"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"analysis.{name}")
    else:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
