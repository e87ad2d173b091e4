import torch

from vlpkit.data.masking import IGNORE_INDEX
from vlpkit.data.transforms import make_train_transforms
from vlpkit.pretraining.data import PretrainingCollator, PretrainingDataset, Source
from vlpkit.pretraining.shapes import shapes_sources


def _dataset(setup, **kw):
    tf = make_train_transforms(scales=(64,), max_size=96, crop=False, flip=True)
    return PretrainingDataset(shapes_sources(setup, **kw), tf, seed=5)


def test_mixture_sizes_follow_weights(shapes_setup):
    ds = _dataset(shapes_setup, coco_weight=2.0, vg_weight=0.5)
    n_coco, n_vg = (len(s.dataset) for s in ds.sources)
    assert len(ds) == 2 * n_coco + round(0.5 * n_vg)
    names = [ds[i][1]["source"] for i in range(len(ds))]
    assert names.count("coco") == 2 * n_coco and names.count("vg") == round(0.5 * n_vg)
    ds.set_epoch(1)
    assert len(ds) == 2 * n_coco + round(0.5 * n_vg)


def test_items_reproducible_per_seed_epoch_index(shapes_setup):
    a, b = _dataset(shapes_setup), _dataset(shapes_setup)
    for i in (0, 7, len(a) - 1):
        ia, ta, ca = a[i]
        ib, tb, cb = b[i]
        assert torch.equal(ia, ib) and ca == cb and torch.equal(ta["boxes"], tb["boxes"])
    a.set_epoch(3)
    differs = any(a[i][2] != b[i][2] or not torch.equal(a[i][0], b[i][0]) for i in range(10))
    assert differs  # another epoch draws other captions / flips


def test_source_tasks_shape_targets(shapes_setup):
    ds = _dataset(shapes_setup, coco_tasks=("mlm", "itm", "caption"), vg_tasks=("detection",))
    for i in range(len(ds)):
        _, target, _ = ds[i]
        if target["source"] == "coco":
            assert not target["has_boxes"] and len(target["boxes"]) == 0
        else:
            assert target["has_boxes"] and "attributes" not in target and len(target["boxes"]) > 0


def test_collator_itm_mlm_caption_fields(shapes_setup):
    ds = _dataset(shapes_setup)
    tok = shapes_setup.tokenizer
    collate = PretrainingCollator(tok, max_length=40, seed=1)
    batch = collate([ds[i] for i in range(16)])
    coco = [t["source"] == "coco" for t in batch.targets]
    for i, meta in enumerate(batch.meta):
        label = int(batch.itm_labels[i])
        if not coco[i]:
            assert label == IGNORE_INDEX  # vg does not serve ITM by default
            assert (batch.caption_ids[i, 1:] == tok.pad_token_id).all()  # nor generation
            assert (batch.mlm_labels[i] != IGNORE_INDEX).any()  # but it serves MLM on its own phrase
        elif label == 0:
            # a negative's text is another image's caption
            other = [j for j, m in enumerate(batch.meta) if m["caption"] == meta["text"]]
            assert other and all(batch.meta[j]["image_key"] != meta["image_key"] for j in other)
            assert (batch.mlm_labels[i] == IGNORE_INDEX).all()  # no MLM on mismatched pairs
        else:
            assert label == 1 and meta["text"] == meta["caption"]
            assert (batch.mlm_labels[i] != IGNORE_INDEX).any()
        # caption_ids encode the true caption, whatever the encoder text is
        if coco[i]:
            expected = tok(meta["caption"], truncation=True, max_length=40)["input_ids"]
            assert batch.caption_ids[i, : len(expected)].tolist() == expected
    labels = batch.itm_labels[batch.itm_labels != IGNORE_INDEX]
    assert (labels == 0).any() and (labels == 1).any()
    again = collate([ds[i] for i in range(16)])
    assert torch.equal(again.input_ids, batch.input_ids) and torch.equal(again.itm_labels, batch.itm_labels)


def test_unknown_task_and_bad_weight_named(shapes_setup):
    import pytest

    src = shapes_sources(shapes_setup)[0]
    with pytest.raises(ValueError, match="unknown task.*'grounding'"):
        Source("x", src.dataset, ("grounding",))
    with pytest.raises(ValueError, match="weight must be a positive"):
        Source("x", src.dataset, ("mlm",), weight=0)


