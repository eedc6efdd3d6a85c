"""The bill of a run: assembled from the ledger and timeline at the end of every launch, saved
as bill.json / bill.md in the durable store, and logged to MLflow under bill/. (`bills_report.py`
is `make bills`: every recipe's projections beside its runs' bills.)"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.cost import capacity
from orchestrator.cost.estimator import Projection
from orchestrator.cost.ledger import Ledger, read_timeline
from orchestrator.storage.layout import BILL_JSON, BILL_MD, EXTRA_COSTS, RUN_META, RunMeta


def bill_markdown(job: str, run: str, bill: dict[str, Any]) -> str:
    total = bill["usd_total"]
    proj = bill["projected"]
    lines = [
        f"# Bill: {job} / {run}",
        "",
        f"**${total:.6f}** over {bill['attempts']} launch(es), {bill['node_hours']:.4f} node-hours; "
        f"stop reason: {bill['stop_reason']}.",
        "",
        *([f"Market: {bill['market_fallback']}.", ""] if bill.get("market_fallback") else []),
        "| | USD | share |",
        "|---|---|---|",
    ]
    for cat, usd in bill["by_category"].items():
        lines.append(
            f"| {cat} | {usd:.6f} | {usd / total:.1%} |" if total else f"| {cat} | {usd:.6f} | - |"
        )
    hours = bill.get("hours_by_node_type") or {}
    lines += ["", "| node type (market, zone) | node-hours | USD |", "|---|---|---|"]
    lines += [
        f"| {k} | {hours.get(k, 0.0):.4f} | {v:.6f} |" for k, v in bill["by_node_type"].items()
    ]
    tail = bill.get("scale_down_tail") or {}
    if tail.get("nodes"):  # worker nodes left up after the launch, until the autoscaler's
        lines += [  # scale-down
            "",
            f"Idle includes the scale-down tail: {tail['nodes']} worker node(s) left up after "
            f"the launch for the cluster's idle timeout, {tail['node_hours']:.4f} node-hours, "
            f"${tail['usd']:.6f}.",
        ]
    if bill.get("capacity_waits"):
        lines += ["", *(f"- {w}" for w in bill["capacity_waits"])]
    sizes = bill.get("by_workers") or {}
    if len(sizes) > 1 or bill.get("elastic"):  # an elastic run: what it ran at, and why
        lines += ["", "| workers | training hours | USD |", "|---|---|---|"]
        lines += [f"| {w} | {v['hours']:.4f} | {v['usd']:.6f} |" for w, v in sizes.items()]
        lines += ["", *(f"- {why}" for why in bill.get("elastic", []))]
    lines += [
        "",
        f"- Same node-hours on-demand: ${bill['usd_on_demand_equivalent']:.6f} "
        f"(spot saved ${bill['usd_spot_savings']:.6f}).",
        f"- Projected before the first launch: ${proj['usd']:.6f} (range ${proj['usd_low']:.6f}-"
        f"${proj['usd_high']:.6f}); actual is {proj['error_pct']:+.1f}% off the projection.",
        "",
        "useful = last run of every step; wasted = steps redone after a preemption or crash, and "
        "recovery gaps; startup = launch to first worker setup; idle = tear-down, gaps and "
        "the nodes' time until the autoscaler removes them.",
    ]
    return "\n".join(lines) + "\n"


def capacity_wait(grant: dict[str, Any], ledger: Ledger) -> str:
    """One wait for capacity, priced: "waited 14 min for spot (p4de.24xlarge block's
    alternative a100_40gb_x8, us-east-1b): $3.10", the nodes up meanwhile at their prices."""
    waited, got = grant["waited_s"], grant.get("time", 0.0)
    where = ", ".join(x for x in (grant.get("hardware"), grant.get("zone")) if x)
    took = f"{waited / 60:.0f} min" if waited >= 90 else f"{waited:.0f} s"
    return (f"waited {took} for {grant['market']}{f' ({where})' if where else ''}: "
            f"{capacity.usd(ledger.usd_between(got - waited, got))}")  # fmt: skip


def log_bill(tracking_uri: str, run_id: str, store: Any) -> None:
    """bill.md and bill.json of the run's durable store as MLflow artifacts under bill/."""
    from orchestrator.tracking.runs import client as mlflow_client

    client = mlflow_client(tracking_uri)
    for name in (BILL_MD, BILL_JSON):
        text = store.read_text(name)
        if text is not None:
            client.log_text(run_id, text, f"bill/{name}")


def write_bill(
    job: str, store, ledger: Ledger, projection: Projection | None, stop_reason: str
) -> dict[str, Any]:
    """The bill of the run so far: ledger + timeline, the first launch's projection (None:
    the one recorded, a bill written again), the market fallback if any; saved with the
    ledger and as bill.md / bill.json."""
    meta = RunMeta.from_json(store.read_text(RUN_META) or "{}")
    bill = ledger.bill(read_timeline(store))
    for line, usd in json.loads(store.read_text(EXTRA_COSTS) or "{}").items():
        bill["by_category"][line] = usd  # beyond node time, e.g. the judge's tokens
        bill["usd_total"] += usd
    if meta.projected is None:  # the first launch's projection is what the user was promised
        if projection is None:
            raise ValueError(f"{store.url}: no projection recorded to bill against")
        low, high = projection.usd_range
        meta.projected = {
            "usd": projection.usd,
            "hours": projection.hours,
            "usd_low": low,
            "usd_high": high,
        }
        store.write_text(RUN_META, meta.to_json())
    bill["projected"] = dict(meta.projected)
    bill["projected"]["error_pct"] = (
        (bill["usd_total"] - bill["projected"]["usd"]) / bill["projected"]["usd"] * 100
        if bill["projected"]["usd"]
        else 0.0
    )
    bill["stop_reason"] = stop_reason
    notes = [g["fallback_note"] for g in meta.grants if g.get("fallback_note")]
    if notes:  # spot capacity did not come: the run was moved to on-demand nodes
        bill["market_fallback"] = notes[-1]
    if meta.resizes:  # an elastic run's capacity decisions (a node lost, a grow-back)
        bill["elastic"] = [r["why"] for r in meta.resizes]
    waits = [capacity_wait(g, ledger) for g in meta.grants if g.get("waited_s", 0.0) >= 1.0]
    if waits:  # what waiting for capacity cost: the nodes up (the head) meanwhile
        bill["capacity_waits"] = waits
    ledger.save(bill)
    store.write_text(BILL_MD, bill_markdown(job, meta.run, bill))
    store.write_text(BILL_JSON, json.dumps(bill, indent=1))
    return bill
