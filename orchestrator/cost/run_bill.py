"""The bill of a run as people read it: markdown + JSON, logged to MLflow under bill/."""

from __future__ import annotations

from typing import Any


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
    lines += ["", "| node type (market) | USD |", "|---|---|"]
    lines += [f"| {k} | {v:.6f} |" for k, v in bill["by_node_type"].items()]
    lines += [
        "",
        f"- Same node-hours on-demand: ${bill['usd_on_demand_equivalent']:.6f} "
        f"(spot saved ${bill['usd_spot_savings']:.6f}).",
        f"- Projected before the first launch: ${proj['usd']:.6f} (range ${proj['usd_low']:.6f}-"
        f"${proj['usd_high']:.6f}); actual is {proj['error_pct']:+.1f}% off the projection.",
        "",
        "useful = last run of every step; wasted = steps redone after a preemption or crash, and "
        "recovery gaps; startup = launch to first worker setup; idle = tear-down and gaps.",
    ]
    return "\n".join(lines) + "\n"


def log_bill(tracking_uri: str, run_id: str, store: Any) -> None:
    """bill.md and bill.json of the run's durable store as MLflow artifacts under bill/."""
    from orchestrator.storage.layout import BILL_JSON, BILL_MD
    from orchestrator.tracking.runs import client as mlflow_client

    client = mlflow_client(tracking_uri)
    for name in (BILL_MD, BILL_JSON):
        text = store.read_text(name)
        if text is not None:
            client.log_text(run_id, text, f"bill/{name}")
