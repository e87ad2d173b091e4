"""A shapes world ready for a model: the generated world, its WordPiece tokenizer and its label vocabularies
(`prepare_shapes`). Every reader, task and pretraining run on the shapes world starts here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..readers.coco import coco_category_names
from ..readers.visual_genome import attribute_vocab_from_vg
from ..tokenization import load_tokenizer, save_tokenizer, train_wordpiece
from ..vocab import Vocab
from .world import ShapesWorld, generate_shapes_world

__all__ = ["ShapesSetup", "prepare_shapes", "split_image_ids", "world_texts"]


@dataclass
class ShapesSetup:
    """A generated world with the vocabularies a model for it needs."""

    world: ShapesWorld
    tokenizer: object  # transformers.BertTokenizerFast
    object_vocab: Vocab
    attribute_vocab: Vocab

    def model_overrides(self) -> dict:
        """E2EVLPConfig fields that must agree with this world's tokenizer and labels."""
        tok = self.tokenizer
        return dict(vocab_size=len(tok), num_classes=len(self.object_vocab),
                    num_attributes=len(self.attribute_vocab), pad_token_id=tok.pad_token_id,
                    cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                    mask_token_id=tok.mask_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)


def world_texts(world: ShapesWorld) -> list[str]:
    """Every text of the world's training files (captions, region phrases, questions, answers, statements)."""
    texts = [a["caption"] for a in json.loads(world.captions("train").read_text())["annotations"]]
    for item in json.loads(world.vg("region_descriptions").read_text()):
        texts += [r["phrase"] for r in item["regions"]]
    texts += [q["question"] for q in json.loads(world.vqa_questions("train").read_text())["questions"]]
    texts += [a["multiple_choice_answer"] for a in json.loads(world.vqa_annotations("train").read_text())["annotations"]]
    texts += [json.loads(line)["sentence"] for line in world.nlvr2("train").read_text().splitlines() if line]
    return texts


def prepare_shapes(root: str | Path | None = None, num_images: int = 2000, seed: int = 0,
                   vocab_size: int = 512, **world_options) -> ShapesSetup:
    """Generate (or reuse) a shapes world, and train (or reuse) its WordPiece tokenizer.

    The tokenizer is saved in `<world>/tokenizer/` and reused, because Hugging Face `tokenizers` training is not
    deterministic (huggingface/tokenizers#1794): reusing it keeps every run of a world on one vocabulary.
    """
    world = generate_shapes_world(root, num_images=num_images, seed=seed, **world_options)
    tok_dir = world.root / "tokenizer"
    if (tok_dir / "vocab.txt").is_file():
        tokenizer = load_tokenizer(tok_dir)
    else:
        tokenizer = train_wordpiece(world_texts(world), vocab_size=vocab_size)
        save_tokenizer(tokenizer, tok_dir)
    objects = Vocab(coco_category_names(world.instances("train")), name="shapes objects")
    attributes = attribute_vocab_from_vg(world.vg("objects"), world.vg("attributes"))
    return ShapesSetup(world, tokenizer, objects, attributes)


def split_image_ids(world: ShapesWorld, split: str) -> list[int]:
    return [im["id"] for im in json.loads(world.instances(split).read_text())["images"]]
