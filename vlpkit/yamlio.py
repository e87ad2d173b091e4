"""YAML with YAML 1.2's booleans and floats, for every config and data file vlpkit reads.

PyYAML implements YAML 1.1, where `no`, `off`, `yes` and `on` are booleans (so `mixed_precision: no` arrives as
False) and `1e-3` is a string (its float pattern needs a dot). YAML 1.2, which JSON and most other tools follow,
reads only `true`/`false` as booleans and `1e-3` as a float; this loader does the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .schema import ConfigError

_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"


class Yaml12Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 core-schema booleans and floats."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Yaml12Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"), list("-+0123456789."))


class YamlError(ConfigError):
    """A YAML file that cannot be parsed; the message names the file, the line and the column."""


def load_yaml(text: str, source: str | Path = "<string>") -> Any:
    """Parse YAML text with `Yaml12Loader`; a syntax error raises `YamlError` naming `source`."""
    try:
        return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise YamlError(f"{source} is not valid YAML: {err}") from None


def load_yaml_file(path: str | Path) -> Any:
    """`load_yaml` of a file's text (YAML also reads JSON)."""
    path = Path(path)
    return load_yaml(path.read_text(), path)
