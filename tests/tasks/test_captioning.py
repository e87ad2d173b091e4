"""Captioning task: data, loss definition, checkpoint loading, the caption() API, results format, fine-tuning."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from vlpkit import build_e2evlp
from vlpkit.data.raw_images import prepare_images
from vlpkit.data.transforms import make_eval_transforms, make_train_transforms
from vlpkit.engine import read_log
from vlpkit.metrics.captioning import evaluate_caption_files, load_caption_results
from vlpkit.models import E2EVLP
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks import FinetuneResult, TaskOutput
from vlpkit.tasks.captioning import (
    CaptionCollator,
    CaptioningConfig,
    CaptionModel,
    caption_data,
    captioning_loss,
    evaluate_captioning,
    finetune_captioning,
    load_task_e2evlp,
)

SMALL = dict(train_scales=[64], max_size=96, eval_size=64, max_generation_length=8, eval_tokenizer="simple",
             eval_batch_size=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("cap") / "world", num_images=40, seed=3, vocab_size=200)


@pytest.fixture(scope="module")
def model(setup):
    torch.manual_seed(0)
    e2evlp = build_e2evlp("e2evlp-tiny", dropout=0.0, **setup.model_overrides())
    return CaptionModel.from_checkpoint(e2evlp, setup.tokenizer, eval_size=64, max_size=96).eval()


@pytest.fixture(scope="module")
def batch(setup):
    reader = caption_data(setup).split("train").reader("caption", make_train_transforms((64,), 96, crop=False))
    return CaptionCollator(setup.tokenizer)([reader[i] for i in (0, 1, 7, 12)])


def test_config_round_trip_and_errors():
    config = CaptioningConfig(trainer={"lr": 1e-4, "lr_drop_epochs": [3]})
    assert CaptioningConfig.from_dict(config.to_dict()) == config
    assert (config.num_beams, config.length_penalty, config.length_penalty_style) == (4, 0.9, "gnmt")
    with pytest.raises(ValueError, match=r"unknown CaptioningConfig field\(s\) \['beam'\].*num_beams"):
        CaptioningConfig.from_dict({"beam": 4})
    with pytest.raises(ValueError, match="length_penalty_style"):
        CaptioningConfig(length_penalty_style="wu")
    trainer = config.trainer_config("out", max_steps=3)
    assert (trainer.lr, trainer.max_steps, trainer.backbone_prefix) == (1e-4, 3, "e2evlp.backbone.trunk.")


def test_batch_reads_the_image_alone(setup, model, batch):
    tok = setup.tokenizer
    assert (batch.input_ids == torch.tensor([tok.cls_token_id, tok.sep_token_id])).all()
    assert (batch.caption_ids[:, 0] == tok.cls_token_id).all()
    assert tok.decode(batch.caption_ids[0], skip_special_tokens=True) == tok.decode(
        tok(batch.meta[0]["caption"])["input_ids"], skip_special_tokens=True)
    out = model(batch)
    logits = out.logits
    assert isinstance(out, TaskOutput) and out["logits"] is logits  # typed, and a mapping
    assert logits.shape == (4, batch.caption_ids.shape[1] - 1, model.config.vocab_size)
    # the encoder text is never read: putting the caption there changes nothing
    leaked = copy.copy(batch)
    leaked.input_ids, leaked.attention_mask = batch.caption_ids, batch.caption_mask
    torch.testing.assert_close(model(leaked).logits, logits)


def test_loss_is_label_smoothed_cross_entropy(model, batch):
    eps, pad = 0.1, model.config.pad_token_id
    out = captioning_loss(model, batch, label_smoothing=eps)
    with torch.no_grad():
        encoding = model.e2evlp.encode(batch.pixel_values, batch.pixel_mask)
        logp = model.e2evlp.caption_logits(encoding, batch.caption_ids[:, :-1]).log_softmax(-1)
        targets = batch.caption_ids[:, 1:]
        vocab = logp.shape[-1]
        q = torch.full_like(logp, eps / vocab).scatter_add_(-1, targets[..., None],
                                                             torch.full_like(logp[..., :1], 1 - eps))
        real = targets != pad
        expected = (-(q * logp).sum(-1))[real].mean()
        nll = -logp.gather(-1, targets[..., None]).squeeze(-1)[real].mean()
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["nll"], nll)
    assert real.sum() == batch.caption_mask[:, 1:].sum()  # [SEP] is a target, padding is not


def test_pretraining_checkpoint_loads_without_new_parameters(setup, tmp_path, caplog):
    torch.manual_seed(1)
    pretrained = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    pretrained.save_pretrained(tmp_path / "run" / "model")
    with caplog.at_level("WARNING"):
        model = CaptionModel.from_checkpoint(tmp_path / "run" / "model", setup.tokenizer)
    assert model.new_parameters == [] and model.report_new_parameters() == []
    assert "newly initialised" not in caplog.text
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(model.e2evlp.state_dict()[name], value, msg=name)
    data = caption_data(setup)
    assert isinstance(load_task_e2evlp(tmp_path / "run" / "model", data), E2EVLP)
    with pytest.raises(ValueError, match="vocab_size"):
        load_task_e2evlp(build_e2evlp("e2evlp-tiny"), data)  # a 1000-token vocabulary, not the world's 200


def test_caption_api_on_raw_images(setup, model):
    path = sorted(setup.world.image_dir("val").iterdir())[0]
    pil = Image.open(path).convert("RGB")
    uint8 = torch.from_numpy(__import__("numpy").asarray(pil).copy()).permute(2, 0, 1)
    out = model.caption([pil, uint8, uint8.float() / 255], max_length=8, return_all_beams=True)
    assert len(out.captions) == len(out.scores) == 3 and all(isinstance(c, str) for c in out.captions)
    assert out.captions[0] == out.captions[1] == out.captions[2]  # PIL, uint8 and float [0, 1] inputs agree
    assert all(len(b) == 4 for b in out.beams) and out.beams[0][0] == out.captions[0]
    assert out.beam_scores[0] == sorted(out.beam_scores[0], reverse=True)
    # same as generating from the evaluation preprocessing by hand
    prepared = prepare_images([pil], make_eval_transforms(64, 96))
    pixel_values, pixel_mask = prepared.pixel_values, prepared.pixel_mask
    gen = model.generate(pixel_values, pixel_mask, num_beams=4, max_length=8, length_penalty=0.9)
    assert setup.tokenizer.decode(gen.sequences[0], skip_special_tokens=True) == out.captions[0]
    assert out.scores[0] == pytest.approx(float(gen.scores[0]), abs=1e-5)
    with pytest.raises(ValueError, match=r"image 0: a float image tensor must hold values in \[0, 1\]"):
        model.caption(uint8.float())


def test_results_file_has_the_coco_format(setup, model, tmp_path):
    config = CaptioningConfig(**SMALL)
    metrics = evaluate_captioning(model, setup.tokenizer, setup, "val", tmp_path, config)
    results = json.loads((tmp_path / "captions_val_vlpkit_results.json").read_text())
    val_ids = sorted(im["id"] for im in json.loads(setup.world.captions("val").read_text())["images"])
    assert sorted(r["image_id"] for r in results) == val_ids
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results)
    assert len(load_caption_results(tmp_path / "captions_val_vlpkit_results.json")) == len(val_ids)
    # the official file-based evaluation of that file gives the returned scores
    official = evaluate_caption_files(setup.world.captions("val"), tmp_path / "captions_val_vlpkit_results.json",
                                      tokenizer="simple")
    for name, value in official.items():
        assert metrics[name] == pytest.approx(value), name
    assert metrics["num_images"] == len(val_ids)


def test_karpathy_paths_give_the_same_images_and_captions(setup, tmp_path):
    world = setup.world
    karpathy = caption_data({"tokenizer": str(world.root / "tokenizer"), "karpathy": str(world.karpathy),
                             "images": str(world.root)})
    coco = caption_data(setup)
    assert karpathy.split("train").karpathy_splits == ("train", "restval")
    a, b = karpathy.split("val").reader("image"), coco.split("val").reader("image")
    assert [(x["image_id"], x["captions"]) for x in map(a.annotation, range(len(a)))] == \
           [(x["image_id"], x["captions"]) for x in map(b.annotation, range(len(b)))]
    assert karpathy.model_overrides.items() <= setup.model_overrides().items()  # the tokenizer's ids
    with pytest.raises(ValueError, match="lacks 'tokenizer'"):
        caption_data({"splits": {}})
    with pytest.raises(ValueError, match="split 'train' needs 'captions' and 'images'"):
        caption_data({"tokenizer": str(world.root / "tokenizer"), "splits": {"train": {"captions": "x.json"}}})
    with pytest.raises(KeyError, match="no split 'dev'"):
        coco.split("dev")


def test_finetune_loss_falls_and_saves_everything(setup, tmp_path):
    torch.manual_seed(0)
    start = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    config = dict(SMALL, trainer={"batch_size": 8, "lr": 1e-3, "backbone_lr": 1e-4}, flip=False,
                  max_eval_images=2)
    result = finetune_captioning(start, setup, tmp_path / "ft", config,
                                 {"max_steps": 8, "log_every": 1, "save_every": 0, "progress_bar": False,
                                  "cpu": True})
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "ft" / "log.jsonl") if '"loss"' in line]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert result.train.last_loss == pytest.approx(losses[-1]) and result.train.steps == 8
    assert set(result.metrics) == {"val", "test"}
    assert all({"Bleu_4", "CIDEr"} <= set(result.metrics[split]) for split in ("val", "test"))
    saved = FinetuneResult.load(tmp_path / "ft")
    assert saved.metrics == result.metrics and saved.train == result.train and saved.task == "caption"
    # val is scored once, at the last step, and that scoring wrote its results file
    assert [r["step"] for r in read_log(tmp_path / "ft", "eval")] == [8]
    for split in ("val", "test"):
        assert (tmp_path / "ft" / f"captions_{split}_vlpkit_results.json").is_file()
    assert CaptionModel.load_recipe(tmp_path / "ft" / "model", CaptioningConfig).trainer.lr == 1e-3
    reloaded = CaptionModel.from_pretrained(tmp_path / "ft" / "model", eval_size=64, max_size=96)
    assert reloaded.tokenizer.get_vocab() == setup.tokenizer.get_vocab()
    for name, value in start.state_dict().items():  # `start` is the trained model (fine-tuned in place)
        torch.testing.assert_close(reloaded.e2evlp.state_dict()[name], value, msg=name)
