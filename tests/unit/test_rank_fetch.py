"""Each rank fetches only the checkpoint files it reads (checkpoint/fetch.py)."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.checkpoint.blocks import (
    BlockHasher,
    block_runs,
    check_entry,
    hash_file,
    needed_blocks,
)
from orchestrator.checkpoint.fetch import RankFetch, dcp_plan_reads, rank_files

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
    reads = dcp_plan_reads({"w": torch.zeros(6), "b": torch.zeros(2)}, tmp_path / ".metadata", 0)
    assert set(reads) == {p.name for p in tmp_path.glob("*.distcp")} and reads
    # one item of two: one stored range, inside the file, smaller than it
    (only,) = dcp_plan_reads({"w": torch.zeros(6)}, tmp_path / ".metadata", 0).values()
    (f,) = tmp_path.glob("*.distcp")
    assert len(only) == 1 and only[0][0] + only[0][1] <= f.stat().st_size
    assert sum(n for _, n in only) < sum(n for r in reads.values() for _, n in r)
    with pytest.raises(RuntimeError):  # a key the checkpoint lacks: DCP's own error, not a skip
        dcp_plan_reads({"missing": torch.zeros(1)}, tmp_path / ".metadata", 0)


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


def test_block_hashes_do_not_depend_on_how_the_bytes_arrive(tmp_path):
    data = bytes(range(256)) * 1000  # 256,000 bytes: 4 blocks of 64 KiB, the last short
    one = BlockHasher(64 << 10)
    one.update(data)
    chunked = BlockHasher(64 << 10)
    for i in range(0, len(data), 7777):
        chunked.update(data[i : i + 7777])
    (tmp_path / "f").write_bytes(data)
    entry = one.entry()
    assert entry == chunked.entry() == hash_file(tmp_path / "f", 64 << 10)
    assert len(entry["blocks"]) == 4 and entry["bytes"] == len(data)
    assert check_entry(entry) is None
    small = BlockHasher(64 << 10)
    small.update(b"x" * 100)
    assert "blocks" not in small.entry()  # one block: the file's own hash verifies it


@pytest.mark.parametrize(
    "ranges, size, want",
    [
        ([(0, 1)], 100, [0]),
        ([(9, 2)], 100, [0, 1]),  # straddles a block boundary
        ([(10, 10)], 100, [1]),
        ([(95, 50)], 100, [9]),  # clipped at the end
        ([(0, 0), (200, 5)], 100, []),  # empty, and past the end
        ([(30, 5), (0, 5), (31, 2)], 100, [0, 3]),
    ],
)
def test_needed_blocks_table(ranges, size, want):
    assert needed_blocks(ranges, size, 10) == want


def test_block_runs_table():
    assert block_runs([]) == []
    assert block_runs([3, 1, 2, 7, 9, 8]) == [(1, 3), (7, 9)]
    assert block_runs([5]) == [(5, 5)]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"block_bytes": 10}, "block_bytes=10"),
        ({"blocks": ["0" * 64]}, "1 block hashes for 256000 bytes"),
        ({"blocks": ["x"] * 4}, "not a list of sha256"),
    ],
)
def test_block_entries_are_checked_with_the_manifest(change, match):
    from orchestrator.checkpoint.manifest import BadManifest, parse_manifest

    h = BlockHasher(64 << 10)
    h.update(b"z" * 256000)
    entry = {**h.entry(), **change}
    assert check_entry(entry) is not None
    with pytest.raises(BadManifest, match=match):
        parse_manifest(json.dumps({"step": 1, "files": {"a.distcp": entry}}), "m.json", 1)


def test_a_rank_verifies_only_the_blocks_it_reads(tmp_path, monkeypatch):
    """In place: reading one block of a 4-block file hashes that block; a corrupted block
    is found by the rank that reads it, and only by it."""
    from orchestrator.checkpoint import blocks
    from orchestrator.checkpoint.manifest import commit, step_dirname, tmp_dirname
    from orchestrator.checkpoint.store import IncompleteCheckpoint, LocalStore

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64 << 10)
    tmp = tmp_path / tmp_dirname(2)
    tmp.mkdir()
    (tmp / "__0_0.distcp").write_bytes(b"d" * 256000)
    commit(tmp, tmp_path / step_dirname(2), {"step": 2})
    store = LocalStore(tmp_path)
    manifest = store.read_manifest(2)
    assert len(manifest["files"]["__0_0.distcp"]["blocks"]) == 4
    with open(tmp_path / step_dirname(2) / "__0_0.distcp", "r+b") as f:
        f.seek(200000)
        f.write(b"D")  # block 3
    fetch = RankFetch(store, 2, manifest, tmp_path / "cache")
    fetch.ensure(["__0_0.distcp"], {"__0_0.distcp": [(70000, 100)]})
    assert fetch.stats.verified_bytes == 64 << 10
    again = RankFetch(store, 2, manifest, tmp_path / "cache")
    with pytest.raises(IncompleteCheckpoint, match="block 3 does not match"):
        again.ensure(["__0_0.distcp"], {"__0_0.distcp": [(199990, 20)]})
