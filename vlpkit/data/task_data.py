"""Where a task's data is: the descriptions of each downstream task's splits on disk, resolved from a shapes
world, `"shapes"` (the default world), a dict or a YAML/JSON file: VQA and NLVR2 (`TaskData.resolve`), captioning
and retrieval (`caption_data`), detection (`detection_data`, `detection_split`).

    data = VQAData.resolve("vqa.yaml")      # {"train": [split...], "eval": {name: split}, "tokenizer"?, ...}
    data.eval["val"].dataset(answer_vocab)  # a VQADataset

A description holds paths and names only; the readers (`vlpkit.data.readers`) read the files, and the task
modules (`vlpkit.tasks`) train and score on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from ..schema import ConfigError
from ..yamlio import load_yaml_file
from .readers.coco import CocoCaptions
from .readers.karpathy import KarpathyDataset
from .readers.nlvr2 import NLVR2Dataset
from .readers.vqa import VQADataset
from .tokenization import load_tokenizer, tokenizer_overrides
from .vocab import Vocab, as_vocab

__all__ = ["TaskData", "VQASplit", "VQAData", "NLVR2Split", "NLVR2Data", "CaptionSplit", "CaptionData",
           "caption_data", "DetectionSplit", "detection_data", "detection_split", "is_shapes_setup", "resolve_shapes"]


def is_shapes_setup(obj: Any) -> bool:
    """A `vlpkit.data.shapes.setup.ShapesSetup` (duck-typed: a world, a tokenizer and `model_overrides`)."""
    return hasattr(obj, "world") and hasattr(obj, "tokenizer") and callable(getattr(obj, "model_overrides", None))


def resolve_shapes(data: Any, num_images: int = 2000) -> Any:
    """`"shapes"` -> the default shapes world of `num_images` images (`prepare_shapes`); anything else as is."""
    if isinstance(data, str) and data == "shapes":
        from .shapes.setup import prepare_shapes

        return prepare_shapes(num_images=num_images)
    return data


class TaskData:
    """Mixin of the data descriptions of VQA and NLVR2 (which define `from_shapes(setup)` and
    `from_dict(data, base_dir)`, and name their task in `task_name`)."""

    task_name: ClassVar[str] = "task"

    @classmethod
    def resolve(cls, setup_or_paths):
        """An instance, a `ShapesSetup`, `"shapes"` (the default shapes world), a dict, or a YAML/JSON description
        file (relative paths in it are read from its folder)."""
        if isinstance(setup_or_paths, cls):
            return setup_or_paths
        setup_or_paths = resolve_shapes(setup_or_paths)
        if hasattr(setup_or_paths, "world") and hasattr(setup_or_paths, "tokenizer"):
            return cls.from_shapes(setup_or_paths)
        if isinstance(setup_or_paths, Mapping):
            return cls.from_dict(setup_or_paths)
        if isinstance(setup_or_paths, (str, Path)):
            path = Path(setup_or_paths)
            if not path.is_file():
                raise FileNotFoundError(f"{cls.task_name} data description not found: {path} (expected 'shapes' or "
                                        "a YAML/JSON file with 'train' and 'eval' splits)")
            return cls.from_dict(load_yaml_file(path), path.parent)
        raise TypeError(f"expected a {cls.__name__}, ShapesSetup, 'shapes' or a description file, "
                        f"got {type(setup_or_paths).__name__}")


# ---- VQA v2 ----------------------------------------------------------------------------------------------
def _format_image_name(pattern: str, image_id: int) -> str:
    return pattern.format(image_id=int(image_id))


@dataclass
class VQASplit:
    """One VQA split on disk.

    Attributes:
        questions: `v2_OpenEnded_mscoco_<subtype>_questions.json`.
        annotations: `v2_mscoco_<subtype>_annotations.json`, or None (test-dev / test: no answers).
        image_root: the folder of the split's images.
        image_name: file-name pattern with `{image_id}` (e.g. `"shapes_val_{image_id:012d}.png"`); None: COCO's
            `COCO_<data_subtype>_<id:012d>.jpg`.
        groups: optionally a group per question id (the shapes world's question families), by which accuracy is
            also reported.
    """

    questions: Path
    annotations: Path | None
    image_root: Path
    image_name: str | None = None
    groups: Mapping[int, str] | None = None

    def __post_init__(self) -> None:
        self.questions = Path(self.questions)
        self.annotations = None if self.annotations is None else Path(self.annotations)
        self.image_root = Path(self.image_root)

    def dataset(self, answer_vocab: Vocab | None, transforms=None) -> VQADataset:
        name_fn = None if self.image_name is None else partial(_format_image_name, self.image_name)
        return VQADataset(self.questions, self.annotations, self.image_root, answer_vocab, name_fn,
                          transforms=transforms)


@dataclass
class VQAData(TaskData):
    """Where the data is: training splits (concatenated), evaluation splits by name, the tokenizer and the answer
    vocabulary (None: built from the training annotations with `VQAConfig.answer_vocab_size/answer_min_count`).

    `kind` is "shapes" or "files" (chooses the default image sizes); `baselines` holds the shapes world's blind
    baselines per evaluation split when known.
    """

    train: list[VQASplit]
    eval: dict[str, VQASplit]
    tokenizer: Any = None
    answer_vocab: Vocab | None = None
    kind: str = "files"
    baselines: dict[str, Any] = field(default_factory=dict)
    task_name = "VQA"  # in error messages of `resolve` (a class attribute, not a field)

    @classmethod
    def from_shapes(cls, setup) -> VQAData:
        """train -> train; val and test -> evaluation; the world's tokenizer; baselines from `stats.json`."""
        world = setup.world

        def split(name: str, families: bool = False) -> VQASplit:
            # question families only where accuracy is reported
            scenes = world.scenes(name)
            groups = None
            if families and scenes.is_file():
                groups = {int(q): f for image in json.loads(scenes.read_text())["images"]
                          for q, f in zip(image["question_ids"], image["question_families"])}
            return VQASplit(world.vqa_questions(name), world.vqa_annotations(name), world.image_dir(name),
                            f"shapes_{name}_{{image_id:012d}}.png", groups)

        stats = world.stats()["vqa"]
        baselines = {s: _shapes_baselines(stats[s]) for s in ("val", "test") if stats.get(s, {}).get("num_questions")}
        return cls([split("train")], {"val": split("val", True), "test": split("test", True)}, setup.tokenizer,
                   None, "shapes", baselines)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path = ".") -> VQAData:
        """From `{"train": [split...], "eval": {name: split}, "tokenizer": dir?, "answer_vocab": file?}` where a
        split is `{"questions", "annotations"?, "image_root", "image_name"?}`; relative paths are read from
        `base_dir`."""
        base = Path(base_dir)
        allowed = {"train", "eval", "tokenizer", "answer_vocab"}
        unknown = sorted(set(data) - allowed)
        if unknown or "train" not in data or "eval" not in data:
            raise ConfigError(f"VQA data description needs 'train' and 'eval' (optional 'tokenizer', "
                              f"'answer_vocab'); got keys {sorted(data)}")

        def path(p):
            return None if p is None else base / Path(p).expanduser()

        def split(d: Mapping[str, Any], where: str) -> VQASplit:
            keys = {"questions", "annotations", "image_root", "image_name"}
            if not isinstance(d, Mapping) or not {"questions", "image_root"} <= set(d) or set(d) - keys:
                raise ConfigError(f"VQA data {where}: expected keys 'questions', 'image_root' (optional "
                                  f"'annotations', 'image_name'), got {d!r}")
            return VQASplit(path(d["questions"]), path(d.get("annotations")), path(d["image_root"]),
                            d.get("image_name"))

        train = data["train"] if isinstance(data["train"], list) else [data["train"]]
        tokenizer = load_tokenizer(path(data["tokenizer"])) if data.get("tokenizer") else None
        vocab = as_vocab(path(data["answer_vocab"]), "answer_vocab") if data.get("answer_vocab") else None
        return cls([split(d, f"train[{i}]") for i, d in enumerate(train)],
                   {name: split(d, f"eval[{name!r}]") for name, d in data["eval"].items()}, tokenizer, vocab)


