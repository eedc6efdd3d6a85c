"""A spot notice drains its node before the next try (launch/nodes.py `drain`): on a real
two-node Ray cluster, work the doomed node could take goes elsewhere once it is drained."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def test_a_drained_node_takes_no_new_work():
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.launch.nodes import drain

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1, resources={"spot": 1})
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()

        @ray.remote(num_cpus=0, resources={"spot": 0.1})
        def where() -> str:
            return ray.get_runtime_context().get_node_id()

        assert ray.get(where.remote(), timeout=60) == doomed.node_id  # it takes work
        head = ray.get_runtime_context().get_node_id()
        deadline = time.time() + 120
        # the launcher's own node is never drained; the doomed one is
        assert drain({head: deadline}, "test") == []
        assert drain({doomed.node_id: deadline, "ff" * 28: deadline}, "test") == [doomed.node_id]
        ready, _ = ray.wait([where.remote()], timeout=5)
        assert ready == []  # nothing new lands on a draining node
    finally:
        ray.shutdown()
        cluster.shutdown()
