"""Operators shared by the models and losses: Hungarian matching, the distributed loss normaliser and
DETR-style post-processing."""

from vlpkit.ops.distributed import reduce_counts, reduce_num_boxes
from vlpkit.ops.matcher import HungarianMatcher, MatchIndices, batched_generalized_box_iou
from vlpkit.ops.postprocess import postprocess_detections

__all__ = [
    "HungarianMatcher",
    "MatchIndices",
    "batched_generalized_box_iou",
    "reduce_counts",
    "reduce_num_boxes",
    "postprocess_detections",
]
