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

    def price(instance_type: str, market: str, zone: str = "") -> tuple[float, float]:
        p = cfg.cost.instances.get(instance_type) or cfg.cost.instances[cfg.hardware.instance_type]
        return price_per_hour(p, market, zone), p.on_demand_per_hour_usd

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
        zone = str(labels.get("zone", ""))
        p, od = price(itype, market, zone)
        start = (n.start_time_ms / 1000.0) if getattr(n, "start_time_ms", None) else t_start
        end = None
        if getattr(n, "state", "ALIVE") == "DEAD":
            end = (n.end_time_ms / 1000.0) if getattr(n, "end_time_ms", None) else time.time()
            if end <= t_start:
                continue  # gone before this launch
        worker = not getattr(n, "is_head_node", False)  # the autoscaler removes it when idle
        nodes.append(
            NodeLife(n.node_id, itype, market, p, od, max(start, t_start), end, zone, worker)
        )
    return nodes


def to_drain(doomed: dict[str, float], alive: set[str], driver: str) -> dict[str, float]:
    """Pure: the doomed nodes worth draining: alive (a dead one takes nothing anyway), and not
    the node this launcher runs on (the head, or a one-node local cluster: draining it would
    leave the next try nowhere to run; its own SIGTERM handling is the notice there)."""
    return {n: d for n, d in doomed.items() if n in alive and n != driver}


def drain(doomed: dict[str, float], why: str) -> list[str]:
    """Ask Ray's GCS to drain each doomed node (reason: preemption, with its deadline), as
    `ray drain-node` does: the scheduler places nothing new there, so the next try's workers
    land elsewhere (the autoscaler brings a replacement) instead of on a node that dies within
    two minutes. Returns the nodes whose drain was accepted; a refusal or an error is printed,
    never raised (the node may be gone already)."""
    if not doomed:
        return []
    import ray
    from ray.core.generated import autoscaler_pb2

    drained = []
    try:
        gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    except Exception as e:  # noqa: BLE001 - reported
        print(f"warning: cannot reach the GCS to drain {sorted(doomed)}: {e}", file=sys.stderr)
        return []
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    driver = ray.get_runtime_context().get_node_id()
    for node, deadline in sorted(to_drain(doomed, alive, driver).items()):
        try:
            ok, refusal = gcs.drain_node(
                node, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                why[:200], int(deadline * 1000),
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported
            ok, refusal = False, f"{type(e).__name__}: {e}"
        if ok:
            drained.append(node)
            print(f"drained node {node[:12]} (spot notice; deadline in "
                  f"{max(0.0, deadline - time.time()):.0f} s): the next try runs elsewhere")  # fmt: skip
        else:
            print(f"warning: node {node[:12]} was not drained: {refusal}", file=sys.stderr)
    return drained
