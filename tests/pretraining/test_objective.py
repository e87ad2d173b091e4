import pytest
import torch
import torch.nn.functional as F

from tests.gloo import needs_fork, run_two_ranks
from vlpkit import build_e2evlp
from vlpkit.data.transforms import make_train_transforms
from vlpkit.losses import label_smoothed_cross_entropy
from vlpkit.pretraining.data import PretrainingCollator, PretrainingDataset
from vlpkit.pretraining.objective import ObjectiveConfig, PretrainingObjective
from vlpkit.pretraining.shapes import shapes_sources


def _setup(shapes_setup, tasks=None, batch=8):
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", dropout=0.0, **shapes_setup.model_overrides()).eval()
    cfg = ObjectiveConfig() if tasks is None else ObjectiveConfig(tasks=tasks)
    objective = PretrainingObjective(cfg, model.config.num_classes, model.config.num_attributes,
                                     model.config.pad_token_id)
    ds = PretrainingDataset(shapes_sources(shapes_setup, vg_tasks=("mlm", "detection", "attributes")),
                            make_train_transforms(scales=(64,), max_size=96, crop=False), seed=0)
    order = list(range(0, len(ds), max(1, len(ds) // batch)))[:batch]
    return model, objective, PretrainingCollator(shapes_setup.tokenizer, seed=0)([ds[i] for i in order])


def test_terms_equal_independent_formulas(shapes_setup):
    model, objective, batch = _setup(shapes_setup)
    with torch.no_grad():
        out = objective(model, batch)
        enc = model.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids, batch.attention_mask,
                           batch.token_type_ids)
        mlm = F.cross_entropy(model.mlm_logits(enc).flatten(0, 1), batch.mlm_labels.flatten())
        itm = F.cross_entropy(model.itm_logits(enc), batch.itm_labels)
        alone = model.encode(batch.pixel_values, batch.pixel_mask)  # the image alone: no caption leak
        cap = label_smoothed_cross_entropy(model.caption_logits(alone, batch.caption_ids[:, :-1]),
                                           batch.caption_ids[:, 1:], 0.1, ignore_index=model.config.pad_token_id)
    torch.testing.assert_close(out["mlm"], mlm)
    torch.testing.assert_close(out["itm"], itm)
    torch.testing.assert_close(out["caption"], cap)
    weighted = {"det/loss_ce": 1, "det/loss_bbox": 5, "det/loss_giou": 2, "det/loss_attr": 1}
    det = sum(w * out[k] + w * out[k + "_0"] for k, w in weighted.items())  # e2evlp-tiny: 2 decoder layers
    torch.testing.assert_close(out["detection"], det)
    torch.testing.assert_close(out["loss"], out["mlm"] + out["itm"] + out["detection"] + out["caption"])
    assert out["det/loss_attr"] > 0  # the vg images carry attributes


@pytest.mark.parametrize("tasks", [("mlm", "itm"), ("mlm", "itm", "detection", "caption"),
                                   ("mlm", "itm", "detection", "attributes")])
def test_tasks_switch_off(shapes_setup, tasks):
    model, objective, batch = _setup(shapes_setup, tasks)
    out = objective(model, batch)
    assert ("caption" in out) == ("caption" in tasks)
    assert ("detection" in out) == ("detection" in tasks)
    assert ("det/loss_attr" in out) == ("attributes" in tasks)
    out["loss"].backward()
    decoder_grad = model.decoder.layers[0].ffn.linear1.weight.grad
    assert (decoder_grad is not None) == ("detection" in tasks or "caption" in tasks)


def test_invalid_task_configs():
    with pytest.raises(ValueError, match="needs 'detection'"):
        ObjectiveConfig(tasks=("mlm", "attributes"))
    with pytest.raises(ValueError, match="unknown pretraining task"):
        ObjectiveConfig(tasks=("mlm", "vqa"))


def _rank(rank, model, objective, batch):
    from vlpkit.data.batch import Batch

    half = len(batch) // 2
    sl = slice(rank * half, (rank + 1) * half)
    part = Batch(**{k: (v[sl] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in vars(batch).items()})
    with torch.no_grad():
        out = objective(model, part)
    return {k: float(v) for k, v in out.items()}


@needs_fork
@pytest.mark.timeout(180)
def test_two_processes_match_one_global_batch(shapes_setup, tmp_path):
    """Each rank divides by the count averaged over ranks, so the mean of the ranks' terms (what DDP's gradient
    averaging optimises) equals the single-process term over the whole batch."""
    model, objective, batch = _setup(shapes_setup)
    with torch.no_grad():
        single = objective(model, batch)
    ranks = run_two_ranks(_rank, tmp_path, model, objective, batch, timeout=150)
    for term in ("mlm", "itm", "caption", "det/loss_bbox", "det/loss_giou", "det/loss_attr"):
        mean = (ranks[0][term] + ranks[1][term]) / 2
        assert mean == pytest.approx(float(single[term]), rel=1e-5), term
    # DETR's class term is a weighted mean per process (as in DETR): equal only within tolerance
    ce = (ranks[0]["det/loss_ce"] + ranks[1]["det/loss_ce"]) / 2
    assert ce == pytest.approx(float(single["det/loss_ce"]), rel=0.05)


def test_extra_itm_pairs_join_the_itm_mean(shapes_setup):
    model, objective, _ = _setup(shapes_setup)
    ds = PretrainingDataset(shapes_sources(shapes_setup, vg_tasks=("mlm", "detection", "attributes")),
                            make_train_transforms(scales=(64,), max_size=96, crop=False), seed=0)
    order = list(range(0, len(ds), max(1, len(ds) // 8)))[:8]
    batch = PretrainingCollator(shapes_setup.tokenizer, seed=0, itm_extra_negatives=2)([ds[i] for i in order])
    pairs = batch.itm_pairs
    assert pairs is not None and (pairs["labels"] == 0).any() and (pairs["labels"] == 1).any()
    with torch.no_grad():
        out = objective(model, batch)
        enc = model.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids, batch.attention_mask,
                           batch.token_type_ids)
        main = F.cross_entropy(model.itm_logits(enc), batch.itm_labels, reduction="none")
        main = main[batch.itm_labels != -100]
        # independently: each extra pair encoded from its own image's pixels
        idx = pairs["image_index"]
        pair_enc = model.encode(batch.pixel_values[idx], batch.pixel_mask[idx], pairs["input_ids"],
                                pairs["attention_mask"], pairs["token_type_ids"])
        extra = F.cross_entropy(model.itm_logits(pair_enc), pairs["labels"], reduction="none")
    torch.testing.assert_close(out["itm"], torch.cat([main, extra]).mean())


def test_itm_on_unmasked_rows_only_is_the_mean_over_those_rows(shapes_setup):
    """With `itm_unmasked_only` the ITM term is the cross-entropy of the unmasked extra rows alone."""
    model, objective, _ = _setup(shapes_setup)
    ds = PretrainingDataset(shapes_sources(shapes_setup, vg_tasks=("mlm", "detection", "attributes")),
                            make_train_transforms(scales=(64,), max_size=96, crop=False), seed=0)
    order = list(range(0, len(ds), max(1, len(ds) // 8)))[:8]
    batch = PretrainingCollator(shapes_setup.tokenizer, seed=0, itm_extra_negatives=1,
                                itm_unmasked_only=True)([ds[i] for i in order])
    pairs = batch.itm_pairs
    assert (batch.itm_labels == -100).all() and pairs["labels"].tolist().count(0) == pairs["labels"].tolist().count(1)
    with torch.no_grad():
        out = objective(model, batch)
        idx = pairs["image_index"]
        pair_enc = model.encode(batch.pixel_values[idx], batch.pixel_mask[idx], pairs["input_ids"],
                                pairs["attention_mask"], pairs["token_type_ids"])
        expected = F.cross_entropy(model.itm_logits(pair_enc), pairs["labels"])
    torch.testing.assert_close(out["itm"], expected)


def test_itc_equals_a_loop_over_rows(shapes_setup):
    """The contrastive option (not in the paper): each text's [CLS] alone against each image's [CLS] alone,
    InfoNCE both ways, rows sharing an image or a text masked out of each other's negatives."""
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", dropout=0.0, **shapes_setup.model_overrides()).eval()
    objective = PretrainingObjective(ObjectiveConfig(tasks=("itc",), itc_temperature=0.2),
                                     model.config.num_classes, model.config.num_attributes,
                                     model.config.pad_token_id)
    sources = shapes_sources(shapes_setup, coco_tasks=("itc",), vg_tasks=())
    ds = PretrainingDataset(sources, make_train_transforms(scales=(64,), max_size=96, crop=False), seed=0)
    samples = [ds[i] for i in (0, 1, 5, 9, 13, 17)]
    samples.append(samples[2])  # the same image and caption twice: not each other's negative
    batch = PretrainingCollator(shapes_setup.tokenizer, seed=0)(samples)
    with torch.no_grad():
        out = objective(model, batch)
        captions = [m["caption"] for m in batch.meta]
        texts, images = [], []
        for i, caption in enumerate(captions):
            ids = shapes_setup.tokenizer(caption, return_tensors="pt")
            texts.append(F.normalize(model.encode_text(ids["input_ids"], ids["attention_mask"]).cls_state[0], dim=0))
            alone = model.encode(batch.pixel_values[i:i + 1], batch.pixel_mask[i:i + 1])
            images.append(F.normalize(alone.cls_state[0], dim=0))
        n, loss = len(captions), 0.0
        for i in range(n):
            for direction in (0, 1):
                scores = []
                for j in range(n):
                    if j != i and captions[j] == captions[i]:
                        continue
                    a, b = (texts[i], images[j]) if direction == 0 else (images[i], texts[j])
                    scores.append((j, float(a @ b) / 0.2))
                logits = torch.tensor([s for _, s in scores])
                loss += float(-(logits[[j for j, _ in scores].index(i)] - logits.logsumexp(0)))
    assert batch.itc_texts["same"][2, 6] and batch.itc_texts["same"].sum() == n + 2
    torch.testing.assert_close(out["itc"], torch.tensor(loss / (2 * n)), rtol=1e-4, atol=1e-5)
    assert out["loss"] == out["itc"]


def test_itc_is_off_by_default_and_needs_a_positive_temperature():
    assert "itc" not in ObjectiveConfig().tasks
    with pytest.raises(ValueError, match="itc_temperature"):
        ObjectiveConfig(itc_temperature=0.0)


def test_encoder_grad_scale_scales_only_what_reaches_the_encoder(shapes_setup):
    """`encoder_grad_scale` (not in the paper): the detection loss and the decoder's gradient are unchanged; the
    gradient that detection sends into the encoder is multiplied by the factor."""
    grads = {}
    for scale in (1.0, 0.25):
        model, _, batch = _setup(shapes_setup, ("detection",))
        objective = PretrainingObjective(
            ObjectiveConfig(tasks=("detection",), encoder_grad_scale={"detection": scale}),
            model.config.num_classes, model.config.num_attributes, model.config.pad_token_id)
        out = objective(model, batch)
        out["loss"].backward()
        grads[scale] = (float(out["loss"].detach()), model.decoder.layers[0].ffn.linear1.weight.grad.clone(),
                        model.encoder.layers[0].ffn.linear1.weight.grad.clone())
    assert grads[1.0][0] == grads[0.25][0]
    torch.testing.assert_close(grads[0.25][1], grads[1.0][1])
    torch.testing.assert_close(grads[0.25][2], 0.25 * grads[1.0][2])
    with pytest.raises(ValueError, match="encoder_grad_scale"):
        ObjectiveConfig(encoder_grad_scale={"mlm": 0.5})
