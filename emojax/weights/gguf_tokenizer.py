"""The tokenizer a GGUF file describes, rebuilt from its metadata without torch.

A GGUF carries no `tokenizer.json`: it stores llama.cpp's view of the tokenizer
(`tokenizer.ggml.tokens / merges / token_type`, the pre-tokenizer's name in `tokenizer.ggml.pre`,
the special token ids and the chat template). This module turns that back into a `tokenizers`
tokenizer wrapped as a transformers `PreTrainedTokenizerFast`, so `apply_chat_template` works:
- byte-level BPE (`tokenizer.ggml.model` = `gpt2`: SmolLM2, Llama 3, Qwen2);
- Gemma 3's SentencePiece BPE (`llama` in a `gemma3` file), built as transformers builds it from the
  same file (its `GemmaTokenizer` with merges recovered from the vocabulary), and given Gemma's turn
  format as chat template, which the file does not carry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from emojax.weights.errors import WeightsError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

# Split patterns of llama.cpp's pre-tokenizer types (the regexes the vocabularies were trained with).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _pre_tokenizer(kind: str, path: Path) -> pre_tokenizers.PreTokenizer:
    if kind in ("gpt-2", "gpt2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "smollm":
        # Every digit on its own, then GPT-2's split: the pre-tokenizer SmolLM's own tokenizer.json uses.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if kind in ("llama-bpe", "llama3", "llama-v3"):
        return _split_then_bytes(_LLAMA3_SPLIT)
    if kind == "qwen2":
        return _split_then_bytes(_QWEN2_SPLIT)
    raise WeightsError(f"{path}: pre-tokenizer 'tokenizer.ggml.pre' = {kind!r} is not supported; "
                       "supported: gpt-2, smollm, llama-bpe, qwen2")


def _byte_level_spelling(tokens: list[str]) -> list[str]:
    """Byte-level vocabularies spell every token in the 256-symbol byte alphabet; respell the rare
    token stored as raw text so its id stays reachable."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    table = bytes_to_unicode()
    return [t if set(t) <= alphabet else "".join(table[b] for b in t.encode("utf-8")) for t in tokens]


def _bos_eos_template(bos: str | None, eos: str | None, add_bos: bool, add_eos: bool,
                      vocab: dict[str, int]) -> processors.TemplateProcessing | None:
    """Wrap every sequence in BOS/EOS as the file asks (`tokenizer.ggml.add_bos_token` / `add_eos_token`)."""
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    if not (add_bos or add_eos):
        return None

    def around(sequence: str, type_id: int) -> list[str]:
        return ([f"{bos}:{type_id}"] if add_bos else []) + [f"{sequence}:{type_id}"] + \
            ([f"{eos}:{type_id}"] if add_eos else [])

    specials = {token: vocab[token] for token, on in ((bos, add_bos), (eos, add_eos)) if on}
    return processors.TemplateProcessing(single=around("$A", 0), pair=around("$A", 0) + around("$B", 1),
                                         special_tokens=list(specials.items()))


def _token(meta: dict[str, Any], key: str, tokens: list[str]) -> str | None:
    token_id = meta.get(f"tokenizer.ggml.{key}")
    return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None


