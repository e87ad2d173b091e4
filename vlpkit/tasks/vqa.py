"""VQA v2 with E2E-VLP: a classifier over the answer vocabulary on the encoder's `[CLS]` state.

Recipe (E2E-VLP, following UNITER / bottom-up-attention-vqa):

* input: `[CLS] question [SEP] image grid` through the cross-modal encoder;
* head: Linear(d, 2d) - GELU - LayerNorm - Linear(2d, num_answers) on the final `[CLS]` state (`VQAHead`; the
  text mean with the model's `pooling: text_mean`, not in the paper);
* target: the soft scores of every vocabulary answer (0, 0.3, 0.6, 0.9, 1: the official leave-one-out accuracy of
  answering it), from `vlpkit.data.readers.VQADataset`;
* loss: binary cross-entropy with logits averaged over elements times the number of answers, i.e. summed over
  answers and averaged over questions (`vqa_bce`);
* optimisation: batch 32, 12 epochs, AdamW lr 1e-4 (backbone 1e-5), x0.1 after epochs 6 and 9 (`VQAConfig`);
* prediction: the arg-max answer; metric: the official VQA accuracy (`vlpkit.metrics.vqa.evaluate_vqa`), overall
  and per answer type, on the official results file `[{"question_id", "answer"}]` written by `evaluate_vqa`.

Images are never flipped: answers such as "left" are class ids that a mirrored image would contradict.

    model = VQAModel.from_pretrained("runs/vqa/model")
    model.answer([Image.open("a.png")], ["What color is the star?"])   # [VQAPrediction("red", 0.97)]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Subset

from ..config import ConfigError
from ..data.batch import Batch, collate_images, collate_texts
from ..data.raw_images import prepare_images
from ..data.readers.vqa import VQADataset, build_answer_vocab
from ..data.task_data import VQAData, VQASplit  # noqa: F401  (VQASplit: public here too)
from ..data.transforms import make_eval_transforms, make_train_transforms
from ..data.vocab import Vocab, as_vocab
from ..engine import TrainerConfig
from ..metrics import vqa as vqa_metric
from ..models import E2EVLP
from ..ops.distributed import gather_shards, shard_range
from .base import (  # noqa: F401  (BACKBONE_PREFIX, find_tokenizer, tokenizer_overrides: public here too)
    BACKBONE_PREFIX,
    IMAGE_DEFAULTS,
    TOKENIZER_DIR,
    MLPClassifier,
    TaskConfig,
    TaskModel,
    TaskOutput,
    check_tokenizer,
    eval_split,
    find_tokenizer,
    fresh_overrides,
    load_e2evlp,
    load_finetuned,
    mean_by_group,
    task_trainer,
    tokenizer_overrides,
    write_json,
)
from .finetuning import FinetuneResult, results_scorers, run_finetune
from .registry import Task, register_task

VOCAB_FILE = "answer_vocab.json"


# ---- configuration ---------------------------------------------------------------------------------------
@dataclass
class VQAConfig(TaskConfig):
    """Fine-tuning hyper-parameters; the defaults are the paper's recipe.

    `train_scales`, `max_size` and `eval_size` left at None take the data's defaults: DETR's multi-scale
    480..800 (longer side <= 1333, evaluation at 800) for real images, 128 / 160 / 128 for the shapes world.
    `trainer` is the optimisation recipe (a `TrainerConfig`: UNITER's / E2E-VLP's batch 32, lr 1e-4, backbone lr
    1e-5, 12 epochs with x0.1 drops at epochs 6 and 9); a run's own settings (max_steps, num_workers, ...) go in
    `trainer_overrides`.
    """

    trainer: TrainerConfig = field(default_factory=lambda: task_trainer(
        batch_size=32, epochs=12, lr=1e-4, backbone_lr=1e-5, lr_drop_epochs=[6, 9], lr_drop_factor=0.1,
        weight_decay=1e-4, clip_max_norm=0.1, seed=42))
    frozen_trunk: bool = False  # not the paper: trunk frozen, features cached per image (feature_cache.py)
    trunk_cache_megabytes: float = 2048.0
    answer_vocab_size: int | None = 3129  # bottom-up-attention-vqa's vocabulary on VQA v2 train+val
    answer_min_count: int = 9
    head_hidden_multiplier: int = 2  # head width = multiplier x d_model (UNITER: 2)
    train_scales: list[int] | None = None
    max_size: int | None = None
    eval_size: int | None = None
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        self.check_trainer()
        if self.train_scales is not None:
            self.train_scales = [int(s) for s in self.train_scales]
        if self.head_hidden_multiplier < 1:
            raise ConfigError(f"head_hidden_multiplier={self.head_hidden_multiplier}; expected >= 1")
        if self.answer_min_count < 1:
            raise ConfigError(f"answer_min_count={self.answer_min_count}; expected >= 1")


# ---- data ------------------------------------------------------------------------------------------------
class VQACollator:
    """VQADataset samples -> `Batch` with `answer_scores` [B, A] (when annotated) and `meta` (question_id,
    image_id, answer_type, question_type, answers)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: Sequence[dict]) -> Batch:
        if not samples:
            raise ValueError("VQACollator got an empty batch")
        pixel_values, pixel_mask = collate_images([s["image"] for s in samples])
        input_ids, attention_mask, token_type_ids = collate_texts([s["text"] for s in samples], self.tokenizer,
                                                                  self.max_length)
        scored = ["answer_scores" in s for s in samples]
        if any(scored) and not all(scored):
            raise ValueError("VQACollator: some samples of the batch have answer_scores and some do not "
                             "(mixing annotated and unannotated splits)")
        scores = torch.stack([s["answer_scores"] for s in samples]).float() if all(scored) else None
        meta = [{k: s.get(k) for k in ("question_id", "image_id", "answer_type", "question_type", "answers")}
                for s in samples]
        return Batch(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                     attention_mask=attention_mask, token_type_ids=token_type_ids,
                     targets=[s["target"] for s in samples], answer_scores=scores, meta=meta)