def _shapes_baselines(block: dict) -> dict[str, float]:
    """Blind baselines of the shapes world (percent): the train-majority answer of each answer type, and of each
    question type (`majority_baseline`)."""
    out = {f"majority_{t}": 100 * v["majority_accuracy"] for t, v in block["by_answer_type"].items()}
    counts = {t: v["count"] for t, v in block["by_answer_type"].items()}
    out["majority_per_answer_type"] = sum(out[f"majority_{t}"] * n for t, n in counts.items()) / sum(counts.values())
    out["majority_per_question_type"] = 100 * block["majority_baseline"]
    return out


# ---- NLVR2 -----------------------------------------------------------------------------------------------
@dataclass
class NLVR2Split:
    """One NLVR2 split: the official JSON-lines file and its image folder (`images/train`, `dev`, `test1`), and
    optionally a group per identifier (the shapes world's statement families), by which accuracy is also
    reported."""

    jsonl: Path
    image_root: Path
    groups: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        self.jsonl, self.image_root = Path(self.jsonl), Path(self.image_root)

    def dataset(self, transforms=None) -> NLVR2Dataset:
        return NLVR2Dataset(self.jsonl, self.image_root, transforms=transforms)


@dataclass
class NLVR2Data(TaskData):
    """The training split, evaluation splits by name (dev, test1), the tokenizer, the kind of data ("shapes" or
    "files": chooses the default image sizes) and, for the shapes world, majority-label baselines."""

    train: NLVR2Split
    eval: dict[str, NLVR2Split]
    tokenizer: Any = None
    kind: str = "files"
    baselines: dict[str, Any] = field(default_factory=dict)
    task_name = "NLVR2"  # in error messages of `resolve` (a class attribute, not a field)

    @classmethod
    def from_shapes(cls, setup) -> NLVR2Data:
        world = setup.world
        stats = world.stats()["nlvr2"]

        def split(name: str, families: bool = False) -> NLVR2Split:
            # statement families only where accuracy is reported (the scene files also hold every image's scene)
            scenes = world.scenes(f"nlvr2_{name}")
            groups = json.loads(scenes.read_text()).get("statement_families") if families and scenes.is_file() \
                else None
            return NLVR2Split(world.nlvr2(name), world.nlvr2_image_dir(name), groups)

        evals = {s: split(s, families=True) for s in ("dev", "test1") if stats.get(s, {}).get("num_statements")}
        baselines = {s: {"majority_label": 100 * stats[s]["majority_accuracy"]} for s in evals}
        return cls(split("train"), evals, setup.tokenizer, "shapes", baselines)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path = ".") -> NLVR2Data:
        """From `{"train": split, "eval": {name: split}, "tokenizer": dir?}` where a split is `{"jsonl",
        "image_root"}`; relative paths are read from `base_dir`."""
        base = Path(base_dir)
        unknown = sorted(set(data) - {"train", "eval", "tokenizer"})
        if unknown or "train" not in data or "eval" not in data:
            raise ConfigError(f"NLVR2 data description needs 'train' and 'eval' (optional 'tokenizer'); got keys "
                              f"{sorted(data)}")

        def split(d: Mapping[str, Any], where: str) -> NLVR2Split:
            if not isinstance(d, Mapping) or set(d) != {"jsonl", "image_root"}:
                raise ConfigError(f"NLVR2 data {where}: expected keys 'jsonl' and 'image_root', got {d!r}")
            return NLVR2Split(base / Path(d["jsonl"]).expanduser(), base / Path(d["image_root"]).expanduser())

        tokenizer = load_tokenizer(base / Path(data["tokenizer"]).expanduser()) if data.get("tokenizer") else None
        return cls(split(data["train"], "train"), {n: split(d, f"eval[{n!r}]") for n, d in data["eval"].items()},
                   tokenizer)


