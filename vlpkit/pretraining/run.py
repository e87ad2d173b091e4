"""`pretrain(config)`: build the data mixture, the model and the objective from one config, and train.

Config (YAML or JSON; see vlpkit/configs/):

```yaml
model: {preset: e2evlp-tiny, overrides: {}}      # or {init_from: runs/demo, frozen_trunk: true}: see below
objective: {tasks: [mlm, itm, detection, attributes, caption], weights: {mlm: 1, itm: 1, detection: 1, caption: 1}}
trainer: {output_dir: runs/pretrain, max_steps: 1000, batch_size: 32, lr: 1.0e-4, backbone_lr: 1.0e-5}
data:
  kind: shapes                                   # or "files" for the real COCO / Visual Genome
  shapes: {num_images: 2000, seed: 0, vocab_size: 512}
  sources: [{name: coco, tasks: [mlm, itm, detection, caption], weight: 1},
            {name: vg, tasks: [mlm, detection, attributes], weight: 1}]
  image: {train_scales: [480, 512, ..., 800], max_size: 1333, crop: true, flip: true, eval_size: 800}
warmup: {steps: 400}   # optional: `vlpkit demo`'s trunk warm-up (vlpkit.pretraining.trunk_warmup)
```

`pretrain` takes the trunk's initial weights from `model.overrides.backbone_weights` only; the `warmup` section is
run by `vlpkit demo` (or `warm_up_trunk_from_config`), which writes such a file and sets that field.

A further stage of pretraining from a finished one: `model.init_from` (a pretraining run folder or `model/`
folder) loads that model strictly (its `config.json` fixes the architecture, so `preset` and `overrides` must be
absent) and checks that the data's tokenizer and vocabularies are the checkpoint's. `model.frozen_trunk: true`
(not in the paper) freezes the ResNet and the 1x1 projection and caches their features per image
(`vlpkit.models.feature_cache`, at most `model.trunk_cache_megabytes`, default 2048), so that a stage that
trains only the encoder runs several times faster; docs/pretraining.md uses it for the shapes world's grounding
stage.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..builder import build_e2evlp
from ..checkpoint import atomic_write, load_pretrained
from ..config import ConfigError
from ..data.masking import visual_word_ids
from ..data.tokenization import load_tokenizer, save_tokenizer
from ..data.transforms import make_eval_transforms, make_train_transforms
from ..engine import Trainer, TrainerConfig, seed_everything
from ..model_folder import locate_pretrained, save_labels
from ..models.feature_cache import freeze_trunk
from ..yamlio import load_yaml, load_yaml_file
from .data import PretrainingCollator, PretrainingDataset, Source
from .objective import PAPER_TASKS, ObjectiveConfig, PretrainingObjective
from .schema import SECTIONS, validate_config  # warmup: see trunk_warmup (not read by pretrain)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(path_or_name: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML/JSON config (a path, or the name of one shipped in vlpkit/configs/) and apply `key=value`
    overrides with dotted keys (`trainer.max_steps=100`); values are parsed as YAML 1.2.

    Raises:
        ConfigError: invalid YAML, or a key, type or range that `validate_config` refuses; named with the file.
    """
    path = Path(path_or_name)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{path_or_name}.yaml"
        if not shipped.is_file():
            names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"config {path_or_name!r} is neither a file nor a shipped config; "
                                    f"shipped configs: {names}")
        path = shipped
    config = load_yaml_file(path) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a pretraining config is a mapping of sections {SECTIONS}, "
                          f"got {type(config).__name__}")
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; expected {SECTIONS}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value (e.g. trainer.max_steps=100)")
        *parents, leaf = key.split(".")
        if not parents or parents[0] not in SECTIONS:
            raise ValueError(f"override {item!r}: the key must start with one of {SECTIONS}")
        node = config
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node, dict) else node
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents)} is not a section")
        node[leaf] = _parse_value(value)
    try:
        return validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{path}{' with overrides' if overrides else ''}: {err}") from None


