"""COCO detection with paired text: config, checkpoint loading with a re-initialised class layer, what the encoder
reads, the loss against targets built from the JSON by hand, the COCO results format (an oracle scores AP 1), and a
short fine-tuning run whose folder the predictor loads."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops import box_convert

from vlpkit import build_e2evlp
from vlpkit.data import save_tokenizer
from vlpkit.engine.optim import param_groups
from vlpkit.inference import E2EVLPPredictor
from vlpkit.outputs import DetectionOutput
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks.detection import (
    CLASS_HEAD,
    DetectionCollator,
    DetectionConfig,
    DetectionDataset,
    DetectionModel,
    build_criterion,
    detection_loss,
    detection_split,
    evaluate_detection,
    finetune_detection,
)

SMALL = dict(train_scales=[64], max_size=96, eval_size=64, crop=False, flip=False, trainer={"batch_size": 4},
             eval_batch_size=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("detection") / "world", num_images=40, seed=5, vocab_size=200)


@pytest.fixture(scope="module")
def tiny(setup):
    torch.manual_seed(0)
    return build_e2evlp("e2evlp-tiny", **setup.model_overrides()).eval()


def _batch(setup, paired_text=True, train=False, n=3):
    cfg = DetectionConfig(**SMALL)
    data = DetectionDataset(detection_split(setup, "train"), cfg.eval_transforms(), paired_text, train=train)
    return data, DetectionCollator(setup.tokenizer)([data[i] for i in range(n)])


def test_config_round_trip_unknown_keys_and_backbone_prefix(tiny):
    cfg = DetectionConfig(paired_text=False, trainer={"epochs": 3, "lr_drop_epochs": [2]})
    assert DetectionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"bogus.*paired_text"):
        DetectionConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="max_size"):
        DetectionConfig(train_scales=[1400])
    trainer = cfg.trainer_config("out", max_steps=5)
    assert (trainer.max_steps, trainer.epochs, trainer.lr_drop_epochs) == (5, 3, [2])
    # the recipe's backbone prefix must select the ResNet trunk inside the task wrapper, and only it
    model = DetectionModel(tiny)
    groups = {g["name"]: g["params"] for g in param_groups(model, 1e-4, 1e-5, 0.0, trainer.backbone_prefix)}
    trunk = {id(p) for n, p in model.named_parameters() if n.startswith("e2evlp.backbone.trunk.") and p.requires_grad}
    assert trunk and {id(p) for p in groups["backbone"]} == trunk


def test_pretraining_checkpoint_loads_and_class_layer_is_reinitialised(setup, tmp_path, caplog):
    torch.manual_seed(1)
    pretrained = build_e2evlp("e2evlp-tiny", **{**setup.model_overrides(), "num_classes": 9})
    pretrained.save_pretrained(tmp_path / "run" / "model")  # a pretraining run folder: <run>/model/
    with caplog.at_level("WARNING"):
        model = DetectionModel.from_checkpoint(tmp_path / "run", num_classes=6)
    assert model.new_parameters == sorted(CLASS_HEAD)
    assert all(name in caplog.text for name in CLASS_HEAD)
    assert model.config.num_classes == 6 and model.e2evlp.detection_head.class_embed.out_features == 7
    old, new = pretrained.state_dict(), model.e2evlp.state_dict()
    kept = [k for k in old if not k.startswith("detection_head.class_embed.")]
    assert kept and all(torch.equal(old[k], new[k]) for k in kept)  # box MLP, queries, encoder... unchanged
    same = DetectionModel.from_checkpoint(tmp_path / "run" / "model", num_classes=9)
    assert same.new_parameters == []
    assert all(torch.equal(v, same.e2evlp.state_dict()[k]) for k, v in old.items())
    overrides = {k: v for k, v in setup.model_overrides().items() if k != "num_classes"}
    fresh = DetectionModel.from_checkpoint(None, num_classes=6, **overrides)
    assert fresh.config.num_classes == 6 and fresh.new_parameters == []  # from scratch: sized for the data


def test_paired_text_decides_what_the_encoder_reads(setup, tiny):
    _, batch = _batch(setup)
    other = _batch(setup)[1]
    other.input_ids, other.attention_mask, other.token_type_ids = (t.flip(0) for t in (
        batch.input_ids, batch.attention_mask, batch.token_type_ids))  # every image gets another's caption
    with torch.no_grad():
        paired, alone = DetectionModel(tiny, paired_text=True), DetectionModel(tiny, paired_text=False)
        with_text = tiny.detect(tiny.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids,
                                            batch.attention_mask, batch.token_type_ids))
        without = tiny.detect(tiny.encode(batch.pixel_values, batch.pixel_mask))
        assert torch.allclose(paired(batch).pred_logits, with_text.pred_logits, atol=1e-6)
        assert not torch.allclose(paired(other).pred_logits, with_text.pred_logits, atol=1e-4)
        assert torch.allclose(alone(batch).pred_boxes, without.pred_boxes, atol=1e-6)
        assert torch.equal(alone(other).pred_boxes, alone(batch).pred_boxes)


def test_dataset_captions_and_unpaired_collation(setup):
    data, batch = _batch(setup, paired_text=True, train=False)
    captions = [data.data[i]["captions"] for i in range(3)]
    assert [m["caption"] for m in batch.meta] == [c[0] for c in captions]  # evaluation: the first caption
    train = DetectionDataset(detection_split(setup, "train"), DetectionConfig(**SMALL).eval_transforms(), True,
                             train=True, seed=3)
    drawn = [[train[i][2] for i in range(3)] for _ in range(2)]
    assert drawn[0] == drawn[1] and all(c in caps for c, caps in zip(drawn[0], captions))
    seen = set()
    for epoch in range(8):  # a different caption is drawn in other epochs
        train.set_epoch(epoch)
        seen.add(train[0][2])
    assert len(seen) > 1
    _, unpaired = _batch(setup, paired_text=False)
    tok = setup.tokenizer
    assert unpaired.input_ids.tolist() == [[tok.cls_token_id, tok.sep_token_id]] * 3
    assert all(m["caption"] is None for m in unpaired.meta)


def test_loss_against_targets_built_from_the_json(setup, tiny):
    data, batch = _batch(setup, n=2)
    coco = json.loads(data.split.instances.read_text())
    images = {im["id"]: im for im in coco["images"]}
    cat_order = sorted(c["id"] for c in coco["categories"])
    targets = []
    for meta in batch.meta:  # normalised cxcywh and contiguous labels, by hand from the official file
        im = images[meta["image_id"]]
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        scale = torch.tensor([im["width"], im["height"]] * 2, dtype=torch.float32)
        targets.append({"boxes": box_convert(xywh, "xywh", "cxcywh") / scale,
                        "labels": torch.tensor([cat_order.index(a["category_id"]) for a in anns])})
    model = DetectionModel(tiny, paired_text=True)
    cfg = DetectionConfig(**SMALL)
    criterion = build_criterion(cfg, 6)
    with torch.no_grad():
        out = detection_loss(model, batch, criterion)
        outputs = tiny.detect(tiny.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids,
                                          batch.attention_mask, batch.token_type_ids)).to_dict()
        reference = criterion(outputs, targets)
    for key, value in reference.items():
        assert torch.allclose(out[key], value, atol=1e-5), key
    layers = [""] + [f"_{i}" for i in range(len(outputs["aux_outputs"]))]
    total = sum(reference[f"loss_ce{s}"] + 5 * reference[f"loss_bbox{s}"] + 2 * reference[f"loss_giou{s}"]
                for s in layers)
    assert len(layers) == tiny.config.num_decoder_layers
    assert torch.allclose(out["loss"], total, atol=1e-5)


class _Oracle(DetectionModel):
    """Predicts the batch's ground truth: one query per object with its class, the rest no-object."""

    def forward(self, batch):
        queries, k = self.config.num_queries, self.config.num_classes
        logits = torch.full((len(batch), queries, k + 1), -10.0)
        logits[..., k] = 10.0
        boxes = torch.full((len(batch), queries, 4), 0.5)
        for i, t in enumerate(batch.targets):
            n = len(t["labels"])
            logits[i, :n, k] = -10.0
            logits[i, torch.arange(n), t["labels"]] = 10.0
            boxes[i, :n] = t["boxes"]
        return DetectionOutput(logits, boxes)