# ---- model -----------------------------------------------------------------------------------------------
class VQAHead(MLPClassifier):
    """`[CLS]` state [B, d] -> logits [B, num_answers]: Linear(d, m*d) - GELU - LayerNorm - Linear(m*d, A)."""

    def __init__(self, d_model: int, num_answers: int, hidden_multiplier: int = 2, layer_norm_eps: float = 1e-12):
        super().__init__(d_model, hidden_multiplier * d_model, num_answers, layer_norm_eps)


class VQAPrediction(NamedTuple):
    """An answer string (a vocabulary entry, normalised as the official evaluation does) and its sigmoid score."""

    answer: str
    score: float


class VQAModel(TaskModel):
    """E2EVLP + `VQAHead`, with what inference needs: the answer vocabulary, the tokenizer and the evaluation
    image transform (shorter side `eval_size`, longer side at most `max_size`).

    Build it with `from_checkpoint` (pretrained E2EVLP, new head) or `from_pretrained` (a saved VQA model).
    """

    task_name = "vqa"
    legacy_files = ("vqa_task.json", "vqa_config.json")

    def __init__(self, e2evlp: E2EVLP, answer_vocab: Vocab, tokenizer=None, hidden_multiplier: int = 2,
                 eval_size: int = 800, max_size: int = 1333) -> None:
        answer_vocab = as_vocab(answer_vocab, "answer_vocab")
        if len(answer_vocab) == 0:
            raise ValueError("answer_vocab is empty")
        cfg = e2evlp.config
        super().__init__(e2evlp, VQAHead(cfg.d_model, len(answer_vocab), hidden_multiplier, cfg.layer_norm_eps))
        self.answer_vocab = answer_vocab
        self.hidden_multiplier = hidden_multiplier
        self.tokenizer = tokenizer
        self.set_image_size(eval_size, max_size)

    def set_image_size(self, eval_size: int, max_size: int) -> None:
        """The preprocessing of `answer`: shorter side to `eval_size`, longer side at most `max_size`."""
        self.eval_size, self.max_size = int(eval_size), int(max_size)
        self.eval_transforms = make_eval_transforms(self.eval_size, self.max_size)

    def forward(self, batch: Batch) -> TaskOutput:
        """`Batch` (pixel_values [B, 3, H, W], pixel_mask, input_ids [B, L], attention_mask, token_type_ids)
        -> `TaskOutput(logits=[B, num_answers])`: the answer logits."""
        encoding = self.e2evlp.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids, batch.attention_mask,
                                      batch.token_type_ids)
        return TaskOutput(logits=self.head(self.e2evlp.pooled_state(encoding)))

    # ---- inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def top_answers(self, images: Sequence, questions: Sequence[str], k: int = 5,
                    batch_size: int = 32) -> list[list[VQAPrediction]]:
        """The `k` best answers per question, best first.

        Args:
            images: PIL images, uint8 tensors [3, H, W] or float tensors in [0, 1] (prepared by
                `vlpkit.data.raw_images.prepare_images` with `eval_transforms`, as the predictor does).
            questions: one question per image.
        """
        if self.tokenizer is None:
            raise ValueError("VQAModel has no tokenizer: pass tokenizer= to from_checkpoint, or set model.tokenizer")
        if isinstance(questions, str):
            raise TypeError("questions must be a list of strings (one per image), got a single string")
        images, questions = list(images), list(questions)
        if len(images) != len(questions):
            raise ValueError(f"need one question per image: got {len(images)} images and {len(questions)} "
                             "questions")
        if not 1 <= k <= len(self.answer_vocab):
            raise ValueError(f"k={k}; expected 1..{len(self.answer_vocab)} (the answer vocabulary size)")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = []
        try:
            for start in range(0, len(images), batch_size):
                chunk = range(start, min(len(images), start + batch_size))
                prepared = prepare_images(images[chunk.start:chunk.stop], self.eval_transforms, chunk.start)
                ids, mask, types = collate_texts([questions[i] for i in chunk], self.tokenizer,
                                                 self.config.max_text_length)
                batch = Batch(prepared.pixel_values, prepared.pixel_mask, ids, mask, types, targets=[]).to(device)
                logits, index = self(batch).logits.float().topk(k, dim=-1)  # on logits: sigmoid ties at 1.0 in float32
                scores = logits.sigmoid()
                out += [[VQAPrediction(self.answer_vocab[j], s) for j, s in zip(row_i, row_s)]
                        for row_i, row_s in zip(index.tolist(), scores.tolist())]
        finally:
            self.train(was_training)
        return out

    def answer(self, images: Sequence, questions: Sequence[str], batch_size: int = 32) -> list[VQAPrediction]:
        """The best answer to each question about its image (images as `top_answers` takes them)."""
        return [top[0] for top in self.top_answers(images, questions, 1, batch_size)]

    # ---- construction and persistence ------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | E2EVLP | None, answer_vocab: Vocab | str | Path,
                        tokenizer=None, *, hidden_multiplier: int = 2, eval_size: int = 800, max_size: int = 1333,
                        preset: str = "e2evlp-tiny", **overrides) -> VQAModel:
        """A pretrained E2EVLP (`save_pretrained` folder, model, or None: a fresh `preset` with `overrides`) with a
        newly initialised head, whose parameter names are logged and kept in `new_parameters`."""
        model = cls(load_e2evlp(checkpoint, preset, **overrides), answer_vocab, tokenizer, hidden_multiplier,
                    eval_size, max_size)
        if checkpoint is not None:  # a fresh model is new throughout: nothing to single out
            model.report_new_parameters()
        return model

    def arguments(self) -> dict[str, Any]:
        return {"hidden_multiplier": self.hidden_multiplier, "eval_size": self.eval_size, "max_size": self.max_size}

    @classmethod
    def from_arguments(cls, e2evlp: E2EVLP, tokenizer, arguments: dict[str, Any], directory: Path) -> VQAModel:
        return cls(e2evlp, Vocab.load(directory / VOCAB_FILE), tokenizer, arguments["hidden_multiplier"],
                   arguments["eval_size"], arguments["max_size"])

    def save_pretrained(self, directory: str | Path, config: VQAConfig | None = None) -> Path:
        """The task-model folder (`TaskModel`) with the answer vocabulary in `answer_vocab.json`."""
        directory = super().save_pretrained(directory, config)
        self.answer_vocab.save(directory / VOCAB_FILE)
        return directory



