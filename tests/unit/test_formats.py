import json

import pytest

from orchestrator.config.schema import DataConfig
from orchestrator.data.dataset import build_examples
from orchestrator.data.formats import DataError, Row, read_rows, sharegpt_turns


def conv(*pairs):
    return {"id": "x", "conversations": [{"from": f, "value": v} for f, v in pairs]}


def test_sharegpt_roles_and_trimming():
    row = Row(
        conv(("gpt", "hello?"), ("human", "q"), ("gpt", "a"), ("human", "dangling")), "f row 0"
    )
    assert sharegpt_turns(row) == [("user", "q"), ("assistant", "a")]


@pytest.mark.parametrize(
    "data, match",
    [
        ({"id": "7"}, r"f row 3 \(id=7\): missing field 'conversations'"),
        (conv(("human", "q"), ("robot", "a")), r"conversations\[1\].from='robot'"),
        (conv(("human", "q"), ("human", "q2"), ("gpt", "a")), r"roles must alternate"),
        (conv(("gpt", "only")), r"empty conversation"),
        ({"id": "x", "conversations": [{"from": "human"}]}, r"needs fields 'from' and 'value'"),
    ],
)
def test_bad_rows_name_the_row_and_field(data, match):
    with pytest.raises(DataError, match=match):
        sharegpt_turns(Row(data, "f row 3"))


def test_jsonl_errors_name_file_line_and_column(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(conv(("human", "q"), ("gpt", "a"))) + "\n{not json\n")
    rows = list(read_rows(str(p)))
    assert isinstance(rows[0], Row) and isinstance(rows[1], DataError)
    assert "d.jsonl line 2 column 2: not valid JSON" in str(rows[1])


def test_an_unreadable_jsonl_line_is_skipped_and_counted_under_skip(tmp_path, tokenizer):
    p = tmp_path / "d.jsonl"
    good = json.dumps(conv(("human", "q"), ("gpt", "a")))
    p.write_text(f"{good}\n{{not json\n{good}\n")
    with pytest.raises(DataError, match=r"d.jsonl line 2 column 2.*data.on_error=skip"):
        build_examples(DataConfig(source=str(p)), tokenizer)
    examples, n_rows, skipped = build_examples(
        DataConfig(source=str(p), on_error="skip"), tokenizer
    )
    assert (len(examples), n_rows, skipped) == (2, 3, 1)


def test_a_truncated_json_file_keeps_line_and_column(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"id": "a"},\n {"id": "b", "conv')
    with pytest.raises(DataError, match=r"d.json line 2 column \d+: .*truncated"):
        list(read_rows(str(p)))


def test_bad_row_raises_or_is_skipped_and_counted(tmp_path, tokenizer):
    p = tmp_path / "d.jsonl"
    rows = [conv(("human", "q"), ("gpt", "a")), {"id": "bad"}, conv(("human", "q2"), ("gpt", "a2"))]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl line 2 \(id=bad\).*data.on_error=skip"):
        build_examples(DataConfig(source=str(p)), tokenizer)
    examples, n_rows, skipped = build_examples(
        DataConfig(source=str(p), on_error="skip"), tokenizer
    )
    assert (len(examples), n_rows, skipped) == (2, 3, 1)


def test_missing_file():
    with pytest.raises(DataError, match=r"file not found"):
        list(read_rows("nope/missing.json"))