def _parse_value(text: str):
    """An override's value as YAML 1.2 (`1e-3` is a float, `no` a string; vlpkit.yamlio)."""
    return load_yaml(text, f"override value {text!r}")


@dataclass
class PretrainResult:
    model: Any
    tokenizer: Any
    history: list[dict]
    output_dir: Path
    setup: Any = None  # ShapesSetup for the shapes world


def load_stage(model_cfg: dict, tokenizer, data_overrides: dict):
    """The model of a finished pretraining run (`model_cfg["init_from"]`), loaded strictly, after checking that it
    fits the data: the same tokenizer vocabulary and the same config values that the data sets (vocabulary and
    class sizes)."""
    if "preset" in model_cfg or model_cfg.get("overrides"):
        raise ValueError("model.init_from loads the architecture from the checkpoint's config.json: remove "
                         f"model.preset / model.overrides (got preset={model_cfg.get('preset')!r}, "
                         f"overrides={model_cfg.get('overrides')!r})")
    files = locate_pretrained(model_cfg["init_from"])
    model = load_pretrained(files.model_dir, build_e2evlp)
    clashes = [f"{k} is {getattr(model.config, k)} in the checkpoint but {v} for the data"
               for k, v in data_overrides.items() if getattr(model.config, k) != v]
    if clashes:
        raise ValueError(f"model.init_from={files.model_dir} does not fit this data: " + ", ".join(clashes))
    tokenizer_dir = files.tokenizer_dir
    if tokenizer_dir is not None and load_tokenizer(tokenizer_dir).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"model.init_from={files.model_dir}: its tokenizer ({tokenizer_dir}) is not the data's; "
                         "pretrain the new stage on the world (or tokenizer) that the checkpoint was trained with")
    return model


def build_data(data_cfg: dict, split: str = "train"):
    """-> (sources, tokenizer, model overrides, setup) from the config's data section; `setup` is the ShapesSetup
    for the shapes world, or (object names, attribute names) for the real files."""
    data_cfg = copy.deepcopy(data_cfg)
    kind = data_cfg.get("kind", "shapes")
    spec = {s["name"]: s for s in data_cfg.get("sources", [{"name": "coco"}, {"name": "vg"}])}
    unknown = sorted(set(spec) - {"coco", "vg"})
    if unknown:
        raise ValueError(f"unknown pretraining source(s) {unknown}; expected 'coco' and/or 'vg'")
    if kind == "shapes":
        from .shapes import prepare_shapes, shapes_sources

        setup = prepare_shapes(**data_cfg.get("shapes", {}))
        kwargs = {}
        for name in ("coco", "vg"):
            s = spec.get(name)
            kwargs[f"{name}_tasks"] = tuple(s["tasks"]) if s and "tasks" in s else (None if s else ())
            if kwargs[f"{name}_tasks"] is None:
                del kwargs[f"{name}_tasks"]
            if s and "weight" in s:
                kwargs[f"{name}_weight"] = float(s["weight"])
        return shapes_sources(setup, split, **kwargs), setup.tokenizer, setup.model_overrides(), setup
    if kind == "files":
        return _file_sources(data_cfg, spec, split)
    raise ValueError(f"data.kind={kind!r}; expected 'shapes' or 'files'")


def check_data_files(data_cfg: dict, spec: dict) -> None:
    """Every file and folder the sources in `spec` read, checked before any is opened: one error lists each
    missing one by its config key (relative paths are read from the working directory)."""
    needed = {"coco": ("instances", "captions", "images"),
              "vg": ("image_data", "objects", "attributes", "images", "object_vocab", "attribute_vocab")}
    missing = []
    for name in spec:
        section = data_cfg.get(name)
        if not isinstance(section, dict):
            missing.append(f"data.{name} (the source's files are not given)")
            continue
        for key in needed[name] + (("region_descriptions",) if section.get("region_descriptions") else ()):
            value = section.get(key)
            if value is None or not Path(value).exists():
                missing.append(f"data.{name}.{key}: {'not set' if value is None else f'{value} not found'}")
    if "tokenizer" not in data_cfg:
        missing.append("data.tokenizer: not set (a BERT vocabulary folder, or run `vlpkit data prepare`)")
    if missing:
        raise FileNotFoundError(f"pretraining data files missing (working directory {Path.cwd()}):\n  "
                                + "\n  ".join(missing))


