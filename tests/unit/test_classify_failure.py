"""Preemptions retry without limit, application errors stop after max_failures: telling them
apart from the exceptions Ray Train raises."""

import traceback

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
    kind, detail = classify_failure(group({0: user(Preempted("sigterm")), 1: user(Preempted("x"))}))
    assert kind == "preemption" and "spot notice" in detail


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
