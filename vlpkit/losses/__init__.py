"""Training losses: DETR's set criterion and the label-smoothed caption loss."""

from vlpkit.losses.label_smoothing import label_smoothed_cross_entropy
from vlpkit.losses.set_criterion import SetCriterion

__all__ = ["SetCriterion", "label_smoothed_cross_entropy"]