def _file_sources(data_cfg: dict, spec: dict, split: str):
    """Sources over the real files. With both COCO and Visual Genome, COCO's categories are mapped into the VG
    object vocabulary by name, so that both sources share one class head."""
    from ..data.readers import DataFileError, VisualGenome
    from ..data.vocab import Vocab
    from .sources import CocoWithCaptions, coco_category_names

    check_data_files(data_cfg, spec)
    tokenizer = load_tokenizer(data_cfg["tokenizer"])
    objects = attributes = None
    # the VG vocabularies fix the class numbering even where VG is not a source (a COCO-only validation split
    # must number classes as the training sources do)
    if "vg" in spec or (isinstance(data_cfg.get("vg"), dict) and data_cfg["vg"].get("object_vocab")):
        objects = Vocab.load(data_cfg["vg"]["object_vocab"])
        attributes = Vocab.load(data_cfg["vg"]["attribute_vocab"])
    sources = []
    for name, s in spec.items():
        paths = data_cfg[name]
        if name == "coco":
            names = coco_category_names(paths["instances"])
            category_map = "contiguous"
            if objects is not None:
                import json

                cats = json.loads(Path(paths["instances"]).read_text())["categories"]
                missing = sorted(c["name"] for c in cats if objects.get(c["name"]) is None)
                if missing:
                    raise ValueError(f"COCO categories {missing} are not in the VG object vocabulary "
                                     f"{data_cfg['vg']['object_vocab']}; add them (or aliases) to share one class head")
                category_map = {c["id"]: objects.get(c["name"]) for c in cats}
            else:
                objects = Vocab(names, name="coco categories")
            dataset = CocoWithCaptions(paths["instances"], paths["captions"], paths["images"], category_map)
            text_tasks = sorted(set(s.get("tasks", PAPER_TASKS)) & {"mlm", "itm", "caption", "itc"})
            if text_tasks and dataset.num_without_captions:
                raise DataFileError(
                    f"{paths['captions']}: {dataset.num_without_captions} image(s) of {paths['instances']} have no "
                    f"caption (e.g. image ids {dataset.ids_without_captions[:5]}), but the coco source trains "
                    f"{text_tasks} on every image; remove them from the instances file, or list only detection "
                    "in data.sources' coco tasks")
        else:
            dataset = VisualGenome(paths["image_data"], paths["objects"], paths["attributes"],
                                   paths.get("region_descriptions"), paths["images"], objects, attributes)
        sources.append(Source(name, dataset, tuple(s.get("tasks", ("mlm", "itm", "detection", "attributes",
                                                                   "caption"))), float(s.get("weight", 1.0))))
    overrides = dict(vocab_size=len(tokenizer), num_classes=len(objects),
                     num_attributes=len(attributes) if attributes is not None else 0,
                     pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                     sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    labels = (list(objects), list(attributes) if attributes is not None else [])
    return sources, tokenizer, overrides, labels


def _validation_sources(data_cfg: dict):
    """The validation split's sources, or None when the data section names none (real files without `data.val`)."""
    if data_cfg.get("kind", "shapes") == "shapes":
        return build_data(data_cfg, split="val")[0]
    if "val" not in data_cfg:
        return None
    return build_data({**data_cfg, **data_cfg["val"], "kind": "files"})[0]


def visual_words_of(data_cfg: dict, tokenizer):
    """The token ids that `data.mlm_visual_words` names (not in the paper; default none): "shapes" for the shapes
    world's colour, shape, size and count words, or a list of words. MLM selects them with
    `data.mlm_visual_probability` (default 0.5) instead of `data.mlm_probability`."""
    words = data_cfg.get("mlm_visual_words")
    if words is None:
        return None
    if words == "shapes":
        from ..data.shapes.language import VISUAL_WORDS

        words = VISUAL_WORDS
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"data.mlm_visual_words={words!r}; expected 'shapes' or a list of words")
    return visual_word_ids(tokenizer, words)


