"""`DictConfig`: the one dict/JSON round trip of vlpkit's config dataclasses (`E2EVLPConfig`, `TrainerConfig`,
`ObjectiveConfig` and the task recipes).

Unknown keys are refused with the valid ones listed, whether they come from a dict (`from_dict`), a JSON file
(`load`) or keyword changes (`replace`); `replace` runs the dataclass's own checks (`__post_init__`) again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .schema import ConfigError

__all__ = ["DictConfig"]

C = TypeVar("C", bound="DictConfig")


class DictConfig:
    """Mixin of a config dataclass: `field_names`, `from_dict`, `to_dict`, `replace`, `to_json`, `from_json`,
    `save`, `load`. `config_label` names the config in error messages ("trainer config field(s) ...")."""

    config_label: ClassVar[str] = "config"

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _check_keys(cls, keys) -> None:
        unknown = sorted(set(keys) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown {cls.config_label} field(s) {unknown}; valid fields: {cls.field_names()}")

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict; unknown keys raise a `ConfigError` listing the valid ones."""
        cls._check_keys(data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (checked again); unknown names raise a `ConfigError`."""
        self._check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """Read a file written by `save`.

        Raises:
            FileNotFoundError: no such file.
            ConfigError: the file is not JSON, or holds unknown keys.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{cls.config_label} file not found: {path} (expected a JSON file written by "
                                    f"{cls.__name__}.save)")
        try:
            return cls.from_json(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
