"""Golden tests: every instruction/chat format of the seed recipes, its exact template text and
exactly which spans are trained (labels != -100)."""

import copy

import pytest

from orchestrator.data.formats import DataError, Row
from orchestrator.data.instruct import (
    BAIZE_HEADER,
    alpaca_samples,
    baize_samples,
    dolly_samples,
    gpt4all_samples,
    oasst_threads,
)
from orchestrator.data.prompts import PieceTemplate
from orchestrator.data.templates import IGNORE_INDEX
from tests.unit.test_templates import trained_spans


@pytest.fixture
def tok(tokenizer):
    t = copy.deepcopy(tokenizer)
    t.add_special_tokens(
        {
            "additional_special_tokens": [
                "### End",
                "### Instruction:",
                "### Response:",
                "<|prompter|>",
                "<|assistant|>",
                "<|endoftext|>",
            ]
        }
    )
    return t


def one(template, sample, tok, max_len=2048):
    [ex] = PieceTemplate(template, tok).examples(sample, max_len)
    assert len(ex.input_ids) == len(ex.labels)
    return ex


ALPACA_ROW = Row({"instruction": "Add 2 and 3.", "input": "", "output": "5"}, "a.json row 0")
ALPACA_INPUT_ROW = Row(
    {"instruction": "Sort the words.", "input": "pear apple", "output": "apple pear"},
    "a.json row 1",
)


def test_alpaca_without_and_with_input(tok):
    [s] = alpaca_samples(ALPACA_ROW)
    ex = one("alpaca", s, tok)
    assert tok.decode(ex.input_ids) == (
        "<s>Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:5</s>"
    )
    assert trained_spans(ex, tok) == ["5</s>"]
    [s] = alpaca_samples(ALPACA_INPUT_ROW)
    ex = one("alpaca", s, tok)
    text = tok.decode(ex.input_ids)
    assert "paired with an input" in text and "### Input:\npear apple\n\n### Response:" in text
    assert trained_spans(ex, tok) == ["apple pear</s>"]


def test_alpaca_lora_trains_on_inputs_without_eos_and_truncates_at_cutoff(tok):
    [s] = alpaca_samples(ALPACA_ROW)
    ex = one("alpaca_lora", s, tok)
    assert tok.decode(ex.input_ids).endswith("### Response:\n5")
    assert ex.input_ids[-1] != tok.eos_token_id  # add_eos_token=False
    assert ex.labels[0] == IGNORE_INDEX and ex.labels[1:] == ex.input_ids[1:]
    short = one("alpaca_lora", s, tok, max_len=10)
    assert len(short.input_ids) == 10


def test_dolly_masks_through_response_key_and_drops_long_records(tok):
    [s] = dolly_samples(
        Row({"instruction": "Name a fruit.", "context": "", "response": "Apple."}, "d row 0")
    )
    ex = one("dolly", s, tok)
    assert tok.decode(ex.input_ids) == (
        "<s>Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a fruit.\n\n### Response:\n"
        "Apple.\n\n### End"
    )
    assert trained_spans(ex, tok) == ["Apple.\n\n### End"]
    [s] = dolly_samples(
        Row({"instruction": "Summarise.", "context": "A long text.", "response": "Short."}, "d")
    )
    assert "Input:\nA long text.\n\n### Response:" in tok.decode(one("dolly", s, tok).input_ids)
    assert PieceTemplate("dolly", tok).examples(s, max_seq_len=8) == []  # dropped, not truncated


def test_gpt4all_prompt_newline_masked_and_eos_only_when_not_truncated(tok):
    [s] = gpt4all_samples(Row({"prompt": "Hi there", "response": "Hello!", "source": "x"}, "g"))
    ex = one("gpt4all", s, tok)
    assert tok.decode(ex.input_ids) == "<s>Hi there\nHello!</s>"
    assert trained_spans(ex, tok) == ["Hello!</s>"]
    long = gpt4all_samples(
        Row({"prompt": "word " * 50, "response": "answer " * 50, "source": "x"}, "g")
    )[0]
    ex = one("gpt4all", long, tok, max_len=40)
    assert len(ex.input_ids) == 40 and ex.input_ids[-1] != tok.eos_token_id
    assert ex.labels[: 1 + 20] == [IGNORE_INDEX] * 21  # prompt cut to max_len // 2 tokens


def test_baize_round_trips_and_trains_everything(tok):
    text = (
        BAIZE_HEADER
        + "[|Human|] What is 2+2?\n[|AI|] 4.\n[|Human|] Thanks\n[|AI|] Welcome.\n[|Human|] "
    )
    [s] = baize_samples(Row({"input": text}, "b row 0"))
    assert s.turns == [
        ("user", "What is 2+2?"),
        ("assistant", "4."),
        ("user", "Thanks"),
        ("assistant", "Welcome."),
    ]
    ex = one("baize", s, tok)
    assert tok.decode(ex.input_ids) == "<s>" + text
    assert ex.labels[1:] == ex.input_ids[1:]


