"""Preference data in its real shapes -> ranked groups (data/preference.py)."""

import json

import pytest

from orchestrator.data.formats import DataError
from orchestrator.data.preference import STACK_TEMPLATE, RankedGroup, read_groups
from orchestrator.paths import REPO_ROOT

SAMPLES = REPO_ROOT / "data/samples"


def _groups(source, fmt):
    out = list(read_groups(str(source), fmt))
    assert not [g for g in out if isinstance(g, DataError)]
    return out


def test_stack_exchange_paired_prefers_response_j():
    groups = _groups(SAMPLES / "stack_exchange_paired_sample.jsonl", "stack_exchange_paired")
    assert len(groups) == 240
    g = groups[1]
    assert g.prompt == [("user", "Spell the word 'silver' backwards.")]
    assert g.replies == [
        "The word 'silver' backwards is 'revlis'.",
        "78 - 52 = 26. So 78 minus 52 is 26.",
    ]
    assert g.key == "se:1001"
    assert STACK_TEMPLATE.format(question="q") == "Question: q\n\nAnswer: "


def test_hh_rlhf_pairs_share_the_prefix():
    groups = _groups(SAMPLES / "koala/hh_rlhf_sample.jsonl", "hh_rlhf")
    assert groups and all(len(g.replies) == 2 and g.prompt[-1][0] == "user" for g in groups)


def test_webgpt_orders_by_score_and_drops_ties(tmp_path):
    rows = [
        {
            "question": {"full_text": "Q1"},
            "answer_0": "a",
            "answer_1": "b",
            "score_0": -1,
            "score_1": 1,
        },
        {
            "question": {"full_text": "Q2"},
            "answer_0": "c",
            "answer_1": "d",
            "score_0": 0,
            "score_1": 0,
        },
    ]
    p = tmp_path / "w.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    [g] = _groups(p, "webgpt")
    assert g.replies == ["b", "a"]
    assert _groups(SAMPLES / "koala/webgpt_sample.jsonl", "webgpt")


def test_oasst_ranked_groups_are_sorted_by_rank_and_keyed_by_tree():
    groups = _groups(SAMPLES / "oasst_sample.jsonl", "oasst")
    assert groups
    for g in groups:
        assert len(g.replies) >= 2 and g.prompt[-1][0] == "user" and g.key.startswith("tree")
    first = next(g for g in groups if g.key == "tree0000" and len(g.prompt) == 1)
    assert first.replies[0] == "The word 'marble' backwards is 'elbram'."


def test_bad_rows_name_the_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        json.dumps({"question": "q", "response_j": "a", "response_k": "b"}) + "\n"
        + json.dumps({"question": "q", "response_j": "a"}) + "\n"
    )  # fmt: skip
    out = list(read_groups(str(p), "stack_exchange_paired"))
    assert isinstance(out[0], RankedGroup)
    assert isinstance(out[1], DataError) and "line 2" in str(out[1]) and "response_k" in str(out[1])
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b",
                              "rejected": "\n\nHuman: x\n\nAssistant: y"}) + "\n")  # fmt: skip
    [err] = list(read_groups(str(hh), "hh_rlhf"))
    assert isinstance(err, DataError) and "differ before their last reply" in str(err)
    with pytest.raises(DataError, match="valid"):
        list(read_groups(str(p), "nope"))
