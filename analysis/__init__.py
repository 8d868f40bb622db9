"""ghostmaps.analysis: measure how redundant a CNN's feature maps are.

Data flow: ``models`` (load a network) -> ``images`` (load photos) -> ``capture`` (forward hooks)
-> ``stats`` (streaming per-layer moments) -> ``similarity`` (C x C matrices) -> ``pairs`` (ghost pairs)
-> ``groups`` / ``scores`` (ghost groups, redundancy with baselines) -> ``survey`` (a network over an image set)
-> ``plots`` / ``pipeline`` / ``cli``; ``reconstruct`` fits cheap ops, ``verify`` checks Ghost replacements,
``macs`` counts costs.
"""

from . import plots
from .capture import LayerInfo, capture, capture_maps, eval_mode, list_layers
from .errors import GhostmapsError, NoImagesError, UnknownLayerError, WeightsUnavailableError
from .groups import GhostGroups, ghost_groups
from .images import ImageSkippedWarning, ImageSource, NamedImage, load_images, sample_images
from .macs import MacsReport, count_macs
from .models import LoadedModel, ModelInfo, load_model
from .pairs import GhostPair, GhostPairs, ghost_pairs
from .pipeline import Figure1Result, run_figure1, suggest_layer
from .reconstruct import best_sources, fit_cheap_op, ghostability, reconstruction_table, suggest_ratio
from .scores import Redundancy, Score, redundancy
from .similarity import ChannelSimilarity, channel_similarity
from .stats import GroupedStats, LayerStats
from .survey import LayerSurvey, Survey, survey
from .verify import VerificationReport, verify_replacement

__version__ = "0.1.0"

__all__ = [
    "ChannelSimilarity", "Figure1Result", "GhostGroups", "GhostPair", "GhostPairs", "GhostmapsError",
    "GroupedStats", "ImageSkippedWarning", "ImageSource", "LayerInfo", "LayerStats", "LayerSurvey",
    "LoadedModel", "MacsReport", "ModelInfo", "NamedImage", "NoImagesError", "Redundancy", "Score", "Survey",
    "UnknownLayerError", "VerificationReport", "WeightsUnavailableError", "best_sources", "capture",
    "capture_maps", "channel_similarity", "count_macs", "eval_mode", "fit_cheap_op", "ghost_groups",
    "ghost_pairs", "ghostability", "list_layers", "load_images", "load_model", "plots",
    "reconstruction_table", "redundancy", "run_figure1", "sample_images", "suggest_layer", "suggest_ratio",
    "survey", "verify_replacement",
]
