"""The layout of a saved model folder: where the weights, the tokenizer, the label names and the image sizes are.

A folder is what `vlpkit pretrain` writes (a *run* folder) or a model folder:

    <run>/model/config.json, <run>/model/model.safetensors     the E2EVLP (or a task model) weights
    <run>/tokenizer/                                           the WordPiece tokenizer (load_tokenizer)
    <run>/labels.json                                          label names (save_labels)
    <run>/pretrain_config.json                                 optional: the eval image size (data.image)

or the same files flat in one folder (`config.json`, `model.safetensors`, `tokenizer/`, `labels.json`,
`preprocessing.json`), as `E2EVLPPredictor.save_pretrained` and the task fine-tuning functions write them.
`vlpkit.inference` (the predictor), the tasks and pretraining all read and write folders through this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write

LABELS_NAME = "labels.json"
PREPROCESSING_NAME = "preprocessing.json"
PRETRAIN_CONFIG_NAME = "pretrain_config.json"
TOKENIZER_DIR = "tokenizer"
LABELS_FORMAT = "vlpkit.labels"


@dataclass
class LabelNames:
    """Names of the model's label spaces (from `labels.json`).

    objects: one name per detection class (index = class id).
    attributes: one name per attribute id.
    answers: one answer per VQA class (VQA task folders), or None.
    category_ids: the COCO `category_id` of each object class (detection task folders), or None.
    """

    objects: list[str]
    attributes: list[str]
    answers: list[str] | None = None
    category_ids: list[int] | None = None


def save_labels(directory: str | Path, objects: Sequence[str], attributes: Sequence[str] = (),
                answers: Sequence[str] | None = None, category_ids: Sequence[int] | None = None) -> Path:
    """Write `directory/labels.json`:
    `{"format": "vlpkit.labels", "version": 1, "objects": [...], "attributes": [...]}` (+ "answers",
    "category_ids" when given). `objects[k]` names detection class k, `attributes[a]` attribute a; an empty list
    means the names are unknown."""
    if category_ids is not None and len(category_ids) != len(objects):
        raise ValueError(f"{len(category_ids)} category ids for {len(objects)} object names")
    data: dict[str, Any] = {"format": LABELS_FORMAT, "version": 1, "objects": [str(o) for o in objects],
                            "attributes": [str(a) for a in attributes]}
    if answers is not None:
        data["answers"] = [str(a) for a in answers]
    if category_ids is not None:
        data["category_ids"] = [int(c) for c in category_ids]
    path = Path(directory) / LABELS_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n"))
    return path


def load_labels(path: str | Path) -> LabelNames:
    """Read a `labels.json` written by `save_labels` (a folder holding it, or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path} (expected a {LABELS_NAME} written by save_labels)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != LABELS_FORMAT:
        raise ValueError(f"{path} is not a vlpkit label file: expected a JSON object with "
                         f"\"format\": \"{LABELS_FORMAT}\", \"objects\" and \"attributes\"")
    for key in ("objects", "attributes", "answers"):
        value = data.get(key, [] if key != "answers" else None)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{path}: {key!r} must be a list of strings")
    return LabelNames(list(data["objects"]), list(data.get("attributes", [])), data.get("answers"),
                      data.get("category_ids"))


def save_preprocessing(directory: str | Path, eval_size: int, max_size: int) -> Path:
    """Write `directory/preprocessing.json`: the evaluation transform's sizes (`make_eval_transforms`)."""
    data = {"eval_size": int(eval_size), "max_size": int(max_size)}
    return atomic_write(Path(directory) / PREPROCESSING_NAME,
                        lambda tmp: Path(tmp).write_text(json.dumps(data) + "\n"))


@dataclass
class PretrainedFiles:
    """Where the pieces of a predictor folder are (see the module docstring). Optional pieces are None."""

    root: Path
    model_dir: Path
    tokenizer_dir: Path | None
    labels: Path | None
    preprocessing: Path | None
    pretrain_config: Path | None


def locate_pretrained(path: str | Path) -> PretrainedFiles:
    """Find the model, tokenizer, labels and preprocessing files of a run folder, of its `model/` folder (the other
    pieces are then looked up in the run folder too), or of a flat model folder.

    Raises:
        FileNotFoundError: `path` holds neither `config.json` + `model.safetensors` nor `model/` with them.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"pretrained folder not found: {root}")
    candidates = [root, root / "model"]
    model_dir = next((d for d in candidates if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{root} holds no model: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it or in "
                                f"{root / 'model'} (found: {sorted(p.name for p in root.iterdir())})")

    folders = [model_dir, root]
    if model_dir == root and root.name == "model":  # `<run>/model` given: the run folder holds the other pieces
        folders.append(root.parent)

    def first(name: str, is_dir: bool = False) -> Path | None:
        for folder in dict.fromkeys(folders):
            candidate = folder / name
            if candidate.is_dir() if is_dir else candidate.is_file():
                return candidate
        return None

    return PretrainedFiles(root, model_dir, first(TOKENIZER_DIR, is_dir=True), first(LABELS_NAME),
                           first(PREPROCESSING_NAME), first(PRETRAIN_CONFIG_NAME))
