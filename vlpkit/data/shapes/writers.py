"""Writers of the official annotation formats (COCO, Visual Genome, VQA v2, NLVR2, Karpathy) and stats.json.

Each ``*_json`` function turns in-memory records into the exact dict/list an official file holds;
``write_json`` writes it atomically. The schemas follow the real files (samples in shared/realdata):

- COCO instances/captions: ``info, licenses, images[{id, file_name, width, height, license, coco_url,
  flickr_url, date_captured}], annotations, categories[{supercategory, id, name}]``; boxes are
  ``[x, y, w, h]``.
- Visual Genome: objects/attributes use ``x, y, w, h`` and ``names[]``; regions use ``width``/``height``.
- VQA v2: questions ``{info, task_type, data_type, license, data_subtype, questions}``; annotations
  ``{info, license, data_type, data_subtype, annotations}``, each with 10 answers.
- NLVR2: JSON lines with ``identifier, sentence, label ("True"/"False"), left_url, right_url, writer, synset,
  query, validation, extra_validations`` (+ ``directory`` in train).
- Karpathy: ``{images[{filepath, filename, imgid, split, sentids, sentences[{tokens, raw, imgid, sentid}],
  cocoid}], dataset}``.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlpkit.data.shapes.language import QA, Vocab
from vlpkit.data.shapes.scene import Scene

INFO = {
    "description": "vlpkit synthetic shapes world",
    "url": "https://github.com/vlpkit/vlpkit",
    "version": "1.0",
    "year": 2024,
    "contributor": "vlpkit.data.shapes",
    "date_created": "2024/01/01",  # fixed, so that files are byte-identical for the same seed
}
LICENSES = [
    {"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0 (synthetic data)"}
]
VQA_LICENSE = {
    "url": "https://creativecommons.org/publicdomain/zero/1.0/",
    "name": "CC0 1.0 (synthetic data)",
}
SPATIAL_WORDS = ("left", "right", "above", "below")


@dataclass
class ImageRecord:
    """Everything written about one main-world image (COCO, VG, VQA and Karpathy share these)."""

    image_id: int
    split: str
    file_name: str  # base name; the image lives at images/<split>/<file_name>
    scene: Scene
    object_ids: list[int]  # global ids, one per scene object (COCO annotation id = VG object id)
    captions: list[tuple[str, str]] = field(default_factory=list)  # (text, family)
    caption_ids: list[int] = field(default_factory=list)
    questions: list[QA] = field(default_factory=list)
    regions: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (phrase, object indices)

    @property
    def relative_path(self) -> str:
        return f"images/{self.split}/{self.file_name}"

    def question_id(self, k: int) -> int:
        return self.image_id * 1000 + k  # the VQA convention: image id followed by 3 digits


# ----------------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path`` (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def png_bytes(image: Image.Image) -> bytes:
    # compress_level=1: PNG writing dominates generation time and level 1 is ~4x faster than the default 6.
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# COCO


def _coco_image(rec: ImageRecord) -> dict:
    return {
        "license": 1,
        "file_name": rec.file_name,
        "coco_url": "",
        "height": rec.scene.height,
        "width": rec.scene.width,
        "date_captured": "",
        "flickr_url": "",
        "id": rec.image_id,
    }


def coco_instances_json(records: Sequence[ImageRecord], shapes: Sequence[str]) -> dict:
    """COCO instances file; category ids are 1 + the index of the shape in ``shapes``."""
    category = {s: i + 1 for i, s in enumerate(shapes)}
    annotations = []
    for rec in records:
        for obj, oid in zip(rec.scene.objects, rec.object_ids):
            x0, y0, x1, y1 = obj.bbox
            annotations.append(
                {
                    "segmentation": [obj.polygon()],
                    "area": float(obj.area),
                    "iscrowd": 0,
                    "image_id": rec.image_id,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "category_id": category[obj.shape],
                    "id": oid,
                }
            )
    return {
        "info": INFO,
        "licenses": LICENSES,
        "images": [_coco_image(r) for r in records],
        "annotations": annotations,
        "categories": [{"supercategory": "shape", "id": category[s], "name": s} for s in shapes],
    }


def coco_captions_json(records: Sequence[ImageRecord]) -> dict:
    annotations = [
        {"image_id": rec.image_id, "id": cid, "caption": text}
        for rec in records
        for (text, _), cid in zip(rec.captions, rec.caption_ids)
    ]
    return {
        "info": INFO,
        "images": [_coco_image(r) for r in records],
        "licenses": LICENSES,
        "annotations": annotations,
    }


# ----------------------------------------------------------------------------------------------------------
# Visual Genome


def _vg_box(obj) -> dict:
    x0, y0, x1, y1 = obj.bbox
    return {"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0}


def vg_image_data_json(records: Sequence[ImageRecord]) -> list:
    return [
        {
            "width": r.scene.width,
            "url": r.relative_path,
            "height": r.scene.height,
            "image_id": r.image_id,
            "coco_id": r.image_id,
            "flickr_id": None,
        }
        for r in records
    ]


def vg_objects_json(records: Sequence[ImageRecord]) -> list:
    # synsets stay empty: we do not invent WordNet ids (many real VG objects have none either)
    return [
        {
            "image_id": r.image_id,
            "image_url": r.relative_path,
            "objects": [
                {"synsets": [], **_vg_box(o), "object_id": oid, "merged_object_ids": [], "names": [o.shape]}
                for o, oid in zip(r.scene.objects, r.object_ids)
            ],
        }
        for r in records
    ]


def vg_attributes_json(records: Sequence[ImageRecord]) -> list:
    return [
        {
            "image_id": r.image_id,
            "attributes": [
                {
                    "synsets": [],
                    **_vg_box(o),
                    "object_id": oid,
                    "names": [o.shape],
                    "attributes": [o.color, o.size],
                }
                for o, oid in zip(r.scene.objects, r.object_ids)
            ],
        }
        for r in records
    ]


def vg_relationships_json(records: Sequence[ImageRecord], first_id: int = 1) -> list:
    """VG v1.4 relationships: every decided spatial relation ("left of", "right of", "above", "below")."""
    out, rid = [], first_id
    predicate = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
    for r in records:
        rels = []
        objs = list(zip(r.scene.objects, r.object_ids))
        for a, aid in objs:
            for b, bid in objs:
                if a is b:
                    continue
                for rel in (r.scene.horizontal(a, b), r.scene.vertical(a, b)):
                    if rel is None:
                        continue
                    rels.append(
                        {
                            "relationship_id": rid,
                            "predicate": predicate[rel],
                            "synsets": [],
                            "subject": {"object_id": aid, **_vg_box(a), "name": a.shape, "synsets": []},
                            "object": {"object_id": bid, **_vg_box(b), "name": b.shape, "synsets": []},
                        }
                    )
                    rid += 1
        out.append({"image_id": r.image_id, "relationships": rels})
    return out


def vg_region_descriptions_json(records: Sequence[ImageRecord], first_id: int = 1) -> list:
    """Regions: one per object plus relation phrases, each box the union of its objects' boxes."""
    out, rid = [], first_id
    for r in records:
        regions = []
        for phrase, idx in r.regions:
            boxes = [r.scene.objects[i].bbox for i in idx]
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
            regions.append(
                {
                    "region_id": rid,
                    "width": x1 - x0,
                    "height": y1 - y0,
                    "image_id": r.image_id,
                    "phrase": phrase,
                    "y": y0,
                    "x": x0,
                }
            )
            rid += 1
        out.append({"regions": regions, "id": r.image_id})
    return out


