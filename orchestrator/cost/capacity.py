"""What to do when spot capacity is short, decided by what each choice costs: a pure function.

At each capacity event (no spot workers yet, a node lost), the launcher describes the choices it
can carry out as `Option`s: wait for the preferred spot capacity, shrink to the nodes it has
(elastic), switch to another node type, or buy on-demand. Each has a price per hour of its
workers, a step time at its size and type, and a delay before its first step (the expected
rest of a wait, a restart, a new node's start-up). `decide` prices every option as

    hours = (delay + steps left x step time) / 3600
    usd   = run hours x the workers' $/h + hours x the head's $/h

(workers are not billed while the cloud has no capacity for them, but nodes that are up and
idle are: `delay_usd_per_hour`, e.g. the nodes left after a loss while they wait for the
replacement; the head is billed throughout). A shrunk run is priced as it goes: on the nodes there are until the missing
capacity is expected back, then a restart and the rest at full size (`Option.then`) and picks, among the options that meet the deadline and the budget, the cheapest
(ties: the sooner done). If none meets the deadline, the soonest done that the budget pays; if
the budget pays none, stop. The message carries the numbers of the choice and of the
alternatives, for the bill and MLflow.

How long a wait will last is not known: `expected_wait_s` takes the catalog's prior and the
wait observed so far (capacity that has been missing for an hour is likely to stay missing
for about as long again: the expected rest is the larger of the two).

Growing back (`may_grow`) restarts the workers from the last checkpoint: it is worth it only
when the steps left gain more time than the restart and the steps redone cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Move(StrEnum):
    WAIT = "wait"
    """For the preferred spot capacity."""
    SHRINK = "shrink"
    """Go on with the nodes there are (elastic)."""
    SWITCH = "switch"
    """Another node type (or zone) with capacity."""
    ON_DEMAND = "on_demand"
    """The same nodes, on demand."""
    STOP = "stop"
    """The budget pays for no option: stop cleanly (resumable)."""


@dataclass(frozen=True)
class Option:
    move: Move
    label: str
    """What people read: e.g. 'p4de.24xlarge spot x 2'."""
    workers_usd_per_hour: float
    step_s: float
    delay_s: float
    """Before its first step: the rest of a wait, a restart, a start-up."""
    then: Option | None = None
    """What it becomes after `then_after_s` of steps (a shrunk run grows back once the
    capacity is expected back: `then` is the full size, its delay the restart)."""
    then_after_s: float = 0.0
    delay_usd_per_hour: float = 0.0
    """Billed during the delay: nodes that are up but not stepping (after a node is lost, the
    nodes left wait for the replacement, or restart, at their price)."""


@dataclass(frozen=True)
class Situation:
    steps_left: int
    options: tuple[Option, ...]
    head_usd_per_hour: float = 0.0
    time_left_s: float | None = None
    """To the job's deadline (None: no deadline)."""
    budget_left_usd: float | None = None


@dataclass(frozen=True)
class Priced:
    option: Option
    hours: float
    usd: float


@dataclass(frozen=True)
class Decision:
    move: Move
    option: Option | None
    message: str
    priced: tuple[Priced, ...]


def expected_wait_s(prior_s: float, waited_s: float) -> float:
    """The expected rest of a wait for capacity that has been missing `waited_s`."""
    return max(prior_s, waited_s)


def price(o: Option, s: Situation) -> Priced:
    run_h, hours, usd = _phases(o, s.steps_left)
    return Priced(o, hours, usd + hours * s.head_usd_per_hour)


def _phases(o: Option, steps: float) -> tuple[float, float, float]:
    """(workers' run hours, hours, workers' dollars) of `steps` on `o` and what it becomes."""
    mine = steps if o.then is None else min(steps, o.then_after_s / o.step_s)
    run_h = mine * o.step_s / 3600.0
    hours = o.delay_s / 3600.0 + run_h
    usd = run_h * o.workers_usd_per_hour + o.delay_s / 3600.0 * o.delay_usd_per_hour
    if o.then is not None and steps > mine:
        more_run, more_hours, more_usd = _phases(o.then, steps - mine)
        restart_usd = o.then.delay_s / 3600.0 * o.then.workers_usd_per_hour  # nodes up, no step
        run_h, hours, usd = run_h + more_run, hours + more_hours, usd + more_usd + restart_usd
    return run_h, hours, usd


def decide(s: Situation) -> Decision:
    """The option to carry out (see the module docstring)."""
    priced = tuple(price(o, s) for o in s.options)
    if not priced:
        return Decision(Move.STOP, None, "no option to choose from", priced)
    paid = [p for p in priced if s.budget_left_usd is None or p.usd <= s.budget_left_usd]
    if not paid:
        cheapest = min(priced, key=lambda p: p.usd)
        return Decision(Move.STOP, None, (
            f"stop: the budget left ({usd(s.budget_left_usd or 0.0)}) pays for no option; the cheapest, "
            f"{_describe(cheapest)}"), priced)  # fmt: skip
    on_time = [p for p in paid if s.time_left_s is None or p.hours * 3600.0 <= s.time_left_s]
    if on_time:
        best = min(on_time, key=lambda p: (p.usd, p.hours))
        why = "the cheapest" + (" that meets the deadline" if s.time_left_s is not None else "")
    else:
        best = min(paid, key=lambda p: (p.hours, p.usd))
        left_h = (s.time_left_s or 0.0) / 3600.0  # not None here: only a deadline is missed
        why = f"none meets the deadline ({left_h:.1f} h left): the soonest done"
    others = "; ".join(_describe(p) for p in priced if p is not best)
    message = f"{best.option.move}: {_describe(best)} ({why})" + (
        f"; vs {others}" if others else ""
    )
    return Decision(best.option.move, best.option, message, priced)


def _describe(p: Priced) -> str:
    return f"{p.option.label}: {p.hours:.2f} h, {usd(p.usd)}"


def usd(x: float) -> str:
    """Dollars as people read them: cents from $1 up, more decimals below (a local run's)."""
    if abs(x) >= 1:
        return f"${x:,.2f}"
    return f"${x:.4f}" if abs(x) >= 0.01 else f"${x:.6f}"


def may_grow(
    steps_left: int, step_s_now: float, step_s_grown: float, restart_s: float,
    checkpoint_age_s: float,
) -> bool:  # fmt: skip
    """Restart on more nodes only if the time the steps left gain exceeds the restart plus the
    work since the last checkpoint (redone after the restart)."""
    gain_s = steps_left * (step_s_now - step_s_grown)
    return gain_s > restart_s + checkpoint_age_s
