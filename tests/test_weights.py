"""Weight conversion: HF safetensors and GGUF files into the stacked parameter layout."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import quantize
from safetensors.numpy import load_file, save_file

from emojax.model.config import ModelConfig
from emojax.weights import WeightsError, load_gguf, load_hf_checkpoint
from emojax.weights.gguf_loader import SUPPORTED_TYPES, GGUFSource
from hf_fixtures import LLAMA3_ROPE_SCALING, load_hf_model, make_tiny_checkpoint, write_gguf

VARIANTS = {
    "llama-mha-untied": dict(family="llama", n_kv_heads=4, tie=False),
    "llama-gqa-tied": dict(family="llama", n_kv_heads=2, tie=True),
    "llama-mqa-llama3rope": dict(family="llama", n_kv_heads=1, tie=False, rope_scaling=LLAMA3_ROPE_SCALING),
    "qwen2-gqa-untied": dict(family="qwen2", n_kv_heads=2, tie=False),
    "qwen2-mha-tied": dict(family="qwen2", n_kv_heads=4, tie=True),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_tiny_checkpoint(root, **kwargs) for name, kwargs in VARIANTS.items()}


def expected_layout(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """The emojax layout built by hand from a torch state dict: Linear weights transposed, layers stacked."""
    sd = {k: v.detach().numpy() for k, v in state.items()}

    def stack(name: str, transpose: bool) -> np.ndarray:
        return np.stack([sd[f"model.layers.{i}.{name}"].T if transpose else sd[f"model.layers.{i}.{name}"]
                         for i in range(cfg.n_layers)])

    layers = {"attn_norm": stack("input_layernorm.weight", False),
              "mlp_norm": stack("post_attention_layernorm.weight", False),
              "wq": stack("self_attn.q_proj.weight", True), "wk": stack("self_attn.k_proj.weight", True),
              "wv": stack("self_attn.v_proj.weight", True), "wo": stack("self_attn.o_proj.weight", True),
              "w_gate": stack("mlp.gate_proj.weight", True), "w_up": stack("mlp.up_proj.weight", True),
              "w_down": stack("mlp.down_proj.weight", True)}
    if cfg.qkv_bias:
        layers.update(bq=stack("self_attn.q_proj.bias", False), bk=stack("self_attn.k_proj.bias", False),
                      bv=stack("self_attn.v_proj.bias", False))
    out = {"embed": sd["model.embed_tokens.weight"], "final_norm": sd["model.norm.weight"], "layers": layers}
    if not cfg.tie_embeddings:
        out["lm_head"] = sd["lm_head.weight"].T
    return out


def assert_trees_equal(got: dict, want: dict) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
        assert np.array_equal(a, b), f"{jax.tree_util.keystr(path)} differs"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_params_equal_torch_state_dict_bitwise(checkpoints, variant):
    params, cfg = load_hf_checkpoint(checkpoints[variant])
    assert_trees_equal(params, expected_layout(load_hf_model(checkpoints[variant]).state_dict(), cfg))


def test_config_read_from_checkpoint(checkpoints):
    _, llama = load_hf_checkpoint(checkpoints["llama-mqa-llama3rope"])
    assert (llama.family, llama.n_heads, llama.n_kv_heads, llama.head_dim) == ("llama", 4, 1, 16)
    assert llama.rope_theta == 50000.0  # from `rope_parameters`, which newer transformers write
    assert dict(llama.rope_scaling)["factor"] == 8.0
    assert llama.eos_token_ids == (2, 0)  # config eos plus generation_config's extra end token
    _, qwen = load_hf_checkpoint(checkpoints["qwen2-mha-tied"])
    assert qwen.qkv_bias and qwen.tie_embeddings and qwen.rope_theta == 1e6 and qwen.rope_scaling is None


def test_sharded_equals_single(tmp_path):
    single = make_tiny_checkpoint(tmp_path, family="qwen2", sharded=False, seed=3)
    sharded = make_tiny_checkpoint(tmp_path, family="qwen2", sharded=True, seed=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    (a, cfg_a), (b, cfg_b) = load_hf_checkpoint(single), load_hf_checkpoint(sharded)
    assert cfg_a == cfg_b
    assert_trees_equal(a, b)


# ---------------------------------------------------------------- bad inputs: HF directories

@pytest.fixture
def llama_dir(tmp_path) -> Path:
    return make_tiny_checkpoint(tmp_path, family="llama", sharded=False)


def test_missing_shard_named(tmp_path):
    path = make_tiny_checkpoint(tmp_path, sharded=True)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(WeightsError, match=shard.name):
        load_hf_checkpoint(path)


def test_missing_weights_file(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no safetensors weights"):
        load_hf_checkpoint(llama_dir)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors_named(llama_dir, keep):
    file = llama_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match=r"model\.safetensors.*truncated"):
        load_hf_checkpoint(llama_dir)


def test_unsupported_model_type(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    (llama_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="model_type.*gpt_neox"):
        load_hf_checkpoint(llama_dir)


def test_shape_mismatch_names_tensor_and_file(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    (llama_dir / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(WeightsError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' "
                                           r"has shape"):
        load_hf_checkpoint(llama_dir)


def test_missing_tensor_named(llama_dir):
    file = llama_dir / "model.safetensors"
    tensors = load_file(str(file))
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, str(file))
    with pytest.raises(WeightsError, match=r"missing tensors model\.layers\.1\.self_attn\.v_proj\.weight"):
        load_hf_checkpoint(llama_dir)


def test_unexpected_tensor_is_refused(llama_dir):
    """A tensor the config does not explain (here a q-norm) would change the math: refuse it."""
    file = llama_dir / "model.safetensors"
    tensors = load_file(str(file))
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
    save_file(tensors, str(file))
    with pytest.raises(WeightsError, match="unexpected tensors.*q_norm"):
        load_hf_checkpoint(llama_dir)


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_checkpoint_refused_without_unpickling(llama_dir, tmp_path):
    (llama_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled.marker"
    with open(llama_dir / "pytorch_model.bin", "wb") as stream:
        pickle.dump(_CreatesFileWhenUnpickled(marker), stream)

    with pytest.raises(WeightsError, match="pytorch_model.bin.*safetensors"):
        load_hf_checkpoint(llama_dir)
    with pytest.raises(WeightsError, match="safetensors"):
        load_hf_checkpoint(llama_dir / "pytorch_model.bin")
    assert not marker.exists()

    # The payload is live: unpickling it does create the marker.
    with open(llama_dir / "pytorch_model.bin", "rb") as stream:
        pickle.load(stream).close()
    assert marker.exists()


# ---------------------------------------------------------------- GGUF

@pytest.mark.parametrize("variant", ["llama-gqa-tied", "llama-mha-untied", "qwen2-gqa-untied"])
def test_gguf_f32_round_trip_equals_hf(checkpoints, variant, tmp_path):
    """Written as llama.cpp stores it (Q/K rows permuted for llama), read back bit for bit."""
    gguf_file = write_gguf(checkpoints[variant], tmp_path / "model.gguf")
    got, cfg = load_gguf(gguf_file)
    want, hf_cfg = load_hf_checkpoint(checkpoints[variant])
    assert_trees_equal(got, want)
    assert cfg.replace(name="", rms_eps=hf_cfg.rms_eps) == hf_cfg
    assert cfg.rms_eps == pytest.approx(hf_cfg.rms_eps, rel=1e-6)  # GGUF stores it as float32


def test_gguf_matches_transformers_gguf_loading(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM
    gguf_file = write_gguf(checkpoints["llama-gqa-tied"], tmp_path / "model-q8.gguf", tensor_type=Q.Q8_0)
    got, cfg = load_gguf(gguf_file)
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_file.name, dtype=torch.float32)
    assert_trees_equal(got, expected_layout(reference.state_dict(), cfg))


def _single_tensor_gguf(path: Path, values: np.ndarray, tensor_type: Q) -> Path:
    writer = GGUFWriter(str(path), arch="qwen2")
    if tensor_type in (Q.F32, Q.F16):
        writer.add_tensor("token_embd.weight", values.astype(np.float32 if tensor_type == Q.F32 else np.float16))
    else:
        writer.add_tensor("token_embd.weight", quantize(values, tensor_type), raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _read_single_tensor(path: Path) -> np.ndarray:
    return GGUFSource(path, GGUFReader(path)).get("model.embed_tokens.weight")


@pytest.mark.parametrize("tensor_type", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_gguf_dequantisation_round_trip(tmp_path, tensor_type):
    values = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    got = _read_single_tensor(_single_tensor_gguf(tmp_path / "t.gguf", values, tensor_type))
    assert got.dtype == np.float32 and got.shape == values.shape
    bound = {Q.F32: 0, Q.F16: 2e-3, Q.BF16: 2e-2, Q.Q8_0: 3e-2}.get(tensor_type, 0.5)
    assert np.abs(got - values).max() <= bound


# Byte offsets of the fp16 super-block scales in each K-quant block (ggml's block_q*_K structs).
_K_QUANT_FP16_FIELDS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


@pytest.mark.parametrize("tensor_type", sorted(_K_QUANT_FP16_FIELDS))
def test_gguf_k_quants_match_transformers_dequantiser(tmp_path, tensor_type):
    """No quantiser for K-quants here: random blocks, read back, compared with a second implementation."""
    from gguf import GGML_QUANT_SIZES
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize
    block_values, block_bytes = GGML_QUANT_SIZES[tensor_type]
    raw = np.random.default_rng(1).integers(0, 256, (8, block_bytes), dtype=np.uint8)
    for start in _K_QUANT_FP16_FIELDS[tensor_type]:  # finite block scales, so the comparison is exact
        raw[:, start:start + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    path = tmp_path / "k.gguf"
    writer = GGUFWriter(str(path), arch="qwen2")
    writer.add_tensor("token_embd.weight", raw, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    got = _read_single_tensor(path)
    want = torch_dequantize(torch.from_numpy(raw.copy()), int(tensor_type)).numpy().reshape(8, block_values)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)


def test_gguf_unsupported_quant_type_named(tmp_path):
    values = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    path = _single_tensor_gguf(tmp_path / "tq.gguf", values, Q.TQ1_0)
    assert Q.TQ1_0 not in SUPPORTED_TYPES
    with pytest.raises(WeightsError, match=r"tq\.gguf: tensor 'token_embd\.weight' uses quantisation type TQ1_0"):
        _read_single_tensor(path)


def test_gguf_unexpected_tensor_refused(checkpoints, tmp_path):
    gguf_file = write_gguf(checkpoints["llama-gqa-tied"], tmp_path / "model.gguf",
                           extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(WeightsError, match="rope_freqs"):
        load_gguf(gguf_file)


def test_gguf_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(WeightsError, match="bogus.gguf"):
        load_gguf(bogus)


# ---------------------------------------------------------------- the default model

@pytest.mark.real_model
@pytest.mark.slow
def test_default_model_matches_transformers_gguf(default_gguf_path, hf_smollm2):
    """Every tensor of the default model against transformers' own GGUF dequantisation."""
    params, cfg = load_gguf(default_gguf_path)
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == ("llama", 30, 576, 9, 3)
    assert cfg.tie_embeddings and "lm_head" not in params
    want = expected_layout(hf_smollm2[0].state_dict(), cfg)
    for (path, got), ref in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
