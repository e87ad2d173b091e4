import json

import pytest

from vlpkit import PRESETS, ConfigError, E2EVLPConfig, build_e2evlp, get_preset


def test_json_round_trip(tmp_path):
    cfg = get_preset("e2evlp-12-r101", dropout=0.2, extra={"note": "x"})
    path = tmp_path / "config.json"
    cfg.save(path)
    assert E2EVLPConfig.load(path) == cfg
    assert json.loads(path.read_text())["num_encoder_layers"] == 12


def test_paper_presets_follow_table5():
    for layers in (6, 12):
        for depth in (50, 101, 152):
            cfg = get_preset(f"e2evlp-{layers}-r{depth}")
            assert (cfg.num_encoder_layers, cfg.backbone) == (layers, f"resnet{depth}")
            assert (cfg.d_model, cfg.dim_feedforward, cfg.num_decoder_layers) == (256, 1024, 6)
            assert (cfg.num_queries, cfg.max_text_length) == (100, 40)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        build_e2evlp("e2evlp-24-r50")
    assert "e2evlp-24-r50" in str(err.value)
    for name in PRESETS:
        assert name in str(err.value)


def test_unknown_field_lists_valid_fields():
    with pytest.raises(ConfigError, match="num_encoder_layer.*valid fields.*num_encoder_layers"):
        build_e2evlp("e2evlp-tiny", num_encoder_layer=3)
    with pytest.raises(ConfigError, match="bogus"):
        E2EVLPConfig.from_dict({"bogus": 1})


def test_paper_twelve_heads_rejected_with_explanation():
    with pytest.raises(ConfigError, match="not divisible by num_heads=12"):
        E2EVLPConfig(num_heads=12)
    assert E2EVLPConfig(d_model=384, num_heads=12).num_heads == 12


@pytest.mark.parametrize("field,value", [("backbone", "resnet9"), ("dropout", 1.5), ("num_queries", 0),
                                         ("cls_token_id", 10**6), ("position_embedding", "rope")])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        E2EVLPConfig(**{field: value})


def test_builder_overrides_apply():
    model = build_e2evlp("e2evlp-tiny", num_encoder_layers=3)
    assert len(model.encoder.layers) == 3 and model.config.num_encoder_layers == 3
