"""The before/after check of per-step losses (tests/reference.py) records, compares within its
tolerance, fails outside it, and says why when it cannot compare."""

from __future__ import annotations

import json

import pytest

from tests import reference


def test_record_then_compare(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "FILE", tmp_path / "ref.json")
    monkeypatch.setenv("ORCHESTRATOR_RECORD_REFERENCE", "1")
    assert reference.check_reference("j/sft", {1: 5.0, 2: 4.5}) is None
    monkeypatch.delenv("ORCHESTRATOR_RECORD_REFERENCE")
    assert reference.check_reference("j/sft", {1: 5.0 * (1 + 5e-5), 2: 4.5}) is None
    with pytest.raises(AssertionError):
        reference.check_reference("j/sft", {1: 5.0 * (1 + 5e-4), 2: 4.5})
    with pytest.raises(AssertionError):
        reference.check_reference("j/sft", {1: 5.0})  # a step missing
    assert "no reference" in reference.check_reference("j/dpo", {1: 1.0})
    data = json.loads((tmp_path / "ref.json").read_text())
    data["fingerprint"]["cpu_capability"] = "another"
    (tmp_path / "ref.json").write_text(json.dumps(data))
    assert "recorded on" in reference.check_reference("j/sft", {1: 99.0, 2: 4.5})