# ---- loss ------------------------------------------------------------------------------------------------
def vqa_bce(logits: torch.Tensor, answer_scores: torch.Tensor) -> torch.Tensor:
    """VQA's soft-score loss as bottom-up-attention-vqa and UNITER compute it.

    `binary_cross_entropy_with_logits(logits, scores)` averaged over all B x A elements, times A (the number of
    answers): the per-answer BCE summed over answers and averaged over questions.

    Args:
        logits: [B, A]. answer_scores: [B, A] soft targets in [0, 1].
    Returns:
        scalar.
    """
    if logits.shape != answer_scores.shape:
        raise ValueError(f"logits {list(logits.shape)} and answer_scores {list(answer_scores.shape)} differ")
    return F.binary_cross_entropy_with_logits(logits.float(), answer_scores.float()) * logits.shape[1]


def vqa_loss(model: VQAModel, batch: Batch) -> dict[str, torch.Tensor]:
    """Trainer loss: {"loss": `vqa_bce`, "score": the batch's mean soft score of the arg-max answer (detached)}."""
    if batch.answer_scores is None:
        raise ValueError("vqa_loss needs batch.answer_scores (an annotated split and an answer vocabulary)")
    logits = model(batch).logits
    loss = vqa_bce(logits, batch.answer_scores)
    score = batch.answer_scores.gather(1, logits.detach().argmax(-1, keepdim=True)).mean()
    return {"loss": loss, "score": score}


