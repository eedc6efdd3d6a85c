"""Preemptions retry without limit, application errors stop after max_failures: telling them
apart from the exceptions Ray Train raises."""

import traceback
from pathlib import Path

from ray.exceptions import ActorDiedError, OutOfMemoryError
from ray.train.v2._internal.exceptions import (
    UserExceptionWithTraceback,
    WorkerHealthCheckFailedError,
)
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from orchestrator.launch.failures import classify_failure
from orchestrator.training.loop import Preempted


def user(exc):
    """What Ray Train hands back for an exception raised in train_fn on a worker."""
    try:
        raise exc
    except Exception as e:  # noqa: BLE001
        return UserExceptionWithTraceback(e, "".join(traceback.format_exception(e)))


def lost_worker():
    return WorkerHealthCheckFailedError("worker died", failure=ActorDiedError())


def group(failures):
    return WorkerGroupError("training failed", failures)


def test_a_killed_worker_is_a_preemption_and_the_others_errors_are_collateral():
    kind, detail = classify_failure(
        group({0: user(RuntimeError("gloo: connection reset by peer")), 1: lost_worker()})
    )
    assert kind == "preemption" and "rank(s) [1]" in detail


def test_a_spot_notice_is_a_preemption():
    from orchestrator.checkpoint.notice import doomed_nodes, doomed_tag

    kind, detail = classify_failure(group({
        0: user(Preempted(f"spot notice (ec2 {doomed_tag('aa', 5)}): saved step 3")),
        1: user(Preempted("spot notice (another rank): saved step 3")),
        2: user(Preempted(f"spot notice (ec2 {doomed_tag('bb', 6)}): saved step 3")),
    }))  # fmt: skip
    assert kind == "preemption" and "spot notice" in detail
    assert doomed_nodes(detail) == {"aa": 5.0, "bb": 6.0}  # every noticing node, to drain


def test_user_code_errors_are_application_errors_naming_the_rank():
    kind, detail = classify_failure(
        group({1: user(ValueError("data/train.jsonl line 7: missing 'conversations'"))})
    )
    assert kind == "app" and detail.startswith("rank 1") and "line 7" in detail


def test_out_of_memory_kills_are_not_preemptions():
    oom = WorkerHealthCheckFailedError("worker died", failure=OutOfMemoryError("memory monitor"))
    assert classify_failure(group({0: oom}))[0] == "app"


def test_controller_errors_are_application_errors():
    assert classify_failure(ControllerError(RuntimeError("scheduling")))[0] == "app"


def test_doomed_nodes_are_named_by_the_ranks_that_got_the_notice():
    from orchestrator.checkpoint.notice import doomed_nodes, doomed_tag
    from orchestrator.launch.nodes import to_drain

    a, b = "ab" * 14, "cd" * 14
    text = (f"spot notice on rank(s) [0, 3]: spot notice (ec2 {doomed_tag(a, 1000.4)}): saved; "
            f"spot notice (sigterm {doomed_tag(b, 990)}); again {doomed_tag(a, 995)}")  # fmt: skip
    assert doomed_nodes(text) == {a: 995.0, b: 990.0}  # the earliest deadline per node
    assert doomed_nodes("worker rank(s) [1] lost") == {}
    # alive ones only, never the launcher's own node (a one-node cluster would be left empty)
    assert to_drain(doomed_nodes(text), alive={a, b}, driver=b) == {a: 995.0}
    assert to_drain(doomed_nodes(text), alive={b}, driver="x") == {b: 990.0}


def test_workers_that_cannot_start_are_a_configuration_failure_naming_the_cause():
    from ray.train.v2._internal.exceptions import (
        WorkerGroupStartupFailedError,
        WorkerGroupStartupTimeoutError,
    )
    from ray.train.v2.api.exceptions import ControllerError

    from orchestrator.launch.restart import Action, Tally, decide

    err = ControllerError(WorkerGroupStartupFailedError(
        "Traceback ...\nModuleNotFoundError: No module named 'orchestrator'"))  # fmt: skip
    kind, detail = classify_failure(err)
    assert kind == "fatal" and "No module named 'orchestrator'" in detail
    assert "cluster=NAME" in detail  # how the code reaches the workers
    d = decide(kind, Tally().add(kind), max_failures=3, max_preemptions=10, budget=None, spent=0)
    assert d.action == Action.FAIL  # not retried again by the launcher
    kind, detail = classify_failure(ControllerError(WorkerGroupStartupTimeoutError("timed out")))
    assert kind == "fatal" and "make preflight" in detail  # a fixed cluster lacks the resources


def test_waiting_for_capacity_on_an_autoscaling_cluster_is_not_a_startup_failure():
    """A replacement node still booting after a preemption: Ray Train's placement-group wait
    times out, and the launcher waits for the nodes itself (autoscale.acquire) and retries,
    as after any preemption; a worker that cannot import the code stays fatal there too."""
    from ray.train.v2._internal.exceptions import (
        WorkerGroupStartupFailedError,
        WorkerGroupStartupTimeoutError,
    )
    from ray.train.v2.api.exceptions import ControllerError

    from orchestrator.launch.failures import CAPACITY
    from orchestrator.launch.restart import Action, Tally, decide

    err = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    kind, detail = classify_failure(err, autoscaling=True)
    assert kind == "preemption" and detail.startswith(CAPACITY)
    from orchestrator.config.schema import BudgetConfig
    from orchestrator.launch.restart import Spend

    d = decide(kind, Tally().add(kind), max_failures=0, max_preemptions=10,
               budget=BudgetConfig(), spent=Spend(0.0, 0.0))  # fmt: skip
    assert d.action == Action.RESTART
    crash = ControllerError(
        WorkerGroupStartupFailedError("ModuleNotFoundError: No module named 'x'")
    )
    assert classify_failure(crash, autoscaling=True)[0] == "fatal"


def test_a_launch_through_ray_address_ships_the_code():
    from orchestrator.launch.ray_session import code_runtime_env

    env = code_runtime_env({"RAY_ADDRESS": "ray://head:10001"})
    assert env is not None and (Path(env["working_dir"]) / "orchestrator").is_dir()
    assert "/.venv" in env["excludes"] and "!*.py" in env["excludes"]
    assert code_runtime_env({"ORCHESTRATOR_CLUSTER": "aws-spot"}) is None  # a submitted job
    assert code_runtime_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}) is None  # any Jobs API job