def test_oasst_threads_follow_the_best_ranked_replies_and_mask_prompts(tok):
    msgs = [
        {"message_id": "p1", "parent_id": None, "role": "prompter", "text": "Q1"},
        {"message_id": "a2", "parent_id": "p1", "role": "assistant", "text": "worse", "rank": 1},
        {"message_id": "a1", "parent_id": "p1", "role": "assistant", "text": "best", "rank": 0},
        {
            "message_id": "a3",
            "parent_id": "p1",
            "role": "assistant",
            "text": "gone",
            "rank": 2,
            "deleted": True,
        },
        {"message_id": "p2", "parent_id": "a1", "role": "prompter", "text": "Q2"},
        {"message_id": "a4", "parent_id": "p2", "role": "assistant", "text": "A2", "rank": 0},
        {"message_id": "p3", "parent_id": None, "role": "prompter", "text": "unanswered"},
    ]
    [s] = oasst_threads(Row(m, f"o row {i}") for i, m in enumerate(msgs))
    assert s.turns == [("user", "Q1"), ("assistant", "best"), ("user", "Q2"), ("assistant", "A2")]
    ex = one("oasst", s, tok)
    assert tok.decode(ex.input_ids) == (
        "<s><|prompter|>Q1<|endoftext|><|assistant|>best<|endoftext|>"
        "<|prompter|>Q2<|endoftext|><|assistant|>A2<|endoftext|>"
    )
    assert trained_spans(ex, tok) == ["best<|endoftext|>", "A2<|endoftext|>"]


@pytest.mark.parametrize(
    "adapter,data,message",
    [
        (alpaca_samples, {"input": "", "output": "x"}, "missing field 'instruction'"),
        (dolly_samples, {"instruction": "x", "response": 3}, "field 'response' must be a string"),
        (gpt4all_samples, {"prompt": "x"}, "missing field 'response'"),
        (baize_samples, {"input": "[|Human|] hi"}, "must start with"),
        (baize_samples, {"input": BAIZE_HEADER + "[|AI|] hi\n"}, "turn 0 is assistant"),
    ],
)
def test_bad_rows_name_the_row_and_the_field(adapter, data, message):
    with pytest.raises(DataError, match="rows.jsonl line 7") as e:
        adapter(Row(data, "rows.jsonl line 7"))
    assert message in str(e.value)


def test_oasst_bad_role_names_the_row():
    with pytest.raises(DataError, match="o.jsonl line 3: role='moderator'"):
        oasst_threads(
            [Row({"message_id": "m", "role": "moderator", "text": "x"}, "o.jsonl line 3")]
        )


def test_prepare_data_for_an_instruction_file_with_a_bad_row(tmp_path):
    import json

    from orchestrator.config.schema import ConfigError, DataConfig
    from orchestrator.data.dataset import prepare_data

    rows = [
        {"instruction": f"Name fruit number {i}.", "context": "", "response": f"Fruit {i}."}
        for i in range(30)
    ]
    rows.insert(5, {"instruction": "no response here"})
    src = tmp_path / "dolly.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = dict(format="dolly", source=str(src), template="dolly", max_seq_len=256)
    with pytest.raises(DataError, match=r"dolly.jsonl line 6: missing field 'response'"):
        prepare_data(DataConfig(**cfg), tmp_path / "a")
    data = prepare_data(DataConfig(**cfg, on_error="skip", eval_fraction=0.1), tmp_path / "b")
    assert data.skipped_rows == 1 and len(data.train) + len(data.eval) == 30
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    assert len(tok.encode("### Response:", add_special_tokens=False)) == 1  # a special token
    from orchestrator.compose.names import check_data

    with pytest.raises(ConfigError, match="cannot read data.format='dolly'"):
        check_data(DataConfig(format="dolly", source="x.jsonl", template="vicuna_v1.1"))


def test_a_generation_stops_at_the_templates_end_token_as_at_eos(tok):
    """Dolly's `### End` is one special token: generation stops at it (the sampler's stop ids,
    not only EOS), and the reply is cut at the stop text either way (Baize's `[|Human|]` is
    several tokens: cut in text)."""
    from orchestrator.data.prompts import style
    from orchestrator.rl.rollout import Sampling, _cut

    dolly, baize = style("dolly"), style("baize")
    end = tok.convert_tokens_to_ids("### End")
    assert dolly.stop_ids(tok) == [end] and baize.stop_ids(tok) == []
    s = Sampling(
        n=1, max_new_tokens=8, eos_id=tok.eos_token_id, stop_ids=tuple(dolly.stop_ids(tok))
    )
    assert _cut([5, 6, end, 7, tok.eos_token_id], s.stops()) == [5, 6, end]
    assert _cut([5, 6, 7], s.stops()) == [5, 6, 7]
    assert Sampling(n=1, max_new_tokens=8).stops() == []  # PPO's fixed-length replies
    assert baize.reply(" Sure.\n[|Human|] and more") == "Sure."
