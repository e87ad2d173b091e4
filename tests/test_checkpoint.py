import pytest
import torch

from vlpkit import E2EVLP, build_e2evlp
from vlpkit.checkpoint import CheckpointMismatchError, load_weights, save_weights


def test_save_load_round_trip_identical_outputs(tmp_path):
    model = build_e2evlp("e2evlp-tiny").eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    loaded = E2EVLP.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    pixels, ids = torch.randn(1, 3, 64, 64), torch.tensor([[2, 9, 10, 3]])
    with torch.no_grad():
        a, b = model(pixels, input_ids=ids), loaded(pixels, input_ids=ids)
    assert torch.equal(a.encoder.memory, b.encoder.memory)
    assert torch.equal(a.detection.pred_boxes, b.detection.pred_boxes)
    # tied weights stay tied after loading
    assert loaded.mlm_head.word_embeddings.weight is loaded.text_embeddings.word_embeddings.weight


def test_mismatched_weights_name_keys_and_shapes(tmp_path):
    save_weights(build_e2evlp("e2evlp-tiny", num_classes=5), tmp_path / "w.safetensors")
    target = build_e2evlp("e2evlp-tiny", num_encoder_layers=3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(target, tmp_path / "w.safetensors")
    msg = str(err.value)
    assert "encoder.layers.2.self_attn.q_proj.weight" in msg  # missing
    assert "detection_head.class_embed.weight: checkpoint [6, 128] vs model [9, 128]" in msg


def test_unexpected_keys_reported(tmp_path):
    save_weights(build_e2evlp("e2evlp-tiny", num_decoder_layers=3), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*decoder.layers.2"):
        load_weights(build_e2evlp("e2evlp-tiny"), tmp_path / "w.safetensors")
    missing, unexpected = load_weights(build_e2evlp("e2evlp-tiny"), tmp_path / "w.safetensors", strict=False)
    assert not missing and any(k.startswith("decoder.layers.2") for k in unexpected)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        E2EVLP.from_pretrained(tmp_path / "nowhere")


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    import os

    from vlpkit.checkpoint import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("a.txt") == mode("b.txt") == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
