"""Checkpoints on S3: a real HTTP S3 endpoint (moto_server on 127.0.0.1), reached directly or
through a proxy that fails requests, so every path boto3 takes on the wire is exercised."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import boto3
import pytest

from orchestrator.checkpoint.manifest import FILES_KEY, MANIFEST, file_hashes, tmp_dirname
from orchestrator.checkpoint.store import IncompleteCheckpoint, S3Store
from orchestrator.storage.s3 import S3
from tests.faults import FaultyProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(start_moto, monkeypatch):
    """A moto_server with a bucket; boto3 reaches it through AWS_ENDPOINT_URL."""
    url, _ = start_moto()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    boto3.client("s3").create_bucket(Bucket="ckpts")
    return url


def stage(base: Path, step: int, files: dict[str, bytes]) -> Path:
    d = base / tmp_dirname(step)
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


def save(store: S3Store, base: Path, step: int, files: dict[str, bytes]) -> None:
    staging = stage(base, step, files)
    part = file_hashes(staging)
    store.put_files(staging, step, part)
    store.commit(step, staging, {"step": step, FILES_KEY: part})


def test_s3_roundtrip_multipart_and_manifest_last(s3, tmp_path):
    store = S3Store("s3://ckpts/runs/a")
    big = bytes(range(256)) * (40 * 1024)  # 10 MB: a multipart upload
    save(store, tmp_path, 2, {"__0_0.distcp": b"a" * 100, "sub/big.bin": big})
    # Files uploaded but no manifest yet: not a complete checkpoint.
    staging = stage(tmp_path, 4, {"__0_0.distcp": b"b" * 100})
    store.put_files(staging, 4, file_hashes(staging))
    assert store.complete_steps() == [2]
    folder = store.fetch(2, tmp_path / "cache")
    assert (folder / "sub/big.bin").read_bytes() == big
    assert json.loads((folder / MANIFEST).read_text())["step"] == 2


def test_s3_corrupted_or_truncated_objects_are_detected(s3, tmp_path):
    store = S3Store("s3://ckpts/r")
    save(store, tmp_path, 2, {"x.bin": b"1" * 64})
    save(store, tmp_path, 4, {"x.bin": b"2" * 64})
    client = boto3.client("s3")
    client.put_object(Bucket="ckpts", Key="r/step_00000004/x.bin", Body=b"3" * 64)  # same size
    with pytest.raises(IncompleteCheckpoint, match="sha256"):
        store.fetch(4, tmp_path / "cache")
    client.put_object(Bucket="ckpts", Key="r/step_00000002/x.bin", Body=b"1" * 10)
    with pytest.raises(IncompleteCheckpoint, match="wrong size"):
        store.fetch(2, tmp_path / "cache")


def test_s3_commit_refuses_when_a_file_is_missing(s3, tmp_path):
    store = S3Store("s3://ckpts/m")
    staging = stage(tmp_path, 2, {"a.bin": b"a", "b.bin": b"b"})
    part = file_hashes(staging)
    store.put_files(staging, 2, part)
    boto3.client("s3").delete_object(Bucket="ckpts", Key="m/step_00000002/b.bin")
    with pytest.raises(IncompleteCheckpoint, match="b.bin"):
        store.commit(2, staging, {"step": 2, FILES_KEY: part})
    assert store.complete_steps() == []


def test_s3_prune_keeps_last_and_milestones(s3, tmp_path):
    store = S3Store("s3://ckpts/p")
    for step in (2, 4, 6, 8):
        save(store, tmp_path, step, {"w.bin": bytes([step]) * 10})
    stage(tmp_path, 5, {"w.bin": b"x"})
    abandoned = tmp_path / tmp_dirname(5)
    store.put_files(abandoned, 5, file_hashes(abandoned))  # an abandoned save
    store.prune(keep_last=1, keep_every=4, newest_committed=8)
    assert store.complete_steps() == [8, 4]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ckpts")["Contents"]]
    assert not any("step_00000005" in k or "step_00000002" in k for k in keys)


def test_s3_uploads_survive_503s_and_an_outage(s3, tmp_path, monkeypatch):
    proxy = FaultyProxy(s3, fail_every=3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        store = S3Store("s3://ckpts/f", s3=S3(backoff_s=0.2))
        proxy.outage(2.0)
        save(store, tmp_path, 2, {f"f{i}.bin": bytes([i]) * 1000 for i in range(6)})
        assert store.complete_steps() == [2]
        store.fetch(2, tmp_path / "cache")
    finally:
        proxy.close()
    assert proxy.failed > 0 and proxy.reset > 0


def test_s3_gives_up_on_a_dead_endpoint_with_a_clear_error(s3, tmp_path, monkeypatch):
    proxy = FaultyProxy(s3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        store = S3Store("s3://ckpts/d", s3=S3(attempts=2, backoff_s=0.1))
        proxy.outage(60)
        with pytest.raises(Exception, match=r"(?i)connection|endpoint"):
            staged = stage(tmp_path, 2, {"a.bin": b"a"})
            store.put_files(staged, 2, file_hashes(staged))
    finally:
        proxy.close()


def test_launch_with_s3_checkpoints_through_a_failing_endpoint(
    s3, tmp_path, monkeypatch, shared_ray
):
    """A local run whose checkpoints go to S3 (async) while the endpoint fails every 4th request
    and goes down for 4 s: the run completes, every complete checkpoint verifies, and a
    relaunch resumes from S3."""
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # The module's Ray cluster started before these credentials were set: its workers get them
    # the documented way (docs/security.md), not from whatever the test process leaked before.
    monkeypatch.setenv("ORCHESTRATOR_FORWARD_SECRETS", "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY")
    proxy = FaultyProxy(s3, fail_every=4)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    overrides = [
        "train.max_steps=12",
        "checkpoint.every_steps=3",
        "checkpoint.keep_last=10",
        "checkpoint.async_save=true",
        "checkpoint.dir=s3://ckpts/vicuna-run",
        "export.enabled=false",
    ]
    timer = threading.Timer(12.0, proxy.outage, args=(4.0,))
    timer.start()
    try:
        res = launch("vicuna", "local", overrides, run_name="s3run", yes=True)
    finally:
        timer.cancel()
    assert res.stop_reason == "completed" and res.step == 12
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    store = S3Store("s3://ckpts/vicuna-run")
    steps = store.complete_steps()
    assert steps[0] == 12 and set(steps) <= {3, 6, 9, 12}
    for step in steps:
        m = json.loads((store.fetch(step, tmp_path / "verify") / MANIFEST).read_text())
        assert m["step"] == step and m["mlflow_run_id"] == res.mlflow_run_id
    assert proxy.failed > 0
    proxy.close()

    res2 = launch(
        "vicuna", "local", overrides[1:] + ["train.max_steps=15"], run_name="s3run", yes=True
    )
    assert res2.step == 15 and res2.mlflow_run_id == res.mlflow_run_id
    timeline = [json.loads(line) for line in (Path(res2.run_dir) / "timeline.jsonl").open()]
    second = [r["step"] for r in timeline if r["kind"] == "step" and r["attempt"] == 2]
    assert second == [13, 14, 15]  # resumed from step 12 on S3
    # the ranks fetched the files their load plans read, each file once on this node (DCP
    # keeps the replicated items in one rank's file, so which rank fetches what varies)
    (resume,) = [json.loads(x) for x in (Path(res2.run_dir) / "resumes.jsonl").open()]
    assert resume["step"] == 12 and sorted(r["rank"] for r in resume["ranks"]) == [0, 1]
    assert sum(r["fetched_bytes"] for r in resume["ranks"]) == resume["checkpoint_bytes"], resume
    assert all(r["fetched_bytes"] > 0 for r in resume["ranks"]), resume  # both fetched in parallel
    assert store.complete_steps()[0] == 15
