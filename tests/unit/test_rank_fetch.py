"""Each rank fetches only the checkpoint files it reads (checkpoint/fetch.py)."""

from __future__ import annotations

import pytest
import torch

from orchestrator.checkpoint.fetch import RankFetch, dcp_plan_files, rank_files

FILES = [
    ".metadata", "__0_0.distcp", "__1_0.distcp", "rng_rank0.pt", "rng_rank1.pt",
    "metrics_tail.jsonl", "ds/mp_rank_00_model_states.pt",
    "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt", "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    "ds/zero_pp_rank_10_mp_rank_00_optim_states.pt", "ds/latest",
]  # fmt: skip


def test_rank_files_table():
    one = rank_files(FILES, 1)
    assert "rng_rank1.pt" in one and "rng_rank0.pt" not in one
    assert "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt" in one
    assert not any("zero_pp_rank_0_" in f or "zero_pp_rank_10_" in f for f in one)
    # shared files always; DCP shard files: all without a plan, only the planned ones with one
    assert {".metadata", "metrics_tail.jsonl", "ds/mp_rank_00_model_states.pt", "ds/latest"} <= one
    assert {"__0_0.distcp", "__1_0.distcp"} <= one
    planned = rank_files(FILES, 0, {"__0_0.distcp"})
    assert "__0_0.distcp" in planned and "__1_0.distcp" not in planned
    assert "ds/zero_pp_rank_10_mp_rank_00_optim_states.pt" in rank_files(FILES, 10)


def test_dcp_plan_names_the_files_the_load_reads(tmp_path):
    """The plan made before loading names the files dcp.load then reads (one process: the
    file it wrote); a state dict that reads nothing of a file does not fetch it."""
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(6.0), "b": torch.ones(2)}
    dcp.save(state, checkpoint_id=str(tmp_path), no_dist=True)
    files = dcp_plan_files({"w": torch.zeros(6), "b": torch.zeros(2)}, tmp_path / ".metadata", 0)
    assert files == {p.name for p in tmp_path.glob("*.distcp")} and files
    with pytest.raises(RuntimeError):  # a key the checkpoint lacks: DCP's own error, not a skip
        dcp_plan_files({"missing": torch.zeros(1)}, tmp_path / ".metadata", 0)


def test_in_place_fetch_verifies_only_what_is_asked(tmp_path):
    from orchestrator.checkpoint.manifest import FILES_KEY, commit, step_dirname, tmp_dirname
    from orchestrator.checkpoint.store import IncompleteCheckpoint, LocalStore

    tmp = tmp_path / tmp_dirname(2)
    tmp.mkdir()
    (tmp / "a.bin").write_bytes(b"a" * 10)
    (tmp / "b.bin").write_bytes(b"b" * 10)
    commit(tmp, tmp_path / step_dirname(2), {"step": 2})
    store = LocalStore(tmp_path)
    manifest = store.read_manifest(2)
    (tmp_path / step_dirname(2) / "b.bin").write_bytes(b"B" * 10)  # corrupt, same size
    fetch = RankFetch(store, 2, manifest, tmp_path / "cache")
    fetch.ensure(["a.bin"])
    assert fetch.stats.verified_bytes == 10 and fetch.stats.fetched_bytes == 0
    with pytest.raises(IncompleteCheckpoint, match="b.bin: does not match its sha256"):
        fetch.ensure(["b.bin"])
    with pytest.raises(IncompleteCheckpoint, match="not in the manifest"):
        fetch.ensure(["../outside"])
    assert set(manifest[FILES_KEY]) == {"a.bin", "b.bin"}
