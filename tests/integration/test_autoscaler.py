"""A spot cluster that scales itself, with Ray's real autoscaler on the fake multi-node provider
(infra/local-fake.yaml): `make cluster-up`, a launch submitted through the Ray Jobs API that
needs 2 `spot` workers, one spot node killed mid-run the way a preemption does (its raylet and
every worker process, SIGKILL), the autoscaler's replacement, training resumed from the
checkpoint to the end with the same losses, and the nodes released after the job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.faults import prometheus_on_all_interfaces

pytestmark = pytest.mark.integration

STEPS, EVERY = 80, 5
# A billed scale-down is at most half an autoscaler update (2.5 s) off when it happens, plus
# the workers' shut-down after their last record and the GCS seeing the node go: 8 s in all.
TAIL_TOLERANCE_S = 8.0
JOB = ["hardware.num_workers=3", "hardware.num_nodes=3", "train.micro_batch_size=2",
       "train.global_batch_size=18", "train.batching=pad"]  # fmt: skip
"""3 workers, one per spot node; 18 examples a step split 3 x 3 x 2 or, on 2 workers, 9 + 9."""
ELASTIC = ["hardware.nodes.min=2", "hardware.nodes.max=3", "hardware.grow_back=always",
           "cost.instances.local-2vcpu.spot_per_hour_usd=0.0302"]  # fmt: skip
"""Elastic: on with the nodes left after the kill, back to 3 at the next checkpoint (always:
the priced rule would not restart for the few steps left of this short run)."""
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def wait_for(what: str, fn, timeout: float, poll: float = 0.5, explain=None):
    """Poll `fn` until it returns something true; on a timeout, the error carries `explain()`
    (the job's log and the autoscaler's view), so a failure on CI can be read, not guessed."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = fn()
        if value:
            return value, time.time() - t0
        time.sleep(poll)
    detail = ""
    if explain is not None:
        try:
            detail = "\n" + explain()
        except Exception as e:  # noqa: BLE001 - the diagnosis must not hide the timeout
            detail = f"\n(could not collect a diagnosis: {e!r})"
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def run_preemption_scenario(
    tmp_path, monkeypatch=None, wait_fallback_release=False, elastic=True, only_preemption=False
) -> dict:
    """The whole scenario; returns what happened and how long each part took (also used by
    bench/run.py autoscaler, which also runs the preemption alone without `elastic`: the run
    then waits for the replacement node)."""
    import os

    from orchestrator.launch import named_clusters

    env = {
        "ORCHESTRATOR_CLUSTERS_DIR": str(tmp_path / "clusters"),
        "ORCHESTRATOR_STORAGE_ROOT": str(tmp_path / "runs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v) if monkeypatch else os.environ.__setitem__(k, v)
    spot = lambda: named_clusters.market_nodes("local-fake", "spot")  # noqa: E731
    out: dict = {}
    named_clusters.up("local-fake")
    out["token_mode"] = (Path.home() / ".ray" / "auth_token").stat().st_mode & 0o777
    try:
        out["spot_nodes_before"] = len(spot())
        out["jobs_api_without_token"] = _status_without_token(
            named_clusters.state("local-fake")["dashboard_url"] + "/api/jobs/"
        )
        t_submit = time.time()
        sid, _ = named_clusters.submit(
            "local-fake", "vicuna", "local",
            [f"train.max_steps={STEPS}", f"checkpoint.every_steps={EVERY}",
             "train.log_every_steps=1", "hardware.market=spot", "hardware.spot_wait_s=120",
             *JOB, *(ELASTIC if elastic else [])],
            run_name="fake", follow=False,
        )  # fmt: skip
        c = named_clusters.client("local-fake")

        def explain(job_id: str | None = None):
            def text() -> str:
                log = ""
                if job_id:
                    log = (f"--- job {job_id}: {c.get_job_status(job_id)}\n"
                           + c.get_job_logs(job_id)[-6000:])  # fmt: skip
                return log + "\n" + named_clusters.diagnose("local-fake")

            return text

        def ended(job_id: str):
            """The job's final status once it has one (for wait_for), else None."""
            return lambda: (s := str(c.get_job_status(job_id))) in FINAL and s

        wait_for("3 spot nodes", lambda: len(spot()) >= 3 and spot(), 120, explain=explain(sid))
        out["submit_to_3_spot_nodes_s"] = time.time() - t_submit
        run_dir = tmp_path / "runs" / "vicuna" / "fake"

        def events() -> list[dict]:
            path = run_dir / "events.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            return [json.loads(x) for x in lines if x.strip()]

        def steps_on(workers: int) -> list[dict]:
            path = run_dir / "timeline.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            rows = [json.loads(x) for x in lines if x.strip()]
            return [r for r in rows if r["kind"] == "step" and r.get("workers") == workers]

        wait_for("a checkpoint and 2 more steps on 3 workers",
                 lambda: max((e["step"] for e in events()), default=0) >= EVERY + 2
                 and steps_on(3), 240, explain=explain(sid))  # fmt: skip
        out["submit_to_first_step_s"] = min(e["time"] for e in events()) - t_submit
        # the victim is chosen now: a spot node the run is using at this moment
        victim = spot()[0]["node_id"]
        t_kill = time.time()
        if elastic:  # a capacity fault: no spot node replaces it until the run has shrunk
            named_clusters.capacity_fault("local-fake", "cpu_spot", for_s=600)
        out["processes_killed"] = named_clusters.preempt_fake_node(victim)
        if elastic:
            wait_for("a step on the 2 nodes left",
                     lambda: [r for r in steps_on(2) if r["start"] >= t_kill], 180,
                     explain=explain(sid))  # fmt: skip
            named_clusters.capacity_fault("local-fake", "cpu_spot")  # capacity is back

        def replaced() -> bool:
            alive = spot()
            return len(alive) >= 3 and victim not in {n["node_id"] for n in alive}

        wait_for("a replacement spot node", replaced, 180, explain=explain(sid))
        out["kill_to_replacement_node_s"] = time.time() - t_kill
        status, _ = wait_for("the job to end", ended(sid), 300, explain=explain(sid))
        after_kill = [r for r in steps_on(2) if r["start"] >= t_kill]
        if after_kill:  # elastic: the first step on the nodes left
            out["kill_to_first_step_on_2_s"] = min(r["end"] for r in after_kill) - t_kill
        t_end = time.time()
        out.update(
            status=status, log=c.get_job_logs(sid), run_dir=run_dir, victim=victim, t_end=t_end
        )
        rows = events()
        before = [e for e in rows if e["time"] < t_kill]
        after = [e for e in rows if e["time"] >= t_kill and e["attempt"] == before[-1]["attempt"]]
        resumed = [e for e in after if e["step"] <= before[-1]["step"]]
        if resumed:
            out["resumed_at_step"] = resumed[0]["step"]
            out["kill_to_resumed_step_s"] = resumed[0]["time"] - t_kill
        out["losses_before"] = {e["step"]: e["loss"] for e in before}
        out["losses_redone"] = {e["step"]: e["loss"] for e in resumed}
        out["open_metrics_ports"] = prometheus_on_all_interfaces(  # spot nodes still up
            named_clusters.state("local-fake")["temp_dir"]
        )
        _, out["job_end_to_zero_spot_nodes_s"] = wait_for(
            "the spot nodes to be released", lambda: spot() == [], 180, explain=explain()
        )
        out["spot_node_ends"] = {  # when the GCS saw each spot node go
            n["node_id"]: n["end_time_ms"] / 1000.0
            for n in named_clusters.market_nodes("local-fake", "spot", alive=False)
            if n.get("end_time_ms")
        }
        if only_preemption:
            return out
        # No spot capacity yet and a deadline (13 s) that waiting for it (the catalog's 300 s)
        # would miss: the capacity policy buys on-demand nodes long before spot_wait_s (spot
        # priced here at 30% of on-demand, so that waiting has a price to weigh). Half of the
        # on-demand launches fail (the first of them): the autoscaler launches again.
        named_clusters.capacity_fault("local-fake", "cpu_on_demand", fail_fraction=0.5)
        sid, status = named_clusters.submit(
            "local-fake", "vicuna", "local",
            ["train.max_steps=2", "export.enabled=false", "hardware.market=spot",
             "hardware.spot_wait_s=600", "budget.deadline_hours=0.0036",
             "cost.instances.local-2vcpu.spot_per_hour_usd=0.0302"],
            run_name="fallback", follow=False,
        )  # fmt: skip
        out["fallback_status"], _ = wait_for(
            "the fallback job to end", ended(sid), 300, explain=explain(sid)
        )
        out["fallback_log"] = c.get_job_logs(sid)
        monitor = Path(named_clusters.state("local-fake")["temp_dir"]) / "session_latest/logs"
        out["refused_launches"] = [
            line for line in (monitor / "monitor.log").read_text(errors="replace").splitlines()
            if "InsufficientInstanceCapacity" in line and "cpu_on_demand" in line
        ]  # fmt: skip
        named_clusters.capacity_fault("local-fake", "cpu_on_demand")
        out["fallback_run_dir"] = tmp_path / "runs" / "vicuna" / "fallback"
        if wait_fallback_release:  # the same release as the spot nodes': the bench times it
            on_demand = lambda: named_clusters.market_nodes("local-fake", "on_demand")  # noqa: E731
            _, out["fallback_end_to_zero_on_demand_nodes_s"] = wait_for(
                "the on-demand nodes to be released",
                lambda: on_demand() == [],
                180,
                explain=explain(),
            )
        # Capacity faults: the job's own spot type never has capacity (cpu_spot_scarce, whose
        # max_workers is 0). Both types priced alike and the catalog expecting spot capacity
        # within 3 s, the capacity policy switches to the alternative (the local_cpu block's
        # local-2vcpu spot nodes) as soon as the wait outgrows that, long before the spot wait
        # would end; there the first zone (local-a) has no capacity either, and after the spot
        # wait (20 s) the run gets its nodes in local-b and trains there. (Last: the spot nodes
        # it leaves up for the idle timeout would give the fallback job spot capacity.)
        named_clusters.capacity_fault("local-fake", "cpu_spot", for_s=600)
        sid, status = named_clusters.submit(
            "local-fake", "vicuna", "local",
            ["train.max_steps=2", "export.enabled=false", "hardware.market=spot",
             "hardware.instance_type=local-2vcpu-scarce", "hardware.alternatives=[local_cpu]",
             "hardware.spot_wait_s=20", "cost.overheads.spot_capacity_wait_s=3",
             "cost.instances.local-2vcpu-scarce.spot_per_hour_usd=0.0302",
             "cost.instances.local-2vcpu.spot_per_hour_usd=0.0302"],
            run_name="failover", follow=False,
        )  # fmt: skip
        out["failover_status"], _ = wait_for(
            "the failover job to end", ended(sid), 300, explain=explain(sid)
        )
        out["failover_log"] = c.get_job_logs(sid)
        out["failover_run_dir"] = tmp_path / "runs" / "vicuna" / "failover"
    finally:
        named_clusters.down("local-fake")
    return out


def _sizes_in_order(run_dir: Path) -> list[int]:
    """The worker-group sizes the run's steps ran at, each change once, in time order."""
    rows = [json.loads(x) for x in (run_dir / "timeline.jsonl").read_text().splitlines() if x]
    steps = sorted((r for r in rows if r["kind"] == "step"), key=lambda r: r["start"])
    sizes = [r["workers"] for r in steps]
    return [w for i, w in enumerate(sizes) if i == 0 or sizes[i - 1] != w]


def _mlflow_workers(meta: dict) -> list[int]:
    """cluster/workers as logged per step, in step order (a redone step logs again)."""
    import os

    from mlflow.tracking import MlflowClient

    client = MlflowClient(meta["tracking_uri"] or os.environ["MLFLOW_TRACKING_URI"])
    rows = client.get_metric_history(meta["mlflow_run_id"], "cluster/workers")
    return [int(m.value) for m in sorted(rows, key=lambda m: (m.timestamp, m.step))]


def _status_without_token(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_fake_spot_cluster_scales_up_survives_a_preemption_and_scales_down(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    r = run_preemption_scenario(tmp_path, monkeypatch)
    assert r["jobs_api_without_token"] == 401  # the cluster requires Ray's token
    assert r["token_mode"] == 0o600  # and only its owner can read it
    assert r["open_metrics_ports"] == []  # no unauthenticated exporter on every interface
    assert r["spot_nodes_before"] == 0  # scaled to zero: only the head
    assert r["status"] == "SUCCEEDED", r["log"][-4000:]
    assert r["processes_killed"] >= 2  # the raylet and at least its training worker
    run_dir = r["run_dir"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["step"] == STEPS and result["stop_reason"] == "completed"
    failures = [json.loads(x) for x in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert [f["kind"] for f in failures] == ["preemption"], failures
    assert "autoscaler: spot workers ready" in r["log"] and "resumed from" in r["log"]
    # resumed from the checkpoint at EVERY (or a later one) on the 2 nodes left, redoing steps
    # with the losses of their first run on 3 (the same global batch in other shares: equal up
    # to fp32 summation order, tests/integration/test_elastic_losses.py)
    assert r["losses_redone"] and min(r["losses_redone"]) == EVERY + 1, r["losses_redone"]
    for step, loss in r["losses_redone"].items():
        if step in r["losses_before"]:
            assert loss == pytest.approx(r["losses_before"][step], abs=1e-5), step
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["grants"][0]["market"] == "spot" and meta["grants"][0]["fallback_note"] is None
    # elastic: the run went on with 2 workers while the capacity fault kept the replacement
    # away, then grew back to 3 at a checkpoint once it came; each decision is in run.json,
    # the bill and the MLflow run, and every step's size in the timeline and in MLflow
    whys = [x["why"] for x in meta["resizes"]]
    lost = [w for w in whys if w.startswith("a node lost, 2 of 3 left: shrink: spot x 2 of 3")]
    assert lost and "vs spot x 3 nodes" in lost[0], whys  # priced against waiting
    grew = [w for w in whys if "growing from 2 to 3 workers after a checkpoint" in w]
    assert grew and whys.index(grew[-1]) > whys.index(lost[0]), whys
    sizes = _sizes_in_order(run_dir)  # (it may start on 2 if the third node is late)
    assert sizes[-3:] == [3, 2, 3] and len(sizes) <= 4, sizes
    assert r["kill_to_first_step_on_2_s"] is not None
    bill = json.loads((run_dir / "bill.json").read_text())
    assert set(bill["by_workers"]) == {"2", "3"} and bill["elastic"] == whys, bill
    assert all(v["usd"] > 0 for v in bill["by_workers"].values())
    history = _mlflow_workers(meta)
    changes = [w for i, w in enumerate(history) if i == 0 or history[i - 1] != w]
    assert changes == sizes, (changes, sizes)
    # the ledger priced every node that ran: three spot nodes, then the replacement; the
    # victim's life ends at its death
    ledger = json.loads((run_dir / "ledger.json").read_text())
    spot_lives = [n for n in ledger["nodes"] if n["market"] == "spot"]
    assert len({n["node_id"] for n in spot_lives}) >= 4, ledger["nodes"]
    assert any(n["node_id"] == r["victim"] and n["end"] <= r["t_end"] for n in spot_lives)
    assert r["job_end_to_zero_spot_nodes_s"] < 180
    # the scale-down tail: the spot nodes the launch left up are billed until the autoscaler
    # removed them (the cluster's idle timeout after the workers' last record, half an update
    # later); each billed end is when the GCS saw that node go, within one autoscaler update
    # and the node's shut-down
    end = ledger["attempts"][-1]["end"]
    tails = {n["node_id"]: n["end"] for n in spot_lives if n["end"] > end}
    assert len(tails) == 3, (ledger, r["spot_node_ends"])
    gone = {node: r["spot_node_ends"][node] for node in tails}
    print("scale-down tail after the launch, billed vs measured (s):",
          {k[-6:]: (round(tails[k] - end, 1), round(gone[k] - end, 1)) for k in tails})  # fmt: skip
    for node, billed in tails.items():
        assert abs(billed - gone[node]) <= TAIL_TOLERANCE_S, (node, billed - end, gone[node] - end)
    assert bill["scale_down_tail"]["nodes"] == 3
    assert bill["scale_down_tail"]["node_hours"] == pytest.approx(
        sum(g - end for g in gone.values()) / 3600, abs=3 * TAIL_TOLERANCE_S / 3600
    )

    # the failover run: its own type had no capacity; it ran on the alternative's, said in its
    # log and run.json, and every node of its ledger is priced as what ran
    assert r["failover_status"] == "SUCCEEDED", r["failover_log"][-4000:]
    grant = json.loads((r["failover_run_dir"] / "run.json").read_text())["grants"][0]
    assert grant["hardware"] == "local_cpu" and grant["market"] == "spot", grant
    assert "the capacity policy chose switch: local_cpu spot" in grant["fallback_note"], grant
    assert "local-2vcpu in local-a in 20 s" in grant["fallback_note"], grant
    assert grant["zone"] == "local-b" and grant["waited_s"] < 120, grant
    assert "failed over to local_cpu" in r["failover_log"]
    nodes = json.loads((r["failover_run_dir"] / "ledger.json").read_text())["nodes"]
    workers = [n for n in nodes if n["market"] == "spot"]
    assert workers and all(n["instance_type"] == "local-2vcpu" for n in workers), nodes
    assert {n["zone"] for n in workers} == {"local-b"}, nodes  # pinned to the zone granted
    # the wait, priced in its bill: how long, where it ended, what the head cost meanwhile
    fo_bill = json.loads((r["failover_run_dir"] / "bill.json").read_text())
    assert fo_bill["capacity_waits"][0].startswith("waited "), fo_bill
    assert "for spot (local_cpu, local-b): $" in fo_bill["capacity_waits"][0], fo_bill
    assert set(fo_bill["hours_by_node_type"]) == set(fo_bill["by_node_type"]), fo_bill
    # the fallback run: on on-demand nodes (after a refused launch), said in its log, its
    # run.json and its bill
    assert r["fallback_status"] == "SUCCEEDED", r["fallback_log"][-4000:]
    assert r["refused_launches"], "the fault refused no on-demand launch"
    assert "fell back to on-demand" in r["fallback_log"]
    grant = json.loads((r["fallback_run_dir"] / "run.json").read_text())["grants"][0]
    note = grant["fallback_note"]
    assert grant["market"] == "on_demand" and "the capacity policy chose on_demand" in note
    assert grant["waited_s"] < 60  # not the 600 s limit
    assert "vs spot" in note  # the alternative's hours and dollars, for the bill
    bill = json.loads((r["fallback_run_dir"] / "bill.json").read_text())
    assert "the capacity policy chose on_demand" in bill["market_fallback"]
    nodes = json.loads((r["fallback_run_dir"] / "ledger.json").read_text())["nodes"]
    workers = [n for n in nodes if n["node_id"] != "f" * 51 + "00000"]
    assert workers and all(n["market"] == "on_demand" for n in workers), nodes


def test_launch_request_survives_the_coordinator_and_hands_over_to_train():
    """The launcher's request lives in the AutoscalingCoordinator beside Ray Train's: the
    coordinator's periodic rewrite of the autoscaler's request (every 20 s) keeps it, where a
    plain `request_resources` call is erased (what lost the fallback request on CI); release()
    withdraws only the launcher's own bundles."""
    import tempfile

    import ray
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.sdk import request_resources
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        ResourceRequestPriority,
        get_or_create_autoscaling_coordinator,
    )
    from ray.experimental.internal_kv import _internal_kv_get

    from orchestrator.compose.load import compose
    from orchestrator.launch import autoscale

    def requested() -> list[dict]:
        """What the (v1) autoscaler reads: the merged request in the GCS key-value store."""
        return json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or b"[]")

    cfg = compose("vicuna", "local", ["hardware.market=spot", "hardware.spot_wait_s=0"])
    ray.init(address="local", num_cpus=1, include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"), logging_level="warning")  # fmt: skip
    try:
        coordinator = get_or_create_autoscaling_coordinator()
        request_resources(bundles=[{"CPU": 1, "on_demand": 1}])
        ray.get(coordinator._tick.remote())
        assert requested() == []  # the bug: a plain request does not survive a tick

        ours = autoscale.bundles(cfg, "spot")
        assert not autoscale._wait(cfg, "spot", timeout_s=0, poll_s=0.1)  # no spot nodes here
        ray.get(coordinator._tick.remote())
        assert requested() == ours
        train = [{"CPU": 1, "spot": 1}]  # what Ray Train registers when fit() starts
        ray.get(coordinator.request_resources.remote(
            requester_id="train-test", resources=train, expire_after_s=60,
            priority=ResourceRequestPriority.HIGH))  # fmt: skip
        assert sorted(map(json.dumps, requested())) == sorted(map(json.dumps, ours + train))
        autoscale.release()
        assert requested() == train
        autoscale.release()  # idempotent
        assert requested() == train
    finally:
        autoscale.release()
        ray.shutdown()


def _kill_driver(run_name: str) -> int:
    """SIGKILL the job's driver (the launcher: `python -m orchestrator launch ... --run NAME`),
    the way a lost head process or an OOM kill ends it: nothing is released."""
    import psutil

    killed = 0
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "orchestrator launch" in cmd and f"--run {run_name}" in cmd:
            p.kill()
            killed += 1
    return killed


@pytest.mark.slow
def test_a_killed_driver_leaves_no_worker_nodes_past_the_bound(tmp_path, monkeypatch):
    """Scale-to-zero after a driver killed mid-run: every spot node is gone within
    `scale_to_zero_bound_s` (the requests' expiry, Ray Train's 180 s the longest, plus the
    coordinator's tick, the idle timeout and an autoscaler period). ~5 minutes: slow."""
    import yaml

    from orchestrator.launch import autoscale, named_clusters

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k, v in {
        "ORCHESTRATOR_CLUSTERS_DIR": str(tmp_path / "clusters"),
        "ORCHESTRATOR_STORAGE_ROOT": str(tmp_path / "runs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ORCHESTRATOR_REQUEST_EXPIRE_S": "60",  # the launcher's own: Ray Train's is longer
    }.items():
        monkeypatch.setenv(k, v)
    fake = yaml.safe_load(named_clusters.cluster_config("local-fake").read_text())
    bound = autoscale.scale_to_zero_bound_s(
        autoscale.expire_s(),
        60 * fake["idle_timeout_minutes"],
        5.0,  # AUTOSCALER_UPDATE_INTERVAL_S
    )
    spot = lambda: named_clusters.market_nodes("local-fake", "spot")  # noqa: E731
    named_clusters.up("local-fake")
    try:
        sid, _ = named_clusters.submit(
            "local-fake", "vicuna", "local",
            ["train.max_steps=2000", "hardware.market=spot", "export.enabled=false"],
            run_name="killed", follow=False,
        )  # fmt: skip
        events = tmp_path / "runs" / "vicuna" / "killed" / "events.jsonl"
        wait_for("training steps", lambda: events.exists() and events.read_text().count("\n") >= 3,
                 240, explain=lambda: named_clusters.diagnose("local-fake"))  # fmt: skip
        assert spot(), "no spot nodes while training"
        assert _kill_driver("killed") >= 1
        _, took = wait_for("no spot nodes", lambda: spot() == [], bound + 60, poll=2.0,
                           explain=lambda: named_clusters.diagnose("local-fake"))  # fmt: skip
        print(f"driver killed -> 0 spot nodes in {took:.0f} s (bound {bound:.0f} s)")
        assert took <= bound, (took, bound)
    finally:
        named_clusters.down("local-fake")
