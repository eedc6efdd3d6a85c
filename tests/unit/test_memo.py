"""The memo behind compose and the fail-over alternatives: copies, errors not kept, the oldest
answer dropped past its size."""

from __future__ import annotations

import pytest

from orchestrator.memo import Memo


def test_each_caller_gets_its_own_copy_and_the_builder_runs_once():
    calls = []
    memo: Memo[dict] = Memo(4)

    def make() -> dict:
        calls.append(1)
        return {"hardware": {"num_workers": 8}}

    first = memo.get("k", make)
    first["hardware"]["num_workers"] = 99  # a caller changing its copy in place
    assert memo.get("k", make) == {"hardware": {"num_workers": 8}}
    assert len(calls) == 1


def test_an_error_is_not_kept_and_the_oldest_answer_goes_past_the_size():
    memo: Memo[int] = Memo(2)

    def fail() -> int:
        raise ValueError("bad config")

    with pytest.raises(ValueError):
        memo.get("a", fail)
    assert memo.get("a", lambda: 1) == 1  # tried again, not served the error
    memo.get("b", lambda: 2)
    memo.get("c", lambda: 3)  # past the size: "a" goes
    assert memo.get("a", lambda: 10) == 10 and memo.get("c", lambda: 30) == 3
