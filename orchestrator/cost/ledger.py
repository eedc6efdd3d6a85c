"""The ledger: what a run really cost, node by node, and where the money went.

Cost accrues per node from its lifetime (start, end, instance type, market, $/h), head node
included, clipped to the launches (attempts) of the run. The workers' timeline
(`timeline.jsonl`: one line per setup, step, checkpoint, eval and export, with start and end)
splits that money into:

    useful      the last run of every optimizer step
    wasted      steps run again after a preemption or crash (their first runs), and the time
                from a dead worker group's last record to its replacement's setup
    startup     from the start of a launch to the end of the first worker setup
    checkpoint  checkpoint saves
    eval_export eval and export at the end
    idle        everything else: tear-down, gaps, and the scale-down tail (below)

When a launch ends, the autoscaled worker nodes it leaves up are not gone: the autoscaler
removes them once idle for the cluster's idle timeout, at its next update. The run pays for that
tail, so those nodes stay billed until `scale_down_at` (the workers' last record + the idle
timeout + half an autoscaler update, `autoscale.scale_down_at`), beyond the launch's end. A
launch that starts within the tail takes the nodes over from there.

By construction the categories add up to the total, and the total is exactly
sum(node-seconds x price). The ledger (`ledger.json`) and the timeline live in the run's folder
of the durable store, so they survive restarts and any node, the launcher's included.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.storage.layout import LEDGER, TIMELINE

CATEGORIES = ("useful", "wasted", "startup", "checkpoint", "eval_export", "idle")


@dataclass
class NodeLife:
    node_id: str
    instance_type: str
    market: str
    price_per_hour_usd: float
    on_demand_per_hour_usd: float
    start: float
    end: float | None = None
    zone: str = ""
    """Where the cloud placed it, when its node type names a zone (`zone` label)."""
    autoscaled: bool = False
    """A worker node of an autoscaling cluster: it outlives a launch by the scale-down tail."""


def read_timeline(store: Any) -> list[dict[str, Any]]:
    """The run's timeline from its durable store (`timeline.jsonl`), in time order."""
    rows = []
    for line in store.read_lines(TIMELINE):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return sorted(rows, key=lambda r: r["start"])


def redone_steps(
    timeline: list[dict[str, Any]], resumed_at: int | None = None
) -> list[dict[str, Any]]:
    """Step records that were (or, after resuming at `resumed_at`, will be) run again."""
    steps = [r for r in timeline if r["kind"] == "step"]
    last = {}
    for i, r in enumerate(steps):
        last[r["step"]] = i
    out = [r for i, r in enumerate(steps) if last[r["step"]] != i]
    if resumed_at is not None:
        out += [r for i, r in enumerate(steps) if last[r["step"]] == i and r["step"] > resumed_at]
    return out


def restart_s(timeline: list[dict[str, Any]]) -> float | None:
    """What the run's last restart took: from the last record of a worker group to the end of
    its successor's setup (worker-group start, model load, checkpoint read), in one launch;
    else the last setup alone; None before any."""
    setups = [i for i, r in enumerate(timeline) if r["kind"] == "setup"]
    for i in reversed(setups):
        s = timeline[i]
        before = [
            r for r in timeline[:i] if r["attempt"] == s["attempt"] and r["end"] <= s["start"]
        ]
        if before:
            return s["end"] - max(r["end"] for r in before)
    return timeline[setups[-1]]["end"] - timeline[setups[-1]]["start"] if setups else None


def _billed_until(attempt: dict[str, Any], open_end: float) -> float:
    """Where a launch's billing stops: its end, or the end of its scale-down tail; an open
    launch: `open_end`."""
    if attempt["end"] is None:
        return open_end
    return max(attempt["end"], attempt.get("billed_until") or 0.0)


