"""Elastic workers (hardware.nodes {min, max}): what the config accepts and refuses, how a step's
examples are shared when the global batch does not divide, when to grow back, how the launcher
prices going on with fewer nodes, and how the bill shows the sizes."""

from __future__ import annotations

import dataclasses
import traceback

import pytest
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2.api.exceptions import WorkerGroupError

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.cost import capacity
from orchestrator.cost.ledger import Ledger, NodeLife
from orchestrator.data.batching import plan_step
from orchestrator.launch import autoscale
from orchestrator.launch.failures import classify_failure
from orchestrator.launch.restart import Action, FailureKind, Tally, decide
from orchestrator.storage.durable import FolderStore
from orchestrator.training.elastic import Regrow, grow_target, spare_workers

ELASTIC = ["hardware.num_workers=3", "hardware.num_nodes=3", "hardware.nodes={min: 2, max: 3}",
           "train.micro_batch_size=2", "train.global_batch_size=18"]  # fmt: skip


def test_an_elastic_job_and_its_sizes():
    hw = compose("vicuna", overrides=ELASTIC).hardware
    assert hw.elastic and (hw.min_workers, hw.num_workers, hw.workers_per_node) == (2, 3, 1)
    full = compose("vicuna", "full", ["hardware.num_workers=16", "hardware.num_nodes=2",
                                      "hardware.nodes={min: 1, max: 2}",
                                      "train.global_batch_size=64"]).hardware  # fmt: skip
    assert (full.min_workers, full.workers_per_node) == (8, 8)  # whole nodes of 8 GPUs
    fixed = compose("vicuna").hardware
    assert not fixed.elastic and fixed.min_workers == fixed.num_workers


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["hardware.nodes={min: 2, max: 4}"], "must equal hardware.num_nodes=3"),
        (["hardware.nodes={min: 0, max: 3}"], "need 1 <= min <= max"),
        (["hardware.nodes={min: 4, max: 3}"], "need 1 <= min <= max"),
        (["hardware.num_workers=4", "train.global_batch_size=16"], "must be a multiple of"),
        (["train.strategy=deepspeed"], "deepspeed cannot change its worker count"),
        (["hardware.grow_back=sometimes"], "hardware.grow_back"),
    ],
)
def test_what_an_elastic_job_refuses(overrides, says):
    with pytest.raises(ConfigError, match=says):
        compose("vicuna", overrides=ELASTIC + overrides)


def test_objectives_that_size_work_by_the_worker_count_are_refused():
    with pytest.raises(ConfigError, match="elastic runs are for sft"):
        compose("stack_llama", overrides=["stage=ppo", "hardware.num_workers=2",
                                          "hardware.num_nodes=2", "hardware.nodes={min: 1, max: 2}"])  # fmt: skip
    with pytest.raises(ConfigError, match="data.format=text streams"):
        compose("cerebras_gpt", overrides=["hardware.num_workers=2", "hardware.num_nodes=2",
                                           "hardware.nodes={min: 1, max: 2}"])  # fmt: skip
    # min = max is no elastic run: any strategy, any objective
    compose("vicuna", overrides=ELASTIC[:2] + ["hardware.nodes={min: 3, max: 3}",
                                               "train.micro_batch_size=2", "train.global_batch_size=18",
                                               "train.strategy=deepspeed"])  # fmt: skip


@pytest.mark.parametrize(
    ("n", "per", "world"), [(18, 2, 2), (18, 2, 3), (16, 4, 3), (5, 4, 3), (7, 1, 4)]
)
def test_uneven_shares_cover_every_example_once_in_equal_passes(n, per, world):
    ranks = plan_step([10] * n, mode="pad", world=world, micro_batch_size=per,
                      tokens_per_micro_batch=per * 10, pack_len=10)  # fmt: skip
    rows = sorted(i for mbs in ranks for mb in mbs for (i,) in mb.rows)
    assert rows == list(range(n))  # every example of the step, once
    assert len({len(mbs) for mbs in ranks}) == 1  # the same number of passes on every rank
    assert all(len(mb.rows) <= per for mbs in ranks for mb in mbs)
    if n % (per * world):  # uneven: rank r holds rows r, r+W, ...
        for r, mbs in enumerate(ranks):
            assert [i for mb in mbs for (i,) in mb.rows] == list(range(r, n, world))


def test_the_configured_size_keeps_its_split():
    ranks = plan_step([10] * 16, mode="pad", world=2, micro_batch_size=4,
                      tokens_per_micro_batch=40, pack_len=10)  # fmt: skip
    assert [[mb.rows[0][0] for mb in mbs] for mbs in ranks] == [[0, 8], [4, 12]]


