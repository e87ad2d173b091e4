"""Retrieval task: head and checkpoint, circle loss over sampled negatives, batched / re-ranked scoring against
per-pair scoring and brute-force recall, the match() API, results file, fine-tuning."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from vlpkit import build_e2evlp
from vlpkit.data.raw_images import prepare_images
from vlpkit.data.transforms import make_eval_transforms
from vlpkit.losses.circle import circle_loss
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks.captioning import caption_data
from vlpkit.tasks.retrieval import (
    RetrievalCollator,
    RetrievalConfig,
    RetrievalModel,
    RetrievalTrainDataset,
    dual_scores,
    evaluate_retrieval,
    finetune_retrieval,
    full_scores,
    negative_mask,
    rerank_scores,
    retrieval_loss,
    sample_negatives,
    text_inputs,
)

SMALL = dict(train_scales=[64], max_size=96, eval_size=64, image_batch_size=3, pair_batch_size=7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("ret") / "world", num_images=40, seed=3, vocab_size=200)


@pytest.fixture(scope="module")
def model(setup):
    torch.manual_seed(0)
    e2evlp = build_e2evlp("e2evlp-tiny", dropout=0.0, **setup.model_overrides())
    return RetrievalModel.from_checkpoint(e2evlp, setup.tokenizer, eval_size=64, max_size=96).eval()


@pytest.fixture(scope="module")
def val(setup):
    """The 4 val images (preprocessed) with their 20 captions."""
    reader = caption_data(setup).split("val").reader("image", make_eval_transforms(64, 96))
    samples = [reader[i] for i in range(len(reader))]
    captions = [(i, c) for i, s in enumerate(samples) for c in s["captions"]]
    return [s["image"] for s in samples], [c for _, c in captions], torch.tensor([i for i, _ in captions])


def _batch(setup, indices):
    reader = caption_data(setup).split("train").reader("image", make_eval_transforms(64, 96))
    dataset = RetrievalTrainDataset(reader, seed=0)
    return RetrievalCollator(setup.tokenizer)([dataset[i] for i in indices])


def test_config_round_trip_and_errors():
    config = RetrievalConfig(margin=0.25, gamma=64)
    assert RetrievalConfig.from_dict(config.to_dict()) == config
    assert (config.trainer.batch_size, config.trainer.lr, config.trainer.epochs) == (64, 5e-5, 4)
    with pytest.raises(ValueError, match=r"unknown RetrievalConfig field\(s\) \['m'\].*margin"):
        RetrievalConfig.from_dict({"m": 0.1})
    with pytest.raises(ValueError, match="negatives='semi'"):
        RetrievalConfig(negatives="semi")


def test_head_starts_as_itm_log_odds(model, setup):
    batch = _batch(setup, [0, 1, 2])
    with torch.no_grad():
        encoding = model.e2evlp.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids, batch.attention_mask)
        matched = model.e2evlp.itm_logits(encoding).softmax(-1)[:, 1]
        torch.testing.assert_close(model.score(encoding).sigmoid(), matched)
        torch.testing.assert_close(model(batch).logits, model.score(encoding))


def test_pretraining_checkpoint_loads_and_names_the_head(setup, tmp_path, caplog):
    torch.manual_seed(1)
    pretrained = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    pretrained.save_pretrained(tmp_path / "model")
    with caplog.at_level("WARNING"):
        model = RetrievalModel.from_checkpoint(tmp_path / "model", setup.tokenizer, head_init="random")
    expected = ["head.classifier.bias", "head.classifier.weight", "head.pooler.dense.bias", "head.pooler.dense.weight"]
    assert model.new_parameters == expected
    assert all(name in caplog.text for name in expected)
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(model.e2evlp.state_dict()[name], value, msg=name)


def test_negative_mask_excludes_same_image_and_identical_captions():
    meta = [{"image_id": 1, "text": "A red star.", "captions": ["A red star.", "Five shapes."]},
            {"image_id": 2, "text": "five shapes", "captions": ["five shapes", "A blue circle."]},
            {"image_id": 1, "text": "Five shapes.", "captions": ["A red star.", "Five shapes."]},
            {"image_id": 3, "text": "A green square.", "captions": ["A green square."]}]
    expected = torch.tensor([[0, 0, 0, 1],   # image 1 has "five shapes" itself
                             [1, 0, 0, 1],   # row 2 is also "five shapes"
                             [0, 0, 0, 1],
                             [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(negative_mask(meta), expected)


def test_loss_equals_circle_formula_over_all_in_batch_negatives(setup, model):
    batch = _batch(setup, [0, 3, 6, 9])
    valid = negative_mask(batch.meta)
    config = RetrievalConfig(num_text_negatives=3, num_image_negatives=3)  # = every other sample of the batch
    out = retrieval_loss(model, batch, config)
    with torch.no_grad():  # independent: the 4 x 4 similarity matrix pair by pair, then Sun et al.'s formula
        sim = torch.stack([torch.stack([
            model.score_pairs(model.e2evlp.embed_image(batch.pixel_values[i:i + 1], batch.pixel_mask[i:i + 1]),
                              torch.tensor([0]), text_inputs([batch.meta[j]["text"]], setup.tokenizer),
                              torch.tensor([0]))[0] for j in range(4)]) for i in range(4)]).sigmoid()
    rows = [circle_loss(sim[i, i].view(1, 1), sim[i][valid[i]][None], 0.4, 80.0) for i in range(4)
            if valid[i].any()]
    cols = [circle_loss(sim[j, j].view(1, 1), sim[:, j][valid[:, j]][None], 0.4, 80.0) for j in range(4)
            if valid[:, j].any()]
    torch.testing.assert_close(out["loss"], torch.stack(rows + cols).mean(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["circle_i2t"], torch.stack(rows).mean(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["sim_pos"], sim.diagonal().mean(), rtol=1e-4, atol=1e-5)
    out["loss"].backward()
    assert model.head.classifier.weight.grad is not None
    model.zero_grad()


def test_hard_negatives_are_the_highest_scoring(setup, model):
    batch = _batch(setup, [0, 3, 6, 9, 12])
    valid = negative_mask(batch.meta)
    image = model.e2evlp.embed_image(batch.pixel_values, batch.pixel_mask)
    texts = text_inputs([m["text"] for m in batch.meta], setup.tokenizer)
    index, mask = sample_negatives(model, image, texts, valid, 1, True, "hard", pool=8)
    with torch.no_grad():
        i, t = torch.arange(5).repeat_interleave(5), torch.arange(5).repeat(5)
        scores = model.score_pairs(image, i, texts, t).view(5, 5).masked_fill(~valid, float("-inf"))
    assert torch.equal(mask[:, 0], valid.any(1))
    assert torch.equal(index[mask[:, 0], 0], scores.argmax(1)[mask[:, 0]])
    index, mask = sample_negatives(model, image, texts, valid, 3, True, "random")
    assert valid.gather(1, index)[mask].all() and torch.equal(mask.sum(1), valid.sum(1).clamp(max=3))


def test_batched_scoring_matches_pairs_and_recall_matches_brute_force(setup, model, val):
    images, captions, text_to_image = val
    texts = text_inputs(captions, setup.tokenizer)
    scores = full_scores(model, images, texts, image_batch_size=3, pair_batch_size=7)
    with torch.no_grad():  # brute force: one encoder pass per (image, text) pair, texts unpadded
        embedded = [model.e2evlp.embed_image(img[None]) for img in images]
        single = torch.tensor([[float(model.score_pairs(image, torch.tensor([0]), text_inputs([c], setup.tokenizer),
                                                        torch.tensor([0]))[0]) for c in captions] for image in embedded])
    torch.testing.assert_close(scores, single, rtol=1e-4, atol=1e-4)
    # brute-force recall from the per-pair scores: sort every query's candidates
    text_hits = {k: 0 for k in (1, 5, 10)}
    image_hits = {k: 0 for k in (1, 5, 10)}
    for i in range(len(images)):
        order = sorted(range(len(captions)), key=lambda t: -single[i, t])
        first = next(pos for pos, t in enumerate(order) if text_to_image[t] == i)
        for k in text_hits:
            text_hits[k] += first < k
    for t in range(len(captions)):
        order = sorted(range(len(images)), key=lambda i: -single[i, t])
        for k in image_hits:
            image_hits[k] += order.index(int(text_to_image[t])) < k
    metrics = evaluate_retrieval(model, setup.tokenizer, setup, "val", config=RetrievalConfig(**SMALL))
    for k in (1, 5, 10):
        assert metrics[f"text_R@{k}"] == pytest.approx(100 * text_hits[k] / len(images))
        assert metrics[f"image_R@{k}"] == pytest.approx(100 * image_hits[k] / len(captions))
    assert metrics["scored_pairs"] == len(images) * len(captions)


def test_rerank_with_k_at_least_n_is_full_scoring(setup, model, val):
    images, captions, _ = val
    texts = text_inputs(captions, setup.tokenizer)
    full = full_scores(model, images, texts, 3, 7)
    everything = rerank_scores(model, images, texts, k=len(captions), image_batch_size=3, pair_batch_size=7)
    assert torch.equal(everything.i2t, full) and torch.equal(everything.t2i, full)
    assert everything.num_pairs == full.numel()
    config = RetrievalConfig(**SMALL)
    assert evaluate_retrieval(model, setup.tokenizer, setup, "val", config=config, mode="rerank", k=20) == \
        evaluate_retrieval(model, setup.tokenizer, setup, "val", config=config)
    # k = 2: each image's 2 best texts by the cheap score are re-scored, the rest keep the cheap order below them
    cheap = dual_scores(model, images, texts)
    assert cheap.shape == full.shape and cheap.abs().max() <= 1 + 1e-5
    two = rerank_scores(model, images, texts, k=2, cheap=cheap, image_batch_size=3, pair_batch_size=7)
    for i in range(len(images)):
        top = set(cheap[i].topk(2).indices.tolist())
        for t in range(len(captions)):
            if t in top:
                assert two.i2t[i, t] == pytest.approx(float(full[i, t]), abs=1e-5)
            else:
                assert two.i2t[i, t] < min(full[i, u] for u in top)
    rest = [t for t in range(len(captions)) if t not in set(cheap[0].topk(2).indices.tolist())]
    assert torch.equal(two.i2t[0, rest].argsort(), cheap[0, rest].argsort())
    assert two.num_pairs < full.numel()


def test_match_api_on_raw_images(setup, model):
    paths = sorted(setup.world.image_dir("val").iterdir())[:2]
    pils = [Image.open(p).convert("RGB") for p in paths]
    texts = ["A red star in the bottom right corner.", "Five objects on a gray background.", "x"]
    scores = model.match(pils, texts)
    assert scores.shape == (2, 3)
    transforms = make_eval_transforms(64, 96)
    images = [prepare_images([p], transforms).pixel_values[0] for p in pils]
    torch.testing.assert_close(scores, full_scores(model, images, text_inputs(texts, setup.tokenizer)))
    with pytest.raises(ValueError, match="non-empty list"):
        model.match(pils, "one string")


def test_results_file(setup, model, tmp_path):
    metrics = evaluate_retrieval(model, setup.tokenizer, setup, "val", tmp_path, RetrievalConfig(**SMALL),
                                 mode="rerank", k=3)
    record = json.loads((tmp_path / "retrieval_val_results.json").read_text())
    assert record["metrics"] == pytest.approx(metrics) and record["mode"] == "rerank" and record["k"] == 3
    assert len(record["image_ids"]) == 4 and len(record["texts"]) == 20
    assert all(len(r) == 10 for r in record["text_retrieval_top10"])
    assert all(len(r) == 4 for r in record["image_retrieval_top10"])


def test_finetune_loss_falls_and_saves_everything(setup, tmp_path):
    world = setup.world
    subset = json.loads(world.captions("train").read_text())  # a handful of images, overfitting is fine
    keep = {im["id"] for im in subset["images"][:8]}
    subset["images"] = [im for im in subset["images"] if im["id"] in keep]
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] in keep]
    (tmp_path / "captions_small.json").write_text(json.dumps(subset))
    paths = {"tokenizer": str(world.root / "tokenizer"),
             "splits": {"train": {"captions": str(tmp_path / "captions_small.json"), "images": str(world.image_dir("train"))},
                        "test": {"captions": str(world.captions("test")), "images": str(world.image_dir("test"))}}}
    torch.manual_seed(0)
    start = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    initial = RetrievalModel.from_checkpoint(copy.deepcopy(start), setup.tokenizer).eval()
    config = dict(SMALL, trainer={"batch_size": 8, "lr": 1e-4, "backbone_lr": 1e-5}, flip=False)
    result = finetune_retrieval(start, paths, tmp_path / "ft", config,
                                {"max_steps": 8, "log_every": 1, "save_every": 0, "progress_bar": False, "cpu": True})
    tuned = RetrievalModel.from_pretrained(tmp_path / "ft" / "model").eval()
    # the loss over every in-batch negative of the 8 training images, before and after
    reader = caption_data(paths).split("train").reader("image", make_eval_transforms(64, 96))
    dataset = RetrievalTrainDataset(reader, seed=0)
    batch = RetrievalCollator(setup.tokenizer)([dataset[i] for i in range(8)])
    every = RetrievalConfig(num_text_negatives=7, num_image_negatives=7)
    with torch.no_grad():
        before, after = retrieval_loss(initial, batch, every)["loss"], retrieval_loss(tuned, batch, every)["loss"]
    assert after < before - 0.3
    assert result.train.steps == 8 and set(result.metrics) == {"test"}  # the data has no val split
    assert {"text_R@1", "image_R@10", "R_mean"} <= set(result.metrics["test"])
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["metrics"] == result.metrics
    assert (tmp_path / "ft" / "retrieval_test_results.json").is_file()
    assert tuned.tokenizer.get_vocab() == setup.tokenizer.get_vocab()
