"""The pretraining config's schema: every section and key, with its type and range, checked before anything runs.

`validate_config(config)` raises a `ConfigError` that names the key (`data.itm_negative_rate`), the value and what
is allowed. The `model.overrides`, `objective` and `trainer` sections are checked by building their config objects
(`E2EVLPConfig`, `ObjectiveConfig`, `TrainerConfig`, which check types and ranges themselves); the `data` and
`warmup` sections, plain dicts read in several places, are described here.
"""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

from ..schema import ConfigError, check_range, check_section

SECTIONS = ("model", "objective", "trainer", "data", "warmup")

MODEL = {"preset": str, "overrides": dict[str, Any], "init_from": str, "frozen_trunk": bool,
         "trunk_cache_megabytes": float}
SOURCE = {"name": str, "tasks": list[str], "weight": float}
IMAGE = {"train_scales": list[int], "max_size": int, "crop": bool, "flip": bool, "eval_size": int}
COCO_FILES = {"instances": str, "captions": str, "images": str}
VG_FILES = {"image_data": str, "objects": str, "attributes": str, "region_descriptions": str | None, "images": str,
            "object_vocab": str, "attribute_vocab": str}
DATA = {"kind": str, "shapes": dict[str, Any], "sources": list[dict[str, Any]], "image": dict[str, Any],
        "mlm_probability": float, "mlm_visual_words": str | list[str] | None, "mlm_visual_probability": float,
        "itm_negative_rate": float, "itm_extra_negatives": int, "itm_unmasked_only": bool, "val_batches": int,
        "tokenizer": str, "coco": dict[str, Any], "vg": dict[str, Any], "val": dict[str, Any]}
WARMUP = {"steps": int, "batch_size": int, "lr": float, "weight_decay": float, "seed": int}


def _shapes_schema() -> dict[str, Any]:
    from ..data.shapes.world import WorldConfig

    hints = typing.get_type_hints(WorldConfig)
    schema = {f.name: hints[f.name] for f in fields(WorldConfig)}
    schema["scene"] = dict[str, Any]  # a SceneConfig written as a mapping; SceneConfig checks its own fields
    return {**schema, "root": str | None, "vocab_size": int}


def validate_config(config: Any) -> dict:
    """Check a whole pretraining config (as `load_config` returns it, overrides applied).

    Raises:
        ConfigError: the first problem, naming `section.key`, the value and what is allowed.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a pretraining config is a mapping of sections {SECTIONS}, got {type(config).__name__}")
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; expected {SECTIONS}")
    for name in SECTIONS:
        if config.get(name) is not None and not isinstance(config[name], dict):
            raise ConfigError(f"section {name!r} must be a mapping, got {type(config[name]).__name__}")
    _model(config.get("model") or {})
    _wrapped("objective", lambda: _objective(config.get("objective") or {}))
    _wrapped("trainer", lambda: _trainer(config.get("trainer") or {}))
    _data("data", config.get("data") or {})
    _warmup(config.get("warmup") or {})
    return config


def _wrapped(section: str, check) -> None:
    try:
        check()
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}: {err}") from None


def _objective(values: dict) -> None:
    from .objective import ObjectiveConfig

    ObjectiveConfig.from_dict(values)


def _trainer(values: dict) -> None:
    from ..engine import TrainerConfig

    try:
        TrainerConfig.from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"trainer.{err}" if not str(err).startswith("unknown") else f"trainer: {err}") from None


def _model(values: dict) -> None:
    from ..presets import get_preset

    values = check_section("model", values, MODEL)
    if values.get("init_from") is None:
        try:
            get_preset(values.get("preset", "e2evlp-tiny"), **values.get("overrides", {}))
        except ConfigError as err:
            raise ConfigError(f"model.overrides: {err}") from None
    if "trunk_cache_megabytes" in values:
        check_range("model.trunk_cache_megabytes", values["trunk_cache_megabytes"], 0, low_open=True)


def _data(section: str, values: dict) -> None:
    from .objective import TASKS

    values = check_section(section, values, DATA if section == "data" else {k: v for k, v in DATA.items()
                                                                             if k != "val"})
    kind = values.get("kind", "shapes")
    if kind not in ("shapes", "files"):
        raise ConfigError(f"{section}.kind={kind!r}; expected 'shapes' or 'files'")
    for key in ("mlm_probability", "mlm_visual_probability"):
        if key in values:
            check_range(f"{section}.{key}", values[key], 0, 1, low_open=True)
    if "itm_negative_rate" in values:
        check_range(f"{section}.itm_negative_rate", values["itm_negative_rate"], 0, 1)
    if "itm_extra_negatives" in values:
        check_range(f"{section}.itm_extra_negatives", values["itm_extra_negatives"], 0)
    if "val_batches" in values:
        check_range(f"{section}.val_batches", values["val_batches"], 1)
    if values.get("itm_unmasked_only") and not values.get("itm_extra_negatives"):
        raise ConfigError(f"{section}.itm_unmasked_only scores ITM on the unmasked extra rows only: set "
                          f"{section}.itm_extra_negatives >= 1")
    words = values.get("mlm_visual_words")
    if isinstance(words, str) and words != "shapes":
        raise ConfigError(f"{section}.mlm_visual_words={words!r}; expected 'shapes' or a list of words")
    for i, source in enumerate(values.get("sources", [])):
        key = f"{section}.sources[{i}]"
        source = check_section(key, source, SOURCE, required=("name",))
        if source["name"] not in ("coco", "vg"):
            raise ConfigError(f"{key}.name={source['name']!r}; expected 'coco' or 'vg'")
        bad = sorted(set(source.get("tasks", ())) - set(TASKS))
        if bad:
            raise ConfigError(f"{key}.tasks: unknown task(s) {bad}; valid tasks: {TASKS}")
        if "weight" in source:
            check_range(f"{key}.weight", source["weight"], 0)
    image = check_section(f"{section}.image", values.get("image", {}), IMAGE)
    for i, scale in enumerate(image.get("train_scales", [1])):
        check_range(f"{section}.image.train_scales[{i}]", scale, 1)
    if "train_scales" in image and not image["train_scales"]:
        raise ConfigError(f"{section}.image.train_scales is empty; expected at least one size")
    for key in ("max_size", "eval_size"):
        if key in image:
            check_range(f"{section}.image.{key}", image[key], 1)
    if "shapes" in values:
        shapes = check_section(f"{section}.shapes", values["shapes"], _shapes_schema())
        for key in ("num_images", "vocab_size"):
            if key in shapes:
                check_range(f"{section}.shapes.{key}", shapes[key], 1)
    if "coco" in values:
        check_section(f"{section}.coco", values["coco"], COCO_FILES)
    if "vg" in values:
        check_section(f"{section}.vg", values["vg"], VG_FILES)
    if "val" in values:
        _data(f"{section}.val", values["val"])


def _warmup(values: dict) -> None:
    values = check_section("warmup", values, WARMUP)
    for key, low, open_ in (("steps", 0, False), ("batch_size", 1, False), ("lr", 0, True),
                            ("weight_decay", 0, False), ("seed", 0, False)):
        if key in values:
            check_range(f"warmup.{key}", values[key], low, low_open=open_)
