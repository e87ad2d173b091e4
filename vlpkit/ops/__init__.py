"""Operators shared by the models and losses: Hungarian matching, what processes share (the loss normaliser,
evaluation shards) and DETR-style post-processing."""

from vlpkit.ops.distributed import gather_shards, reduce_counts, reduce_num_boxes, shard_range
from vlpkit.ops.matcher import HungarianMatcher, MatchIndices, batched_generalized_box_iou
from vlpkit.ops.postprocess import postprocess_detections

__all__ = [
    "HungarianMatcher",
    "MatchIndices",
    "batched_generalized_box_iou",
    "gather_shards",
    "shard_range",
    "reduce_counts",
    "reduce_num_boxes",
    "postprocess_detections",
]
