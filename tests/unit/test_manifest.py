"""The manifest decides what a complete checkpoint is, however the writer died."""

import json

import pytest

from orchestrator.checkpoint.manifest import (
    MANIFEST,
    commit,
    file_hashes,
    latest_complete,
    list_checkpoints,
    step_dirname,
    tmp_dirname,
)
from orchestrator.checkpoint.store import LocalStore


def fake_save(root, step, payload=b"x" * 1000, publish=True):
    tmp = root / tmp_dirname(step)
    tmp.mkdir(parents=True)
    (tmp / "__0_0.distcp").write_bytes(payload)
    (tmp / "rng_rank0.pt").write_bytes(b"rng")
    if publish:
        commit(tmp, root / step_dirname(step), {"step": step})
    return root / step_dirname(step)


def test_commit_publishes_with_manifest_and_hashes(tmp_path):
    d = fake_save(tmp_path, 2)
    m = json.loads((d / MANIFEST).read_text())
    assert m["step"] == 2 and set(m["files"]) == {"__0_0.distcp", "rng_rank0.pt"}
    assert (
        m["files"]["__0_0.distcp"]["bytes"] == 1000
        and len(m["files"]["__0_0.distcp"]["sha256"]) == 64
    )
    assert not (tmp_path / tmp_dirname(2)).exists()
    assert latest_complete(tmp_path)[1]["step"] == 2


def test_unfinished_save_is_invisible(tmp_path):
    fake_save(tmp_path, 2)
    fake_save(tmp_path, 4, publish=False)  # died before the manifest: still a temp folder
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert latest_complete(tmp_path)[1]["step"] == 2


def test_missing_manifest_truncated_and_corrupted_are_skipped(tmp_path, caplog):
    fake_save(tmp_path, 2)
    d4 = fake_save(tmp_path, 4)
    d6 = fake_save(tmp_path, 6)
    d8 = fake_save(tmp_path, 8)
    (d8 / MANIFEST).unlink()  # manifest lost
    with (d6 / "__0_0.distcp").open("r+b") as f:  # truncated
        f.truncate(10)
    (d4 / "__0_0.distcp").write_bytes(b"y" * 1000)  # same size, different bytes
    found = latest_complete(tmp_path)
    assert found[1]["step"] == 2
    text = caplog.text
    assert "step_00000008" in text and "no manifest.json" in text
    assert "step_00000006" in text and "has 10 bytes" in text
    assert "step_00000004" in text and "sha256" in text


def test_half_written_manifest_is_not_trusted(tmp_path):
    fake_save(tmp_path, 2)
    d4 = fake_save(tmp_path, 4)
    (d4 / MANIFEST).write_text('{"step": 4, "files": {')
    assert latest_complete(tmp_path)[1]["step"] == 2


def test_prune_keeps_last_k_complete(tmp_path):
    for s in (2, 4, 6, 8):
        fake_save(tmp_path, s)
    removed = LocalStore(tmp_path).prune(keep_last=2, keep_every=None, newest_committed=8)
    assert sorted(removed) == [2, 4]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 6]


def test_prune_keeps_milestones_and_drops_dead_saves_but_not_a_save_in_progress(tmp_path):
    for s in (2, 4, 6, 8, 10):
        fake_save(tmp_path, s)
    fake_save(tmp_path, 5, publish=False)  # a save that died before its manifest
    fake_save(tmp_path, 12, publish=False)  # a save still being written
    (tmp_path / step_dirname(7)).mkdir()  # a published folder whose manifest was lost
    LocalStore(tmp_path).prune(keep_last=1, keep_every=4, newest_committed=10)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 8, 4]
    assert not (tmp_path / tmp_dirname(5)).exists()
    assert (tmp_path / tmp_dirname(12)).exists()


def test_recommit_same_step_replaces_stale_copy(tmp_path):
    fake_save(tmp_path, 4, payload=b"old")
    fake_save(tmp_path, 4, payload=b"newer")
    assert latest_complete(tmp_path)[1]["files"]["__0_0.distcp"]["bytes"] == 5


class DiskFull(OSError):
    pass


def _fail_nth(real, n):
    calls = {"n": 0}

    def f(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise DiskFull(28, "No space left on device")
        return real(*a, **k)

    return f


@pytest.mark.parametrize(
    "where,target,n",
    [
        ("manifest data never reaches the disk", "os.fsync", 1),
        ("manifest written, rename of manifest fails", "os.replace", 1),
        ("manifest in place, folder rename fails", "os.replace", 2),
    ],
)
def test_a_commit_that_dies_midway_leaves_the_previous_checkpoint_latest(
    tmp_path, monkeypatch, where, target, n
):
    import os

    store = LocalStore(tmp_path)
    fake_save(tmp_path, 2)
    staging = store.staging_dir(4, tmp_path)
    staging.mkdir()
    (staging / "__0_0.distcp").write_bytes(b"z" * 1000)
    part = file_hashes(staging)
    store.put_files(staging, 4, part)
    module, name = target.split(".")
    monkeypatch.setattr(os, name, _fail_nth(getattr(os, name), n))
    with pytest.raises(DiskFull):
        store.commit(4, staging, {"step": 4, "files": part})
    monkeypatch.undo()
    assert store.complete_steps() == [2], where
    assert latest_complete(tmp_path)[1]["step"] == 2, where
    # the next save goes through, and the wreck is cleaned up
    fake_save(tmp_path, 6)
    store.prune(keep_last=5, keep_every=None, newest_committed=6)
    assert store.complete_steps() == [6, 2]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