def test_results_file_is_coco_format_and_an_oracle_scores_ap_1(setup, tiny, tmp_path):
    cfg = DetectionConfig(**SMALL)
    metrics = evaluate_detection(_Oracle(tiny), setup.tokenizer, setup, "val", tmp_path, cfg)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    gt = json.loads(setup.world.instances("val").read_text())
    results = json.loads((tmp_path / "detections_val_results.json").read_text())
    assert metrics["num_images"] == len(gt["images"])
    assert len(results) == len(gt["images"]) * tiny.config.num_queries  # every query, as DETR evaluates
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    saved = json.loads((tmp_path / "metrics_val.json").read_text())
    assert saved["paired_text"] is True and saved["AP"] == metrics["AP"]
    untrained = evaluate_detection(DetectionModel(tiny), setup.tokenizer, setup, "val", None, cfg)
    assert untrained["AP"] < 0.2
    with pytest.raises(ValueError, match="num_classes=6"):
        evaluate_detection(DetectionModel(build_e2evlp("e2evlp-tiny", **{**setup.model_overrides(),
                                                                          "num_classes": 8})),
                           setup.tokenizer, setup, "val", None, cfg)


def test_coco_root_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    for name in ("instances_val2014.json", "captions_val2014.json"):
        (tmp_path / "annotations" / name).write_text("{}")
    files = detection_split(tmp_path, "val")
    assert files.instances.name == "instances_val2014.json" and files.images == tmp_path / "val2014"
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        detection_split(tmp_path, "train")


