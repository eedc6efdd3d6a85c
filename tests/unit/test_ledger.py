"""Ledger arithmetic on a synthetic timeline: spot + on-demand nodes and one preemption.

Cluster: an on-demand head at $1/h for the whole hour; a spot worker at $3/h (on-demand $10/h)
preempted at t=1800 s; its replacement from t=2000 s. The first worker group ran steps 1-4,
checkpointed after step 2 and died at 1800 s; the second resumed from step 2 and redid 3-4.
"""

import pytest

from orchestrator.cost.ledger import CATEGORIES, Ledger, NodeLife, redone_steps
from orchestrator.storage.durable import FolderStore


def rec(kind, start, end, pid, step=None):
    return {"attempt": 1, "pid": pid, "kind": kind, "step": step, "start": start, "end": end}


TIMELINE = [
    rec("setup", 100, 200, 1),
    rec("step", 200, 400, 1, 1),
    rec("step", 400, 600, 1, 2),
    rec("checkpoint", 600, 700, 1, 2),
    rec("step", 700, 900, 1, 3),
    rec("step", 900, 1100, 1, 4),
    # preempted at 1800; the replacement group:
    rec("setup", 2000, 2100, 2),
    rec("step", 2100, 2300, 2, 3),
    rec("step", 2300, 2500, 2, 4),
    rec("checkpoint", 2500, 2600, 2, 4),
    rec("eval", 2600, 2700, 2),
]


@pytest.fixture
def ledger(tmp_path):
    lg = Ledger(FolderStore(tmp_path))
    a = lg.begin(0.0)
    lg.add_nodes(
        [
            NodeLife("head", "m7i.large", "on_demand", 1.0, 1.0, 0.0, 3600.0),
            NodeLife("w1", "p4de.24xlarge", "spot", 3.0, 10.0, 0.0, 1800.0),
            NodeLife("w2", "p4de.24xlarge", "spot", 3.0, 10.0, 2000.0, None),
        ]
    )
    lg.end(a, 3600.0)
    return lg


def test_total_is_node_seconds_times_price(ledger):
    bill = ledger.bill(TIMELINE)
    assert bill["usd_total"] == pytest.approx(1.0 + 3.0 * 0.5 + 3.0 * 1600 / 3600)
    assert bill["usd_on_demand_equivalent"] == pytest.approx(1.0 + 10 * 0.5 + 10 * 1600 / 3600)
    assert bill["usd_spot_savings"] == pytest.approx(
        bill["usd_on_demand_equivalent"] - bill["usd_total"]
    )
    assert bill["by_node_type"]["m7i.large (on_demand)"] == pytest.approx(1.0)
    assert bill["by_node_type"]["p4de.24xlarge (spot)"] == pytest.approx(3.0 * 3400 / 3600)


def test_categories_split_the_total_exactly(ledger):
    c = ledger.bill(TIMELINE)["by_category"]
    h = 1 / 3600  # $ per second at $1/h
    assert c["useful"] == pytest.approx(800 * 4 * h)  # steps 1-2 (group 1), 3-4 (group 2) at $4/h
    # first runs of steps 3-4, then the dead time until the new group's setup ($1/h from 1800 to 2000)
    assert c["wasted"] == pytest.approx(400 * 4 * h + 700 * 4 * h + 200 * 1 * h)
    assert c["startup"] == pytest.approx((100 + 100 + 100) * 4 * h)
    assert c["checkpoint"] == pytest.approx(200 * 4 * h)
    assert c["eval_export"] == pytest.approx(100 * 4 * h)
    assert c["idle"] == pytest.approx(900 * 4 * h)  # tear-down after eval
    assert set(c) == set(CATEGORIES)
    assert sum(c.values()) == pytest.approx(ledger.bill(TIMELINE)["usd_total"])


def test_redone_steps_and_resume_point():
    assert [r["step"] for r in redone_steps(TIMELINE)] == [3, 4]
    first_group = TIMELINE[:6]
    assert [r["step"] for r in redone_steps(first_group, resumed_at=2)] == [3, 4]


def test_ledger_survives_restarts_and_closes_a_dead_launch(ledger, tmp_path):
    again = Ledger(FolderStore(tmp_path))
    assert again.bill(TIMELINE)["usd_total"] == pytest.approx(ledger.bill(TIMELINE)["usd_total"])
    a2 = again.begin(4000.0)  # a launcher that dies without an end
    again.add_nodes([NodeLife("w3", "p4de.24xlarge", "spot", 3.0, 10.0, 4000.0)])
    third = Ledger(FolderStore(tmp_path))
    third.close_dangling(
        [
            {
                "attempt": a2["attempt"],
                "pid": 3,
                "kind": "step",
                "step": 5,
                "start": 4100.0,
                "end": 4400.0,
            }
        ]
    )
    assert third.attempts[-1]["end"] == 4400.0
    extra = 400 / 3600 * 3.0
    assert third.bill(TIMELINE)["usd_total"] == pytest.approx(
        ledger.bill(TIMELINE)["usd_total"] + extra
    )


def _tail_ledger(tmp_path, scale_down_at):
    """A launch from 0 to 1000 s: an on-demand head, an autoscaled spot worker ($3/h) and a
    spot worker the autoscaler does not manage (a local private cluster's node)."""
    lg = Ledger(FolderStore(tmp_path))
    a = lg.begin(0.0)
    lg.add_nodes(
        [
            NodeLife("head", "m7i.large", "on_demand", 1.0, 1.0, 0.0),
            NodeLife("w1", "p4de.24xlarge", "spot", 3.0, 10.0, 0.0, autoscaled=True),
            NodeLife("w2", "p4de.24xlarge", "spot", 3.0, 10.0, 0.0),
        ]
    )
    lg.end(a, 1000.0, scale_down_at=scale_down_at)
    return lg


