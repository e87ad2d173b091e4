import pytest
import torch

from vlpkit import build_e2evlp
from vlpkit.presets import PAPER_PARAMETERS_M


@pytest.fixture(scope="module")
def tiny():
    return build_e2evlp("e2evlp-tiny").eval()


def test_every_head_shape(tiny):
    cfg = tiny.config
    b, h, w, length = 2, 96, 130, 11
    pixels = torch.randn(b, 3, h, w)
    ids = torch.randint(5, cfg.vocab_size, (b, length))
    with torch.no_grad():
        out = tiny(pixels, input_ids=ids)
        grid = (-(-h // 32), -(-w // 32))
        s = length + grid[0] * grid[1]
        assert out.encoder.grid_size == grid
        assert out.encoder.memory.shape == (b, s, cfg.d_model)
        assert out.encoder.memory_padding_mask.shape == (b, s)
        assert out.encoder.cls_state.shape == (b, cfg.d_model)
        det = out.detection
        assert det.pred_logits.shape == (b, cfg.num_queries, cfg.num_classes + 1)
        assert det.pred_boxes.shape == (b, cfg.num_queries, 4)
        assert det.pred_boxes.dtype == torch.float32 and det.pred_boxes.min() >= 0 and det.pred_boxes.max() <= 1
        assert det.pred_attributes.shape == (b, cfg.num_queries, cfg.num_attributes)
        assert len(det.aux_outputs) == cfg.num_decoder_layers - 1
        assert all(a["pred_logits"].shape == det.pred_logits.shape for a in det.aux_outputs)
        assert out.mlm_logits.shape == (b, length, cfg.vocab_size)
        assert out.itm_logits.shape == (b, 2)
        caption = tiny.caption_logits(tiny.encode(pixels), ids[:, :7])
        assert caption.shape == (b, 7, cfg.vocab_size)


def test_image_only_encoding_has_cls_sep(tiny):
    enc = tiny.encode(torch.randn(1, 3, 64, 64))
    assert enc.text_length == 2 and enc.memory.shape[1] == 2 + 4


def test_attribute_head_can_be_disabled():
    model = build_e2evlp("e2evlp-tiny", num_attributes=0).eval()
    with torch.no_grad():
        det = model.detect(model.encode(torch.randn(1, 3, 64, 64)))
    assert det.pred_attributes is None and "pred_attributes" not in det.to_dict()


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS_M))
def test_paper_presets_construct(name):
    model = build_e2evlp(name)
    millions = model.num_parameters() / 1e6
    # ours counts the ResNet trunk, transformer, embeddings (BERT vocabulary) and heads; see docs/paper_fidelity.md
    assert 0.6 * PAPER_PARAMETERS_M[name] < millions < 1.2 * PAPER_PARAMETERS_M[name]
    assert model.config.num_encoder_layers == len(model.encoder.layers)


def test_bad_inputs_name_the_problem(tiny):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny.encode(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="empty batch"):
        tiny.encode(torch.randn(0, 3, 32, 32))
    with pytest.raises(TypeError, match="uint8"):
        tiny.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="pixel_mask"):
        tiny.encode(torch.randn(1, 3, 32, 32), torch.ones(1, 32, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        tiny.encode(torch.randn(1, 3, 32, 32), input_ids=torch.tensor([[2, 10**5]]))


def test_precomputed_image_embedding_gives_the_same_encoding(tiny):
    pixels = torch.randn(2, 3, 64, 96)
    ids = torch.tensor([[2, 8, 9, 3], [2, 7, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        image = tiny.embed_image(pixels)
        a = tiny.encode(pixels, input_ids=ids, attention_mask=mask)
        b = tiny.encode(input_ids=ids, attention_mask=mask, image=image)
        c = tiny.encode(image=image)
    assert torch.equal(a.memory, b.memory)
    assert c.text_length == 2