def test_finetune_loss_falls_and_the_folder_loads(setup, tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "pretrained"  # a pretraining run folder whose head has 9 classes, with its tokenizer
    build_e2evlp("e2evlp-tiny", **{**setup.model_overrides(), "num_classes": 9}).save_pretrained(run / "model")
    save_tokenizer(setup.tokenizer, run / "tokenizer")
    cfg = DetectionConfig(**SMALL)
    out = finetune_detection(run, setup, tmp_path / "out", cfg,
                             {"max_steps": 6, "lr": 5e-4, "backbone_lr": 1e-4, "progress_bar": False,
                              "log_every": 0, "shuffle": False})
    losses = [h["loss"] for h in out.history]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0], losses
    assert set(out.metrics) == {"val"} and set(out.metrics["val"]) >= {"AP", "AP50", "APs", "APm", "APl"}
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["metrics"] == out.metrics and summary["info"]["paired_text"] is True
    assert summary["info"]["new_parameters"] == sorted(CLASS_HEAD)
    model = DetectionModel.from_pretrained(out.model_dir)
    assert model.paired_text and model.config.num_classes == 6
    predictor = E2EVLPPredictor.from_pretrained(tmp_path / "out")  # the run folder: <out>/model/ is found
    assert isinstance(predictor.task_model, DetectionModel)
    assert predictor.object_names == ["circle", "square", "triangle", "diamond", "star", "hexagon"]
    assert (predictor.eval_size, predictor.max_size) == (64, 96)
    for a, b in zip(predictor.model.state_dict().values(), model.e2evlp.state_dict().values()):
        assert torch.equal(a, b)


def test_a_smaller_class_set_keeps_the_pretrained_rows_of_the_same_names(tmp_path):
    """Fine-tuning on COCO after pretraining on Visual Genome objects: the class layer is rebuilt for the dataset's
    categories, but each category the checkpoint's `labels.json` names keeps its pretrained row (as does the
    no-object row); the others start fresh."""
    from vlpkit import build_e2evlp
    from vlpkit.inference import save_labels
    from vlpkit.tasks.detection import DetectionModel

    pretrained = build_e2evlp("e2evlp-tiny", num_classes=4, num_attributes=0)
    pretrained.save_pretrained(tmp_path / "run")
    save_labels(tmp_path / "run", ["circle", "square", "star", "tree"], [])
    old = pretrained.detection_head.class_embed
    model = DetectionModel.from_checkpoint(tmp_path / "run", num_classes=3, class_names=["Tree", "hexagon", "circle"])
    new = model.e2evlp.detection_head.class_embed
    assert new.out_features == 4 and model.config.num_classes == 3
    for new_row, old_row in ((0, 3), (2, 0), (3, 4)):  # tree, circle, no-object
        assert torch.equal(new.weight[new_row], old.weight[old_row]) and new.bias[new_row] == old.bias[old_row]
    assert not any(torch.equal(new.weight[1], old.weight[k]) for k in range(5))  # hexagon: fresh
