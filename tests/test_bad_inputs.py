"""Every bad input we try at a public entry point, and the error it gets.

The same CASES produce the table in docs/reliability.md: run `python tests/test_bad_inputs.py` to rewrite it;
`test_docs_table_lists_every_case` fails when the page and this file disagree.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def _tiny():
    from vlpkit import build_e2evlp

    return build_e2evlp("e2evlp-tiny").eval()


def _encode(**kw):
    model = _tiny()
    args = {"pixel_values": torch.randn(1, 3, 32, 32)}
    args.update(kw)
    return model.encode(**args)


def _mismatched_checkpoint(tmp):
    from vlpkit import build_e2evlp
    from vlpkit.checkpoint import load_weights, save_weights

    save_weights(build_e2evlp("e2evlp-tiny", num_classes=5), tmp / "w.safetensors")
    load_weights(build_e2evlp("e2evlp-tiny"), tmp / "w.safetensors")


def _missing_file(tmp):
    from vlpkit.data.readers import CocoDetection

    CocoDetection(tmp / "instances_val2014.json", tmp)


def _wrong_json(tmp):
    from vlpkit.data.readers import CocoDetection

    (tmp / "instances.json").write_text('{"images": []}')
    CocoDetection(tmp / "instances.json", tmp)


def _corrupt_image(tmp):
    from vlpkit.data.readers.images import load_rgb

    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    load_rgb(tmp / "broken.png")


def _image_mode(mode):
    def run(tmp):
        from vlpkit.data.transforms import make_eval_transforms

        image, _, _ = make_eval_transforms(32, 64)(Image.new(mode, (40, 30)), None, "a caption")
        assert image.shape == (3, 32, 42)
    return run


def _long_text(tmp):
    from vlpkit.data import batch as batch_module
    from vlpkit.data.batch import TextTruncationWarning, collate_texts
    from vlpkit.data.tokenization import train_wordpiece

    tok = train_wordpiece(["a red circle left of a blue square"] * 4, vocab_size=60)
    batch_module._warned.clear()  # the warning is once per process: forget earlier tests' truncations
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, _, _ = collate_texts(["red " * 100], tok, max_length=40)
    assert ids.shape[1] == 40 and any(issubclass(w.category, TextTruncationWarning) for w in caught)
    raise TextTruncationWarning(str(caught[-1].message))


def _nan_matcher(tmp):
    from vlpkit.ops import HungarianMatcher

    logits = torch.zeros(2, 3, 4)
    logits[1, 2, 0] = float("nan")
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    HungarianMatcher()({"pred_logits": logits, "pred_boxes": torch.rand(2, 3, 4)}, targets)


def _degenerate_box(tmp):
    from vlpkit.ops import HungarianMatcher

    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.2]])}]
    HungarianMatcher()({"pred_logits": torch.zeros(1, 3, 4), "pred_boxes": torch.rand(1, 3, 4)}, targets)


def _nan_loss(tmp):
    from torch.utils.data import TensorDataset

    from vlpkit.engine import Trainer, TrainerConfig

    model = torch.nn.Linear(2, 1)

    def loss_fn(m, batch):
        value = m(batch[0]).mean() * float("nan")
        return {"loss": value, "mse": value}

    cfg = TrainerConfig(output_dir=str(tmp / "run"), max_steps=2, batch_size=2, save_every=0,
                        progress_bar=False, log_every=1)
    Trainer(model, loss_fn, TensorDataset(torch.randn(4, 2)), None, cfg).train()


def _unknown_preset(tmp):
    from vlpkit import build_e2evlp

    build_e2evlp("e2evlp-24-r50")


def _unknown_field(tmp):
    from vlpkit import build_e2evlp

    build_e2evlp("e2evlp-tiny", num_encoder_layer=3)


def _twelve_heads(tmp):
    from vlpkit import E2EVLPConfig

    E2EVLPConfig(num_heads=12)


def _unknown_task(tmp):
    from vlpkit.pretraining.objective import ObjectiveConfig

    ObjectiveConfig(tasks=("mlm", "vqa"))


def _config_override(tmp):
    from vlpkit.pretraining.run import load_config

    load_config("e2evlp-tiny", ["trainer.max_steps"])


# (entry point, bad input, callable, expected exception, message must match)
CASES = [
    ("E2EVLP.encode", "uint8 image tensor", lambda t: _encode(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
     TypeError, r"normalised float tensor, got dtype torch.uint8"),
    ("E2EVLP.encode", "4-channel image tensor", lambda t: _encode(pixel_values=torch.randn(1, 4, 32, 32)),
     ValueError, r"must have shape \[B, 3, H, W\], got \[1, 4, 32, 32\]"),
    ("E2EVLP.encode", "empty batch", lambda t: _encode(pixel_values=torch.randn(0, 3, 32, 32)),
     ValueError, r"empty batch"),
    ("E2EVLP.encode", "pixel mask of another size", lambda t: _encode(pixel_mask=torch.ones(1, 31, 32, dtype=torch.bool)),
     ValueError, r"pixel_mask must have shape \[1, 32, 32\]"),
    ("E2EVLP.encode", "token id outside the vocabulary", lambda t: _encode(input_ids=torch.tensor([[2, 10**6]])),
     ValueError, r"outside \[0, vocab_size=1000\)"),
    ("transforms", "grayscale (L) PIL image", _image_mode("L"), None, "converted to RGB"),
    ("transforms", "RGBA PIL image", _image_mode("RGBA"), None, "converted to RGB (alpha dropped)"),
    ("collate_texts", "text longer than max_length", _long_text, Warning, r"truncat"),
    ("build_e2evlp", "unknown preset", _unknown_preset, ValueError, r"unknown preset 'e2evlp-24-r50'; valid presets"),
    ("build_e2evlp", "unknown config field", _unknown_field, ValueError, r"unknown config field\(s\) \['num_encoder_layer'\]"),
    ("E2EVLPConfig", "12 heads at d=256 (the paper's figure)", _twelve_heads, ValueError, r"not divisible by num_heads=12"),
    ("load_weights", "checkpoint of another config", _mismatched_checkpoint, RuntimeError,
     r"class_embed.weight: checkpoint \[6, 128\] vs model \[9, 128\]"),
    ("CocoDetection", "missing annotation file", _missing_file, FileNotFoundError, r"instances_val2014.json"),
    ("CocoDetection", "annotation file of the wrong format", _wrong_json, ValueError, r"lacks key|expected"),
    ("load_rgb", "corrupt image file", _corrupt_image, OSError, r"broken.png"),
    ("HungarianMatcher", "NaN in the predictions", _nan_matcher, ValueError, r"image 1"),
    ("HungarianMatcher", "degenerate target box (w = 0)", _degenerate_box, ValueError, r"image 0.*box 0"),
    ("Trainer", "NaN loss", _nan_loss, FloatingPointError, r"step 1"),
    ("ObjectiveConfig", "unknown pretraining task", _unknown_task, ValueError, r"unknown pretraining task\(s\) \['vqa'\]"),
    ("load_config", "override without a value", _config_override, ValueError, r"is not key=value"),
]


@pytest.mark.parametrize("entry,what,fn,exc,pattern", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_gets_a_clear_error(tmp_path, entry, what, fn, exc, pattern):
    if exc is None:
        fn(tmp_path)  # accepted and converted
        return
    with pytest.raises(exc) as err:
        fn(tmp_path)
    assert re.search(pattern, str(err.value), re.S), str(err.value)


def _run_case(case, tmp: Path) -> str:
    entry, what, fn, exc, pattern = case
    if exc is None:
        fn(tmp)
        return pattern
    try:
        fn(tmp)
    except exc as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    raise AssertionError(f"{entry}: {what} raised nothing")


def render_table(tmp: Path) -> str:
    rows = ["| entry point | bad input | what happens |", "|---|---|---|"]
    for case in CASES:
        message = _run_case(case, tmp).replace("|", "\\|").replace(str(tmp), "<dir>").replace("`", "'")
        rows.append(f"| `{case[0]}` | {case[1]} | `{message}` |")
    return "\n".join(rows)


def test_docs_table_lists_every_case(tmp_path):
    text = DOC.read_text()
    table = re.search(r"<!-- bad-inputs -->\n(.*?)\n<!-- /bad-inputs -->", text, re.S).group(1)
    documented = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    assert [(e.strip(" `"), w.strip()) for e, w in documented] == [(c[0], c[1]) for c in CASES]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = render_table(Path(tmp))
    text = DOC.read_text()
    DOC.write_text(re.sub(r"<!-- bad-inputs -->\n.*?\n<!-- /bad-inputs -->",
                          lambda _: f"<!-- bad-inputs -->\n{table}\n<!-- /bad-inputs -->", text, flags=re.S))
    print(table)
    sys.exit(0)