class Ledger:
    """The node lives and launches of one run, in `ledger.json` of its durable store (the
    launcher is its only writer)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.attempts: list[dict[str, Any]] = []
        self.nodes: list[NodeLife] = []
        text = store.read_text(LEDGER)
        if text:
            data = json.loads(text)
            self.attempts = data["attempts"]
            self.nodes = [NodeLife(**n) for n in data.get("nodes", [])]

    def save(self, bill: dict[str, Any] | None = None) -> None:
        data: dict[str, Any] = {
            "attempts": self.attempts,
            "nodes": [asdict(n) for n in self.nodes],
        }
        if bill is not None:
            data["bill"] = bill
        self.store.write_text(LEDGER, json.dumps(data, indent=1))

    def hours(self, now: float | None = None) -> float:
        """Cluster wall-clock hours of every launch so far (an open one counts until `now`)."""
        now = time.time() if now is None else now
        return sum(
            max(0.0, (a["end"] if a["end"] is not None else now) - a["start"]) / 3600.0
            for a in self.attempts
        )

    def begin(self, start: float) -> dict[str, Any]:
        for prev in self.attempts:  # still in an earlier launch's tail: this launch's from now
            if prev.get("billed_until", 0.0) > start:
                prev["billed_until"] = max(prev["end"], start)
        self.hand_over({n.node_id for n in self.nodes}, start)
        a = {"attempt": len(self.attempts) + 1, "start": start, "end": None}
        self.attempts.append(a)
        self.save()
        return a

    def add_nodes(self, nodes: list[NodeLife]) -> None:
        self.nodes.extend(nodes)
        self.save()

    def sync_nodes(self, nodes: list[NodeLife]) -> None:
        """Bring the open node lives up to date with the cluster: new nodes are added (an
        autoscaled or replacement node), nodes that died get their end (a preempted node)."""
        open_ = {n.node_id: n for n in self.nodes if n.end is None}
        for n in nodes:
            mine = open_.get(n.node_id)
            if mine is None:
                if n.end is None or n.end > n.start:
                    self.nodes.append(n)
            elif n.end is not None:
                mine.end = n.end
        self.save()

    def end(
        self, attempt: dict[str, Any], end: float | None = None, scale_down_at: float | None = None
    ) -> None:
        """Close the launch at `end` (now): its open node lives end there, except autoscaled
        worker nodes, which stay billed until `scale_down_at` when that is later."""
        attempt["end"] = end or time.time()
        tail = scale_down_at if scale_down_at and scale_down_at > attempt["end"] else None
        for n in self.nodes:
            if n.end is None:
                n.end = tail if tail is not None and n.autoscaled else attempt["end"]
        if tail is not None and any(n.end == tail for n in self.nodes):
            attempt["billed_until"] = tail
        self.save()

    def hand_over(self, node_ids: set[str], at: float) -> bool:
        """Autoscaled nodes another run took over at `at`, within this run's scale-down tail (a
        pipeline's next stage on the same nodes), are that run's from then on: this run's
        bill stops there. Returns whether anything changed."""
        changed = False
        for n in self.nodes:
            if n.autoscaled and n.node_id in node_ids and n.end is not None and n.end > at:
                n.end, changed = max(n.start, at), True
        if changed:
            self.save()
        return changed

    def close_dangling(self, timeline: list[dict[str, Any]]) -> None:
        """A launch whose launcher died never got an end: bill it up to its last record."""
        for a in self.attempts:
            if a["end"] is None:
                ends = [r["end"] for r in timeline if r["attempt"] == a["attempt"]]
                self.end(a, max(ends, default=a["start"]))
                a["note"] = "launcher died; billed to the last record"
        self.save()

    # ------------------------------------------------------------------ money
    def usd_between(self, t0: float, t1: float) -> float:
        """Dollars all nodes cost between t0 and t1 (only inside attempts)."""
        total = 0.0
        for a in self.attempts:
            lo, hi = max(t0, a["start"]), min(t1, _billed_until(a, t1))
            if hi <= lo:
                continue
            for n in self.nodes:
                s, e = max(lo, n.start), min(hi, n.end if n.end is not None else hi)
                if e > s:
                    total += (e - s) / 3600.0 * n.price_per_hour_usd
        return total

    def bill(self, timeline: list[dict[str, Any]]) -> dict[str, Any]:
        """Totals by node type/market and by category; categories sum to the total exactly."""
        by_node: dict[str, dict[str, float]] = defaultdict(lambda: {"hours": 0.0, "usd": 0.0})
        on_demand = total = 0.0
        tail = {"nodes": 0, "node_hours": 0.0, "usd": 0.0}
        for a in self.attempts:
            a_end = _billed_until(a, time.time())
            for n in self.nodes:
                s, e = max(a["start"], n.start), min(a_end, n.end if n.end is not None else a_end)
                if e <= s:
                    continue
                usd = (e - s) / 3600.0 * n.price_per_hour_usd
                kind = by_node[f"{n.instance_type} ({n.market}{', ' + n.zone if n.zone else ''})"]
                kind["hours"] += (e - s) / 3600.0
                kind["usd"] += usd
                total += usd
                on_demand += (e - s) / 3600.0 * n.on_demand_per_hour_usd
                if a["end"] is not None and e > a["end"]:  # after the launch: scale-down tail
                    tail["nodes"] += 1
                    tail["node_hours"] += (e - max(s, a["end"])) / 3600.0
                    tail["usd"] += (e - max(s, a["end"])) / 3600.0 * n.price_per_hour_usd

        cats = dict.fromkeys(CATEGORIES, 0.0)
        redone = {id(r) for r in redone_steps(timeline)}
        sizes: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in timeline:
            usd = self.usd_between(r["start"], r["end"])
            if r.get("workers") and r["kind"] in ("step", "checkpoint"):
                sizes[int(r["workers"])][0] += (r["end"] - r["start"]) / 3600.0
                sizes[int(r["workers"])][1] += usd
            if r["kind"] == "step":
                cats["wasted" if id(r) in redone else "useful"] += usd
            elif r["kind"] == "checkpoint":
                cats["checkpoint"] += usd
            elif r["kind"] in ("eval", "export"):
                cats["eval_export"] += usd
            elif r["kind"] == "setup":
                cats["startup"] += usd
        for a in self.attempts:
            rows = [r for r in timeline if r["attempt"] == a["attempt"]]
            if not rows:
                continue
            # Before the first worker setup: provisioning, Ray and worker start-up.
            cats["startup"] += self.usd_between(a["start"], rows[0]["start"])
            # A worker group died and was replaced: the gap until the new group's setup is lost.
            for prev, nxt in zip(rows, rows[1:]):
                if nxt["pid"] != prev["pid"] and nxt["kind"] == "setup":
                    cats["wasted"] += self.usd_between(prev["end"], nxt["start"])
        cats["idle"] = max(0.0, total - sum(v for k, v in cats.items() if k != "idle"))
        return {
            "usd_total": total,
            "usd_on_demand_equivalent": on_demand,
            "usd_spot_savings": on_demand - total,
            "by_node_type": {k: v["usd"] for k, v in by_node.items()},
            # Which node types ran for how long (a failed-over run: each type's share).
            "hours_by_node_type": {k: v["hours"] for k, v in by_node.items()},
            "by_category": cats,
            # Part of idle: worker nodes left up after the launch until the autoscaler's
            # scale-down (their idle timeout), billed to the run.
            "scale_down_tail": tail,
            "node_hours": sum(((n.end or time.time()) - n.start) / 3600.0 for n in self.nodes),
            "attempts": len(self.attempts),
            # Training time (steps, saves) at each worker-group size: an elastic run's sizes.
            "by_workers": {str(w): {"hours": h, "usd": u} for w, (h, u) in sorted(sizes.items())},
        }
