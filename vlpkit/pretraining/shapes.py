"""The shapes-world recipe: the world, its tokenizer and label vocabularies, and its pretraining sources.

A user with the real datasets replaces this module's paths by COCO's and Visual Genome's (see
`vlpkit.pretraining.sources`) and keeps everything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.readers import VisualGenome
from ..data.shapes import ShapesWorld, generate_shapes_world
from ..data.tokenization import load_tokenizer, save_tokenizer, train_wordpiece
from ..data.vocab import Vocab
from .data import Source
from .sources import CocoWithCaptions, attribute_vocab_from_vg, coco_category_names, visual_genome_subset


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


def shapes_sources(setup: ShapesSetup, split: str = "train", coco_tasks=("mlm", "itm", "detection", "caption"),
                   vg_tasks=("mlm", "detection", "attributes"), coco_weight: float = 1.0,
                   vg_weight: float = 1.0) -> list[Source]:
    """The paper's two pretraining sources on the shapes world.

    - "coco": COCO instances + captions (captions serve MLM, ITM and generation; boxes serve detection);
    - "vg": Visual Genome objects with attributes; region phrases serve MLM. They are not used for ITM or
      generation by default: a phrase such as "red circle" describes a region, and may describe another image too.
    A task left out of both lists (or a weight of 0... use an empty list) is simply not trained on.
    """
    world = setup.world
    sources = []
    if coco_tasks:
        coco = CocoWithCaptions(world.instances(split), world.captions(split), world.image_dir(split))
        sources.append(Source("coco", coco, tuple(coco_tasks), coco_weight))
    if vg_tasks:
        files = [world.vg(n) for n in ("image_data", "objects", "attributes", "region_descriptions")]
        vg = VisualGenome(*files, world.root / "images", setup.object_vocab, setup.attribute_vocab)
        sources.append(Source("vg", visual_genome_subset(vg, split_image_ids(world, split)), tuple(vg_tasks),
                              vg_weight))
    return sources
