"""`DictConfig`: every config dataclass of vlpkit round-trips through a dict and JSON, and refuses unknown keys
with its own name and the valid ones."""

from __future__ import annotations

import pytest

from vlpkit.config import ConfigError, E2EVLPConfig
from vlpkit.config_io import DictConfig
from vlpkit.engine import TrainerConfig
from vlpkit.pretraining.objective import ObjectiveConfig
from vlpkit.tasks.registry import get_task, task_names

CONFIGS = [E2EVLPConfig, TrainerConfig, ObjectiveConfig] + [get_task(n).config_class for n in task_names()]
LABELS = {E2EVLPConfig: "config", TrainerConfig: "trainer config", ObjectiveConfig: "objective"}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_round_trip_and_unknown_keys(cls, tmp_path):
    assert issubclass(cls, DictConfig)
    config = cls()
    assert cls.from_dict(config.to_dict()) == config
    config.save(tmp_path / "c.json")
    assert cls.load(tmp_path / "c.json") == config == cls.from_json(config.to_json())
    label = LABELS.get(cls, cls.__name__)
    with pytest.raises(ConfigError, match=rf"unknown {label} field\(s\) \['nope'\]; valid fields: \["):
        cls.from_dict({**config.to_dict(), "nope": 1})
    with pytest.raises(ConfigError, match=rf"unknown {label} field\(s\) \['nope'\]"):
        config.replace(nope=1)
    with pytest.raises(FileNotFoundError, match=rf"missing.json \(expected a JSON file written by {cls.__name__}"):
        cls.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON"):
        cls.load(tmp_path / "bad.json")


def test_replace_checks_the_new_values_again():
    assert TrainerConfig().replace(batch_size=3).batch_size == 3
    with pytest.raises(ConfigError, match="batch_size=0; expected >= 1"):
        TrainerConfig().replace(batch_size=0)
    with pytest.raises(ValueError, match="itc_temperature"):
        ObjectiveConfig().replace(itc_temperature=0.0)
