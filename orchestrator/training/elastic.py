"""Elastic runs (`hardware.nodes: {min, max}`): what changes when the worker count does, and
when to grow back.

Who decides what:
- Ray Train's elastic worker group (`ScalingConfig(num_workers=(min, max))`, launch/supervise.py)
  asks the autoscaler for the maximum all along and starts each try on the workers the cluster
  holds, at least the minimum: after a node is lost the next try starts at once on the nodes
  left, without waiting for a replacement.
- This module decides when to grow back. Ray would resize a running group on its own timer,
  killing the workers wherever they are (the steps since the last checkpoint lost). Here the
  trainer looks only right after a checkpoint is complete: if the cluster now has room for at
  least one more node's workers and growing pays (`capacity.may_grow`: the time the steps left
  gain exceeds the restart), every rank stops with `Regrow`, and the launcher starts the next
  try, which Ray sizes to what is there. Nothing is redone; the restart is the whole cost.

The training itself does not depend on the size: a step's examples depend only on (seed, step),
ranks take uneven shares when the global batch does not divide (data/batching.py), and the
loss is normalised by the global target count. FSDP's checkpoints (DCP) reshard on load.
"""

from __future__ import annotations

import math

from orchestrator.cost.capacity import may_grow

GROW_BACK = ("priced", "always", "never")
"""hardware.grow_back: priced (when `may_grow` says the restart pays), always (as soon as a
checkpoint finds room), never (stay on the nodes the try started with)."""


class Regrow(RuntimeError):
    """Raised by every rank after a complete checkpoint when more nodes are there: the launcher
    restarts the workers on them (a resize, not a failure)."""


def spare_workers(available: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many more workers of `per_worker` resources the cluster's free resources hold
    (summed over nodes: a node's resources come whole, as one more node's workers)."""
    needs = {k: v for k, v in per_worker.items() if v > 0}
    if not needs:
        return 0
    return max(0, min(math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in needs.items()))


def grow_target(
    *,
    world: int,
    max_workers: int,
    per_node: int,
    spare: int,
    mode: str,
    steps_left: int,
    step_s: float,
    restart_s: float,
) -> tuple[int, str]:
    """(workers to restart on, why); (0, why) to stay. Pure. Grows by whole nodes only, up to
    the maximum; the step time on more workers is taken as the data-parallel ideal
    (step_s x world / new world), an upper bound on the gain."""
    add = min(spare // per_node * per_node, max_workers - world)
    if add <= 0 or steps_left <= 0 or mode == "never":
        return 0, ""
    new = world + add
    grown_s = step_s * world / new
    gain_s = steps_left * (step_s - grown_s)
    numbers = (
        f"{steps_left} steps left at {step_s:.2f} s -> ~{grown_s:.2f} s saves ~{gain_s:.0f} s; "
        f"a restart takes ~{restart_s:.0f} s"
    )
    if mode == "priced" and not may_grow(steps_left, step_s, grown_s, restart_s, 0.0):
        return 0, f"room for {add} more workers, staying on {world}: {numbers}"
    return new, f"growing from {world} to {new} workers after a checkpoint: {numbers}"
