"""E2EVLPPredictor: each method against the model calls it stands for, boxes in pixels of the image as given,
input checks, duck-typed VQA, and the round trip through a pretraining run folder."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as F

from vlpkit import build_e2evlp
from vlpkit.data import collate_images, collate_texts, make_eval_transforms, save_tokenizer
from vlpkit.data.vocab import Vocab
from vlpkit.inference import E2EVLPPredictor, load_labels, locate_pretrained, save_labels
from vlpkit.outputs import DetectionOutput
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks.vqa import VQAModel

SIZE, MAX_SIZE = 64, 96


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("inference") / "world", num_images=40, seed=7, vocab_size=200)


@pytest.fixture(scope="module")
def model(setup):
    torch.manual_seed(0)
    return build_e2evlp("e2evlp-tiny", **setup.model_overrides()).eval()


@pytest.fixture(scope="module")
def predictor(setup, model):
    return E2EVLPPredictor(model, setup.tokenizer, list(setup.object_vocab), list(setup.attribute_vocab), SIZE,
                           MAX_SIZE)


@pytest.fixture(scope="module")
def images(setup):
    files = sorted(setup.world.image_dir("val").iterdir())[:3]
    out = [Image.open(f).convert("RGB") for f in files]
    out[1] = out[1].crop((0, 0, 100, 128))  # another size, so the batch is padded
    return out


def _pixels(images):
    transform = make_eval_transforms(SIZE, MAX_SIZE)
    return collate_images([transform(im, None, None)[0] for im in images])


def test_caption_is_the_decoded_beam_search(predictor, model, setup, images):
    pixel_values, pixel_mask = _pixels(images)
    with torch.no_grad():
        gen = model.generate(pixel_values, pixel_mask, num_beams=2, max_length=6)
    expected = [setup.tokenizer.decode(s, skip_special_tokens=True) for s in gen.sequences]
    assert predictor.caption(images, num_beams=2, max_length=6) == expected
    texts, scores = predictor.caption(images, num_beams=2, max_length=6, return_scores=True)
    assert texts == expected and torch.allclose(scores, gen.scores.float())


def test_detect_boxes_are_pixels_of_the_image_as_given(predictor, model, images, monkeypatch):
    # fixed normalised predictions isolate the conversion: they must scale with each image's own size
    k = model.config.num_classes
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.2], [0.25, 0.75, 0.3, 0.3], [0.9, 0.1, 0.4, 0.4]])
    logits = torch.full((3, k + 1), -5.0)
    logits[0, 2], logits[1, 0], logits[2, k] = 5.0, 3.0, 5.0  # query 2 predicts no-object

    def fixed(encoding):
        b = encoding.memory.shape[0]
        return DetectionOutput(logits.expand(b, -1, -1), boxes.expand(b, -1, -1))

    monkeypatch.setattr(model, "detect", fixed)
    small = images[0]
    large = small.resize((256, 96))  # a non-uniform rescaling of the same picture
    out = predictor.detect([small, large, F.pil_to_tensor(small)], threshold=0.5)
    expected = box_convert(boxes[:2], "cxcywh", "xyxy") * torch.tensor([128, 128, 128, 128])
    assert out[0]["labels"] == [predictor.object_names[2], predictor.object_names[0]]
    assert torch.allclose(out[0]["boxes"], expected)
    assert torch.allclose(out[1]["boxes"], expected * torch.tensor([2.0, 0.75, 2.0, 0.75]))
    assert torch.allclose(out[2]["boxes"], out[0]["boxes"])  # uint8 tensor input = PIL input
    assert out[0]["scores"][0] > out[0]["scores"][1] > 0.5
    # a box reaching outside the image is clamped to it
    clamped = predictor.detect(small, threshold=0.0)[0]["boxes"]
    assert torch.allclose(clamped[-1], torch.tensor([89.6, 0.0, 128.0, 38.4]), atol=1e-4)  # (89.6, -12.8, 140.8, ..)


def test_detect_matches_the_model_with_and_without_text(predictor, model, setup, images):
    pixel_values, pixel_mask = _pixels(images)
    texts = ["a red circle", "two squares", "a star"]
    ids, mask, types = collate_texts(texts, setup.tokenizer)
    out = predictor.detect(images, text=texts, threshold=0.0)
    alone = predictor.detect(images, threshold=0.0)
    with torch.no_grad():
        for encoding, result in ((model.encode(pixel_values, pixel_mask, ids, mask, types), out),
                                 (model.encode(pixel_values, pixel_mask), alone)):
            det = model.detect(encoding)
            probs = det.pred_logits.softmax(-1)[..., :-1]
            for i, image in enumerate(images):
                scores, labels = probs[i].max(-1)
                order = scores.argsort(descending=True, stable=True)
                w, h = image.size
                xyxy = box_convert(det.pred_boxes[i][order], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
                xyxy[:, 0::2], xyxy[:, 1::2] = xyxy[:, 0::2].clamp(0, w), xyxy[:, 1::2].clamp(0, h)
                assert torch.allclose(result[i]["scores"], scores[order], atol=1e-6)
                assert result[i]["label_ids"].tolist() == labels[order].tolist()
                assert torch.allclose(result[i]["boxes"], xyxy, atol=1e-4)
                assert len(result[i]["attributes"]) == len(scores)
    assert not torch.allclose(out[0]["scores"], alone[0]["scores"])  # the text is read
    assert all(d["scores"].min() >= 0.2 for d in predictor.detect(images, threshold=0.2) if len(d["scores"]))


def test_match_is_the_itm_probability_of_each_pair(setup, model, images):
    predictor = E2EVLPPredictor(model, setup.tokenizer, list(setup.object_vocab), None, SIZE, MAX_SIZE,
                                batch_size=2)  # chunks of images and of pairs
    texts = ["a red circle above a square", "three stars", "a picture with two blue hexagons and a star"]
    scores = predictor.match(images, texts)
    assert scores.shape == (3, 3)
    with torch.no_grad():
        for i, image in enumerate(images):
            pixel_values, pixel_mask = _pixels([image])
            for j, text in enumerate(texts):
                ids, mask, types = collate_texts([text], setup.tokenizer)
                logits = model.itm_logits(model.encode(pixel_values, pixel_mask, ids, mask, types))
                assert scores[i, j] == pytest.approx(float(logits.softmax(-1)[0, 1]), abs=1e-5)


def test_bad_inputs_name_the_image_and_the_problem(predictor, images):
    with pytest.raises(TypeError, match="image 1: expected a PIL image"):
        predictor.caption([images[0], "a.png"])
    with pytest.raises(ValueError, match=r"image 0: a float image tensor must hold values in \[0, 1\]"):
        predictor.detect(torch.rand(3, 32, 32) * 2)
    chunked = E2EVLPPredictor(predictor.model, predictor.tokenizer, predictor.object_names, None, SIZE, MAX_SIZE,
                              batch_size=2)
    with pytest.raises(TypeError, match="image 3: expected a PIL image"):  # counted over the whole list
        chunked.detect([images[0]] * 3 + [None])
    with pytest.raises(ValueError, match="permute"):
        predictor.detect([torch.zeros(32, 32, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="empty list"):
        predictor.caption([])
    with pytest.raises(ValueError, match="2 texts for 3 images"):
        predictor.detect(images, text=["a", "b"])
    with pytest.raises(RuntimeError, match="VQA"):
        predictor.answer(images, ["what?"] * 3)
    with pytest.raises(ValueError, match="5 object names"):
        E2EVLPPredictor(predictor.model, predictor.tokenizer, ["a"] * 5)


def test_any_pil_mode_is_read_as_rgb(predictor, images):
    rgb = images[0]
    for mode in ("RGBA", "L", "P"):
        other = rgb.convert(mode)
        expected = other.convert("RGB")
        a, b = predictor.detect([other, expected], threshold=0.0)
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_answer_uses_the_vqa_head(setup, model, images):
    vqa = VQAModel(model, Vocab(["yes", "no", "red", "two"]), eval_size=SIZE + 32)  # no tokenizer, other size
    predictor = E2EVLPPredictor(model, setup.tokenizer, None, None, SIZE, MAX_SIZE, vqa_model=vqa)
    assert (vqa.eval_size, vqa.max_size) == (SIZE, MAX_SIZE) and vqa.tokenizer is setup.tokenizer
    questions = ["is there a circle?", "what color is the star?", "how many squares?"]
    answers, probs = predictor.answer(images, questions, return_scores=True)
    pixel_values, pixel_mask = _pixels(images)
    ids, mask, types = collate_texts(questions, setup.tokenizer)
    with torch.no_grad():
        logits = vqa.head(model.encode(pixel_values, pixel_mask, ids, mask, types).cls_state)
    assert answers == [vqa.answer_vocab[k] for k in logits.argmax(-1).tolist()]
    assert torch.allclose(probs, logits.sigmoid().max(-1).values, atol=1e-5)
    assert predictor.answer_names == ["yes", "no", "red", "two"]
    with pytest.raises(TypeError, match="vqa_model must be a vlpkit.tasks.vqa.VQAModel, got Linear"):
        E2EVLPPredictor(model, setup.tokenizer, vqa_model=nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"answer_names \(2\) differ from the VQA model's answer vocabulary \(4"):
        E2EVLPPredictor(model, setup.tokenizer, vqa_model=vqa, answer_names=["yes", "no"])


def test_pretraining_run_folder_round_trip(setup, model, predictor, images, tmp_path):
    run = tmp_path / "run"  # the layout vlpkit.pretraining.run writes, plus labels.json
    model.save_pretrained(run / "model")
    save_tokenizer(setup.tokenizer, run / "tokenizer")
    save_labels(run, list(setup.object_vocab), list(setup.attribute_vocab))
    (run / "pretrain_config.json").write_text(json.dumps(
        {"data": {"image": {"train_scales": [SIZE], "max_size": MAX_SIZE, "eval_size": SIZE}}}))
    loaded = E2EVLPPredictor.from_pretrained(run)
    assert (loaded.eval_size, loaded.max_size) == (SIZE, MAX_SIZE)
    # the run's model/ folder (what `vlpkit finetune --checkpoint <run>` loads) finds the run's other pieces
    whole, inner = locate_pretrained(run), locate_pretrained(run / "model")
    assert inner.model_dir == whole.model_dir and inner.tokenizer_dir == whole.tokenizer_dir
    assert inner.labels == whole.labels == run / "labels.json"
    assert inner.pretrain_config == whole.pretrain_config
    assert loaded.object_names == predictor.object_names and loaded.attribute_names == predictor.attribute_names
    captions = predictor.caption(images, num_beams=2, max_length=5)
    assert loaded.caption(images, num_beams=2, max_length=5) == captions
    expected = predictor.detect(images, threshold=0.0)
    for a, b in zip(loaded.detect(images, threshold=0.0), expected):
        assert torch.equal(a["boxes"], b["boxes"]) and a["attributes"] == b["attributes"]
    flat = loaded.save_pretrained(tmp_path / "flat")
    assert load_labels(flat).objects == predictor.object_names
    again = E2EVLPPredictor.from_pretrained(flat)
    assert (again.eval_size, again.max_size) == (SIZE, MAX_SIZE)
    assert json.loads((flat / "preprocessing.json").read_text()) == {"eval_size": SIZE, "max_size": MAX_SIZE}
    # a folder written before the key took the recipes' name ("image_size") reads the same
    (flat / "preprocessing.json").write_text(json.dumps({"image_size": SIZE + 8, "max_size": MAX_SIZE}))
    assert E2EVLPPredictor.from_pretrained(flat).eval_size == SIZE + 8
    (flat / "preprocessing.json").write_text(json.dumps({"size": SIZE}))
    with pytest.raises(ValueError, match="preprocessing.json: expected keys 'eval_size' and 'max_size', got"):
        E2EVLPPredictor.from_pretrained(flat)
    assert again.caption(images, num_beams=2, max_length=5) == captions
    with pytest.raises(FileNotFoundError, match="holds no model"):
        locate_pretrained(tmp_path)
