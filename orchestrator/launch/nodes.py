"""The nodes the ledger prices, each with its instance type, market and lifetime."""

from __future__ import annotations

import os
import sys
import time

from orchestrator.config.schema import JobConfig
from orchestrator.cost.estimator import price_per_hour
from orchestrator.cost.ledger import NodeLife


def cluster_nodes(cfg: JobConfig, t_start: float) -> list[NodeLife]:
    """The nodes the ledger prices. A private local cluster is one node of the job's instance
    type; on a Ray cluster every node says what it is through its `instance_type`/`market`
    labels (set by infra/), falling back to the job's hardware with a warning."""

    def price(instance_type: str, market: str) -> tuple[float, float]:
        p = cfg.cost.instances.get(instance_type) or cfg.cost.instances[cfg.hardware.instance_type]
        return price_per_hour(p, market), p.on_demand_per_hour_usd

    hw = cfg.hardware
    if not os.environ.get("RAY_ADDRESS"):
        p, od = price(hw.instance_type, hw.market)
        return [
            NodeLife(
                "local", hw.instance_type, hw.market, p * hw.num_nodes, od * hw.num_nodes, t_start
            )
        ]
    from ray.util.state import list_nodes

    nodes = []
    for n in list_nodes(detail=True):
        labels = getattr(n, "labels", None) or {}
        itype = labels.get("instance_type", hw.instance_type)
        market = labels.get("market", hw.market)
        if "instance_type" not in labels:
            print(
                f"warning: node {n.node_id[:8]} has no instance_type label; priced as {itype}",
                file=sys.stderr,
            )
        p, od = price(itype, market)
        start = (n.start_time_ms / 1000.0) if getattr(n, "start_time_ms", None) else t_start
        end = None
        if getattr(n, "state", "ALIVE") == "DEAD":
            end = (n.end_time_ms / 1000.0) if getattr(n, "end_time_ms", None) else time.time()
            if end <= t_start:
                continue  # gone before this launch
        nodes.append(NodeLife(n.node_id, itype, market, p, od, max(start, t_start), end))
    return nodes