# ---- evaluation ------------------------------------------------------------------------------------------
def results_filename(split: str, data_type: str = "mscoco") -> str:
    """The official naming `vqa_OpenEnded_<data_type>_<split>_<alg>_results.json` (alg = e2evlp)."""
    return f"vqa_OpenEnded_{data_type}_{split}_e2evlp_results.json"


@torch.no_grad()
def predict_vqa(model: VQAModel, dataset: VQADataset, tokenizer, batch_size: int = 64,
                num_workers: int = 0) -> dict[str, Any]:
    """Arg-max answers of every question of `dataset` (built with `model.answer_vocab` and eval transforms).

    Under torch.distributed each process answers its share (`shard_range`) and every process returns them all.

    Returns:
        {"question_ids": [N], "answers": [N] strings, "soft_scores": [N] floats (the dataset's target score of
        each predicted answer; None without annotations), "answer_types": [N] (None without annotations)}.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(Subset(dataset, shard_range(len(dataset))), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=VQACollator(tokenizer, model.config.max_text_length))
    qids, answers, soft, types = [], [], [], []
    try:
        for batch in loader:
            pred = model(batch.to(device)).logits.argmax(-1).cpu()
            qids += [m["question_id"] for m in batch.meta]
            answers += [model.answer_vocab[j] for j in pred.tolist()]
            types += [m["answer_type"] for m in batch.meta]
            if batch.answer_scores is not None:
                soft += batch.answer_scores.gather(1, pred[:, None]).squeeze(1).tolist()
    finally:
        model.train(was_training)
    qids, answers, soft, types = (gather_shards(x) for x in (qids, answers, soft, types))
    annotated = len(soft) == len(qids)
    return {"question_ids": qids, "answers": answers, "soft_scores": soft if annotated else None,
            "answer_types": types if annotated else None}


def evaluate_vqa(model: VQAModel, tokenizer, data: VQASplit, split: str = "val", output_dir: str | Path | None = None,
                 *, transforms=None, batch_size: int = 64, num_workers: int = 0) -> dict[str, Any]:
    """Answer every question of a split, write the official results file, and score it officially.

    Args:
        model: a `VQAModel`.
        tokenizer: the tokenizer of the model's text vocabulary.
        data: the split's files.
        split: its name (in the results file name and the returned dict).
        output_dir: where to write `vqa_OpenEnded_<data_type>_<data_subtype>_e2evlp_results.json` (the questions
            file's fields; `split` when it has no subtype); None: not written (the results are still scored).
        transforms: the image transform (default: `model.eval_transforms`).
    Returns:
        {"split", "num_questions", "results_file" (when written)} and, for an annotated split, the official
        accuracies in percent: "accuracy", "accuracy_<answer type>" (e.g. "accuracy_yes/no"), plus
        "soft_score_accuracy": the in-loop mean soft target score of the predicted answers, in percent. The two
        agree except on questions whose 10 raw answers are identical but not normalised (e.g. "Yes" x 10), which
        the official evaluator compares unnormalised. With `data.groups` (annotated splits), also
        "accuracy_family_<group>" (the mean official accuracy of its questions, percent) and
        "questions_family_<group>" (count) for every group.
    Raises:
        ValueError: `data.groups` lacks some question id of the split (named).
    """
    dataset = data.dataset(model.answer_vocab, transforms if transforms is not None else model.eval_transforms)
    pred = predict_vqa(model, dataset, tokenizer, batch_size, num_workers)
    results = [{"question_id": int(q), "answer": a} for q, a in zip(pred["question_ids"], pred["answers"])]
    out: dict[str, Any] = {"split": split, "num_questions": len(results)}
    if output_dir is not None:
        # named as the evaluation server expects: the questions file's data type and subtype
        # (vqa_OpenEnded_mscoco_test-dev2015_e2evlp_results.json), whatever the split is called here
        questions = json.loads(data.questions.read_text())
        path = Path(output_dir) / results_filename(questions.get("data_subtype", split),
                                                   questions.get("data_type", "mscoco"))
        path.parent.mkdir(parents=True, exist_ok=True)
        vqa_metric.write_vqa_results(path, zip(pred["question_ids"], pred["answers"]))
        out["results_file"] = str(path)
    if data.annotations is not None:
        scores = vqa_metric.evaluate_vqa(data.annotations, data.questions, results)
        out["accuracy"] = scores.overall
        out.update({f"accuracy_{t}": v for t, v in sorted(scores.per_answer_type.items())})
        out["soft_score_accuracy"] = 100 * sum(pred["soft_scores"]) / max(len(results), 1)
        if data.groups is not None:
            for group, (mean, count) in mean_by_group(scores.per_question, data.groups, f"VQA {split}").items():
                out[f"accuracy_family_{group}"] = mean  # per-question accuracies are already in percent
                out[f"questions_family_{group}"] = count
    return out


# ---- fine-tuning ---------------------------------------------------------------------------------------------
def finetune_vqa(checkpoint: str | Path | E2EVLP | None, setup_or_paths, output_dir: str | Path,
                 config: VQAConfig | None = None, trainer_overrides: Mapping[str, Any] | None = None, *,
                 tokenizer=None, resume: bool = False) -> FinetuneResult:
    """Fine-tune E2E-VLP on VQA, evaluate every evaluation split, save the model and the metrics.

    Args:
        checkpoint: a pretraining `save_pretrained` folder or run folder, an `E2EVLP`, or None (a fresh
            e2evlp-tiny sized for the tokenizer; for the shapes world `setup.model_overrides()`).
        setup_or_paths: a `ShapesSetup`, "shapes", a `VQAData`, or a YAML/JSON description (`VQAData.from_dict`).
        output_dir: receives `checkpoints/`, `log.jsonl`, `model/` (`VQAModel.save_pretrained`, with the recipe),
            `results/` (official results files) and `metrics.json`.
        config: `VQAConfig` (default: the paper's recipe).
        trainer_overrides: `TrainerConfig` fields applied last (e.g. max_steps, num_workers, eval_every).
        tokenizer: overrides the tokenizer; by default the one saved with the checkpoint
            (`find_tokenizer`), else the data's.
        resume: continue from the latest checkpoint in `output_dir/checkpoints`.
    With `eval_every > 0` the first evaluation split's accuracy is logged during training.

    Returns:
        The `FinetuneResult` (also in `metrics.json`): `metrics` {split: evaluate_vqa(...)}; `info`
        {"answer_vocab_size", "baselines": {split: {...}} (shapes world)}.
    """
    config = config if config is not None else VQAConfig()
    data = VQAData.resolve(setup_or_paths)
    tokenizer = tokenizer or find_tokenizer(checkpoint) or data.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer: none is saved with the checkpoint and the data description names none")
    vocab = data.answer_vocab
    if vocab is None:
        unannotated = [str(s.questions) for s in data.train if s.annotations is None]
        if unannotated:
            raise ValueError(f"training split(s) without annotations: {unannotated}")
        vocab = build_answer_vocab([s.annotations for s in data.train], config.answer_vocab_size,
                                   config.answer_min_count)
        if len(vocab) == 0:
            raise ValueError(f"no answer is seen in >= answer_min_count={config.answer_min_count} training "
                             "questions; lower answer_min_count")
    image = config.image_settings(data.kind)
    overrides = fresh_overrides(setup_or_paths, tokenizer) if checkpoint is None else {}
    model = VQAModel.from_checkpoint(checkpoint, vocab, tokenizer, hidden_multiplier=config.head_hidden_multiplier,
                                     eval_size=image["eval_size"], max_size=image["max_size"], **overrides)
    check_tokenizer(tokenizer, model.config)
    train_tf = make_train_transforms(scales=image["train_scales"], max_size=image["max_size"], crop=False,
                                     flip=False)
    train_set = ConcatDataset([s.dataset(vocab, train_tf) for s in data.train])
    scorers = results_scorers(evaluate_vqa, tokenizer, data.eval, config.eval_batch_size)
    first = next(iter(data.eval), None)  # its accuracy is logged during training (eval_every > 0)
    return run_finetune("vqa", model, vqa_loss, train_set, VQACollator(tokenizer, model.config.max_text_length),
                        config, output_dir, config.trainer_config(output_dir, trainer_overrides), scorers=scorers,
                        watch=first if first is not None and data.eval[first].annotations is not None else None,
                        checkpoint=checkpoint, resume=resume,
                        info={"answer_vocab_size": len(vocab), "baselines": data.baselines})


def evaluate_finetuned(model_dir: str | Path, data="shapes", split: str | None = None,
                       output_dir: str | Path | None = None, config: VQAConfig | Mapping | None = None, *,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """`evaluate_vqa` of a `finetune_vqa` output folder (or its `model/`) on one evaluation split of `data`
    (default "val"), with the recorded recipe's `eval_batch_size` (`config`: see `load_finetuned`)."""
    model, config = load_finetuned(VQAModel, VQAConfig, model_dir, config)
    data = VQAData.resolve(data)
    name, files = eval_split(data.eval, split or "val", "VQA")
    tokenizer = model.tokenizer if model.tokenizer is not None else data.tokenizer
    return evaluate_vqa(model.to(device), tokenizer, files, name, output_dir, batch_size=config.eval_batch_size)


TASK = register_task(Task(
    name="vqa", config_class=VQAConfig, model_class=VQAModel, finetune=finetune_vqa,
    evaluate=evaluate_finetuned,
    summary="VQA v2: answer a question about an image (3,129-answer soft-score BCE, VQA accuracy)"))
