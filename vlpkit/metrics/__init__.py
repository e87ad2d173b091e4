"""Official evaluation metrics of the E2E-VLP downstream tasks (see docs/metrics.md).

* `.vqa`: VQA v2 accuracy (vqaEval.py), answer normalisation and soft targets.
* `.captioning`: COCO caption BLEU / METEOR / ROUGE-L / CIDEr-D through pycocoevalcap.
* `.detection`: COCO box AP/AR through pycocotools, and model output -> COCO results conversion.
* `.retrieval`: image-text retrieval recall@K.
* `.nlvr2`: NLVR2 accuracy and consistency.
"""

from .captioning import (
    best_constant_caption,
    evaluate_caption_files,
    evaluate_captions,
    load_caption_results,
    write_caption_results,
)
from .detection import evaluate_detections, to_coco_results
from .nlvr2 import NLVR2Result, evaluate_nlvr2, evaluate_nlvr2_files
from .retrieval import RetrievalResult, retrieval_recall
from .vqa import VQAResult, answer_accuracy, evaluate_vqa, normalize_answer, soft_scores, write_vqa_results

__all__ = [
    "evaluate_captions", "evaluate_caption_files", "best_constant_caption", "load_caption_results", "write_caption_results",
    "evaluate_detections", "to_coco_results",
    "evaluate_nlvr2", "evaluate_nlvr2_files", "NLVR2Result",
    "retrieval_recall", "RetrievalResult",
    "evaluate_vqa", "answer_accuracy", "normalize_answer", "soft_scores", "write_vqa_results", "VQAResult",
]  # fmt: skip
