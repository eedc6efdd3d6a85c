"""OpenAssistant trees are checked before anything is read off them (data/oasst.py): a cycle of
parents, a missing parent, a repeated id, an empty text each name the line and the id."""

from __future__ import annotations

import pytest

from orchestrator.data.formats import DataError, Row
from orchestrator.data.instruct import hh_turns, oasst_threads
from orchestrator.data.oasst import build_forest
from orchestrator.data.preference import oasst_groups


def msg(mid, parent, role, text="some text", rank=None):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank}


def rows(*msgs):
    return [Row(m, f"t.jsonl line {i + 1}") for i, m in enumerate(msgs)]


GOOD = [msg("p", None, "prompter"), msg("a1", "p", "assistant", rank=0),
        msg("a2", "p", "assistant", rank=1)]  # fmt: skip


def problems(*extra):
    forest, found = build_forest(rows(*GOOD, *extra))
    assert set(forest.by_id) >= {"p", "a1", "a2"}  # the good tree is untouched
    return forest, [str(e) for e in found]


def test_a_cycle_of_parents_is_named_and_left_out_in_bounded_memory():
    forest, found = problems(msg("x", "y", "prompter"), msg("y", "x", "assistant"))
    assert "x" not in forest.by_id and "y" not in forest.by_id
    assert len(found) == 1 and "in a cycle of parents" in found[0] and "t.jsonl line" in found[0]
    # the reward groups and the SFT threads read the checked trees: both end, neither has x or y
    groups = oasst_groups(rows(*GOOD, msg("x", "y", "prompter"), msg("y", "x", "assistant")))
    assert sum(isinstance(g, DataError) for g in groups) == 1


def test_an_orphan_is_not_trained_as_a_conversation_of_its_own():
    forest, found = problems(msg("o", "gone", "prompter"), msg("o1", "o", "assistant"))
    assert "o" not in forest.by_id and "o1" not in forest.by_id
    assert found == ["t.jsonl line 4: message 'o' names parent_id 'gone', which is not in the "
                     "data; its replies are left out (not trained as a conversation of their "
                     "own)"]  # fmt: skip
    threads = oasst_threads(rows(*GOOD, msg("o", "gone", "prompter"), msg("o1", "o", "assistant")))
    assert [s.where for s in threads if not isinstance(s, DataError)] == ["t.jsonl line 1"]


def test_a_repeated_id_keeps_the_first_and_a_deleted_parent_drops_its_replies_quietly():
    forest, found = problems(msg("a1", "elsewhere", "assistant", text="hijack"),
                             {**msg("d", "p", "assistant"), "deleted": True},
                             msg("d1", "d", "prompter"))  # fmt: skip
    assert forest.by_id["a1"]["text"] == "some text" and forest.by_id["a1"]["parent_id"] == "p"
    assert len(found) == 1 and "message_id 'a1' repeats the one at t.jsonl line 2" in found[0]
    assert "d1" not in forest.by_id  # the reply to a deleted message goes with it


def test_empty_texts_are_refused():
    forest, found = problems(msg("e", "p", "assistant", text="   "))
    assert "e" not in forest.by_id and "message 'e' has an empty text" in found[0]
    with pytest.raises(DataError, match="turn 1 \\(assistant\\) is empty"):
        hh_turns("\n\nHuman: hi\n\nAssistant:  ", "hh.jsonl line 4 field 'chosen'")


def test_problems_are_skipped_and_counted_under_on_error_skip(tmp_path):
    import json

    from orchestrator.config.schema import DataConfig
    from orchestrator.data.dataset import iter_samples

    path = tmp_path / "oasst.jsonl"
    msgs = [*GOOD, msg("x", "y", "prompter"), msg("y", "x", "assistant"),
            msg("o", "gone", "prompter")]  # fmt: skip
    path.write_text("\n".join(json.dumps(m) for m in msgs))
    cfg = DataConfig(format="oasst", template="oasst", source=str(path), on_error="skip")
    items = list(iter_samples(cfg))
    assert sum(isinstance(i, DataError) for i in items) == 2
    assert sum(not isinstance(i, DataError) for i in items) == 1
