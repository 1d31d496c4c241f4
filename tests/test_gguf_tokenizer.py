"""The tokenizer rebuilt from GGUF metadata, token for token against transformers' GGUF tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from emojax.weights import WeightsError
from emojax.weights.gguf_loader import metadata, open_gguf
from emojax.weights.gguf_tokenizer import tokenizer_from_gguf_metadata
from hf_fixtures import make_tiny_checkpoint, write_gguf

MESSAGES = [
    {"role": "system", "content": "You are calm."},
    {"role": "user", "content": "How do you feel about   the 2024 results? 😀 Ça va?"},
    {"role": "assistant", "content": "Honestly: relieved.\n\n  - 12.5% better\n\t- not 100%"},
    {"role": "user", "content": "Why?<|im_end|> is a literal"},
]
TEXTS = [
    "Hello world", "", " ", "\n", "the theater in there", "she's here, isn't she?", "I'M SHOUTING, they'll hear",
    "12345 apples, 3.14159 and 1,000,000", "x=[1, 22, 333]; y = x*2",
    "leading spaces and\n\n\ttabs\t\tand   runs   \n  \n", "trailing newlines\n\n\n",
    "héllo café naïve Ångström 日本語のテキスト 한국어 Ελληνικά Русский", "emoji 🙂 👩‍👩‍👧‍👦 🏳️‍🌈 ✨",
    "math ∑∫√ ≤ ≥ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "<|im_start|>user\nhi<|im_end|>\n", "a<|im_end|>b <|endoftext|>",
    "tokens glued<|im_start|>together", "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
]
# llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own tokenizer.json) isolates every digit before the
# GPT-2 split; transformers' GGUF tokenizer ignores the `smollm` name and uses the GPT-2 split alone.
# SmolLM2's vocabulary has no multi-digit token, so for the real model the two differ only where a
# whitespace run touches a digit (these texts); there the reference is transformers' tokenizer with the
# pre-tokenizer of SmolLM2's tokenizer.json put back.
DIGIT_BOUNDARY_TEXTS = ["a  1", "x   123 and  45", "line\n\n2", "tab\t\t7", "(  9 )"]
SMOLLM_TOKENIZER_JSON_PRE = {
    "type": "Sequence",
    "pretokenizers": [{"type": "Digits", "individual_digits": True},
                      {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}],
}


def ours(gguf_file: Path) -> PreTrainedTokenizerFast:
    return tokenizer_from_gguf_metadata(metadata(open_gguf(gguf_file)), gguf_file)


def transformers_gguf(gguf_file: Path):
    return AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)


def with_pre_tokenizer(tokenizer, spec: dict) -> Tokenizer:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    return Tokenizer.from_str(json.dumps({**state, "pre_tokenizer": spec}))


def assert_same_tokens(mine, reference, texts) -> None:
    for text in texts:
        assert mine.encode(text) == reference.encode(text), repr(text)
        assert mine.decode(mine.encode(text)) == reference.decode(reference.encode(text)), repr(text)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tok"), family="llama")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoint, tmp_path_factory):
    def write(pre: str, add_bos: bool = False) -> Path:
        folder = tmp_path_factory.mktemp(f"{pre}-{add_bos}")
        return write_gguf(tiny_checkpoint, folder / "model.gguf", pre=pre, add_bos=add_bos)
    return write


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_tiny_vocab_matches_transformers(tiny_gguf, pre):
    gguf_file = tiny_gguf(pre)
    mine, reference = ours(gguf_file), transformers_gguf(gguf_file)
    assert_same_tokens(mine, reference, TEXTS + DIGIT_BOUNDARY_TEXTS)
    rendered = reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert mine.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == rendered
    assert_same_tokens(mine, reference, [rendered])


def test_tiny_vocab_smollm_split(tiny_gguf):
    gguf_file = tiny_gguf("smollm")
    mine = ours(gguf_file)
    spec_reference = with_pre_tokenizer(transformers_gguf(gguf_file), SMOLLM_TOKENIZER_JSON_PRE)
    for text in TEXTS + DIGIT_BOUNDARY_TEXTS:
        assert mine.encode(text) == spec_reference.encode(text).ids, repr(text)
    # The split matters: the tiny vocabulary merges "123", but smollm never lets digits merge, and
    # "ĠĠ" stays whole because the digit after it is cut off first.
    assert mine.convert_ids_to_tokens(mine.encode("a  123")) == ["a", "ĠĠ", "1", "2", "3"]


def test_tiny_vocab_adds_bos_when_asked(tiny_gguf):
    gguf_file = tiny_gguf("llama-bpe", add_bos=True)
    mine, reference = ours(gguf_file), transformers_gguf(gguf_file)
    assert mine.encode("hi there")[0] == mine.bos_token_id == 1
    assert_same_tokens(mine, reference, TEXTS)


def test_special_tokens_and_chat_template(tiny_gguf):
    mine = ours(tiny_gguf("smollm"))
    assert (mine.bos_token, mine.eos_token, mine.pad_token, mine.unk_token) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert mine.encode("<|im_start|>user<|im_end|>") == [1] + mine.encode("user") + [2]
    assert mine.decode(mine.encode("x<|im_end|>"), skip_special_tokens=True) == "x"
    text = mine.apply_chat_template(MESSAGES[:2], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are calm.<|im_end|>\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = mine.apply_chat_template(MESSAGES[:2], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == mine.encode(text) and ids[0] == 1 and ids.count(2) == 2


def test_sentencepiece_tokenizer_refused(tiny_gguf):
    meta = metadata(open_gguf(tiny_gguf("gpt-2")))
    with pytest.raises(WeightsError, match=r"tokenizer\.ggml\.model.*'llama'"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.model": "llama"}, Path("x.gguf"))


def test_unknown_pre_tokenizer_refused(tiny_gguf):
    meta = metadata(open_gguf(tiny_gguf("gpt-2")))
    with pytest.raises(WeightsError, match=r"x\.gguf: pre-tokenizer .*'deepseek-coder'"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.pre": "deepseek-coder"}, Path("x.gguf"))


# ---------------------------------------------------------------- the default model

@pytest.fixture(scope="module")
def default_pair(default_gguf_path, hf_smollm2_tokenizer):
    return ours(default_gguf_path), hf_smollm2_tokenizer


@pytest.mark.real_model
@pytest.mark.slow
def test_default_model_tokenizer_matches_transformers(default_pair):
    mine, reference = default_pair
    assert len(mine) == len(reference) == 49152
    assert (mine.bos_token_id, mine.eos_token_id, mine.pad_token_id) == (1, 2, 2)
    assert_same_tokens(mine, reference, TEXTS)
    for generation_prompt in (True, False):
        rendered = reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=generation_prompt)
        assert mine.apply_chat_template(MESSAGES, tokenize=False,
                                        add_generation_prompt=generation_prompt) == rendered
        assert_same_tokens(mine, reference, [rendered])
    spec_reference = with_pre_tokenizer(reference, SMOLLM_TOKENIZER_JSON_PRE)
    for text in TEXTS + DIGIT_BOUNDARY_TEXTS:
        assert mine.encode(text) == spec_reference.encode(text).ids, repr(text)
