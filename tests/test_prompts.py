"""Protocol prompts (method.md §4): exact strings, judge parsing, rendering and left-padded batches."""
from __future__ import annotations

import numpy as np
import pytest

from emojax.data import EMOTIONS, VALENCES, Item, groups, items, load_dataset
from emojax.method import prompts as P

SYSTEM_EMOTION = "Always reply in {e}.\nKeep the reply to at most two sentences."
SYSTEM_NEUTRAL = "Keep the reply to at most two sentences."

# A compact Llama-3.x-style template: BOS, the system header with the knowledge-cutoff and date
# lines, messages trimmed at both ends, and the assistant header as the generation prompt.
LLAMA3_STYLE_TEMPLATE = r"""{{- bos_token }}
{%- if date_string is not defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\nToday Date: " + date_string + "\n\n" }}
{{- messages[0]['content'] | trim }}{{- "<|eot_id|>" }}
{%- for message in messages[1:] %}
{{- "<|start_header_id|>" + message['role'] + "<|end_header_id|>\n\n" + message['content'] | trim + "<|eot_id|>" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}{%- endif %}"""


def _byte_tokenizer(*, pad_token: str | None, bos_post_processor: bool = True):
    """A byte-level tokenizer with Llama-3 special tokens that, like Llama 3's, prepends BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]
    core.add_special_tokens(specials)
    if bos_post_processor:
        bos_id = core.token_to_id("<|begin_of_text|>")
        core.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>",
                                        eos_token="<|eot_id|>", pad_token=pad_token)
    tokenizer.chat_template = LLAMA3_STYLE_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def llama_style():
    return _byte_tokenizer(pad_token=None)


@pytest.fixture(scope="module")
def records():
    return load_dataset("bundled:train")


# ----------------------------------------------------------------------------------------------
# Exact prompt strings


def test_emotion_prompt_is_exact(records) -> None:
    record = records[0]
    messages = P.emotion_messages(record, "happiness", "negative")
    assert messages == [
        {"role": "system", "content": "Always reply in happiness.\nKeep the reply to at most two sentences."},
        {"role": "user", "content": record.scenario + "\n" + record.negative},
    ]


def test_neutral_prompt_is_exact(records) -> None:
    record = records[3]
    assert P.neutral_messages(record, "positive") == [
        {"role": "system", "content": "Keep the reply to at most two sentences."},
        {"role": "user", "content": record.scenario + "\n" + record.positive},
    ]


def test_prompts_are_byte_identical_however_they_are_built(records, llama_style) -> None:
    """T12: every stage gets the same bytes for the same item, whatever path built the prompt."""
    for item in items(records[:4]):
        from_item = P.emotion_messages(item)
        from_record = P.emotion_messages(item.record, item.emotion, item.valence)
        assert from_item == from_record
        assert from_item[0]["content"].encode() == SYSTEM_EMOTION.format(e=item.emotion).encode()
        assert P.render(llama_style, from_item).encode() == P.render(llama_style, from_record).encode()
    for group in groups(records[:4]):
        neutral = {P.render(llama_style, P.neutral_messages(i)) for i in group.items}
        assert len(neutral) == 1  # the six emotions of a group share one neutral prompt
        assert P.neutral_messages(group.record, group.valence) == P.neutral_messages(group.items[0])


def test_system_strings_have_no_stray_whitespace() -> None:
    """The official Δ-capture variant indented the second line ([D15]); the canonical one does not."""
    for text in [P.emotion_system(e) for e in EMOTIONS] + [P.NEUTRAL_SYSTEM, P.JUDGE_SYSTEM]:
        for line in text.split("\n"):
            assert line == line.strip(), repr(line)
    assert P.emotion_system("fear").split("\n")[1] == P.NEUTRAL_SYSTEM


def test_prompt_builders_check_their_arguments(records) -> None:
    item = Item(records[0], "neutral", "fear")
    with pytest.raises(ValueError, match="has emotion 'fear', but 'anger' was passed"):
        P.emotion_messages(item, "anger")
    with pytest.raises(ValueError, match="has valence 'neutral', but 'positive' was passed"):
        P.neutral_messages(item, "positive")
    assert P.emotion_messages(item, "fear", "neutral") == P.emotion_messages(item)
    with pytest.raises(ValueError, match="pass the valence and emotion"):
        P.emotion_messages(records[0], "fear")
    with pytest.raises(ValueError, match="pass the valence"):
        P.neutral_messages(records[0])
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        P.emotion_messages(records[0], "joy", "positive")
    with pytest.raises(ValueError, match="unknown valence"):
        P.neutral_messages(records[0], "mixed")
    with pytest.raises(TypeError, match="SevRecord or an Item"):
        P.neutral_messages({"scenario": "x"}, "positive")


# ----------------------------------------------------------------------------------------------
# Judge prompt and replies


def test_judge_prompt_carries_the_verbatim_lines() -> None:
    text = "How dare they cancel it.\nUnbelievable."
    system, user = P.judge_messages(text, "anger")
    assert system["role"] == "system" and user["role"] == "user"
    assert "['anger', 'sadness', 'happiness', 'fear', 'surprise', 'disgust']" in system["content"]
    assert "careful rater" in system["content"] and "not the valence" in system["content"]
    assert user["content"].startswith("Target emotion: anger\nText:\n" + text + "\n")
    assert '"match" (0 or 1)' in user["content"] and '"reason"' in user["content"]
    with pytest.raises(ValueError, match="unknown emotion"):
        P.judge_messages(text, "Anger")


@pytest.mark.parametrize("reply, expected", [
    ('{"match": 1, "reason": "hostile tone"}', (1, "hostile tone", None)),
    ('{"match":0,"reason":"flat"}', (0, "flat", None)),
    ('```json\n{"match": 1, "reason": "r"}\n```', (1, "r", None)),
    ('```\n{"match": 0, "reason": "r"}\n```', (0, "r", None)),
    ('Verdict:\n```json\n{"match": 1, "reason": "r"}\n```\nDone.', (1, "r", None)),
    ('```json\n{"match": 1, "reason": "r"}', (1, "r", None)),
    ('  {"match": true, "reason": "r"}  ', (1, "r", None)),
    ('{"match": "1", "reason": "r"}', (1, "r", None)),
    ('{"match": 1.0}', (1, "", None)),
])
def test_parse_judge_reply_reads_match(reply: str, expected) -> None:
    assert P.parse_judge_reply(reply) == expected


@pytest.mark.parametrize("reply, reason, error", [
    ("", "", "empty reply"),
    ("   \n", "", "empty reply"),
    (None, "", "empty reply"),
    ("The style matches.", "", "unparsable JSON"),
    ('{"match": 1, "reason": "r"', "", "unparsable JSON"),
    ("```json\n```", "", "unparsable JSON"),
    ("[1, 0]", "", "not an object"),
    ('{"reason": "no verdict"}', "no verdict", "missing key 'match'"),
    ('{"match": 2, "reason": "r"}', "r", "'match' must be 0 or 1"),
    ('{"match": "yes", "reason": "r"}', "r", "'match' must be 0 or 1"),
])
def test_parse_judge_reply_failures_count_as_no_match(reply, reason: str, error: str) -> None:
    match, got_reason, got_error = P.parse_judge_reply(reply)
    assert match == 0 and got_reason == reason
    assert got_error is not None and error in got_error


# ----------------------------------------------------------------------------------------------
# Rendering and tokenisation


def test_render_reproduces_the_llama3_layout_with_the_pinned_date(llama_style, records) -> None:
    item = Item(records[0], "positive", "anger")
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 15 Sep 2025\n\n"
        f"Always reply in anger.\nKeep the reply to at most two sentences.<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{item.record.scenario}\n{item.event}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert P.render(llama_style, P.emotion_messages(item)) == expected
    assert "Today Date: 01 Jan 2030\n" in P.render(llama_style, P.emotion_messages(item),
                                                   date_string="01 Jan 2030")


def test_render_requires_a_system_message_and_a_template(llama_style) -> None:
    with pytest.raises(ValueError, match="explicit system message"):
        P.render(llama_style, [{"role": "user", "content": "hi"}])
    bare = _byte_tokenizer(pad_token=None)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        P.render(bare, P.chat("s", "u"))


def test_double_bos_by_default_and_single_bos_on_request(llama_style, records) -> None:
    prompt = [P.neutral_messages(records[0], "neutral")]
    bos = llama_style.bos_token_id
    double = P.tokenize_prompts(llama_style, prompt)
    assert double.bos_counts.tolist() == [2]
    assert double.tokens[0, :3].tolist()[:2] == [bos, bos] and double.tokens[0, 2] != bos
    single = P.tokenize_prompts(llama_style, prompt, single_bos=True)
    assert single.bos_counts.tolist() == [1]
    assert single.lengths[0] == double.lengths[0] - 1
    assert single.tokens[0].tolist() == double.tokens[0, 1:].tolist()
    no_added_bos = _byte_tokenizer(pad_token=None, bos_post_processor=False)
    assert P.tokenize_prompts(no_added_bos, prompt).bos_counts.tolist() == [1]


def test_left_padding_places_each_prompt_at_the_right_edge(llama_style, records) -> None:
    conversations = [P.emotion_messages(records[i], e, v)
                     for i, (e, v) in enumerate(zip(EMOTIONS, VALENCES * 2))]
    batch = P.tokenize_prompts(llama_style, conversations)
    expected_rows = [llama_style(P.render(llama_style, m))["input_ids"] for m in conversations]
    width = max(len(r) for r in expected_rows)
    assert batch.tokens.shape == batch.mask.shape == (len(conversations), width)
    assert batch.tokens.dtype == np.int32 and batch.mask.dtype == bool and batch.lengths.dtype == np.int32
    assert len({len(r) for r in expected_rows}) > 1  # the batch really needs padding
    for row, ids in enumerate(expected_rows):
        n = len(ids)
        assert batch.lengths[row] == n
        assert batch.tokens[row, width - n:].tolist() == ids
        assert (batch.tokens[row, :width - n] == 0).all()  # no pad token: pad id 0
        assert batch.mask[row].tolist() == [False] * (width - n) + [True] * n
        assert batch.positions[row, width - n:].tolist() == list(range(n))
        assert (batch.positions[row, :width - n] == 0).all()


def test_pad_id_and_pad_multiple(records) -> None:
    tokenizer = _byte_tokenizer(pad_token="<|pad|>")
    pad_id = tokenizer.pad_token_id
    assert pad_id != 0
    conversations = [P.neutral_messages(records[0], "positive"), P.chat("s", "u")]
    batch = P.tokenize_prompts(tokenizer, conversations, pad_multiple=64)
    assert batch.tokens.shape[1] % 64 == 0 and batch.tokens.shape[1] - int(batch.lengths.max()) < 64
    assert (batch.tokens[~batch.mask] == pad_id).all()
    with pytest.raises(ValueError, match="no prompts"):
        P.tokenize_prompts(tokenizer, [])
    with pytest.raises(ValueError, match="pad_multiple"):
        P.tokenize_prompts(tokenizer, conversations, pad_multiple=0)


# ----------------------------------------------------------------------------------------------
# The default model's own tokenizer (SmolLM2 GGUF)


@pytest.mark.real_model
@pytest.mark.slow  # transformers builds the tokenizer from the GGUF in 7-40 s
def test_default_model_prompts(hf_smollm2_tokenizer, records) -> None:
    smollm2 = hf_smollm2_tokenizer
    item = Item(records[5], "negative", "disgust")
    text = P.render(smollm2, P.emotion_messages(item))
    assert text == (
        "<|im_start|>system\nAlways reply in disgust.\nKeep the reply to at most two sentences.<|im_end|>\n"
        f"<|im_start|>user\n{item.record.scenario}\n{item.event}<|im_end|>\n<|im_start|>assistant\n")
    conversations = [P.emotion_messages(i) for i in items(records[:2])[::5]]
    batch = P.tokenize_prompts(smollm2, conversations)
    # SmolLM2's BOS is the template's own <|im_start|>; the tokenizer adds no second one.
    assert batch.bos_counts.tolist() == [1] * len(conversations)
    assert (batch.tokens[~batch.mask] == smollm2.pad_token_id).all()
    for row, messages in enumerate(conversations):
        ids = smollm2(P.render(smollm2, messages))["input_ids"]
        assert batch.tokens[row, batch.tokens.shape[1] - len(ids):].tolist() == ids