# ---- captioning and retrieval (COCO captions or a Karpathy file) ------------------------------------------
@dataclass
class CaptionSplit:
    """One split: a COCO `captions_*.json` with its image folder, or a Karpathy `dataset_*.json` with the root its
    `filepath`s are relative to and the Karpathy split names it covers (e.g. ("train", "restval"))."""

    annotations: Path
    image_root: Path
    karpathy_splits: tuple[str, ...] | None = None

    def reader(self, per: str = "image", transforms=None) -> CocoCaptions | KarpathyDataset:
        """The official-format reader: `per="image"` (samples with "captions") or `"caption"` ("text")."""
        if self.karpathy_splits is None:
            return CocoCaptions(self.annotations, self.image_root, transforms=transforms, per=per)
        return KarpathyDataset(self.annotations, self.image_root, split=self.karpathy_splits, per=per,
                               transforms=transforms)


@dataclass
class CaptionData:
    """A tokenizer, the splits by name, and the E2EVLPConfig fields a fresh model needs for this tokenizer."""

    tokenizer: Any
    splits: dict[str, CaptionSplit]
    model_overrides: dict[str, Any]

    def split(self, name: str) -> CaptionSplit:
        if name not in self.splits:
            raise KeyError(f"no split {name!r} in the caption data; available: {sorted(self.splits)}")
        return self.splits[name]


