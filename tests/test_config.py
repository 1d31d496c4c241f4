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


# config.json files as the hub ships them (written by transformers 4.x: `rope_theta`, Gemma 3's
# `rope_local_base_freq`, Gemma 2 without `layer_types`), which transformers 5 reads and re-writes in
# its own spelling (`rope_parameters`, per layer type for Gemma 3; `layer_types` always).
GEMMA3_270M = {
    "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640,
    "initializer_range": 0.02, "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512, "torch_dtype": "bfloat16",
    "use_bidirectional_attention": False, "use_cache": True, "vocab_size": 262144}
GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": 50.0,
    "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0,
    "head_dim": 256, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "vocab_size": 256000}
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16,
    "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True, "use_sliding_window": False,
    "vocab_size": 151936}
MISTRAL_7B_V01 = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000}


@pytest.mark.parametrize("raw", [GEMMA3_270M, GEMMA2_2B, QWEN3_06B, MISTRAL_7B_V01],
                         ids=["gemma-3-270m", "gemma-2-2b", "qwen3-0.6b", "mistral-7b-v0.1"])
def test_hub_configs_read_as_transformers_5_rewrites_them(raw, tmp_path) -> None:
    from transformers import AutoConfig

    ours = config_from_hf(raw)
    AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"}
                         ).save_pretrained(tmp_path)
    import json
    rewritten = json.loads((tmp_path / "config.json").read_text())
    assert config_from_hf(rewritten) == ours


def test_gemma3_270m_config() -> None:
    cfg = config_from_hf(GEMMA3_270M)
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (
        "gemma3", 18, 640, 4, 1, 256, 2048)
    assert cfg.sliding_window == 512 and cfg.sliding_layers == ((True,) * 5 + (False,)) * 3
    assert cfg.rope_theta == 1e6 and cfg.rope_local_theta == 1e4 and cfg.rope_scaling is None
    assert cfg.local_rope_of(0) and not cfg.local_rope_of(5) and cfg.window_of(5) is None
    assert cfg.qk_norm and cfg.post_norms and cfg.norm_offset == 1.0 and cfg.activation == "gelu_tanh"
    assert cfg.tie_embeddings and cfg.attn_scale == 256 ** -0.5 and cfg.embed_scale == 640 ** 0.5
    assert cfg.attn_softcap is None and cfg.final_softcap is None


def test_gemma2_layers_alternate_and_keep_the_caps() -> None:
    cfg = config_from_hf(GEMMA2_2B)
    assert cfg.sliding_layers == (True, False) * 13 and cfg.rope_local_theta is None
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.query_pre_attn_scalar) == (50.0, 30.0, 256.0)
    assert not cfg.qk_norm and cfg.post_norms


def test_qwen3_and_mistral() -> None:
    qwen3 = config_from_hf(QWEN3_06B)
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 128 and qwen3.sliding_window is None
    windowed = config_from_hf({**QWEN3_06B, "use_sliding_window": True, "sliding_window": 64})
    assert windowed.sliding_layers == () and windowed.sliding_window is None  # max_window_layers = all layers
    windowed = config_from_hf({**QWEN3_06B, "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 20})
    assert windowed.sliding_layers == (False,) * 20 + (True,) * 8 and windowed.sliding_window == 64
    mistral = config_from_hf(MISTRAL_7B_V01)
    assert mistral.sliding_layers == (True,) * 32 and mistral.uniform_layers and mistral.window_of(3) == 4096
    assert config_from_hf({**MISTRAL_7B_V01, "sliding_window": None}).sliding_window is None
