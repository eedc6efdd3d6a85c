"""Koala: its feedback sources (HH, WebGPT, summarization), HC3 and OIG, the conditional-training
markers, and the mixture machinery (per-source weights, filters, positive-only)."""

import json

import pytest

from orchestrator.config.schema import ConfigError, DataConfig, SourceConfig
from orchestrator.data.dataset import iter_samples, prepare_data
from orchestrator.data.formats import DataError, Row
from orchestrator.data.instruct import (
    alpaca_samples,
    hc3_samples,
    hh_rlhf_samples,
    oig_samples,
    summarize_samples,
    webgpt_samples,
)
from orchestrator.data.prompts import PieceTemplate
from tests.unit.test_templates import trained_spans

HH = Row(
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: No idea.",
    },
    "hh.jsonl line 1",
)


def koala(sample, tok):
    [ex] = PieceTemplate("koala", tok).examples(sample, 2048)
    return ex


def test_koala_template_text_and_trained_spans(tokenizer):
    good, bad = hh_rlhf_samples(HH)
    ex = koala(good, tokenizer)
    assert tokenizer.decode(ex.input_ids) == (
        "<s>BEGINNING OF CONVERSATION: USER: Hi GPT:Hello!</s>USER: 2+2? GPT:4</s>"
    )
    assert trained_spans(ex, tokenizer) == ["Hello!</s>", "4</s>"]
    # The rejected dialogue is a negative sample: its answers follow the negative marker.
    ex = koala(bad, tokenizer)
    assert tokenizer.decode(ex.input_ids) == (
        "<s>BEGINNING OF CONVERSATION: USER: Hi An Unhelpful Answer:Hello!</s>"
        "USER: 2+2? An Unhelpful Answer:No idea.</s>"
    )
    assert trained_spans(ex, tokenizer) == ["Hello!</s>", "No idea.</s>"]


def test_koala_reads_alpaca_with_its_input():
    [s] = alpaca_samples(Row({"instruction": "Sort.", "input": "b a", "output": "a b"}, "x"))
    from orchestrator.data.prompts import render

    assert render("koala", s)[1].text == "USER: Sort.\n\nb a GPT:"


def test_webgpt_higher_score_is_positive_and_ties_are_dropped():
    row = {
        "question": {"full_text": "Why?"},
        "answer_0": "bad",
        "answer_1": "good",
        "score_0": -1.0,
        "score_1": 1.0,
    }
    good, bad = webgpt_samples(Row(row, "w line 1"))
    assert (good.turns[-1][1], good.negative) == ("good", False)
    assert (bad.turns[-1][1], bad.negative) == ("bad", True)
    assert webgpt_samples(Row({**row, "score_0": 0.0, "score_1": 0.0}, "w line 2")) == []


def test_summarize_choice_is_positive():
    row = {
        "info": {"post": "A long post.", "title": "T"},
        "summaries": [{"text": " first"}, {"text": "second"}],
        "choice": 1,
    }
    good, bad = summarize_samples(Row(row, "s line 1"))
    assert good.turns[0][1] == "Summarize the following post.\n\nTitle: T\n\nA long post."
    assert (good.turns[1][1], bad.turns[1][1], bad.negative) == ("second", "first", True)


def test_hc3_every_answer_is_positive_and_oig_parses_turns():
    row = {"question": "Q?", "human_answers": ["h1", "h2"], "chatgpt_answers": ["c"]}
    samples = hc3_samples(Row(row, "hc3 line 1"))
    assert [s.turns[1][1] for s in samples] == ["h1", "h2", "c"]
    assert not any(s.negative for s in samples)
    [s] = oig_samples(Row({"text": "<human>: a\n<bot>: b\n<human>: c\n<bot>: d"}, "o"))
    assert s.turns == [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]


@pytest.mark.parametrize(
    "adapter,data,message",
    [
        (hh_rlhf_samples, {"chosen": "x"}, "missing field 'rejected'"),
        (hh_rlhf_samples, {"chosen": "oops", "rejected": ""}, "field 'chosen'"),
        (webgpt_samples, {"answer_0": "a"}, "question.full_text"),
        (summarize_samples, {"info": {"post": "p"}, "summaries": [], "choice": 0}, "2 'summaries'"),
        (hc3_samples, {"question": "q", "human_answers": "nope"}, "'human_answers' must be a list"),
        (oig_samples, {"text": "hello <bot>: x"}, "must start with '<human>: '"),
    ],
)
def test_bad_rows_name_the_row_and_the_field(adapter, data, message):
    with pytest.raises(DataError, match="rows.jsonl line 9") as e:
        adapter(Row(data, "rows.jsonl line 9"))
    assert message in str(e.value)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_mixture_weights_filter_and_positive_only(tmp_path):
    hh = _write(tmp_path / "hh.jsonl", [HH.data] * 10)
    hc3 = _write(
        tmp_path / "hc3.jsonl",
        [
            {"question": f"Q{i}?", "human_answers": [f"A{i}"], "chatgpt_answers": []}
            for i in range(40)
        ]
        + [{"question": "Made by OpenAI?", "human_answers": ["yes"], "chatgpt_answers": []}],
    )
    base = dict(format="mixture", template="koala", eval_fraction=0.0, max_seq_len=256)
    sources = [
        SourceConfig(name="hh", format="hh_rlhf", source=hh, weight=2.0),
        SourceConfig(name="hc3", format="hc3", source=hc3, weight=0.5, drop_containing=["openai"]),
    ]
    samples = list(iter_samples(DataConfig(**base, sources=sources)))
    assert len(samples) == 20 + 40  # the OpenAI mention is filtered out
    assert sum(s.negative for s in samples) == 10
    data = prepare_data(DataConfig(**base, sources=sources), tmp_path / "pn")
    # HH: 20 examples x 2 copies; HC3: 40 examples, a seeded ~half kept.
    n_hh = sum(1 for e in data.train if e.weight == 2.0)
    n_hc3 = sum(1 for e in data.train if e.weight == 0.5)
    assert n_hh == 40 and 10 <= n_hc3 <= 30
    po = prepare_data(
        DataConfig(**base, sources=sources, conditioning="positive_only"), tmp_path / "po"
    )
    assert sum(1 for e in po.train if e.weight == 2.0) == 20  # negatives dropped


def test_mixture_config_errors_name_the_source():
    with pytest.raises(ConfigError, match="needs a list of data.sources"):
        DataConfig(format="mixture", template="koala")
    bad = [SourceConfig(name="d", format="dolly", source="d.jsonl")]
    from orchestrator.compose.names import check_data

    with pytest.raises(ConfigError, match=r"cannot read data.sources\[0\].format='dolly'"):
        check_data(DataConfig(format="mixture", template="koala", sources=bad))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].weight=0"):
        DataConfig(
            format="mixture",
            template="koala",
            sources=[SourceConfig(name="a", format="alpaca", source="a.json", weight=0)],
        )


def test_parquet_rows_name_their_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.data.formats import read_rows

    rows = [{"instruction": f"I{i}", "input": "", "output": f"O{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    got = list(read_rows(str(tmp_path / "a.parquet")))
    assert [r.data for r in got] == rows and got[3].where.endswith("a.parquet row 3")
    cfg = DataConfig(format="alpaca", source=str(tmp_path / "a.parquet"), template="alpaca")
    assert len(list(iter_samples(cfg))) == 5