def test_spare_workers_counts_whole_workers_of_every_resource():
    per = {"CPU": 1, "spot": 1, "instance:local-2vcpu": 0.001}
    assert spare_workers({"CPU": 3.0, "spot": 1.0, "instance:local-2vcpu": 0.999}, per) == 1
    assert spare_workers({"CPU": 3.0, "spot": 0.0, "instance:local-2vcpu": 1.0}, per) == 0
    assert (
        spare_workers({"CPU": 8.0, "GPU": 8.0, "spot": 8.0}, {"CPU": 1, "GPU": 1, "spot": 1}) == 8
    )
    assert spare_workers({"CPU": 2.0}, {}) == 0


@pytest.mark.parametrize(
    ("world", "spare", "mode", "steps_left", "restart_s", "target"),
    [
        (2, 1, "priced", 1000, 60.0, 3),  # 1000 x (1 - 2/3) s = 333 s gained > 60 s restart
        (2, 1, "priced", 100, 60.0, 0),  # 33 s gained < 60 s: stay
        (2, 1, "always", 100, 60.0, 3),
        (2, 1, "never", 1000, 60.0, 0),
        (2, 0, "always", 1000, 60.0, 0),  # no room
        (2, 5, "always", 1000, 60.0, 3),  # never past the maximum
        (2, 1, "always", 0, 60.0, 0),  # nothing left to train
    ],
)
def test_growing_back(world, spare, mode, steps_left, restart_s, target):
    got, why = grow_target(world=world, max_workers=3, per_node=1, spare=spare, mode=mode,
                           steps_left=steps_left, step_s=1.0, restart_s=restart_s)  # fmt: skip
    assert got == target
    if mode == "priced" and spare:
        assert "a restart takes ~60 s" in why


def test_growing_back_is_by_whole_nodes():
    # 8 workers a node: 7 spare GPUs are not a node
    assert grow_target(world=8, max_workers=16, per_node=8, spare=7, mode="always",
                       steps_left=10, step_s=1.0, restart_s=0.0)[0] == 0  # fmt: skip
    assert grow_target(world=8, max_workers=16, per_node=8, spare=8, mode="always",
                       steps_left=10, step_s=1.0, restart_s=0.0)[0] == 16  # fmt: skip


def _need(**kw):
    base = dict(steps_left=3600, step_s=1.0, spot_usd_per_hour=30.0, on_demand_usd_per_hour=100.0,
                head_usd_per_hour=1.0, prior_wait_s=1800.0, on_demand_start_s=600.0, nodes=3,
                restart_s=300.0)  # fmt: skip
    return autoscale.Need(**{**base, **kw})


def test_after_a_lost_node_the_policy_prices_shrinking_against_waiting():
    d = capacity.decide(_need(nodes_have=2).situation(0.0))
    assert d.move == capacity.Move.SHRINK, d.message
    assert "spot x 2 of 3 nodes" in d.message and "vs spot x 3 nodes" in d.message
    # a deadline only on-demand meets
    d = capacity.decide(_need(nodes_have=2, time_left_s=3600 + 700).situation(0.0))
    assert d.move == capacity.Move.ON_DEMAND, d.message
    # one node of ten left: on 1/10 of the speed until capacity is back, a wait is cheaper
    d = capacity.decide(_need(nodes_have=1, nodes=10, spot_usd_per_hour=300.0,
                              restart_s=3000.0, prior_wait_s=60.0, on_demand=False).situation(0.0))  # fmt: skip
    assert d.move == capacity.Move.WAIT, d.message
    # without a lost node there is nothing to shrink to
    assert all(o.move != capacity.Move.SHRINK for o in _need().situation(0.0).options)


def test_a_grow_back_is_a_resize_not_a_failure():
    def user(e):
        try:
            raise e
        except Exception as x:  # noqa: BLE001
            return UserExceptionWithTraceback(x, "".join(traceback.format_exception(x)))

    err = WorkerGroupError("stopped", {r: user(Regrow("step 40 saved; growing")) for r in (0, 1)})
    kind, detail = classify_failure(err)
    assert kind == FailureKind.RESIZE and "growing" in detail
    assert Tally().add(kind) == Tally()  # counted by no limit
    budget = compose("vicuna").budget
    spend = type("S", (), {"usd": 0.0, "hours": 0.0})()
    assert decide(kind, Tally(), max_failures=0, max_preemptions=0, budget=budget,
                  spent=spend).action == Action.RESTART  # fmt: skip
    capped = dataclasses.replace(budget, max_usd=1.0)
    spend.usd = 2.0
    assert decide(kind, Tally(), max_failures=0, max_preemptions=0, budget=capped,
                  spent=spend).action == Action.STOP  # the budget still applies  # fmt: skip