PATHS_HELP = """caption data paths (a dict, or a .json/.yaml file holding it), either COCO captions files:
  {"tokenizer": DIR, "splits": {"train": {"captions": captions_train2014.json, "images": train2014/},
                                "val": {...}, "test": {...}}}
or one Karpathy file:
  {"tokenizer": DIR, "karpathy": dataset_coco.json, "images": ROOT,
   "splits": {"train": ["train", "restval"], "val": "val", "test": "test"}}   ("splits" optional, this default)
Relative paths in a file are read from the file's folder; "tokenizer" may be left out when the checkpoint has one."""


def caption_data(setup_or_paths, tokenizer=None) -> CaptionData:
    """Resolve the data argument of `finetune_captioning` / `finetune_retrieval`.

    Args:
        setup_or_paths: a `ShapesSetup` (`vlpkit.pretraining.shapes.prepare_shapes`: its COCO
            `captions_{split}.json` with `world.image_dir(split)`), a `CaptionData`, or the paths described in
            `PATHS_HELP` (a dict or a JSON/YAML file).
    """
    if isinstance(setup_or_paths, CaptionData):
        return setup_or_paths
    if hasattr(setup_or_paths, "world") and hasattr(setup_or_paths, "model_overrides"):  # ShapesSetup
        world = setup_or_paths.world
        splits = {s: CaptionSplit(world.captions(s), world.image_dir(s)) for s in ("train", "val", "test")}
        return CaptionData(setup_or_paths.tokenizer, splits, setup_or_paths.model_overrides())
    paths = setup_or_paths
    source, base = "the caption data dict", Path(".")
    if isinstance(paths, (str, Path)):
        path = Path(paths)
        if not path.is_file():
            raise FileNotFoundError(f"caption data file not found: {path}\n{PATHS_HELP}")
        # relative paths in a file are read from the file's folder, as for every task's data file
        paths, source, base = load_yaml_file(path), str(path), path.parent  # YAML also reads JSON
    if not isinstance(paths, Mapping):
        raise TypeError(f"expected a ShapesSetup, CaptionData, dict or file for the caption data, got "
                        f"{type(paths).__name__}\n{PATHS_HELP}")
    if "tokenizer" not in paths and tokenizer is None:
        raise ValueError(f"{source} lacks 'tokenizer', and no tokenizer is saved with the checkpoint\n{PATHS_HELP}")
    def at(p) -> Path:
        return base / Path(p).expanduser()

    if "tokenizer" in paths:  # else the checkpoint's; a tokenizer may also be a Hugging Face name, not a path
        tokenizer = load_tokenizer(at(paths["tokenizer"]) if at(paths["tokenizer"]).exists() else paths["tokenizer"])
    splits: dict[str, CaptionSplit] = {}
    if "karpathy" in paths:
        if "images" not in paths:
            raise ValueError(f"{source}: a Karpathy file needs 'images' (the root of its filepaths)\n{PATHS_HELP}")
        spec = paths.get("splits", {"train": ["train", "restval"], "val": "val", "test": "test"})
        for name, names in spec.items():
            names = (names,) if isinstance(names, str) else tuple(names)
            splits[name] = CaptionSplit(at(paths["karpathy"]), at(paths["images"]), names)
    else:
        if not isinstance(paths.get("splits"), Mapping) or not paths["splits"]:
            raise ValueError(f"{source} needs 'splits' (or 'karpathy')\n{PATHS_HELP}")
        for name, spec in paths["splits"].items():
            if not isinstance(spec, Mapping) or not {"captions", "images"} <= set(spec):
                raise ValueError(f"{source}: split {name!r} needs 'captions' and 'images', got {spec!r}\n{PATHS_HELP}")
            splits[name] = CaptionSplit(at(spec["captions"]), at(spec["images"]))
    return CaptionData(tokenizer, splits, tokenizer_overrides(tokenizer))


