"""Golden tests of the Vicuna v1.1 template and its assistant-only loss mask."""

from orchestrator.data.templates import (
    IGNORE_INDEX,
    VICUNA_V11_SYSTEM,
    VicunaV11Template,
    vicuna_v11_text,
)

TURNS = [
    ("user", "What is 2 plus 3?"),
    ("assistant", "2 + 3 = 5."),
    ("user", "And times 4?"),
    ("assistant", "5 x 4 = 20."),
]


def trained_spans(ex, tok) -> list[str]:
    """Decode each maximal run of positions whose label is not -100."""
    spans, cur = [], []
    for tid, label in zip(ex.input_ids, ex.labels):
        if label == IGNORE_INDEX:
            if cur:
                spans.append(tok.decode(cur))
                cur = []
        else:
            assert label == tid  # a trained position predicts itself (HF shifts inside the loss)
            cur.append(tid)
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_text_matches_fastchat_v11():
    assert vicuna_v11_text(TURNS) == (
        VICUNA_V11_SYSTEM + " USER: What is 2 plus 3? ASSISTANT: 2 + 3 = 5.</s>"
        "USER: And times 4? ASSISTANT: 5 x 4 = 20.</s>"
    )


def test_tokens_spell_the_template_and_only_replies_are_trained(tokenizer):
    [ex] = VicunaV11Template(tokenizer).examples(TURNS, max_seq_len=2048)
    assert ex.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ex.input_ids) == "<s>" + vicuna_v11_text(TURNS)
    # Exactly the assistant replies and their </s> are trained; system + USER/ASSISTANT are not.
    assert trained_spans(ex, tokenizer) == [" 2 + 3 = 5.</s>", " 5 x 4 = 20.</s>"]
    assert ex.labels[: len(tokenizer.encode(VICUNA_V11_SYSTEM, add_special_tokens=False)) + 1] == [
        IGNORE_INDEX
    ] * (len(tokenizer.encode(VICUNA_V11_SYSTEM, add_special_tokens=False)) + 1)
    assert ex.input_ids[-1] == tokenizer.eos_token_id and ex.labels[-1] == tokenizer.eos_token_id


def test_long_conversation_is_split_into_whole_rounds(tokenizer):
    template = VicunaV11Template(tokenizer)
    [full] = template.examples(TURNS, max_seq_len=2048)
    first_round = VicunaV11Template(tokenizer).examples(TURNS[:2], max_seq_len=2048)[0]
    limit = len(first_round.input_ids) + 3  # room for round 1, not for round 2
    parts = template.examples(TURNS, max_seq_len=limit)
    assert len(parts) == 2 and len(full.input_ids) > limit
    # Each part starts with <s> + system prompt and is a complete, well-formed conversation.
    assert tokenizer.decode(parts[0].input_ids) == "<s>" + vicuna_v11_text(TURNS[:2])
    assert tokenizer.decode(parts[1].input_ids) == "<s>" + vicuna_v11_text(TURNS[2:])
    assert trained_spans(parts[1], tokenizer) == [" 5 x 4 = 20.</s>"]


def test_single_round_longer_than_limit_is_truncated(tokenizer):
    turns = [("user", "hi"), ("assistant", "word " * 200)]
    template = VicunaV11Template(tokenizer)
    limit = 1 + len(template.header) + 30
    [ex] = template.examples(turns, max_seq_len=limit)
    assert len(ex.input_ids) == limit == len(ex.labels)
    assert ex.labels[-1] != IGNORE_INDEX  # the truncated reply is still trained
