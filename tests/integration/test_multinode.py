"""Multi-node for real: a Ray head with no CPUs and worker nodes that share no disk with it (each
in its own mount namespace, with private /tmp and runs/: tests/nodes.py), S3 through moto_server,
MLflow through a tracking server, the launch submitted through the Jobs API. The node running
rank 0 is SIGKILLed mid-run (raylet, agents and workers: a spot preemption); a spare node takes
over. The run must end with the losses of an uninterrupted run, one MLflow run with one value per
step, and a bill whose useful/wasted split is the timeline's; a worker must not see the head's
folders. Every artifact crosses between nodes only through S3, MLflow and Ray."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.nodes import REPO, IsolatedCluster, can_isolate

pytestmark = pytest.mark.integration

STEPS, EVERY, KILL_AT = 20, 8, 10
"""Kill rank 0's node once the store shows step KILL_AT: past the checkpoint at EVERY."""
OVERRIDES = [
    f"train.max_steps={STEPS}",
    f"checkpoint.every_steps={EVERY}",
    "checkpoint.keep_last=5",
    "train.log_every_steps=1",
    "storage.flush_s=0.5",
    "export.enabled=false",
]
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _wait(what: str, fn, timeout: float, explain=lambda: "") -> object:
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")


def run_no_shared_disk_scenario(tmp: Path, moto_url: str, isolate: bool = True) -> dict:
    """Submit the local vicuna to a head + 3 worker nodes, kill rank 0's node after a
    checkpoint, let the run finish. Returns what happened (used by bench/multinode.py too).
    `isolate=False` runs the same cluster with nodes sharing this machine's disk and a folder
    as the durable store (the shared-disk baseline)."""
    import boto3
    from ray.job_submission import JobSubmissionClient

    from orchestrator.launch.named_clusters import WORKING_DIR_EXCLUDES, auth_headers
    from orchestrator.launch.ray_session import free_port
    from orchestrator.storage.durable import open_durable
    from orchestrator.tracking.server import start_server, stop_server

    aws = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    os.environ.update(aws)
    boto3.client("s3").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/orchestrator" if isolate else str(tmp / "shared-runs")
    port = free_port()
    server = start_server(port, f"sqlite:///{tmp / 'mlflow.db'}", str(tmp / "artifacts"),
                          tmp / "mlflow.log")  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    out: dict = {"root": root, "tracking_uri": uri}
    try:
        with IsolatedCluster(tmp, aws, isolate=isolate) as c:
            for label in ("w0", "w1", "w2"):
                c.add_worker(label)
            ids = c.wait_workers(3)
            out["node_ids"] = ids
            sentinels = [Path(c.temp_dir) / f"driver-only-{uuid.uuid4().hex}",
                         REPO / "runs" / f"driver-only-{uuid.uuid4().hex}"]  # fmt: skip
            for s in sentinels:
                s.write_text("on the head's disk only")
            env = {
                **aws,
                "ORCHESTRATOR_STORAGE_ROOT": root,
                "MLFLOW_TRACKING_URI": uri,
                "PYTHONUNBUFFERED": "1",
                **({} if isolate else {"ORCHESTRATOR_STORAGE_SHARED": "1"}),
            }
            client = JobSubmissionClient(c.dashboard_url, headers=auth_headers())
            t_submit = time.time()
            sid = client.submit_job(
                entrypoint="python -m orchestrator launch vicuna --scale local --run mn --yes "
                f"--set '{' '.join(OVERRIDES)}'",
                runtime_env={"working_dir": str(REPO), "excludes": WORKING_DIR_EXCLUDES,
                             "env_vars": env},
            )  # fmt: skip
            store = open_durable(f"{root}/vicuna/mn")

            def explain() -> str:
                full = client.get_job_logs(sid)
                (tmp / "job.log").write_text(full)  # the whole log, for reading after a failure
                logs = full[-5000:]
                nodes = "\n".join(
                    f"--- {w.label}\n" + w.log.read_text(errors="replace")[-1500:]
                    for w in c.workers.values()
                )
                return f"--- job {sid}: {client.get_job_status(sid)}\n{logs}\n{nodes}"

            def timeline() -> list[dict]:
                return [json.loads(x) for x in store.read_lines("timeline.jsonl")]

            def steps_done() -> int:
                return max((r["step"] or 0 for r in timeline() if r["kind"] == "step"), default=0)

            def ended() -> str | None:
                s = str(client.get_job_status(sid))
                return s if s in FINAL else None

            _wait("the first step", lambda: steps_done() >= 1 or ended(), 300, explain)
            out["submit_to_first_step_s"] = (
                min(r["end"] for r in timeline() if r["kind"] == "step") - t_submit
            )
            _wait(f"a checkpoint at step {EVERY} and steps after it",
                  lambda: steps_done() >= KILL_AT or ended(), 300, explain)  # fmt: skip
            assert not ended(), explain()
            setup = [r for r in timeline() if r["kind"] == "setup"][-1]
            victim = next(label for label, nid in ids.items() if nid == setup["node"])
            out["victim"], out["steps_before_kill"] = victim, steps_done()
            t_kill = time.time()
            out["processes_killed"] = c.kill(victim)
            out["status"] = _wait("the job to end", ended, 420, explain)
            out["log"] = client.get_job_logs(sid)
            (tmp / "job.log").write_text(out["log"])
            rows = timeline()
            resumed = [r for r in rows if r["kind"] == "step" and r["start"] > t_kill]
            if resumed:
                out["kill_to_resumed_step_s"] = resumed[0]["end"] - t_kill
                out["resumed_at_step"] = resumed[0]["step"]
            survivor = next(nid for label, nid in ids.items() if label != victim)
            out["look"] = c.look(survivor, [str(s) for s in sentinels] + [str(REPO / "runs")])
            out["sentinels"] = [str(s) for s in sentinels]
            out["head_sees_sentinels"] = all(s.exists() for s in sentinels)
            for s in sentinels:
                s.unlink(missing_ok=True)
        from mlflow.tracking import MlflowClient  # what the tracking server holds

        ml = MlflowClient(uri)
        exp = ml.get_experiment_by_name("vicuna")
        runs = ml.search_runs([exp.experiment_id]) if exp else []
        out["mlflow_runs"] = [r.info.run_id for r in runs]
        out["loss_history"] = [
            (m.step, m.value) for r in runs for m in ml.get_metric_history(r.info.run_id, "loss")
        ]
    finally:
        stop_server(server)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job uninterrupted, on a private local cluster (one disk)."""
    from orchestrator.launch.run import launch
    from orchestrator.storage.durable import open_durable

    d = tmp_path_factory.mktemp("reference")
    old, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(d)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
    try:
        res = launch("vicuna", "local", OVERRIDES, run_name="ref")
    finally:
        os.chdir(old)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    events = [json.loads(x) for x in open_durable(res.run_dir).read_lines("events.jsonl")]
    return {e["step"]: e["loss"] for e in events}


@pytest.mark.skipif(can_isolate() is not None, reason=f"no mount namespaces: {can_isolate()}")
def test_nodes_share_no_disk_and_a_killed_node_costs_one_interval(
    reference, tmp_path, start_moto, monkeypatch
):
    from orchestrator.cost.ledger import Ledger, read_timeline
    from orchestrator.storage.durable import open_durable
    from orchestrator.storage.layout import read_failures

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "ORCHESTRATOR_STORAGE_ROOT",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(k, raising=False)  # fmt: skip
    moto_url, _ = start_moto()
    r = run_no_shared_disk_scenario(tmp_path, moto_url)
    assert r["status"] == "SUCCEEDED", r["log"][-5000:]
    assert "preemption #1" in r["log"], r["log"][-5000:]
    assert r["processes_killed"] >= 3

    # The worker saw none of the head's folders; the head did.
    seen = r["look"]["paths"]
    assert r["head_sees_sentinels"]
    assert all(seen[s] is False for s in r["sentinels"]), seen
    assert seen[str(REPO / "runs")] == [], seen

    store = open_durable(f"{r['root']}/vicuna/mn")
    result = json.loads(store.read_text("result.json"))
    assert result["step"] == STEPS and result["stop_reason"] == "completed"
    failures = read_failures(store)
    assert [f.kind for f in failures] == ["preemption"], (failures, r["log"][-5000:])

    # Same per-step losses as the uninterrupted run, including the steps redone after the kill.
    events = [json.loads(x) for x in store.read_lines("events.jsonl")]
    assert {e["step"] for e in events} == set(range(1, STEPS + 1))
    for e in events:
        assert e["loss"] == pytest.approx(reference[e["step"]], abs=1e-5), e
    # resumed from the newest checkpoint before the kill (EVERY, or 2 x EVERY if the kill lagged)
    assert r["resumed_at_step"] - 1 in (EVERY, 2 * EVERY), r

    # One MLflow run on the tracking server, one value per step: the uninterrupted run's.
    assert len(r["mlflow_runs"]) == 1
    assert sorted(step for step, _ in r["loss_history"]) == list(range(1, STEPS + 1))
    for step, value in r["loss_history"]:
        assert value == pytest.approx(reference[step], abs=1e-5), step

    # The timeline reached the store from both worker groups (the killed rank 0's up to its last
    # flush), ran on the worker nodes only, and the bill's split is the timeline's.
    timeline = read_timeline(store)
    nodes = {t["node"] for t in timeline if t["kind"] == "setup"}
    assert len(nodes) == 2 and nodes <= set(r["node_ids"].values())
    step_runs = [t["step"] for t in timeline if t["kind"] == "step"]
    assert set(step_runs) == set(range(1, STEPS + 1))
    assert len(step_runs) > STEPS  # steps after the checkpoint ran twice: the first runs are waste
    bill = json.loads(store.read_text("bill.json"))
    again = Ledger(store).bill(timeline)
    for cat in ("useful", "wasted"):
        assert bill["by_category"][cat] == pytest.approx(again["by_category"][cat], rel=1e-9)
    assert bill["by_category"]["wasted"] > 0 and bill["stop_reason"] == "completed"