# ---- detection (COCO instances, with the captions paired to each image) -----------------------------------
@dataclass
class DetectionSplit:
    """The three official files of one COCO split: instances JSON, captions JSON, image folder."""

    instances: Path
    captions: Path
    images: Path

    def __post_init__(self) -> None:
        self.instances, self.captions, self.images = Path(self.instances), Path(self.captions), Path(self.images)


def detection_data(data: Any) -> Any:
    """A YAML/JSON data file `{split: {"instances", "captions", "images"}, "tokenizer"?: ...}` -> that mapping, its
    relative paths read from the file's folder (as every task reads its data file; a tokenizer that is no path
    there stays a Hugging Face name). Anything else (a mapping, a COCO root folder, a shapes setup) unchanged."""
    if not isinstance(data, (str, Path)) or not Path(data).is_file():
        return data
    path = Path(data)
    spec = load_yaml_file(path)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping of splits to {{instances, captions, images}} (and an "
                          f"optional 'tokenizer'), got {type(spec).__name__}")

    def at(value: Any) -> Any:
        return str(path.parent / Path(value).expanduser()) if isinstance(value, str) else value

    resolved = {name: {k: at(v) for k, v in entry.items()} if isinstance(entry, Mapping) else entry
                for name, entry in spec.items()}
    if isinstance(spec.get("tokenizer"), str) and Path(at(spec["tokenizer"])).exists():
        resolved["tokenizer"] = at(spec["tokenizer"])
    return resolved


def detection_split(data: Any, split: str) -> DetectionSplit:
    """The files of `split` from:

    - a `ShapesSetup` or `ShapesWorld` (`world.instances(split)`, `world.captions(split)`, `world.image_dir(split)`);
    - a mapping `{split: {"instances": ..., "captions": ..., "images": ...}}` (or of `DetectionSplit`s);
    - a COCO root folder: `annotations/instances_<split><year>.json`, `annotations/captions_<split><year>.json`
      and `<split><year>/`, year 2017 or 2014.
    """
    world = getattr(data, "world", data)
    if hasattr(world, "instances") and hasattr(world, "image_dir"):
        return DetectionSplit(world.instances(split), world.captions(split), world.image_dir(split))
    if isinstance(data, Mapping):
        if split not in data:
            raise KeyError(f"no {split!r} split in the data mapping (keys: {sorted(data)})")
        entry = data[split]
        if isinstance(entry, DetectionSplit):
            return entry
        missing = [k for k in ("instances", "captions", "images") if k not in entry]
        if missing:
            raise KeyError(f"data[{split!r}] lacks {missing}; expected instances, captions and images paths")
        return DetectionSplit(entry["instances"], entry["captions"], entry["images"])
    if isinstance(data, (str, Path)):
        root = Path(data)
        tried = []
        for year in ("2017", "2014"):
            files = DetectionSplit(root / "annotations" / f"instances_{split}{year}.json",
                                   root / "annotations" / f"captions_{split}{year}.json", root / f"{split}{year}")
            if files.instances.is_file() and files.captions.is_file() and files.images.is_dir():
                return files
            tried.append(f"{files.instances}, {files.captions}, {files.images}/")
        raise FileNotFoundError(f"no COCO {split!r} split under {root}; looked for: " + "; ".join(tried))
    raise TypeError(f"data must be a ShapesSetup, a mapping of splits or a COCO root folder, got {type(data).__name__}")
