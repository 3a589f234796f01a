"""Templates, label masking, placeholders and truncation."""

import pytest

from hires_vlm.text import (
    IGNORE_INDEX,
    TEMPLATES,
    ConversationEncoder,
    ConversationError,
    PlaceholderMismatchError,
    SequenceTooLongError,
    add_image_token,
    build_bpe_tokenizer,
    get_template,
    set_chat_template,
)


@pytest.fixture(scope="module")
def tok():
    t = build_bpe_tokenizer()
    add_image_token(t)
    return t


CONV = [{"from": "human", "value": "<image>\nHow many dots?"}, {"from": "gpt", "value": "three"},
        {"from": "human", "value": "And squares?"}, {"from": "gpt", "value": "two"}]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_labels_are_exactly_the_assistant_answers(tok, name):
    t = get_template(name)
    img = tok.convert_tokens_to_ids("<image>")
    enc = ConversationEncoder(tok, t, img).encode(CONV, [10])
    learned = tok.decode([x for x in enc.labels if x != IGNORE_INDEX])
    assert learned == f"{t.answer_prefix}three{t.assistant_end}{t.answer_prefix}two{t.assistant_end}"
    assert enc.input_ids.count(img) == 1 and enc.labels[enc.input_ids.index(img)] == IGNORE_INDEX
    assert enc.length == len(enc.input_ids) - 1 + 10


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_template_renders_the_same_text(tok, name):
    t = get_template(name)
    set_chat_template(tok, name)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nHow many dots?"}]},
            {"role": "assistant", "content": "three"}, {"role": "user", "content": "And squares?"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == t.render([("<image>\nHow many dots?", "three"), ("And squares?", None)], bos="<s>")


def test_plain_template_keeps_only_the_image(tok):
    img = tok.convert_tokens_to_ids("<image>")
    enc = ConversationEncoder(tok, get_template("plain"), img).encode(
        [{"from": "human", "value": "<image>\nDescribe this."}, {"from": "gpt", "value": "a red circle"}], [4])
    assert tok.decode(enc.input_ids) == "<image>a red circle\n"


def test_placeholder_and_image_counts_must_agree(tok):
    img = tok.convert_tokens_to_ids("<image>")
    enc = ConversationEncoder(tok, get_template("chatml"), img)
    with pytest.raises(PlaceholderMismatchError, match="1 '<image>' placeholder.*2 image"):
        enc.encode(CONV, [5, 5])
    with pytest.raises(PlaceholderMismatchError):
        enc.encode([{"from": "human", "value": "no image"}, {"from": "gpt", "value": "x"}], [5])
    with pytest.raises(PlaceholderMismatchError, match="assistant"):
        enc.encode([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "<image>"}], [5])


def test_malformed_conversations_are_explained(tok):
    enc = ConversationEncoder(tok, get_template("chatml"), 4)
    with pytest.raises(ConversationError, match="alternate"):
        enc.encode([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], [])
    with pytest.raises(ConversationError, match="from"):
        enc.encode([{"role": "robot", "value": "a"}], [])
    with pytest.raises(ConversationError, match="no answer"):
        enc.encode([{"from": "human", "value": "a"}], [])


def test_truncation_drops_whole_turns_and_reports(tok):
    img = tok.convert_tokens_to_ids("<image>")
    full = ConversationEncoder(tok, get_template("chatml"), img).encode(CONV, [50])
    first_turn_len = ConversationEncoder(tok, get_template("chatml"), img).encode(CONV[:2], [50]).length
    enc = ConversationEncoder(tok, get_template("chatml"), img, max_length=full.length - 1).encode(CONV, [50])
    assert enc.dropped_turns == 1 and enc.length == first_turn_len and enc.num_images == 1
    assert tok.decode([x for x in enc.labels if x != IGNORE_INDEX]) == "three<|im_end|>"


def test_truncation_never_cuts_an_image(tok):
    img = tok.convert_tokens_to_ids("<image>")
    enc = ConversationEncoder(tok, get_template("chatml"), img, max_length=60)
    with pytest.raises(SequenceTooLongError, match="max_length is 60"):
        enc.encode(CONV[:2], [100])


def test_long_answer_is_cut_after_the_image_and_reported(tok):
    img = tok.convert_tokens_to_ids("<image>")
    conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "red " * 200}]
    enc = ConversationEncoder(tok, get_template("chatml"), img, max_length=120).encode(conv, [50])
    assert enc.length == 120 and enc.truncated_tokens > 0
    assert len(enc.input_ids) - 1 + 50 == 120 and img in enc.input_ids


def test_generation_prompt_ends_with_the_assistant_header(tok):
    img = tok.convert_tokens_to_ids("<image>")
    enc = ConversationEncoder(tok, get_template("llama3"), img)
    ids = enc.encode_prompt("What is this?", 1, [10])
    text = tok.decode(ids)
    assert text.startswith("<|begin_of_text|>") and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<image>\nWhat is this?" in text


def test_unknown_template_lists_choices():
    with pytest.raises(ValueError, match="chatml"):
        get_template("alpaca")
