"""Training losses: DETR's set criterion, the label-smoothed caption loss and the circle loss (retrieval)."""

from vlpkit.losses.circle import circle_loss
from vlpkit.losses.label_smoothing import label_smoothed_cross_entropy
from vlpkit.losses.set_criterion import SetCriterion

__all__ = ["SetCriterion", "circle_loss", "label_smoothed_cross_entropy"]
