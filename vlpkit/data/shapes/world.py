"""``generate_shapes_world``: sample, draw and describe a shapes world; write it in the official formats.

Layout under ``root`` (names follow the official releases; "shapes" stands for "mscoco"):

    images/{train,val,test}/shapes_<split>_<12-digit id>.png
    annotations/instances_<split>.json, annotations/captions_<split>.json              COCO
    vg/image_data.json, objects.json, attributes.json, relationships.json,
       region_descriptions.json                                        Visual Genome (all splits)
    vqa/v2_OpenEnded_shapes_<split>_questions.json, vqa/v2_shapes_<split>_annotations.json   VQA v2
    nlvr2/{train,dev,test1}.json                                                       NLVR2 (JSON lines)
    nlvr2/images/train/<directory>/train-<set>-<pair>-img{0,1}.png, nlvr2/images/{dev,test1}/...
    karpathy/dataset_shapes.json                                                       Karpathy split
    scenes/<split>.json, scenes/nlvr2_<split>.json     ground-truth scenes and text families
    stats.json                                         answer distributions, chance/majority baselines
    manifest.json                                      parameters, version, files and sizes (written last)

Every file is written atomically; ``manifest.json`` is written last, so a world is reused only when it is
complete and was generated with the same parameters. Every image gets its own random streams seeded from
(seed, split, image id, purpose), so the output is a pure function of the parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vlpkit.data.shapes import writers as W
from vlpkit.data.shapes.language import Vocab, ask, describe_with_families, propose, region_phrases
from vlpkit.data.shapes.render import render_scene
from vlpkit.data.shapes.scene import Scene, SceneConfig, sample_scene

WORLD_VERSION = "1"
"""Bump when the output for the same parameters changes; part of the cache key."""

SPLITS = ("train", "val", "test")
NLVR2_SPLITS = ("train", "dev", "test1")
NLVR2_PAIRS_PER_SET = 4  # as in NLVR2: a set of 8 images shown as 4 pairs
NLVR2_SENTENCES_PER_SET = 2
NLVR2_DIRECTORIES = 100  # official train images are spread over subfolders 0..99 (the `directory` field)


@dataclass(frozen=True)
class WorldConfig:
    """Everything the generated files depend on (the cache key is a hash of it plus ``WORLD_VERSION``).

    Attributes:
        num_images: images of the main world (COCO / VG / VQA / Karpathy), over all splits.
        seed: master seed.
        scene: how each scene is sampled.
        split_fractions: train/val/test fractions of ``num_images`` (also used for NLVR2 train/dev/test1).
        captions_per_image: captions per image (COCO captions and Karpathy sentences).
        questions_per_image: VQA questions per image (fewer only for scenes too symmetric to ask more).
        answer_noise: probability that each of the 10 VQA answers is a plausible wrong one (at most 3 are);
            0 makes all 10 answers agree, so the ceiling is exactly 100%.
        nlvr2_sets: NLVR2 sets over all splits, 8 images and 8 statements each; None means num_images // 16.
    """

    num_images: int = 2000
    seed: int = 0
    scene: SceneConfig = field(default_factory=SceneConfig)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    captions_per_image: int = 5
    questions_per_image: int = 6
    answer_noise: float = 0.0
    nlvr2_sets: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.scene, dict):
            object.__setattr__(self, "scene", SceneConfig(**self.scene))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if (
            len(self.split_fractions) != 3
            or min(self.split_fractions) < 0
            or abs(sum(self.split_fractions) - 1) > 1e-6
        ):
            raise ValueError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}"
            )
        if not 1 <= self.captions_per_image <= 20:
            raise ValueError(f"captions_per_image must be in 1..20, got {self.captions_per_image}")
        if not 1 <= self.questions_per_image <= 50:
            raise ValueError(f"questions_per_image must be in 1..50, got {self.questions_per_image}")
        if not 0.0 <= self.answer_noise <= 1.0:
            raise ValueError(f"answer_noise must be in [0, 1], got {self.answer_noise}")
        if self.nlvr2_sets is not None and self.nlvr2_sets < 0:
            raise ValueError(f"nlvr2_sets must be >= 0 or None, got {self.nlvr2_sets}")

    @property
    def num_nlvr2_sets(self) -> int:
        return self.num_images // 16 if self.nlvr2_sets is None else self.nlvr2_sets

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.scene.shapes, self.scene.colors, self.scene.sizes)

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (what the manifest records and the cache key hashes)."""
        return json.loads(json.dumps(asdict(self)))

    def key(self) -> str:
        blob = json.dumps({"version": WORLD_VERSION, "params": self.params()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShapesWorld:
    """A generated world on disk: ``root`` plus the path helpers for every file."""

    root: Path
    manifest: dict[str, Any]
    reused: bool = False
    seconds: float = 0.0  # generation time (0 when reused); kept out of the files so they stay deterministic

    @property
    def config(self) -> WorldConfig:
        return WorldConfig(**self.manifest["params"])

    def image_dir(self, split: str) -> Path:
        return self.root / "images" / _check(split, SPLITS)

    def instances(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{_check(split, SPLITS)}.json"

    def captions(self, split: str) -> Path:
        return self.root / "annotations" / f"captions_{_check(split, SPLITS)}.json"

    def vqa_questions(self, split: str) -> Path:
        return self.root / "vqa" / f"v2_OpenEnded_shapes_{_check(split, SPLITS)}_questions.json"

    def vqa_annotations(self, split: str) -> Path:
        return self.root / "vqa" / f"v2_shapes_{_check(split, SPLITS)}_annotations.json"

    def vg(self, name: str) -> Path:
        names = ("image_data", "objects", "attributes", "relationships", "region_descriptions")
        return self.root / "vg" / f"{_check(name, names)}.json"

    def nlvr2(self, split: str) -> Path:
        return self.root / "nlvr2" / f"{_check(split, NLVR2_SPLITS)}.json"

    def nlvr2_image_dir(self, split: str) -> Path:
        return self.root / "nlvr2" / "images" / _check(split, NLVR2_SPLITS)

    @property
    def karpathy(self) -> Path:
        return self.root / "karpathy" / "dataset_shapes.json"

    def scenes(self, split: str) -> Path:
        """Ground-truth scenes: ``scenes/<split>.json`` (main world) or ``scenes/nlvr2_<split>.json``."""
        if split.startswith("nlvr2_"):
            return self.root / "scenes" / f"nlvr2_{_check(split[6:], NLVR2_SPLITS)}.json"
        return self.root / "scenes" / f"{_check(split, SPLITS)}.json"

    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())


def _check(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown split or file {value!r}; expected one of {allowed}")
    return value


def default_cache_dir() -> Path:
    """``$VLPKIT_CACHE`` if set, else ``~/.cache/vlpkit``."""
    return Path(os.environ.get("VLPKIT_CACHE", "~/.cache/vlpkit")).expanduser()


def _split_sizes(total: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split sizes by rounding; val and test get at least one item each when their fraction is > 0 and
    there are at least 3 items, so that no split file of a small world is empty."""
    val, test = (round(total * f) for f in fractions[1:])
    if total >= 3:
        val, test = (max(n, 1) if f > 0 else n for n, f in zip((val, test), fractions[1:]))
    test = min(test, total)
    val = min(val, total - test)
    if fractions[0] == 0:  # rounding leftovers go to test rather than to an unwanted train split
        test = total - val
    return [total - val - test, val, test]


def _manifest_ok(root: Path, config: WorldConfig) -> dict | None:
    """The manifest if ``root`` holds a complete world made with ``config``, else None."""
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("version") != WORLD_VERSION or manifest.get("params") != config.params():
        return None
    for rel, size in manifest.get("files", {}).items():
        try:
            if (root / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


def generate_shapes_world(
    root: str | os.PathLike | None = None,
    *,
    num_images: int = 2000,
    seed: int = 0,
    config: WorldConfig | None = None,
    force: bool = False,
    **options: Any,
) -> ShapesWorld:
    """Generate (or reuse) a shapes world and return its paths.

    Args:
        root: output folder; default ``default_cache_dir() / f"shapes-{config.key()}"``.
        num_images, seed: shortcuts for the same ``WorldConfig`` fields.
        config: a full ``WorldConfig``; when given, ``num_images``, ``seed`` and ``options`` must not be.
        force: regenerate even when a matching complete world is already there.
        **options: other ``WorldConfig`` fields (``scene=SceneConfig(...)``, ``questions_per_image=...``).

    A folder is reused when its ``manifest.json`` has the same version and parameters and every listed file
    has its recorded size. Otherwise the world is written again; files a previous manifest listed that the
    new world does not have are removed, nothing else in ``root`` is touched.
    """
    if config is None:
        names = {f.name for f in fields(WorldConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; WorldConfig fields are {sorted(names)}")
        config = WorldConfig(num_images=num_images, seed=seed, **options)
    elif options or (num_images, seed) != (2000, 0):
        raise TypeError("pass either config=WorldConfig(...) or num_images/seed/options, not both")
    root = Path(root) if root is not None else default_cache_dir() / f"shapes-{config.key()}"

    if not force and (manifest := _manifest_ok(root, config)) is not None:
        return ShapesWorld(root, manifest, reused=True)

    start = time.perf_counter()
    old_files: set[str] = set()
    try:
        old_files = set(json.loads((root / "manifest.json").read_text()).get("files", {}))
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    (root / "manifest.json").unlink(missing_ok=True)  # the folder is incomplete from now until the end
    written = _Writer(root)
    counts = _generate(config, written)
    for rel in sorted(old_files - set(written.sizes)):
        (root / rel).unlink(missing_ok=True)
    manifest = {
        "name": "vlpkit shapes world",
        "version": WORLD_VERSION,
        "key": config.key(),
        "params": config.params(),
        "counts": counts,
        "files": dict(sorted(written.sizes.items())),
    }
    W.write_json(root / "manifest.json", manifest)
    return ShapesWorld(root, manifest, reused=False, seconds=time.perf_counter() - start)


class _Writer:
    """Writes files under ``root`` atomically and remembers each file's size for the manifest."""

    def __init__(self, root: Path):
        self.root = root
        self.sizes: dict[str, int] = {}

    def bytes(self, rel: str, data: bytes) -> None:
        W.atomic_write_bytes(self.root / rel, data)
        self.sizes[rel] = len(data)

    def json(self, rel: str, obj: Any) -> None:
        self.bytes(rel, json.dumps(obj, separators=(",", ":")).encode())

    def jsonl(self, rel: str, rows: list[dict]) -> None:
        self.bytes(rel, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _rng(config: WorldConfig, *parts: object) -> random.Random:
    return random.Random("shapes/" + "/".join(str(p) for p in (config.seed, *parts)))


def _generate(config: WorldConfig, out: _Writer) -> dict[str, Any]:
    vocab = config.vocab
    records: list[W.ImageRecord] = []
    image_id = object_id = caption_id = 0
    for split, size in zip(SPLITS, _split_sizes(config.num_images, config.split_fractions)):
        for _ in range(size):
            image_id += 1
            scene = sample_scene(_rng(config, "scene", image_id), config.scene)
            rec = W.ImageRecord(
                image_id=image_id,
                split=split,
                file_name=f"shapes_{split}_{image_id:012d}.png",
                scene=scene,
                object_ids=list(range(object_id + 1, object_id + 1 + len(scene.objects))),
            )
            object_id += len(scene.objects)
            rec.captions = describe_with_families(
                scene, _rng(config, "captions", image_id), config.captions_per_image
            )
            rec.caption_ids = list(range(caption_id + 1, caption_id + 1 + len(rec.captions)))
            caption_id += len(rec.captions)
            rec.questions = ask(scene, _rng(config, "questions", image_id), config.questions_per_image, vocab)
            rec.regions = region_phrases(scene, _rng(config, "regions", image_id))
            out.bytes(rec.relative_path, W.png_bytes(render_scene(scene)))
            records.append(rec)

    by_split = {s: [r for r in records if r.split == s] for s in SPLITS}
    vqa_annotations, families = {}, {}
    for split, recs in by_split.items():
        out.json(f"annotations/instances_{split}.json", W.coco_instances_json(recs, config.scene.shapes))
        out.json(f"annotations/captions_{split}.json", W.coco_captions_json(recs))
        out.json(f"vqa/v2_OpenEnded_shapes_{split}_questions.json", W.vqa_questions_json(recs, split))
        vqa_annotations[split] = W.vqa_annotations_json(recs, split, config.answer_noise, config.seed, vocab)
        out.json(f"vqa/v2_shapes_{split}_annotations.json", vqa_annotations[split])
        families[split] = {r.question_id(k): qa.family for r in recs for k, qa in enumerate(r.questions)}
        out.json(
            f"scenes/{split}.json",
            {
                "split": split,
                "images": [
                    {
                        "image_id": r.image_id,
                        "file_name": r.file_name,
                        "object_ids": r.object_ids,
                        **r.scene.to_dict(),
                        "caption_families": [f for _, f in r.captions],
                        "caption_ids": r.caption_ids,
                        "question_families": [qa.family for qa in r.questions],
                        "question_ids": [r.question_id(k) for k in range(len(r.questions))],
                    }
                    for r in recs
                ],
            },
        )
    out.json("vg/image_data.json", W.vg_image_data_json(records))
    out.json("vg/objects.json", W.vg_objects_json(records))
    out.json("vg/attributes.json", W.vg_attributes_json(records))
    out.json("vg/relationships.json", W.vg_relationships_json(records))
    out.json("vg/region_descriptions.json", W.vg_region_descriptions_json(records))
    out.json("karpathy/dataset_shapes.json", W.karpathy_json(records))

    nlvr2_lines, nlvr2_families = _generate_nlvr2(config, out)
    out.json(
        "stats.json",
        {
            "version": WORLD_VERSION,
            "objects": W.object_stats(records),
            "captions": W.caption_stats(records),
            "vqa": W.vqa_stats(vqa_annotations, families),
            "nlvr2": W.nlvr2_stats(nlvr2_lines, nlvr2_families),
        },
    )
    return {
        "images": {s: len(r) for s, r in by_split.items()},
        "objects": sum(len(r.scene.objects) for r in records),
        "captions": caption_id,
        "questions": {s: len(a["annotations"]) for s, a in vqa_annotations.items()},
        "nlvr2_statements": {s: len(rows) for s, rows in nlvr2_lines.items()},
        "nlvr2_images": sum(
            2 * len({line["identifier"].rsplit("-", 1)[0] for line in rows}) for rows in nlvr2_lines.values()
        ),
    }


def _choose_sentence(rng: random.Random, scenes: list[Scene], used: set[str], vocab: Vocab, tries: int = 40):
    """The proposition (and its labels on the 4 pairs) closest to 2 true / 2 false among ``tries`` candidates;
    candidates undecidable on any pair or already used in the set are skipped."""
    best = None
    for _ in range(tries):
        prop = propose(rng, scenes, vocab)
        if prop.sentence in used:
            continue
        labels = [prop.holds(scenes[2 * p], scenes[2 * p + 1]) for p in range(NLVR2_PAIRS_PER_SET)]
        if any(label is None for label in labels):
            continue
        score = abs(sum(labels) - NLVR2_PAIRS_PER_SET / 2)
        if best is None or score < best[0]:
            best = (score, prop, labels)
        if score == 0:
            break
    if best is None:
        raise RuntimeError(f"no decidable NLVR2 statement found in {tries} tries")
    return best[1], best[2]


def _generate_nlvr2(
    config: WorldConfig, out: _Writer
) -> tuple[dict[str, list[dict]], dict[str, dict[str, str]]]:
    lines: dict[str, list[dict]] = {}
    families: dict[str, dict[str, str]] = {}
    for split, num_sets in zip(NLVR2_SPLITS, _split_sizes(config.num_nlvr2_sets, config.split_fractions)):
        rows, fams, scene_rows = [], {}, []
        for set_id in range(num_sets):
            directory = set_id % NLVR2_DIRECTORIES if split == "train" else None
            folder = f"images/{split}" + (f"/{directory}" if directory is not None else "")
            scenes = [
                sample_scene(_rng(config, "nlvr2", split, set_id, k), config.scene)
                for k in range(2 * NLVR2_PAIRS_PER_SET)
            ]
            names = [f"{split}-{set_id}-{k // 2}-img{k % 2}.png" for k in range(len(scenes))]
            for scene, name in zip(scenes, names):
                out.bytes(f"nlvr2/{folder}/{name}", W.png_bytes(render_scene(scene)))
                scene_rows.append({"file_name": name, "directory": directory, **scene.to_dict()})
            rng, used = _rng(config, "nlvr2-text", split, set_id), set()
            for sent_id in range(NLVR2_SENTENCES_PER_SET):
                prop, labels = _choose_sentence(rng, scenes, used, config.vocab)
                used.add(prop.sentence)
                for pair_id, label in enumerate(labels):
                    identifier = f"{split}-{set_id}-{pair_id}-{sent_id}"
                    rows.append(
                        W.nlvr2_line(
                            identifier,
                            prop.sentence,
                            label,
                            f"{folder}/{names[2 * pair_id]}",
                            f"{folder}/{names[2 * pair_id + 1]}",
                            prop.synset,
                            f"{prop.synset}s{set_id}",
                            directory,
                        )
                    )
                    fams[identifier] = prop.family
        out.jsonl(f"nlvr2/{split}.json", rows)
        out.json(
            f"scenes/nlvr2_{split}.json", {"split": split, "images": scene_rows, "statement_families": fams}
        )
        lines[split], families[split] = rows, fams
    return lines, families