def test_the_bill_prices_each_size(tmp_path):
    store = FolderStore(tmp_path)
    ledger = Ledger(store)
    ledger.begin(0.0)
    ledger.add_nodes(
        [NodeLife(f"n{i}", "m7i.large", "spot", 3.6, 10.0, 0.0, 300.0) for i in range(3)]
    )
    rows = [
        {"attempt": 1, "pid": 1, "kind": "step", "step": 1, "start": 0.0, "end": 100.0, "workers": 3},
        {"attempt": 1, "pid": 2, "kind": "step", "step": 2, "start": 100.0, "end": 300.0, "workers": 2},
        {"attempt": 1, "pid": 2, "kind": "setup", "step": None, "start": 90.0, "end": 100.0, "workers": 2},
    ]  # fmt: skip
    by = ledger.bill(rows)["by_workers"]
    assert set(by) == {"3", "2"}  # setup time is not training time at a size
    assert by["3"]["hours"] == pytest.approx(100 / 3600) and by["2"]["hours"] == pytest.approx(
        200 / 3600
    )
    assert by["3"]["usd"] == pytest.approx(3 * 3.6 * 100 / 3600)


def test_the_restart_measured_from_the_timeline():
    from orchestrator.cost.ledger import restart_s

    rows = [
        {"attempt": 1, "kind": "setup", "start": 0.0, "end": 10.0},
        {"attempt": 1, "kind": "step", "start": 10.0, "end": 50.0},
        {"attempt": 1, "kind": "setup", "start": 60.0, "end": 72.0},  # 22 s after the last step
    ]
    assert restart_s(rows) == pytest.approx(22.0)
    assert restart_s(rows[:2]) == pytest.approx(10.0)  # no restart yet: the setup
    assert restart_s([{**rows[2], "attempt": 2}]) == pytest.approx(12.0)  # a new launch
    assert restart_s([]) is None


def test_capacity_faults_of_the_fake_cluster(tmp_path):
    from orchestrator.launch.fake_capacity import read_faults, refusal, write_fault

    path = tmp_path / "faults.json"
    assert read_faults(str(path)) == {}  # no file: no fault
    write_fault(path, "cpu_spot", no_capacity_until=100.0)
    faults = read_faults(str(path))
    assert "for another 40 s" in refusal(faults, "cpu_spot", 60.0, 0)
    assert refusal(faults, "cpu_spot", 100.0, 0) is None  # over
    assert refusal(faults, "cpu_on_demand", 60.0, 0) is None  # another type
    write_fault(path, "cpu_on_demand", fail_fraction=0.5)
    faults = read_faults(str(path))
    assert set(faults) == {"cpu_spot", "cpu_on_demand"}
    refused = [refusal(faults, "cpu_on_demand", 0.0, k) is not None for k in range(10)]
    assert refused == [True, False] * 5  # the first, then exactly half
    third = [refusal({"t": {"fail_fraction": 1 / 3}}, "t", 0.0, k) is not None for k in range(9)]
    assert sum(third) == 3 and third[0]
    assert not any(refusal({"t": {"fail_fraction": 0}}, "t", 0.0, k) for k in range(5))
    write_fault(path, "cpu_spot")  # no fields: cleared
    assert set(read_faults(str(path))) == {"cpu_on_demand"}


def test_the_scale_to_zero_bound_and_the_request_expiry():
    from orchestrator.config.schema import ConfigError

    assert autoscale.expire_s({}) == 180.0
    assert autoscale.expire_s({"ORCHESTRATOR_REQUEST_EXPIRE_S": "60"}) == 60.0
    for bad in ("10", "soon", "nan", "-5"):
        with pytest.raises(ConfigError, match="ORCHESTRATOR_REQUEST_EXPIRE_S"):
            autoscale.expire_s({"ORCHESTRATOR_REQUEST_EXPIRE_S": bad})
    # Ray Train's own request (180 s) bounds it from below: a shorter launcher expiry does not
    # bring the nodes down sooner after a killed driver
    assert autoscale.scale_to_zero_bound_s(60.0, 30.0, 5.0) == 180 + 20 + 30 + 5
    assert autoscale.scale_to_zero_bound_s(600.0, 300.0, 5.0) == 600 + 20 + 300 + 5


