"""The restart decision after a failed training try, as a pure function (Ray Train v2's
`FailurePolicy.make_decision` style): the launcher classifies the failure (`failures.py`),
counts it, asks `decide`, and carries the decision out. No Ray here: unit-tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestrator.config.schema import BudgetConfig
from orchestrator.cost.budget import Spend, restart_allowed
from orchestrator.storage.layout import StopReason


class FailureKind(StrEnum):
    PREEMPTION = "preemption"
    """A worker or node lost (SIGKILL, a drained or dead node), or a spot notice."""
    APP = "app"
    """Anything else: an exception in training code, bad data, out of memory."""
    RESIZE = "resize"
    """Not a failure: an elastic run stopped after a checkpoint to restart on more nodes
    (training/elastic.py). Counted by no limit; the budget still applies."""
    FATAL = "fatal"
    """An error a retry cannot fix (config.errors.FatalError): a model or checkpoint that fails
    verification, a resume the job cannot make. Never retried."""


class Action(StrEnum):
    RESTART = "restart"
    """From the latest complete checkpoint."""
    FAIL = "fail"
    """Stop for good with an error (the run can be continued after a fix)."""
    STOP = "stop"
    """Stop cleanly, without an error (the budget is spent)."""


@dataclass(frozen=True)
class Tally:
    """Failed tries of this launch, by kind (a relaunch starts from zero)."""

    preemptions: int = 0
    app_errors: int = 0

    def add(self, kind: FailureKind) -> Tally:
        if kind == FailureKind.RESIZE:
            return self
        if kind == FailureKind.PREEMPTION:
            return Tally(self.preemptions + 1, self.app_errors)
        return Tally(self.preemptions, self.app_errors + 1)

    def of(self, kind: FailureKind) -> int:
        return self.preemptions if kind == FailureKind.PREEMPTION else self.app_errors


@dataclass(frozen=True)
class Decision:
    action: Action
    message: str
    """What people read: why, with the numbers and the setting that decided it."""
    stop_reason: StopReason | None = None


def decide(
    kind: FailureKind,
    tally: Tally,
    *,
    max_failures: int,
    max_preemptions: int | None,
    budget: BudgetConfig,
    spent: Spend,
) -> Decision:
    """What to do after a failed try. `tally` includes this failure.

    In order: a fatal error fails the run at once; application errors beyond `train.max_failures` fail the run (a bug would fail
    again); preemptions beyond `train.max_preemptions` (None: no limit) fail it; a budget cap
    already reached stops it cleanly (a restart would only spend past the cap); otherwise
    restart from the latest complete checkpoint."""
    if kind == FailureKind.FATAL:
        return Decision(
            Action.FAIL, "training cannot go on, and a retry would fail the same way",
            StopReason.FAILED,
        )  # fmt: skip
    if kind == FailureKind.APP and tally.app_errors > max_failures:
        return Decision(
            Action.FAIL,
            f"training failed {tally.app_errors} times with an application error "
            f"(train.max_failures={max_failures})",
            StopReason.FAILED,
        )
    if kind == FailureKind.PREEMPTION and max_preemptions is not None:
        if tally.preemptions > max_preemptions:
            return Decision(
                Action.FAIL,
                f"{tally.preemptions} preemptions in this launch "
                f"(train.max_preemptions={max_preemptions})",
                StopReason.FAILED,
            )
    cap = restart_allowed(budget, spent)
    if cap is not None:
        return Decision(
            Action.STOP,
            f"{kind}: not restarting: ${spent.usd:.4f} and {spent.hours:.3f} h spent, "
            f"{cap}={getattr(budget, cap)} reached",
            StopReason.BUDGET,
        )
    if kind == FailureKind.RESIZE:
        return Decision(Action.RESTART, "restarting on more nodes from the checkpoint just saved")
    return Decision(
        Action.RESTART,
        f"restarting from the latest complete checkpoint ({kind} #{tally.of(kind)})",
    )