def image_transforms(image_cfg: dict):
    """(train, eval) transforms from the config's data.image section (DETR's defaults when empty)."""
    scales = tuple(image_cfg.get("train_scales", range(480, 801, 32)))
    max_size = int(image_cfg.get("max_size", 1333))
    train = make_train_transforms(scales=scales, max_size=max_size, crop=bool(image_cfg.get("crop", True)),
                                  flip=bool(image_cfg.get("flip", True)))
    evaluation = make_eval_transforms(size=int(image_cfg.get("eval_size", max(scales))), max_size=max_size)
    return train, evaluation


def validation_losses(objective, dataset, collator, batch_size: int, max_batches: int):
    """An `eval_fn` for the Trainer: every term of the objective averaged over `max_batches` fixed batches of a
    validation dataset (items spread evenly over it; masks and ITM negatives are seeded by the items, so each
    evaluation sees the same batches). Keys: "val/loss", "val/mlm", "val/itm", "val/detection", ..."""
    count = min(len(dataset), batch_size * max_batches)
    items = sorted({round(k * (len(dataset) - 1) / max(count - 1, 1)) for k in range(count)})

    def eval_fn(model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, len(items), batch_size):
            batch = collator([dataset[i] for i in items[start:start + batch_size]]).to(device)
            for key, value in objective(model, batch).items():
                sums[f"val/{key}"] = sums.get(f"val/{key}", 0.0) + float(value)
            batches += 1
        return {k: v / batches for k, v in sums.items()}

    return eval_fn


def check_trunk_can_learn(config) -> None:
    """Refuse a trunk that starts from random weights but is set up for pretrained ones: a random
    FrozenBatchNorm2d is the identity (the trunk runs unnormalised) and the stages that
    `trainable_backbone_layers` leaves out stay at their random values for the whole run."""
    if config.backbone_weights is not None:
        return
    wrong = []
    if config.backbone_norm == "frozen_bn":
        wrong.append("backbone_norm='frozen_bn' (a random frozen BatchNorm is the identity)")
    if config.trainable_backbone_layers < 5:
        wrong.append(f"trainable_backbone_layers={config.trainable_backbone_layers} (the first "
                     f"{5 - config.trainable_backbone_layers} stage(s) would stay random)")
    if wrong:
        raise ConfigError("model.overrides.backbone_weights is null, so the ResNet starts from random weights, but "
                          + " and ".join(wrong) + ". Set model.overrides.backbone_norm=batch_norm and "
                          "model.overrides.trainable_backbone_layers=5 to train it from scratch, or give "
                          "backbone_weights (a torchvision weights name or a local .pth/.safetensors file)")


def _write_run_files(out: Path, config: dict, tokenizer, setup, logger) -> None:
    """`pretrain_config.json`, `tokenizer/` and `labels.json` (label names beside the model, so that
    `vlpkit.inference.Predictor.from_pretrained(out)` can name detections). A resumed run with a changed config
    logs the keys that changed."""
    path = out / "pretrain_config.json"
    if path.is_file():
        before = _flatten(json.loads(path.read_text()))
        after = _flatten(json.loads(json.dumps(config, default=str)))
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed:
            logger.info(f"{path}: the config changed since the previous start of this run: "
                        + ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed))
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, default=str) + "\n"))
    save_tokenizer(tokenizer, out / "tokenizer")
    if isinstance(setup, tuple):
        save_labels(out, *setup)
    elif setup is not None:
        save_labels(out, setup.object_vocab.tokens, setup.attribute_vocab.tokens)


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()} or {
        prefix: {}}


