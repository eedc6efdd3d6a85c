"""A failed training try, as Ray reports it: preemption or application error, and the error a
run ends with when it stops for good."""

from __future__ import annotations

from orchestrator.launch.restart import FailureKind
from orchestrator.storage.layout import FAILURES


class RunFailed(RuntimeError):
    """Training stopped for good (application errors beyond max_failures, preemptions beyond
    max_preemptions). The launcher adds the run's name and store before it propagates."""

    job: str = ""
    run: str = ""
    run_url: str = ""

    def summary(self) -> str:
        """What a user reads at the end: what failed, where the details are, how to go on."""
        lines = str(self).strip().splitlines() or ["training failed"]
        what = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1].strip()}"
        return "\n".join(
            [
                f"error: run {self.run!r} of {self.job!r} stopped: {what[:600]}",
                f"  details: {self.run_url}/{FAILURES} (every failed try, with its error), "
                "and the workers' logs in the Ray session folder (ray logs / the dashboard)",
                f"  continue (after fixing the cause): make launch job={self.job} run={self.run}",
            ]
        )


def is_fatal(err: BaseException) -> bool:
    """A worker's FatalError, however Ray re-raised it (its error classes derive from the
    cause's class, named alike)."""
    from orchestrator.config.errors import FatalError

    return isinstance(err, FatalError) or any(k.__name__ == "FatalError" for k in type(err).__mro__)


CAPACITY = "waiting for capacity"
"""Detail prefix of a try whose workers' resources did not appear in time on an autoscaling
cluster: a preemption's replacement node still booting, not a failure of the job."""


def startup_failure(err: Exception) -> str | None:
    """What stopped the workers from starting, said as a configuration error (None: not a
    start-up failure). Ray Train retried it `STARTUP_RETRIES` times already: the same cause
    would stop the next try (a missing module does not appear by itself)."""
    controller = getattr(err, "controller_failure", None)
    if controller is None or type(controller).__name__ not in (
        "WorkerGroupStartupFailedError", "WorkerGroupStartupTimeoutError",
    ):  # fmt: skip
        return None
    text = str(controller)
    cause = text.strip().splitlines()[-1] if text.strip() else type(controller).__name__
    advice = ""
    if "ModuleNotFoundError" in text or "No module named" in text:
        advice = (
            " The workers cannot import the code: launch through a cluster definition "
            "(make launch ... cluster=NAME, which ships the code as the job's working_dir), or "
            "install the project on every node (the image from infra/Dockerfile)"
        )
    elif type(controller).__name__ == "WorkerGroupStartupTimeoutError":
        advice = (" The workers did not start in time: the cluster may lack the resources the "
                  "job asks for (make preflight), or the nodes are too slow to start them")  # fmt: skip
    return f"the training workers could not start: {cause[:500]}.{advice}"


def classify_failure(err: Exception, autoscaling: bool = False) -> tuple[FailureKind, str]:
    """(kind, detail) of a failed training try.

    On an autoscaling cluster, workers that timed out waiting for their resources (Ray Train
    waits 60 s per try for its placement group) are waiting for capacity, a preemption's
    replacement node still coming up: a preemption, and the launcher waits for the nodes
    itself before the next try (`autoscale.acquire`, with its spot wait and fallback). On a
    fixed cluster the same timeout means the cluster lacks the resources: fatal.

    Preemption: Ray's PreemptionError (a drained node), a worker process or node that died
    (SIGKILL, node lost: RayActorError), or our `Preempted` after a spot notice. If any rank was
    lost that way, the others' errors are collateral (broken collectives), so preemption wins.
    Fatal: a FatalError (a model or checkpoint failing verification, a refused resume).
    Application: anything else (an exception in training code, bad data, a worker killed for
    running out of memory: it would fail again)."""
    from ray.exceptions import OutOfMemoryError, RayActorError
    from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError

    if isinstance(err, PreemptionError):
        return FailureKind.PREEMPTION, str(err)
    controller = getattr(err, "controller_failure", None)
    if autoscaling and type(controller).__name__ == "WorkerGroupStartupTimeoutError":
        return FailureKind.PREEMPTION, f"{CAPACITY}: {str(controller).strip()[:300]}"
    startup = startup_failure(err)
    if startup is not None:
        return FailureKind.FATAL, startup
    if not isinstance(err, WorkerGroupError):
        return FailureKind.APP, str(err)

    def unwrap(e: Exception) -> Exception:
        for attr in ("health_check_failure", "_base_exc"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                return unwrap(inner)  # type: ignore[arg-type]
        return e

    causes = {rank: unwrap(e) for rank, e in err.worker_failures.items()}
    lost = [
        r
        for r, c in causes.items()
        if isinstance(c, RayActorError)
        and not isinstance(c, OutOfMemoryError)
        and "memory monitor" not in str(c)
    ]
    fatal = [r for r, c in causes.items() if is_fatal(c)]
    notices = [r for r, c in causes.items() if type(c).__name__ == "Preempted"]
    grows = [r for r, c in causes.items() if type(c).__name__ == "Regrow"]
    if grows and not lost and len(grows) == len(causes):  # every rank, after the checkpoint
        return FailureKind.RESIZE, str(causes[grows[0]])
    if notices:  # every noticing rank's message: each names its doomed node
        said = "; ".join(dict.fromkeys(str(causes[r]) for r in notices))
        return FailureKind.PREEMPTION, f"spot notice on rank(s) {notices}: {said}"
    if fatal and not lost:  # a verification failure, not the echo of a lost rank
        return FailureKind.FATAL, f"rank {fatal[0]}: {causes[fatal[0]]}"
    if lost:
        return FailureKind.PREEMPTION, f"worker rank(s) {lost} lost: {str(causes[lost[0]])[:500]}"
    rank = min(causes) if causes else 0
    detail = str(err.worker_failures.get(rank, err))
    return FailureKind.APP, f"rank {rank}: {detail}"
