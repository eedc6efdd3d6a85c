"""The autoscaler on the fake multi-node cluster (infra/local-fake.yaml), timed: request ->
spot workers ready, preemption -> replacement node -> training resumed, job end -> nodes
released; and a spot -> on-demand fallback. The same scenario as the integration test
(tests/integration/test_autoscaler.py), run once here for its numbers.

    .venv/bin/python bench/run.py autoscaler
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def run() -> dict:
    import yaml

    from orchestrator.launch.named_clusters import cluster_config
    from tests.integration.test_autoscaler import run_preemption_scenario

    with tempfile.TemporaryDirectory() as d:
        r = run_preemption_scenario(Path(d), wait_fallback_release=True)
    keys = [
        "submit_to_3_spot_nodes_s", "submit_to_first_step_s", "kill_to_replacement_node_s",
        "kill_to_resumed_step_s", "kill_to_first_step_on_2_s", "resumed_at_step",
        "job_end_to_zero_spot_nodes_s",
        "fallback_end_to_zero_on_demand_nodes_s",
    ]  # fmt: skip
    out = {k: round(r[k], 1) if isinstance(r.get(k), float) else r.get(k) for k in keys}
    out["status"], out["fallback_status"] = r["status"], r["fallback_status"]
    fake = yaml.safe_load(cluster_config("local-fake").read_text())
    out["idle_timeout_s"] = round(60 * fake["idle_timeout_minutes"], 1)
    return out