def tokenizer_from_gguf_metadata(meta: dict[str, Any], path: Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer from GGUF metadata (as returned by `gguf_loader.metadata`)."""
    kind = meta.get("tokenizer.ggml.model")
    arch = meta.get("general.architecture")
    if kind == "llama" and arch in _SENTENCEPIECE_ARCHITECTURES:
        return _gemma_tokenizer(meta, path)
    if kind != "gpt2":
        raise WeightsError(f"{path}: tokenizer model 'tokenizer.ggml.model' = {kind!r} is not supported for "
                           f"architecture {arch!r}; implemented: byte-level BPE ('gpt2'), and SentencePiece "
                           f"('llama') for {sorted(_SENTENCEPIECE_ARCHITECTURES)}")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    merges = list(meta.get("tokenizer.ggml.merges") or [])
    if not tokens or not merges:
        raise WeightsError(f"{path}: metadata lacks 'tokenizer.ggml.tokens' or 'tokenizer.ggml.merges'")
    token_types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")

    spelled = _byte_level_spelling(tokens)
    vocab = {token: index for index, token in enumerate(spelled)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                                   fuse_unk=False))
    if pre == "qwen2":
        backend.normalizer = normalizers.NFC()  # Qwen2's own tokenizer.json normalises to NFC
    backend.pre_tokenizer = _pre_tokenizer(pre, path)
    backend.decoder = decoders.ByteLevel()

    # Control tokens (e.g. <|im_end|>) must match whole and count as special; user-defined ones match
    # whole but are ordinary text. A "control" token outside the byte alphabet is a mislabel: skipped.
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, token_type in zip(tokens, token_types)
                                if token_type == CONTROL and set(t) <= alphabet])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, token_type in zip(spelled, token_types) if token_type == USER_DEFINED])

    bos, eos = _token(meta, "bos_token_id", spelled), _token(meta, "eos_token_id", spelled)
    template = _bos_eos_template(bos, eos, bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                                 bool(meta.get("tokenizer.ggml.add_eos_token", False)), vocab)
    if template is not None:
        backend.post_processor = template

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos, eos_token=eos,
        unk_token=_token(meta, "unknown_token_id", spelled),
        pad_token=_token(meta, "padding_token_id", spelled),
        chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------- Gemma 3 (SentencePiece BPE)

# Gemma's turn format (google/gemma-3 instruction-tuned models' template, text only): the system text
# opens the first user turn, "assistant" is called "model", and each turn ends with <end_of_turn> and a
# newline. Unlike Google's template it does not write `{{ bos_token }}`: the tokenizer adds BOS itself
# (the file's `add_bos_token`), and emojax tokenises rendered prompts with the tokenizer's default
# special-token handling, so a prompt gets exactly one BOS.
GEMMA_CHAT_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""

_SENTENCEPIECE_ARCHITECTURES = frozenset({"gemma3"})


def _gemma_spelling(tokens: list[str]) -> list[str]:
    """A token of spaces only is stored as real spaces; the tokenizer looks it up as "▁"s (transformers
    respells it the same way)."""
    return ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]


def recovered_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges for a SentencePiece vocabulary that lists none: every split of a token into two
    tokens, best first by the merged token's place in the file, then the longer left piece, then the
    longer right piece (transformers' `generate_merges` with file positions as scores, which is how it
    builds Gemma's tokenizer from a GGUF)."""
    merges = []
    for merged, rank in vocab.items():
        splits = [(merged[:cut], merged[cut:]) for cut in range(1, len(merged))
                  if merged[:cut] in vocab and merged[cut:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((rank, left, right) for left, right in splits)
    merges.sort(key=lambda m: (-m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in merges]


def _gemma_tokenizer(meta: dict[str, Any], path: Path) -> PreTrainedTokenizerFast:
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise WeightsError(f"{path}: metadata lacks 'tokenizer.ggml.tokens'")
    token_types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    spelled = _gemma_spelling(tokens)
    vocab = {token: index for index, token in enumerate(spelled)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]] \
        if meta.get("tokenizer.ggml.merges") else recovered_merges(vocab)
    unk = _token(meta, "unknown_token_id", spelled)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk, byte_fallback=True,
                                   dropout=None))
    # GemmaTokenizer's pipeline: spaces become "▁" (no prefix space), bytes fall back to <0x..> tokens.
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, token_type in zip(tokens, token_types) if token_type == CONTROL])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, token_type in zip(tokens, token_types) if token_type == USER_DEFINED and t in vocab])
    bos, eos = _token(meta, "bos_token_id", spelled), _token(meta, "eos_token_id", spelled)
    # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
    template = _bos_eos_template(bos, eos, bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                                 bool(meta.get("tokenizer.ggml.add_eos_token", False)), vocab)
    if template is not None:
        backend.post_processor = template
    mask = "<mask>" if "<mask>" in vocab else None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos, eos_token=eos, unk_token=unk, mask_token=mask,
        pad_token=_token(meta, "padding_token_id", spelled),
        chat_template=meta.get("tokenizer.chat_template") or GEMMA_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
