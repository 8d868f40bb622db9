"""Cheap-op reconstruction: how well one feature map can be made from another by a d x d depthwise conv, in
closed form (:mod:`.cheap_ops`), the Ghost structure of a layer with its held-out, post-BN ghost error
(:mod:`.structure`; the intrinsic choice under the Ghost capacity is :mod:`.choice`), the largest ratio within
a budget (:mod:`.ratio`), held-out reconstructability as a similarity (:mod:`.similarity`) and the paper's
Table 1 (:mod:`.table`); the least-squares kernel is :mod:`.lstsq`, the split and units :mod:`.heldout`."""

from analysis.reconstruct.cheap_ops import BestSources, CheapOpFit, CheapOpFits, best_sources, fit_cheap_op
from analysis.reconstruct.choice import IntrinsicChoice, choose_intrinsic
from analysis.reconstruct.heldout import Split, channel_weights, split_maps
from analysis.reconstruct.lstsq import DEFAULT_RIDGE
from analysis.reconstruct.ratio import RatioSuggestion, suggest_ratio
from analysis.reconstruct.similarity import heldout_r2, reconstructability
from analysis.reconstruct.structure import Ghostability, ghostability
from analysis.reconstruct.table import ReconstructionTable, reconstruction_table

__all__ = ["DEFAULT_RIDGE", "BestSources", "CheapOpFit", "CheapOpFits", "Ghostability", "IntrinsicChoice",
           "RatioSuggestion", "ReconstructionTable", "Split", "best_sources", "channel_weights", "choose_intrinsic",
           "fit_cheap_op", "ghostability", "heldout_r2", "reconstructability", "reconstruction_table", "split_maps",
           "suggest_ratio"]
