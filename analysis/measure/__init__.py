"""What the statistics say: channel similarity, ghost pairs, ghost groups and redundancy scores."""

from analysis.measure.groups import GhostGroups, ghost_groups
from analysis.measure.pairs import GhostPair, GhostPairs, ghost_pairs
from analysis.measure.scores import Redundancy, Score, redundancy
from analysis.measure.similarity import ChannelSimilarity, channel_similarity

__all__ = ["ChannelSimilarity", "GhostGroups", "GhostPair", "GhostPairs", "Redundancy", "Score",
           "channel_similarity", "ghost_groups", "ghost_pairs", "redundancy"]
