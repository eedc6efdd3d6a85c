"""A lost spot node, elastic against fixed-size: kill -> first resumed step when the run goes on
with the nodes left (hardware.nodes {min: 2, max: 3}) against when it waits for the
replacement node, on the fake cluster (infra/local-fake.yaml), one run each, in one go.

Both runs are the autoscaler scenario's preemption leg (tests/integration/test_autoscaler.py):
3 workers, one per spot node, a node SIGKILLed after the checkpoint at step 5. The waiting run
gets its replacement as fast as the fake cloud launches one (no capacity fault: the best case
for waiting); the elastic run has no spot capacity until it has resumed on 2 nodes (else the
replacement could be there before it restarts, and it would not shrink).

    .venv/bin/python bench/run.py elastic
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def run() -> dict:
    from tests.integration.test_autoscaler import run_preemption_scenario

    out: dict = {}
    for name, elastic in (("waiting", False), ("elastic", True)):
        with tempfile.TemporaryDirectory() as d:
            r = run_preemption_scenario(Path(d), elastic=elastic, only_preemption=True)
        out[f"{name}_status"] = r["status"]
        out[f"{name}_kill_to_resumed_step_s"] = round(r["kill_to_resumed_step_s"], 1)
        out[f"{name}_kill_to_replacement_node_s"] = round(r["kill_to_replacement_node_s"], 1)
    out["elastic_resumed_on"] = "2 of 3 nodes"
    out["waiting_over_elastic"] = round(
        out["waiting_kill_to_resumed_step_s"] / out["elastic_kill_to_resumed_step_s"], 2
    )
    return out