def pretrain(config: dict, eval_fn=None, resume: bool = False) -> PretrainResult:
    """Train E2E-VLP with the joint objective. Writes `<output_dir>/{pretrain_config.json, tokenizer/, model/,
    checkpoints/, log.jsonl}`.

    Periodic validation (`trainer.eval_every` > 0): unless `eval_fn` is given, the objective's terms on
    `data.val_batches` (default 4) fixed batches of the validation split (the shapes world's "val"; for real files
    a `data.val` section with the same keys as `data`)."""
    config = validate_config(copy.deepcopy(config))
    data_cfg = config.get("data", {})
    sources, tokenizer, data_overrides, setup = build_data(data_cfg)
    model_cfg = config.get("model", {})
    trainer_cfg = TrainerConfig.from_dict(config.get("trainer", {}))
    seed_everything(trainer_cfg.seed, trainer_cfg.deterministic)  # the initial weights are part of the seeded run
    unknown = sorted(set(model_cfg) - {"preset", "overrides", "init_from", "frozen_trunk", "trunk_cache_megabytes"})
    if unknown:
        raise ValueError(f"model section: unknown key(s) {unknown}; expected preset, overrides, init_from, "
                         "frozen_trunk, trunk_cache_megabytes")
    if model_cfg.get("init_from"):
        model = load_stage(model_cfg, tokenizer, data_overrides)
    else:
        model = build_e2evlp(model_cfg.get("preset", "e2evlp-tiny"),
                             **{**data_overrides, **model_cfg.get("overrides", {})})
        check_trunk_can_learn(model.config)
    if model_cfg.get("frozen_trunk"):
        freeze_trunk(model, float(model_cfg.get("trunk_cache_megabytes", 2048.0)))
    objective = PretrainingObjective(ObjectiveConfig.from_dict(config.get("objective", {})),
                                     model.config.num_classes, model.config.num_attributes,
                                     model.config.pad_token_id)
    train_tf, _ = image_transforms(data_cfg.get("image", {}))
    dataset = PretrainingDataset(sources, train_tf, seed=trainer_cfg.seed)
    visual_ids = visual_words_of(data_cfg, tokenizer)
    collator = PretrainingCollator(tokenizer, max_length=model.config.max_text_length,
                                   mlm_probability=float(data_cfg.get("mlm_probability", 0.15)),
                                   p_negative=float(data_cfg.get("itm_negative_rate", 0.5)), seed=trainer_cfg.seed,
                                   itm_extra_negatives=int(data_cfg.get("itm_extra_negatives", 0)),
                                   itm_unmasked_only=bool(data_cfg.get("itm_unmasked_only", False)),
                                   visual_ids=visual_ids,
                                   visual_probability=None if visual_ids is None
                                   else float(data_cfg.get("mlm_visual_probability", 0.5)))
    out = Path(trainer_cfg.output_dir)
    if eval_fn is None and trainer_cfg.eval_every:
        val_sources = _validation_sources(data_cfg)
        if val_sources is not None:
            _, eval_tf = image_transforms(data_cfg.get("image", {}))
            eval_fn = validation_losses(objective, PretrainingDataset(val_sources, eval_tf, seed=trainer_cfg.seed),
                                        collator, trainer_cfg.batch_size, int(data_cfg.get("val_batches", 4)))
    trainer = Trainer(model, objective, dataset, collator, trainer_cfg, eval_fn=eval_fn)
    # the run folder changes only after every check (lock, writability, existing checkpoints, the resume itself)
    trainer.start(resume=resume)
    try:
        if trainer.accelerator.is_main_process:
            _write_run_files(out, config, tokenizer, setup, trainer.logger)
        history = trainer.train(resume=resume)
        if trainer.accelerator.is_main_process:
            model.save_pretrained(out / "model")
    finally:
        trainer.release()
    return PretrainResult(model, tokenizer, history, out, setup if not isinstance(setup, tuple) else None)
