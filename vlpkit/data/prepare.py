"""`prepare_pretraining_data`: turn the official COCO and Visual Genome files into what pretraining needs, offline.

What it writes under `out/` (and reports, with every count, in `out/prepare_report.json`):

- `tokenizer/`: the given BERT vocabulary copied, or, when none is given, a WordPiece vocabulary trained on the
  pretraining texts (COCO captions and VG region phrases); every task then reuses it from the run folder.
- `vg/objects_vocab.json`, `vg/attributes_vocab.json`: the most frequent VG object and attribute names
  (`build_vg_vocabs`). Each COCO category is mapped onto the object vocabulary by name, through the shipped alias
  table `vlpkit/data/tables/coco_to_vg_objects.json` ("dining table" -> "table"); a category with no match is added
  as a class of its own. The mapping (exact / alias / added) is in the report and the aliases are saved in the
  vocabulary, so that pretraining puts both sources into one class head.
- `coco/instances.json`: the COCO instances without the images that have no caption, which every text task would
  fail on (their count is reported; detection-only users can keep the original file).
- `vg/{image_data,objects,attributes,region_descriptions}.json`: Visual Genome without the images that are also
  COCO images of the downstream validation and test splits (`exclude`: files naming those images), as
  UNITER/LXMERT-style pretraining does, so that no evaluation image was seen in pretraining.
- `data.yaml`: the pretraining config's `data` section over these files (`vlpkit data prepare` also writes
  `pretrain.yaml`: a shipped config with this data section, ready for `vlpkit pretrain --config`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .readers.coco import load_coco
from .readers.images import DataFileError, read_json
from .tokenization import load_tokenizer, save_tokenizer, train_wordpiece
from .vocab import Vocab

_INSTANCE_KEYS = ("id", "image_id", "category_id", "bbox")
ALIAS_TABLE = Path(__file__).resolve().parent / "tables" / "coco_to_vg_objects.json"


def coco_image_ids(path: str | Path) -> set[int]:
    """COCO image ids named by an evaluation file: COCO instances / captions (`images[*].id`), a Karpathy file
    (`images[*].cocoid` of its val and test splits), or VQA questions / annotations (`*[*].image_id`)."""
    data = read_json(path, "an evaluation file naming COCO images")
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        images = data["images"]
        if images and "cocoid" in images[0]:  # Karpathy: only its held-out splits are evaluation images
            return {im["cocoid"] for im in images if im.get("split") in ("val", "test")}
        return {im["id"] for im in images}
    for key in ("questions", "annotations"):
        if isinstance(data, dict) and isinstance(data.get(key), list):
            return {q["image_id"] for q in data[key]}
    raise DataFileError(f"{path}: cannot find COCO image ids; expected COCO instances/captions ('images'), a "
                        "Karpathy file ('images' with 'cocoid') or VQA questions/annotations")


def map_coco_categories(categories: list[dict], objects: Vocab, table: dict[str, list[str]] | None = None):
    """-> (objects with COCO names as aliases or added tokens, {coco name: (how, vg name)}), how in
    "exact" | "alias" | "added"."""
    table = table if table is not None else json.loads(ALIAS_TABLE.read_text())
    tokens, aliases, mapping = list(objects.tokens), dict(objects.aliases), {}
    for cat in sorted(categories, key=lambda c: c["id"]):
        name = cat["name"]
        if name in objects:
            mapping[name] = ("exact", name)
            continue
        match = next((n for n in table.get(name, []) if n in objects and n != name), None)
        if match is not None:
            aliases[name] = objects.tokens[objects.index(match)]
            mapping[name] = ("alias", aliases[name])
        else:
            tokens.append(name)
            mapping[name] = ("added", name)
    return Vocab(tokens, aliases, name=f"{objects.name} + COCO categories"), mapping


def _write(path: Path, data: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path.resolve())


def prepare_pretraining_data(out: str | Path, coco_instances: str | Path, coco_captions: str | Path,
                             coco_images: str | Path, vg_image_data: str | Path | None = None,
                             vg_objects: str | Path | None = None, vg_attributes: str | Path | None = None,
                             vg_region_descriptions: str | Path | None = None, vg_images: str | Path | None = None,
                             tokenizer: str | Path | None = None, vocab_size: int = 30522,
                             num_objects: int = 1600, num_attributes: int = 400,
                             exclude: Iterable[str | Path] = ()) -> dict:
    """Prepare COCO (+ Visual Genome when its files are given) for pretraining; see the module docstring.

    Returns:
        The report (also written to `out/prepare_report.json`): counts of images kept and removed per reason,
        the tokenizer's origin and size, the vocabulary sizes and the COCO category mapping.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    # the readers' checks (ids, sizes, duplicates) before anything is written
    instances = load_coco(coco_instances, "COCO instances (instances_*.json)", _INSTANCE_KEYS, True).dataset
    captions = load_coco(coco_captions, "COCO captions (captions_*.json)", ("id", "image_id", "caption"),
                         False).dataset
    captioned = {a["image_id"] for a in captions.get("annotations", [])}
    kept = [im for im in instances["images"] if im["id"] in captioned]
    kept_ids = {im["id"] for im in kept}
    report["coco"] = {"images": len(instances["images"]), "removed_without_captions": len(instances["images"]) - len(kept),
                      "kept": len(kept)}
    if not kept:
        raise DataFileError(f"{coco_captions} has no caption for any image of {coco_instances}: are they the same "
                            "split?")
    coco_out = _write(out / "coco" / "instances.json",
                      {**instances, "images": kept,
                       "annotations": [a for a in instances["annotations"] if a["image_id"] in kept_ids]})
    texts = [a["caption"] for a in captions["annotations"] if a["image_id"] in kept_ids]

    data: dict[str, Any] = {"kind": "files", "sources": [{"name": "coco", "tasks": ["mlm", "itm", "detection",
                                                                                      "caption"]}],
                            "coco": {"instances": coco_out, "captions": str(Path(coco_captions).resolve()),
                                     "images": str(Path(coco_images).resolve())}}
    vg_files = (vg_image_data, vg_objects, vg_attributes)
    if any(f is not None for f in vg_files):
        if not all(f is not None for f in vg_files) or vg_images is None:
            raise ValueError("Visual Genome needs vg_image_data, vg_objects, vg_attributes and vg_images together")
        data["vg"], report["vg"], phrases = _prepare_vg(out, vg_image_data, vg_objects, vg_attributes,
                                                        vg_region_descriptions, vg_images, exclude, num_objects,
                                                        num_attributes, instances["categories"], report)
        data["sources"].append({"name": "vg", "tasks": ["mlm", "detection", "attributes"]})
        texts += phrases

    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        report["tokenizer"] = {"from": str(tokenizer), "size": len(tok)}
    else:
        tok = train_wordpiece(texts, vocab_size=vocab_size)
        report["tokenizer"] = {"from": f"WordPiece trained on {len(texts)} pretraining texts", "size": len(tok)}
    data["tokenizer"] = str(save_tokenizer(tok, out / "tokenizer").resolve())
    (out / "data.yaml").write_text(json.dumps(data, indent=1) + "\n")  # JSON is YAML
    (out / "prepare_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _prepare_vg(out: Path, image_data, objects, attributes, regions, images, exclude, num_objects: int,
                num_attributes: int, coco_categories: list[dict], report: dict):
    from .readers.visual_genome import build_vg_vocabs

    excluded: set[int] = set()
    for path in exclude:
        excluded |= coco_image_ids(path)
    entries = read_json(image_data, "Visual Genome image_data.json")
    dropped = {e["image_id"] for e in entries if e.get("coco_id") is not None and e["coco_id"] in excluded}
    files = {"image_data": entries, "objects": read_json(objects, "Visual Genome objects.json"),
             "attributes": read_json(attributes, "Visual Genome attributes.json")}
    if regions is not None:
        files["region_descriptions"] = read_json(regions, "Visual Genome region_descriptions.json")
    written = {}
    for name, records in files.items():
        if name != "region_descriptions":
            key = "image_id"
            kept = [r for r in records if r[key] not in dropped]
        else:  # [{"regions": [{"image_id", ...}], "id"}] per image
            kept = [r for r in records if not r.get("regions") or r["regions"][0]["image_id"] not in dropped]
        written[name] = _write(out / "vg" / f"{name}.json", kept)
        files[name] = kept
    object_vocab, attribute_vocab = build_vg_vocabs(files["objects"], files["attributes"], num_objects,
                                                    num_attributes)
    merged, mapping = map_coco_categories(coco_categories, object_vocab)
    merged.save(out / "vg" / "objects_vocab.json")
    attribute_vocab.save(out / "vg" / "attributes_vocab.json")
    report["coco_categories"] = {name: {"how": how, "vg": vg} for name, (how, vg) in mapping.items()}
    report["coco_category_counts"] = {how: sum(1 for h, _ in mapping.values() if h == how)
                                      for how in ("exact", "alias", "added")}
    phrases = [r["phrase"] for item in files.get("region_descriptions", []) for r in item.get("regions", [])]
    vg = {**written, "images": str(Path(images).resolve()),
          "object_vocab": str((out / "vg" / "objects_vocab.json").resolve()),
          "attribute_vocab": str((out / "vg" / "attributes_vocab.json").resolve())}
    if "region_descriptions" not in written:
        vg["region_descriptions"] = None
    stats = {"images": len(entries), "removed_in_downstream_eval": len(dropped), "kept": len(entries) - len(dropped),
             "excluded_coco_ids": len(excluded), "objects_vocab": len(merged), "attributes_vocab": len(attribute_vocab)}
    return vg, stats, phrases