def test_autoscaled_workers_are_billed_until_their_scale_down(tmp_path):
    lg = _tail_ledger(tmp_path, 1360.0)  # the idle timeout ends 360 s after the launch
    bill = lg.bill([rec("step", 0, 900, 1, 1)])
    assert {n.node_id: n.end for n in lg.nodes} == {"head": 1000.0, "w1": 1360.0, "w2": 1000.0}
    h = 1 / 3600
    assert bill["usd_total"] == pytest.approx(1000 * 7 * h + 360 * 3 * h)
    assert bill["scale_down_tail"] == pytest.approx(
        {"nodes": 1, "node_hours": 360 * h, "usd": 360 * 3 * h}
    )
    # the tail is idle: the workers' last record ended at 900 s
    assert bill["by_category"]["idle"] == pytest.approx(100 * 7 * h + 360 * 3 * h)
    assert bill["hours_by_node_type"] == pytest.approx(
        {"m7i.large (on_demand)": 1000 * h, "p4de.24xlarge (spot)": 2360 * h}
    )
    # a scale-down before the end (the nodes were idle long before) adds nothing
    early = _tail_ledger(tmp_path / "early", 800.0).bill([])
    assert early["scale_down_tail"]["nodes"] == 0
    assert early["usd_total"] == pytest.approx(1000 * 7 * h)


def test_a_launch_within_the_tail_takes_the_nodes_over(tmp_path):
    lg = _tail_ledger(tmp_path, 1360.0)
    lg.begin(1100.0)  # relaunched before the scale-down: the node is the new launch's
    assert lg.nodes[1].end == 1100.0 and lg.attempts[0]["billed_until"] == 1100.0
    assert lg.bill([])["scale_down_tail"]["node_hours"] == pytest.approx(100 / 3600)
    again = Ledger(FolderStore(tmp_path))  # and it is saved
    assert again.attempts[0]["billed_until"] == 1100.0


def test_scale_down_at_and_the_idle_timeout(tmp_path):
    from orchestrator.compose.load import compose
    from orchestrator.config.schema import ConfigError
    from orchestrator.launch import autoscale

    assert autoscale.scale_down_at(100.0, 30.0) == 100.0 + 30.0 + autoscale.AUTOSCALER_PERIOD_S / 2
    cfg = compose("vicuna", "full")
    assert autoscale.idle_timeout_s(cfg, {}) == cfg.hardware.scale_down_s == 300
    assert autoscale.idle_timeout_s(cfg, {"ORCHESTRATOR_IDLE_TIMEOUT_S": "30"}) == 30.0
    assert autoscale.idle_timeout_s(cfg, {"ORCHESTRATOR_CLUSTER": "local-fake"}) == 30.0
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(ConfigError, match="ORCHESTRATOR_IDLE_TIMEOUT_S"):
            autoscale.idle_timeout_s(cfg, {"ORCHESTRATOR_IDLE_TIMEOUT_S": bad})


def test_a_pipelines_next_stage_takes_over_the_nodes_its_previous_stage_left_up(tmp_path):
    """SFT left its autoscaled worker up for the idle timeout (billed to 1360 s); the reward
    stage started at 1010 s on that node: SFT's bill stops at 1010 s (bill.json, bill.md and
    its MLflow tags written again), the reward stage pays from there."""
    import json

    from mlflow.tracking import MlflowClient

    from orchestrator.contract.records import RunMeta
    from orchestrator.cost.run_bill import write_bill
    from orchestrator.launch.run import hand_over

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = MlflowClient(uri).create_run("0").info.run_id
    sft = FolderStore(tmp_path / "sft")
    sft.write_text("run.json", RunMeta("vicuna", "p-sft", "full", run_id, uri,
                                       projected={"usd": 1.0, "hours": 0.3, "usd_low": 0.8,
                                                  "usd_high": 1.2}).to_json())  # fmt: skip
    lg = _tail_ledger(tmp_path / "sft", 1360.0)
    before = write_bill("vicuna", sft, lg, None, "completed")["usd_total"]
    nxt = Ledger(FolderStore(tmp_path / "reward"))
    a = nxt.begin(1010.0)
    nxt.add_nodes([NodeLife("w1", "p4de.24xlarge", "spot", 3.0, 10.0, 1010.0, autoscaled=True)])
    nxt.end(a, 2000.0)

    usd = hand_over("vicuna", str(tmp_path / "sft"), str(tmp_path / "reward"))
    assert usd == pytest.approx(before - 350 * 3.0 / 3600)  # 1010 -> 1360 s of w1, no more
    bill = json.loads(sft.read_text("bill.json"))
    assert bill["usd_total"] == pytest.approx(usd) and bill["stop_reason"] == "completed"
    assert bill["scale_down_tail"]["node_hours"] == pytest.approx(10 / 3600)
    assert Ledger(sft).nodes[1].end == 1010.0
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["bill_usd"] == f"{usd:.6f}"
    # nothing to hand over again, and not to a run that started before SFT ended
    assert hand_over("vicuna", str(tmp_path / "sft"), str(tmp_path / "reward")) is None
    early = Ledger(FolderStore(tmp_path / "early"))
    early.begin(500.0)
    early.add_nodes([NodeLife("w1", "p4de.24xlarge", "spot", 3.0, 10.0, 500.0, autoscaled=True)])
    assert hand_over("vicuna", str(tmp_path / "sft"), str(tmp_path / "early")) is None