def test_itm_negatives_come_from_sources_that_serve_itm(shapes_setup):
    # a Visual Genome region phrase as a negative for a COCO image would be recognisable by its style alone
    ds = _dataset(shapes_setup)
    names = [ds[i][1]["source"] for i in range(len(ds))]
    mixed = [i for i, n in enumerate(names) if n == "coco"][:6] + [i for i, n in enumerate(names) if n == "vg"][:10]
    negatives = 0
    for seed in range(8):
        batch = PretrainingCollator(shapes_setup.tokenizer, seed=seed)([ds[i] for i in mixed])
        for i, meta in enumerate(batch.meta):
            if int(batch.itm_labels[i]) == 0:
                negatives += 1
                donors = [j for j, m in enumerate(batch.meta) if m["caption"] == meta["text"]]
                assert donors and all("itm" in batch.targets[j]["tasks"] for j in donors)
    assert negatives >= 8


def test_extra_itm_pairs_reuse_each_image_with_its_caption_and_k_others(shapes_setup):
    import pytest

    ds = _dataset(shapes_setup)
    samples = [ds[i] for i in range(16)]
    plain = PretrainingCollator(shapes_setup.tokenizer, seed=3)(samples)
    batch = PretrainingCollator(shapes_setup.tokenizer, seed=3, itm_extra_negatives=2)(samples)
    assert plain.itm_pairs is None
    # the extra rows are drawn after everything else: the rest of the batch is the paper's
    for name in ("input_ids", "mlm_labels", "itm_labels", "caption_ids"):
        assert torch.equal(getattr(batch, name), getattr(plain, name)), name
    pairs = batch.itm_pairs
    rows = len(pairs["labels"])
    assert pairs["input_ids"].shape[0] == pairs["attention_mask"].shape[0] == pairs["image_index"].shape[0] == rows
    texts = shapes_setup.tokenizer.batch_decode(pairs["input_ids"], skip_special_tokens=True)
    norm = [" ".join(shapes_setup.tokenizer.tokenize(m["caption"])) for m in batch.meta]
    eligible = [i for i in range(len(batch)) if int(batch.itm_labels[i]) != IGNORE_INDEX]
    assert eligible and sorted(set(pairs["image_index"].tolist())) == eligible
    for i in eligible:
        mine = (pairs["image_index"] == i).nonzero().flatten().tolist()
        labels = [int(pairs["labels"][r]) for r in mine]
        assert labels == [1, 0, 0]  # its own caption, then two others
        own = " ".join(shapes_setup.tokenizer.tokenize(texts[mine[0]]))
        assert own == norm[i]
        donors = set()
        for r in mine[1:]:
            text = " ".join(shapes_setup.tokenizer.tokenize(texts[r]))
            assert text != norm[i]
            match = [j for j in eligible if norm[j] == text and batch.meta[j]["image_key"] != batch.meta[i]["image_key"]]
            assert match  # another ITM sample's caption
            donors.add(text)
        assert len(donors) == 2  # two distinct donors
    assert (pairs["attention_mask"].sum(1) == (pairs["input_ids"] != shapes_setup.tokenizer.pad_token_id).sum(1)).all()
    with pytest.raises(ValueError, match="itm_extra_negatives"):
        PretrainingCollator(shapes_setup.tokenizer, itm_extra_negatives=-1)


def test_itm_on_unmasked_rows_only(shapes_setup):
    """`itm_unmasked_only`: the masked rows keep their own captions and carry MLM but no ITM label; ITM lives on
    the unmasked extra rows (own caption, then K others), so no masked token ever reaches an ITM row."""
    import pytest

    ds = _dataset(shapes_setup)
    samples = [ds[i] for i in range(16)]
    paper = PretrainingCollator(shapes_setup.tokenizer, seed=3, itm_extra_negatives=1)(samples)
    batch = PretrainingCollator(shapes_setup.tokenizer, seed=3, itm_extra_negatives=1, itm_unmasked_only=True)(samples)
    assert (paper.itm_labels == 0).any()  # the paper's rows hold negatives...
    assert (batch.itm_labels == IGNORE_INDEX).all()  # ...these hold no ITM label at all
    assert all(m["text"] == m["caption"] for m in batch.meta)  # every masked row is its own caption
    itm_samples = [i for i, t in enumerate(batch.targets) if "itm" in t["tasks"]]
    mlm_samples = [i for i, t in enumerate(batch.targets) if "mlm" in t["tasks"]]
    assert all(bool((batch.mlm_labels[i] != IGNORE_INDEX).any()) for i in mlm_samples)  # MLM in every such row
    pairs = batch.itm_pairs
    assert sorted(set(pairs["image_index"].tolist())) == itm_samples
    for i in itm_samples:
        assert pairs["labels"][pairs["image_index"] == i].tolist() == [1, 0]
    assert not (pairs["input_ids"] == shapes_setup.tokenizer.mask_token_id).any()
    with pytest.raises(ValueError, match="needs itm_extra_negatives >= 1"):
        PretrainingCollator(shapes_setup.tokenizer, itm_unmasked_only=True)
