"""VQA v2 task: head and loss definitions, checkpoint loading, inference API, official results file, fine-tuning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from vlpkit import build_e2evlp
from vlpkit.config import ConfigError
from vlpkit.data.readers import build_answer_vocab
from vlpkit.data.shapes import SceneConfig
from vlpkit.engine import param_groups
from vlpkit.metrics.vqa import evaluate_vqa as official_vqa
from vlpkit.metrics.vqa import normalize_answer
from vlpkit.models import E2EVLP
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks import TaskOutput
from vlpkit.tasks.vqa import (
    BACKBONE_PREFIX,
    VQACollator,
    VQAConfig,
    VQAData,
    VQAModel,
    VQASplit,
    evaluate_vqa,
    finetune_vqa,
    predict_vqa,
    vqa_bce,
    vqa_loss,
)

SIZE = dict(eval_size=64, max_size=96)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # answer_noise gives soft scores of 0.3..1, so accuracy checks are not all-or-nothing
    return prepare_shapes(tmp_path_factory.mktemp("vqa") / "world", num_images=40, seed=3,
                          scene=SceneConfig(image_size=64), nlvr2_sets=0, answer_noise=0.3)


@pytest.fixture(scope="module")
def data(setup):
    return VQAData.from_shapes(setup)


@pytest.fixture(scope="module")
def vocab(data):
    return build_answer_vocab(data.train[0].annotations, size=None, min_count=1)


@pytest.fixture(scope="module")
def model(setup, vocab):
    torch.manual_seed(0)
    m = VQAModel(build_e2evlp("e2evlp-tiny", **setup.model_overrides()), vocab, setup.tokenizer, **SIZE)
    return m.eval()


class AnnotatorOracle(VQAModel):
    """Answers question k with its (k mod 10)-th human answer when that is in the vocabulary (else an arbitrary
    entry): varied answers with soft scores of 0 to 1, to check the evaluation pipeline end to end (a fresh
    model answers every question alike)."""

    def forward(self, batch):
        logits = super().forward(batch).logits
        onehot = torch.zeros_like(logits)
        for i, meta in enumerate(batch.meta):
            answer = normalize_answer(meta["answers"][meta["question_id"] % 10])
            onehot[i, self.answer_vocab.get(answer, meta["question_id"] % len(self.answer_vocab))] = 1
        return TaskOutput(logits=logits + 100 * onehot)


def _batch(data, vocab, model, split="val", n=6):
    dataset = data.eval[split].dataset(vocab, model.eval_transforms)
    return VQACollator(model.tokenizer, model.config.max_text_length)([dataset[i] for i in range(n)]), dataset


def test_config_defaults_roundtrip_and_errors():
    cfg = VQAConfig()
    t = cfg.trainer
    assert (t.batch_size, t.epochs, t.lr, t.lr_drop_epochs, t.lr_drop_factor) == (32, 12, 1e-4, [6, 9], 0.1)
    assert VQAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="lerning_rate.*valid fields.*batch_size"):
        VQAConfig.from_dict({"lerning_rate": 1})
    trainer = cfg.trainer_config("out", {"max_steps": 3})
    assert (trainer.batch_size, trainer.epochs, trainer.lr_drop_epochs, trainer.max_steps) == (32, 12, [6, 9], 3)
    assert cfg.image_settings("shapes") == {"train_scales": [128], "max_size": 160, "eval_size": 128}
    assert VQAConfig(eval_size=64).image_settings("files")["eval_size"] == 64


def test_backbone_prefix_selects_the_resnet_trunk(model):
    groups = {g["name"]: g["params"] for g in param_groups(model, 1e-4, 1e-5, 0.0, BACKBONE_PREFIX)}
    trunk = {id(p) for n, p in model.named_parameters() if n.startswith("e2evlp.backbone.trunk.") and p.requires_grad}
    assert trunk and {id(p) for p in groups["backbone"]} == trunk


def test_bce_is_summed_over_answers_and_averaged_over_questions():
    logits = torch.randn(5, 7, dtype=torch.float64) * 3
    target = torch.rand(5, 7, dtype=torch.float64) * (torch.rand(5, 7) > 0.5)
    per_element = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))
    expected = per_element.sum(dim=1).mean()
    assert torch.allclose(vqa_bce(logits, target).double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"logits \[5, 7\] and answer_scores \[5, 6\]"):
        vqa_bce(logits, target[:, :6])


def test_collator_targets_are_the_official_soft_scores(data, vocab, model):
    batch, dataset = _batch(data, vocab, model)
    assert batch.answer_scores.shape == (6, len(vocab)) and batch.pixel_values.shape[0] == 6
    assert (batch.input_ids[:, 0] == model.tokenizer.cls_token_id).all()
    for i, meta in enumerate(batch.meta):
        ann = dataset.annotation(i)
        assert meta["question_id"] == ann["question_id"]
        for answer, score in ann["soft_scores"].items():
            if answer in vocab:
                assert batch.answer_scores[i, vocab.index(answer)] == pytest.approx(score)
        assert batch.answer_scores[i].sum() == pytest.approx(sum(s for a, s in ann["soft_scores"].items()
                                                                 if a in vocab))


def test_forward_is_the_head_on_each_question_cls_state(data, vocab, model):
    batch, _ = _batch(data, vocab, model, n=4)
    with torch.no_grad():
        logits = model(batch).logits
        assert logits.shape == (4, len(vocab))
        for i in range(4):
            enc = model.e2evlp.encode(batch.pixel_values[i:i + 1], batch.pixel_mask[i:i + 1],
                                      batch.input_ids[i:i + 1, : int(batch.attention_mask[i].sum())])
            assert torch.allclose(logits[i], model.head(enc.memory[:, 0])[0], atol=1e-4)


def test_trainer_loss_and_its_score_term(data, vocab, model):
    batch, _ = _batch(data, vocab, model, n=5)
    out = vqa_loss(model, batch)
    with torch.no_grad():
        logits = model(batch).logits
    assert out["loss"].item() == pytest.approx(vqa_bce(logits, batch.answer_scores).item(), rel=1e-5)
    best = logits.argmax(-1)
    assert out["score"].item() == pytest.approx(float(sum(batch.answer_scores[i, best[i]] for i in range(5))) / 5)
    batch.answer_scores = None
    with pytest.raises(ValueError, match="needs batch.answer_scores"):
        vqa_loss(model, batch)


def test_pretraining_checkpoint_loads_and_names_the_new_head(tmp_path, setup, vocab, caplog):
    e2evlp = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    e2evlp.save_pretrained(tmp_path / "pre")
    with caplog.at_level(logging.WARNING, logger="vlpkit.tasks.base"):
        task = VQAModel.from_checkpoint(tmp_path / "pre", vocab, setup.tokenizer)
    head = sorted(f"head.{n}" for n, _ in task.head.named_parameters())
    assert task.new_parameters == head and "head.classifier.weight" in head
    assert all(name in caplog.text for name in head)
    loaded, original = task.e2evlp.state_dict(), e2evlp.state_dict()
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in original)
    assert task.head.classifier.out_features == len(vocab)
    with pytest.raises(FileNotFoundError, match="holds a pretrained E2EVLP.*VQAModel.from_checkpoint"):
        VQAModel.from_pretrained(tmp_path / "pre")


def test_answer_on_pil_and_tensors_matches_batched_prediction_and_survives_saving(tmp_path, data, vocab, model):
    dataset = data.eval["val"].dataset(vocab, model.eval_transforms)
    ann = [dataset.annotation(i) for i in range(5)]
    images = [Image.open(a["path"]) for a in ann]
    questions = [a["text"] for a in ann]
    expected = predict_vqa(model, torch.utils.data.Subset(dataset, range(5)), model.tokenizer)["answers"]
    answers = model.answer(images, questions, batch_size=2)
    assert [a.answer for a in answers] == expected and all(0 < a.score < 1 for a in answers)
    tensors = [pil_to_tensor(im.convert("RGB")) for im in images]
    assert [a.answer for a in model.answer(tensors, questions)] == expected
    top = model.top_answers(images[:2], questions[:2], k=3)
    assert [t[0] for t in top] == answers[:2] and all(t[0].score >= t[1].score >= t[2].score for t in top)

    model.save_pretrained(tmp_path / "vqa")
    again = VQAModel.from_pretrained(tmp_path / "vqa")
    assert again.answer_vocab == vocab and (again.eval_size, again.max_size) == (64, 96)
    assert [a.answer for a in again.answer(images, questions)] == expected

    with pytest.raises(ValueError, match="2 images and 1 questions"):
        model.answer(images[:2], questions[:1])
    with pytest.raises(TypeError, match="single string"):
        model.answer(images[:1], questions[0])
    # float tensors in [0, 1] are the same images (the predictor's preprocessing); out of range is named
    assert [a.answer for a in model.answer([t.float() / 255 for t in tensors], questions)] == expected
    with pytest.raises(ValueError, match=r"image 1: a float image tensor must hold values in \[0, 1\]"):
        model.answer([tensors[0], tensors[1].float()], questions[:2])
    bare = VQAModel(model.e2evlp, vocab)
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.answer(images[:1], questions[:1])


def test_results_file_is_official_and_its_score_equals_the_in_loop_accuracy(tmp_path, data, vocab, model):
    split = data.eval["val"]
    oracle = AnnotatorOracle(model.e2evlp, vocab, model.tokenizer, **SIZE)
    out = evaluate_vqa(oracle, model.tokenizer, split, "val", tmp_path, batch_size=7)
    results = json.loads((tmp_path / "vqa_OpenEnded_shapes_val_e2evlp_results.json").read_text())
    questions = json.loads(split.questions.read_text())["questions"]
    assert out["results_file"].endswith("vqa_OpenEnded_shapes_val_e2evlp_results.json")
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int)
               and isinstance(r["answer"], str) for r in results)
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    assert len({r["answer"] for r in results}) > 3

    # the file scored by the official evaluator vs the in-loop soft target of each predicted answer
    official = official_vqa(split.annotations, split.questions, tmp_path / out["results_file"].split("/")[-1])
    dataset = split.dataset(vocab, model.eval_transforms)
    pred = predict_vqa(oracle, dataset, model.tokenizer)
    for qid, soft in zip(pred["question_ids"], pred["soft_scores"]):
        assert official.per_question[qid] == pytest.approx(100 * soft, abs=0.006)
    assert len({round(s, 1) for s in pred["soft_scores"]}) >= 3 and 0 < out["soft_score_accuracy"] < 100
    assert out["accuracy"] == official.overall == pytest.approx(out["soft_score_accuracy"], abs=0.006)
    for answer_type, value in official.per_answer_type.items():
        assert out[f"accuracy_{answer_type}"] == value

    # a split without annotations (test-dev style): results only
    blind = evaluate_vqa(model, model.tokenizer, VQASplit(split.questions, None, split.image_root, split.image_name),
                         "test-dev", tmp_path)
    assert set(blind) == {"split", "num_questions", "results_file"} and blind["num_questions"] == len(questions)


def test_shapes_splits_report_accuracy_per_question_family(tmp_path, setup, data, vocab, model):
    split = data.eval["val"]
    images = json.loads(setup.world.scenes("val").read_text())["images"]
    families = {q: f for im in images for q, f in zip(im["question_ids"], im["question_families"])}
    assert split.groups == families and data.train[0].groups is None
    oracle = AnnotatorOracle(model.e2evlp, vocab, model.tokenizer, **SIZE)
    out = evaluate_vqa(oracle, model.tokenizer, split, "val", tmp_path)
    official = official_vqa(split.annotations, split.questions, out["results_file"])
    expected: dict[str, list[float]] = {}
    for qid, acc in official.per_question.items():
        expected.setdefault(families[qid], []).append(acc)
    assert len(expected) >= 3 and len({round(sum(v) / len(v)) for v in expected.values()}) >= 2
    for family, accs in expected.items():
        assert out[f"questions_family_{family}"] == len(accs)
        assert out[f"accuracy_family_{family}"] == pytest.approx(sum(accs) / len(accs))
    assert sum(out[f"questions_family_{f}"] for f in expected) == out["num_questions"]
    partial = VQASplit(split.questions, split.annotations, split.image_root, split.image_name,
                       {q: f for q, f in list(families.items())[1:]})
    with pytest.raises(ValueError, match="no group"):
        evaluate_vqa(oracle, model.tokenizer, partial, "val")


def test_data_description_file(tmp_path, setup):
    world = setup.world
    desc = {"train": {"questions": str(world.vqa_questions("train")), "annotations": str(world.vqa_annotations("train")),
                      "image_root": str(world.image_dir("train")), "image_name": "shapes_train_{image_id:012d}.png"},
            "eval": {"val": {"questions": str(world.vqa_questions("val")), "image_root": "images/val"}},
            "tokenizer": str(world.root / "tokenizer")}
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "vqa.yaml").write_text(json.dumps(desc))
    data = VQAData.resolve(tmp_path / "vqa.yaml")
    assert data.eval["val"].image_root == tmp_path / "images" / "val" and data.eval["val"].annotations is None
    assert data.tokenizer.get_vocab() == setup.tokenizer.get_vocab()
    assert len(data.train[0].dataset(None)) == len(json.loads(world.vqa_questions("train").read_text())["questions"])
    with pytest.raises(ConfigError, match="needs 'train' and 'eval'"):
        VQAData.from_dict({"train": [], "evaluation": {}})
    with pytest.raises(ConfigError, match=r"eval\['val'\]: expected keys"):
        VQAData.from_dict({"train": [], "eval": {"val": {"questions": "q.json"}}})


def test_short_finetuning_lowers_the_loss_and_trains_the_encoder(tmp_path, setup):
    torch.manual_seed(0)
    fresh = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    cfg = VQAConfig(trainer={"batch_size": 8, "lr": 5e-4, "backbone_lr": 1e-4, "lr_drop_epochs": []},
                    answer_min_count=1, train_scales=[64], **SIZE)
    report = finetune_vqa(fresh, setup, tmp_path / "run", cfg,
                          {"max_steps": 6, "progress_bar": False, "save_every": 0, "log_every": 1})
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("kind") == "train" and "loss" in r]
    assert len(losses) == 6 and report.train.last_loss < 0.6 * report.train.first_loss
    assert losses[0] == pytest.approx(report.train.first_loss)
    after = fresh.state_dict()
    assert not torch.equal(before["encoder.layers.0.self_attn.q_proj.weight"], after["encoder.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["query_embed.weight"], after["query_embed.weight"])  # VQA does not use the decoder
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["val"]["accuracy"] == report.metrics["val"]["accuracy"]
    assert {"majority_yes/no", "majority_per_question_type"} <= set(saved["info"]["baselines"]["val"])
    assert (tmp_path / "run" / "results" / "vqa_OpenEnded_shapes_test_e2evlp_results.json").is_file()
    assert isinstance(VQAModel.from_pretrained(tmp_path / "run" / "model").e2evlp, E2EVLP)


def test_frozen_trunk_finetuning_leaves_the_trunk_and_reuses_its_features(tmp_path, setup):
    torch.manual_seed(0)
    fresh = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    cfg = VQAConfig(trainer={"batch_size": 8, "lr": 5e-4, "lr_drop_epochs": []}, answer_min_count=1,
                    train_scales=[64], frozen_trunk=True, **SIZE)
    report = finetune_vqa(fresh, setup, tmp_path / "run", cfg,
                          {"max_steps": 12, "progress_bar": False, "save_every": 0, "log_every": 1})
    after = fresh.state_dict()
    frozen = [k for k in before if k.startswith("backbone.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BatchNorm statistics
    assert not torch.equal(before["encoder.layers.0.self_attn.q_proj.weight"],
                           after["encoder.layers.0.self_attn.q_proj.weight"])
    stats = report.info["trunk_cache"]
    images = len({q["image_id"] for q in json.loads(setup.world.vqa_questions("train").read_text())["questions"]})
    # 12 steps x 8 questions from `images` training images, plus val and test (the train scale is the eval size)
    assert stats["evictions"] == 0 and stats["hits"] > 0
    assert stats["entries"] == stats["misses"] and images <= stats["entries"]
    assert report.train.last_loss < report.train.first_loss


def test_results_file_takes_the_official_subtype_name(tmp_path, data, vocab, model):
    """A test-dev submission is named as the evaluation server expects, from the questions file's data_type and
    data_subtype (`vqa_OpenEnded_mscoco_test-dev2015_<alg>_results.json`), not from the split's key."""
    import dataclasses

    split = data.eval["val"]
    questions = json.loads(split.questions.read_text())
    assert split.image_name is not None  # the shapes images are named by pattern, not by the subtype
    questions.update(data_type="mscoco", data_subtype="test-dev2015")
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    testdev = dataclasses.replace(split, questions=tmp_path / "questions.json", annotations=None)
    out = evaluate_vqa(model, model.tokenizer, testdev, "test", tmp_path / "out", batch_size=16)
    assert out["results_file"] == str(tmp_path / "out" / "vqa_OpenEnded_mscoco_test-dev2015_e2evlp_results.json")
    assert len(json.loads(Path(out["results_file"]).read_text())) == len(questions["questions"])