def test_an_elastic_job_must_fit_on_its_fewest_nodes():
    from orchestrator.cost.memory import check_job

    flat = ["hardware=a100_40gb_x8", "hardware.num_workers=32", "hardware.num_nodes=4",
            "train.global_batch_size=128", "fsdp.hsdp=false", "train.micro_batch_size=1",
            "train.activation_checkpointing=false"]  # fmt: skip
    assert check_job(compose("vicuna", "full", flat)).fits  # 32 GPUs shard 13B's state thinly
    with pytest.raises(ConfigError, match=r"hardware.nodes.min=1: on its fewest nodes \(8 GPUs\)"):
        check_job(
            compose("vicuna", "full", [*flat, "hardware.nodes.min=1", "hardware.nodes.max=4"])
        )
    assert check_job(
        compose("vicuna", "full", [*flat, "hardware.nodes.min=3", "hardware.nodes.max=4"])
    ).fits


def test_the_policy_switches_node_type_once_the_wait_outgrows_the_prior():
    # the alternative costs more for the same work ($25/h at 1.3 s a step against $30/h at 1 s)
    need = _need(nodes=1, on_demand=False, prior_wait_s=600.0,
                 switches=(("a100_40gb_x8", 25.0, 1.3),))  # fmt: skip
    assert capacity.decide(need.situation(0.0)).move == capacity.Move.WAIT
    late = capacity.decide(need.situation(4 * 3600.0))  # 4 h without capacity: 4 h more expected
    assert late.move == capacity.Move.SWITCH and late.option.label == "a100_40gb_x8 spot"
    assert "vs spot x 1 node" in late.message  # the head's hours decided it
    # the same price for the same work and no head: waiting until the prior, then the sooner
    even = _need(nodes=1, on_demand=False, prior_wait_s=600.0, head_usd_per_hour=0.0,
                 switches=(("b", 30.0, 1.0),))  # fmt: skip
    assert capacity.decide(even.situation(600.0)).move == capacity.Move.WAIT
    assert capacity.decide(even.situation(601.0)).move == capacity.Move.SWITCH


def test_need_for_prices_the_alternatives_it_has_step_times_for():
    cfg = compose("vicuna", "full")
    need = autoscale.need_for(cfg, 1000, 10.0, 0.0, 0.0, {"a100_40gb_x8": 12.0})
    assert need is not None and [s[0] for s in need.switches] == ["a100_40gb_x8"]
    price = cfg.cost.instances["p4d.24xlarge"].spot_per_hour_usd
    assert need.switches[0][1:] == (price, 12.0)
    assert autoscale.need_for(cfg, 1000, 10.0, 0.0, 0.0).switches == ()  # no step times


def test_the_bill_names_the_zone_a_node_ran_in(tmp_path):
    ledger = Ledger(FolderStore(tmp_path))
    ledger.begin(0.0)
    ledger.add_nodes([NodeLife("a", "p4de.24xlarge", "spot", 36.0, 40.0, 0.0, 3600.0, "us-east-1b"),
                      NodeLife("b", "m7i.2xlarge", "on_demand", 0.4, 0.4, 0.0, 3600.0)])  # fmt: skip
    by = ledger.bill([])["by_node_type"]
    assert by == {"p4de.24xlarge (spot, us-east-1b)": 36.0, "m7i.2xlarge (on_demand)": 0.4}


def test_the_bill_prices_each_wait_for_capacity(tmp_path):
    """A grant waited for: the bill says how long and what the nodes up meanwhile cost."""
    from orchestrator.cost.run_bill import capacity_wait

    ledger = Ledger(FolderStore(tmp_path))
    ledger.begin(0.0)
    ledger.add_nodes([NodeLife("head", "m7i.2xlarge", "on_demand", 0.4, 0.4, 0.0, 7200.0)])
    grant = {"market": "spot", "waited_s": 840.0, "time": 900.0, "hardware": "a100_40gb_x8",
             "zone": "us-east-1b"}  # fmt: skip
    assert capacity_wait(grant, ledger) == (
        "waited 14 min for spot (a100_40gb_x8, us-east-1b): $0.0933"  # 840 s x $0.4/h
    )
    assert capacity_wait({"market": "on_demand", "waited_s": 12.0, "time": 30.0}, ledger) == (
        "waited 12 s for on_demand: $0.001333"
    )