# ----------------------------------------------------------------------------------------------------------
# VQA v2


def vqa_questions_json(records: Sequence[ImageRecord], split: str) -> dict:
    return {
        "info": INFO,
        "task_type": "Open-Ended",
        "data_type": "shapes",
        "license": VQA_LICENSE,
        "data_subtype": split,
        "questions": [
            {"image_id": r.image_id, "question": qa.question, "question_id": r.question_id(k)}
            for r in records
            for k, qa in enumerate(r.questions)
        ],
    }


def _wrong_answer(qa: QA, rng: random.Random, vocab: Vocab) -> str:
    if qa.answer_type == "yes/no":
        return "no" if qa.answer == "yes" else "yes"
    if qa.answer_type == "number":
        n = int(qa.answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    for pool in (vocab.colors, vocab.shapes, vocab.sizes, SPATIAL_WORDS):
        if qa.answer in pool and len(pool) > 1:
            return rng.choice([a for a in pool if a != qa.answer])
    return qa.answer


def vqa_answers(qa: QA, rng: random.Random, noise: float, vocab: Vocab) -> list[dict]:
    """The 10 human-style answers. Each is replaced by a plausible wrong one with probability ``noise``, but
    at most 3 are, so the true answer keeps VQA accuracy 1.0 (it matches >= 3 of any 9 others)."""
    answers = []
    wrong_left = 3
    for k in range(10):
        if noise > 0 and wrong_left > 0 and rng.random() < noise:
            wrong_left -= 1
            answers.append(
                {"answer": _wrong_answer(qa, rng, vocab), "answer_confidence": "maybe", "answer_id": k + 1}
            )
        else:
            answers.append({"answer": qa.answer, "answer_confidence": "yes", "answer_id": k + 1})
    return answers


def vqa_annotations_json(
    records: Sequence[ImageRecord], split: str, noise: float, seed: int, vocab: Vocab
) -> dict:
    annotations = []
    for r in records:
        rng = random.Random(f"shapes/{seed}/vqa-answers/{r.image_id}")
        for k, qa in enumerate(r.questions):
            annotations.append(
                {
                    "question_type": qa.question_type,
                    "multiple_choice_answer": qa.answer,
                    "answers": vqa_answers(qa, rng, noise, vocab),
                    "image_id": r.image_id,
                    "answer_type": qa.answer_type,
                    "question_id": r.question_id(k),
                }
            )
    return {
        "info": INFO,
        "license": VQA_LICENSE,
        "data_subtype": split,
        "annotations": annotations,
        "data_type": "shapes",
    }


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction: mean over the 10 leave-one-out subsets of min(1, matches / 3).

    Written out here because the official evaluator is not a pip package; the shapes world's answers are
    already normalised (lower case, digits, no articles or punctuation), so no normalisation is applied.
    """
    matches = sum(a == prediction for a in answers)
    # leaving out answer i removes one match exactly when answer i is the prediction
    return sum(min(1.0, (matches - (a == prediction)) / 3) for a in answers) / len(answers)


# ----------------------------------------------------------------------------------------------------------
# NLVR2 and Karpathy


def nlvr2_line(
    identifier: str,
    sentence: str,
    label: bool,
    left_url: str,
    right_url: str,
    synset: str,
    query: str,
    directory: int | None,
) -> dict:
    """One official NLVR2 record. The synthetic 'workers' all agree with the label (validation and, outside
    train, four extra validations as in dev/test1)."""
    text = "True" if label else "False"
    line = {
        "validation": {"0": text},
        "sentence": sentence,
        "left_url": left_url,
        "writer": "0",
        "label": text,
        "right_url": right_url,
        "synset": synset,
        "query": query,
        "identifier": identifier,
    }
    if directory is not None:
        line["directory"] = directory
    line["extra_validations"] = {} if directory is not None else {str(k): text for k in range(1, 5)}
    return line


_TOKEN = re.compile(r"[a-z0-9]+")


def karpathy_json(records: Sequence[ImageRecord], dataset: str = "shapes") -> dict:
    """Karpathy split file in the dataset_coco.json flavour (``filepath`` and ``cocoid`` included)."""
    images, sentid = [], 0
    for imgid, r in enumerate(records):
        sentences = []
        for text, _ in r.captions:
            sentences.append(
                {"tokens": _TOKEN.findall(text.lower()), "raw": text, "imgid": imgid, "sentid": sentid}
            )
            sentid += 1
        images.append(
            {
                "filepath": f"images/{r.split}",
                "sentids": [s["sentid"] for s in sentences],
                "filename": r.file_name,
                "imgid": imgid,
                "split": r.split,
                "sentences": sentences,
                "cocoid": r.image_id,
            }
        )
    return {"images": images, "dataset": dataset}


# ----------------------------------------------------------------------------------------------------------
# stats.json


def _distribution_block(
    items: Sequence[tuple[str, list[str], str]], prior: dict[str, str], fallback: str
) -> dict:
    """items: (group, 10 answers, ground-truth answer). Majority baseline predicts ``prior[group]``."""
    by_group: dict[str, list] = defaultdict(list)
    for group, answers, gt in items:
        by_group[group].append((answers, gt))
    out = {}
    for group in sorted(by_group):
        rows = by_group[group]
        dist = Counter(gt for _, gt in rows)
        guess = prior.get(group, fallback)
        out[group] = {
            "count": len(rows),
            "answers": dict(dist.most_common()),
            "majority_answer": guess,
            "majority_accuracy": sum(vqa_accuracy(guess, [a["answer"] for a in ans]) for ans, _ in rows)
            / len(rows),
            "chance_accuracy": 1 / len(dist),
            "ceiling_accuracy": sum(vqa_accuracy(gt, [a["answer"] for a in ans]) for ans, gt in rows)
            / len(rows),
        }
    return out


def vqa_stats(annotations: dict[str, dict], families: dict[str, dict[int, str]]) -> dict:
    """Answer distributions and baselines per split. Majority answers come from the train split (the prior a
    blind model can learn); ``chance_accuracy`` is uniform guessing among the answers seen in that group."""
    train = annotations.get("train", {"annotations": []})["annotations"]
    train_fam = families.get("train", {})

    def majorities(key) -> tuple[dict[str, str], str]:
        groups: dict[str, Counter] = defaultdict(Counter)
        for a in train:
            groups[key(a, train_fam)][a["multiple_choice_answer"]] += 1
        overall = Counter(a["multiple_choice_answer"] for a in train)
        return {g: c.most_common(1)[0][0] for g, c in groups.items()}, (
            overall.most_common(1)[0][0] if overall else "yes"
        )

    keys = {
        "question_type": lambda a, fam: a["question_type"],
        "family": lambda a, fam: fam[a["question_id"]],
        "answer_type": lambda a, fam: a["answer_type"],
    }
    priors = {name: majorities(key) for name, key in keys.items()}
    out = {}
    for split, ann in annotations.items():
        rows = ann["annotations"]
        fam = families[split]
        block: dict[str, Any] = {"num_questions": len(rows)}
        for name, key in keys.items():
            prior, fallback = priors[name]
            block[f"by_{name}"] = _distribution_block(
                [(key(a, fam), a["answers"], a["multiple_choice_answer"]) for a in rows], prior, fallback
            )
        if rows:
            prior, fallback = priors["question_type"]
            block["majority_baseline"] = sum(
                vqa_accuracy(prior.get(a["question_type"], fallback), [x["answer"] for x in a["answers"]])
                for a in rows
            ) / len(rows)
            glob = priors["answer_type"][1]
            block["global_majority_answer"] = glob
            block["global_majority_baseline"] = sum(
                vqa_accuracy(glob, [x["answer"] for x in a["answers"]]) for a in rows
            ) / len(rows)
            block["ceiling"] = sum(
                vqa_accuracy(a["multiple_choice_answer"], [x["answer"] for x in a["answers"]]) for a in rows
            ) / len(rows)
        out[split] = block
    return out


def nlvr2_stats(lines: dict[str, list[dict]], families: dict[str, dict[str, str]]) -> dict:
    """Label balance, majority baseline (train's majority label) and per-family balance per split."""
    train_labels = Counter(line["label"] for line in lines.get("train", []))
    majority = train_labels.most_common(1)[0][0] if train_labels else "True"
    out = {}
    for split, rows in lines.items():
        labels = Counter(line["label"] for line in rows)
        by_family: dict[str, Counter] = defaultdict(Counter)
        groups = set()
        for line in rows:
            s, set_id, _, sent = line["identifier"].split("-")
            groups.add(f"{s}-{set_id}--{sent}")
            by_family[families[split][line["identifier"]]][line["label"]] += 1
        out[split] = {
            "num_statements": len(rows),
            "num_true": labels["True"],
            "num_false": labels["False"],
            "num_consistency_groups": len(groups),
            "majority_label": majority,
            "majority_accuracy": labels[majority] / len(rows) if rows else 0.0,
            "ceiling": 1.0,
            "by_family": {f: {"True": c["True"], "False": c["False"]} for f, c in sorted(by_family.items())},
        }
    return out


def caption_stats(records: Sequence[ImageRecord]) -> dict:
    out = {}
    for split in sorted({r.split for r in records}):
        caps = [c for r in records if r.split == split for c in r.captions]
        vocab = Counter(t for text, _ in caps for t in _TOKEN.findall(text.lower()))
        out[split] = {
            "num_captions": len(caps),
            "num_distinct": len({t for t, _ in caps}),
            "vocab_size": len(vocab),
            "by_family": dict(sorted(Counter(f for _, f in caps).items())),
        }
    return out


def object_stats(records: Sequence[ImageRecord]) -> dict:
    out = {}
    for split in sorted({r.split for r in records}):
        recs = [r for r in records if r.split == split]
        objs = [o for r in recs for o in r.scene.objects]
        out[split] = {
            "num_images": len(recs),
            "num_objects": len(objs),
            "objects_per_image": dict(sorted(Counter(len(r.scene.objects) for r in recs).items())),
            "shape": dict(sorted(Counter(o.shape for o in objs).items())),
            "color": dict(sorted(Counter(o.color for o in objs).items())),
            "size": dict(sorted(Counter(o.size for o in objs).items())),
            "background": dict(sorted(Counter(r.scene.background for r in recs).items())),
            "occluded_fraction": sum(o.visible < 1 for o in objs) / len(objs) if objs else 0.0,
            "min_visible": min((o.visible for o in objs), default=1.0),
            "mean_visible": sum(o.visible for o in objs) / len(objs) if objs else 1.0,
        }
    return out
