"""Config parsing: both transformers spellings of RoPE settings, and rejection of unsupported math."""
import pytest

from emojax.model.config import ConfigError, config_from_hf

BASE = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24}
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 64}


def test_nested_rope_parameters_equal_top_level_fields() -> None:
    old = config_from_hf({**BASE, "rope_theta": 5e5, "rope_scaling": SCALING})
    new = config_from_hf({**BASE, "rope_parameters": {"rope_theta": 5e5, **SCALING}})
    assert old == new and new.rope_theta == 5e5 and dict(new.rope_scaling)["factor"] == 8.0


def test_uniform_full_attention_layer_types_accepted_but_mixed_rejected() -> None:
    qwen = {**BASE, "model_type": "qwen2"}
    assert config_from_hf({**qwen, "layer_types": ["full_attention"] * 2}).qkv_bias
    with pytest.raises(ConfigError, match="layer_types"):
        config_from_hf({**qwen, "layer_types": ["full_attention", "sliding_attention"]})


def test_missing_field_is_named() -> None:
    raw = dict(BASE)
    del raw["intermediate_size"]
    with pytest.raises(ConfigError, match="intermediate_size"):
        config_from_hf(raw)
