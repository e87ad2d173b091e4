"""NLVR2 accuracy and consistency, as the official ``nlvr2/eval/metrics.py`` (lil-lab/nlvr) computes them.

* accuracy: fraction of examples whose prediction equals the label, compared case-insensitively
  (``"true"`` == ``"True"``);
* consistency: fraction of sentences whose predictions are all correct, over every image pair the sentence was
  written for. The group key is the identifier with its pair-id field blanked: ``dev-850-0-0`` -> ``dev-850--0``.

Files: the official jsonl (one example per line, with ``identifier`` and ``label`` "True"/"False") and a
prediction CSV of ``identifier,prediction`` lines without header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class NLVR2Result:
    """accuracy and consistency as fractions in [0, 1]; num_examples and num_groups (unique sentences)."""

    accuracy: float
    consistency: float
    num_examples: int
    num_groups: int


def consistency_key(identifier: str) -> str:
    """Group key of an identifier ``split-setid-pairid-sentenceid``: the pair id blanked (``dev-850--0``)."""
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(
            f"NLVR2 identifier must look like 'split-setid-pairid-sentenceid', got {identifier!r}"
        )
    parts[2] = ""
    return "-".join(parts)


def load_nlvr2_labels(path: str | Path) -> dict[str, str]:
    """``{identifier: label}`` from an official NLVR2 jsonl file (file order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NLVR2 annotation file not found: {path}")
    labels: dict[str, str] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            ex = json.loads(line)
            if "identifier" not in ex or "label" not in ex:
                raise KeyError(f"{path}:{n}: example lacks 'identifier' or 'label' (keys: {sorted(ex)})")
            if ex["identifier"] in labels:
                raise ValueError(f"{path}:{n}: identifier {ex['identifier']} appears twice")
            labels[ex["identifier"]] = ex["label"]
    return labels


def load_nlvr2_predictions(path: str | Path) -> dict[str, str]:
    """``{identifier: prediction}`` from an ``identifier,prediction`` CSV (no header, as the official script)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NLVR2 prediction file not found: {path}")
    preds: dict[str, str] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            if len(fields) != 2:
                raise ValueError(f"{path}:{n}: expected 'identifier,prediction', got {line.strip()!r}")
            if fields[0] in preds:
                raise ValueError(f"{path}:{n}: identifier {fields[0]} is predicted twice")
            preds[fields[0]] = fields[1]
    return preds


def evaluate_nlvr2(labels: Mapping[str, str], predictions: Mapping[str, str | bool]) -> NLVR2Result:
    """Accuracy and consistency of ``predictions`` (``{identifier: "True"/"False" or bool}``).

    Every labelled example needs a prediction (the official script stops otherwise); predictions for
    identifiers that are not labelled are an error too.
    """
    if not labels:
        raise ValueError("no labelled NLVR2 examples to evaluate")
    missing = [k for k in labels if k not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} NLVR2 example(s) have no prediction, e.g. {missing[:5]}")
    extra = [k for k in predictions if k not in labels]
    if extra:
        raise ValueError(f"{len(extra)} prediction(s) are for unlabelled identifiers, e.g. {extra[:5]}")
    correct = 0
    consistent: dict[str, bool] = {}
    for ident, label in labels.items():
        ok = str(predictions[ident]).lower() == str(label).lower()
        correct += ok
        key = consistency_key(ident)
        consistent[key] = consistent.get(key, True) and ok
    return NLVR2Result(
        accuracy=correct / len(labels),
        consistency=sum(consistent.values()) / len(consistent),
        num_examples=len(labels),
        num_groups=len(consistent),
    )


def evaluate_nlvr2_files(annotation_file: str | Path, prediction_csv: str | Path) -> NLVR2Result:
    """`evaluate_nlvr2` on the official jsonl and a prediction CSV."""
    return evaluate_nlvr2(load_nlvr2_labels(annotation_file), load_nlvr2_predictions(prediction_csv))


def write_nlvr2_predictions(path: str | Path, predictions: Mapping[str, bool | str]) -> None:
    """Write ``{identifier: bool or "True"/"False"}`` as the official ``identifier,prediction`` CSV."""
    with open(path, "w") as f:
        for ident, p in predictions.items():
            value = str(p)
            if value.lower() not in ("true", "false"):
                raise ValueError(f"prediction for {ident} must be True/False, got {p!r}")
            f.write(f"{ident},{value}\n")
