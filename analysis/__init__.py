"""ghostmaps.analysis: measure how redundant a CNN's feature maps are.

Data flow: ``models`` (load a network) -> ``images`` (load photos) -> ``capture`` (forward hooks)
-> ``stats`` (streaming per-layer moments) -> ``similarity`` (C x C matrices) -> ``pairs`` (ghost pairs)
-> ``plots`` / ``pipeline`` / ``cli``; ``reconstruct`` fits cheap ops, ``verify`` checks Ghost replacements,
``macs`` counts costs.
"""

from . import plots
from .capture import LayerInfo, capture, capture_maps, eval_mode, list_layers
from .errors import GhostmapsError, NoImagesError, UnknownLayerError, WeightsUnavailableError
from .images import ImageSkippedWarning, ImageSource, NamedImage, load_images, sample_images
from .macs import MacsReport, count_macs
from .models import LoadedModel, ModelInfo, load_model
from .pairs import GhostPair, GhostPairs, ghost_pairs
from .pipeline import Figure1Result, run_figure1, suggest_layer
from .reconstruct import best_sources, fit_cheap_op, ghostability, reconstruction_table, suggest_ratio
from .similarity import ChannelSimilarity, channel_similarity
from .stats import LayerStats
from .verify import VerificationReport, verify_replacement

__version__ = "0.1.0"

__all__ = [
    "ChannelSimilarity", "Figure1Result", "GhostPair", "GhostPairs", "GhostmapsError", "ImageSkippedWarning",
    "ImageSource", "LayerInfo", "LayerStats", "LoadedModel", "MacsReport", "ModelInfo", "NamedImage",
    "NoImagesError", "UnknownLayerError", "VerificationReport", "WeightsUnavailableError", "best_sources",
    "capture", "capture_maps", "channel_similarity", "count_macs", "eval_mode", "fit_cheap_op", "ghost_pairs",
    "ghostability", "list_layers", "load_images", "load_model", "plots", "reconstruction_table",
    "run_figure1", "sample_images", "suggest_layer", "suggest_ratio", "verify_replacement",
]
