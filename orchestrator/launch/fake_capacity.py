"""Capacity faults for the fake cluster (infra/local-fake.yaml): Ray's fake multi-node provider,
except that a node type can have no capacity for a while, or fail a fraction of its launches,
the way a cloud answers `InsufficientInstanceCapacity` for spot GPUs.

The faults are in a JSON file the provider reads at every launch (`provider.capacity_faults_file`,
set by `make cluster-up` to the cluster's temp dir; `named_clusters.capacity_fault` writes it):

    {"cpu_spot": {"no_capacity_until": 1760000000.0, "fail_fraction": 0.5}}

A refused launch raises Ray's `NodeLaunchException`, as the AWS provider does: the autoscaler
logs it ("Failed to launch ... InsufficientInstanceCapacity") and tries again at its next
update. Which launches of a fraction fail is fixed, not drawn, so a scenario is repeatable:
launch k (0-based, per node type) fails when ceil((k + 1) f) > ceil(k f), i.e. the first, and
then exactly a fraction f of every run of launches.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

CATEGORY = "InsufficientInstanceCapacity"


def refusal(faults: dict[str, Any], node_type: str, now: float, launch: int) -> str | None:
    """Why launch number `launch` (0-based, of this node type) at `now` is refused (None: it
    goes ahead). Pure."""
    fault = faults.get(node_type) or {}
    until = fault.get("no_capacity_until")
    if until is not None and now < float(until):
        return f"no {node_type} capacity for another {float(until) - now:.0f} s"
    f = min(1.0, max(0.0, float(fault.get("fail_fraction") or 0.0)))
    if math.ceil((launch + 1) * f - 1e-9) > math.ceil(launch * f - 1e-9):
        return f"{node_type}: launch {launch + 1} failed ({f:.0%} of launches fail)"
    return None


def read_faults(path: str | None) -> dict[str, Any]:
    """The faults file; {} when there is none or it is being rewritten (no fault then)."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_fault(path: str | Path, node_type: str, **fault: float | None) -> dict[str, Any]:
    """Set (or, with no fields, clear) `node_type`'s fault; the file is replaced atomically."""
    faults = read_faults(str(path))
    values = {k: v for k, v in fault.items() if v is not None}
    if values:
        faults[node_type] = values
    else:
        faults.pop(node_type, None)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(faults))
    tmp.replace(path)
    return faults


def _provider_base() -> type:
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    return FakeMultiNodeProvider


class FakeCapacityProvider(_provider_base()):  # type: ignore[misc]
    """FakeMultiNodeProvider with the capacity faults of `provider.capacity_faults_file`, and
    a Ray temp dir of its own for every node (`provider.node_temp_root`/node<k>), as separate
    machines have: Ray's provider starts every fake node in the head's session dir, where the
    nodes' runtime-env agents unpack the job's working_dir into one shared folder, and a node
    that joins late re-unpacks it under the feet of workers importing from it (seen here as
    `ModuleNotFoundError` in a running job)."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self._faults_file = provider_config.get("capacity_faults_file")
        self._node_temp_root = provider_config.get("node_temp_root")
        self._launches: dict[str, int] = {}

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        import ray._private.parameter as parameter

        if not self._node_temp_root:
            return super()._create_node_with_resources_and_labels(
                node_config, tags, count, resources, labels
            )
        with self.lock:  # the base class names the next node id inside; so does this
            temp_dir = Path(self._node_temp_root) / f"node{self._next_node_id + 1}"
            temp_dir.mkdir(parents=True, exist_ok=True)
            original = parameter.RayParams

            def params(*args, **kwargs):
                return original(*args, temp_dir=str(temp_dir), **kwargs)

            parameter.RayParams = params  # what the base class builds the node's params with
            try:
                return super()._create_node_with_resources_and_labels(
                    node_config, tags, count, resources, labels
                )
            finally:
                parameter.RayParams = original

    def non_terminated_nodes(self, tag_filters):
        """A node whose raylet died (`named_clusters.preempt_fake_node`, the fake preemption)
        is gone, as a cloud reports a reclaimed spot instance: Ray's fake provider would list
        it forever, and the autoscaler would count it as a node still starting and never
        launch its replacement."""
        from ray._private import ray_constants

        with self.lock:
            for node_id, info in list(self._nodes.items()):
                node = info.get("node")
                raylets = (
                    node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []) if node else []
                )
                if raylets and all(p.process.poll() is not None for p in raylets):
                    self._nodes.pop(node_id)
                    node.kill_all_processes(check_alive=False, allow_graceful=False)
        return super().non_terminated_nodes(tag_filters)

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        from ray.autoscaler.node_launch_exception import NodeLaunchException
        from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

        node_type = tags[TAG_RAY_USER_NODE_TYPE]
        launch = self._launches.get(node_type, 0)
        self._launches[node_type] = launch + 1
        why = refusal(read_faults(self._faults_file), node_type, time.time(), launch)
        if why is not None:
            raise NodeLaunchException(CATEGORY, why, src_exc_info=None)
        return super().create_node_with_resources_and_labels(
            node_config, tags, count, resources, labels
        )
