"""Multi-node without a shared disk vs with one, same cluster shape, one run each: a head with
no CPUs and three 1-CPU worker nodes (tests/nodes.py), the local vicuna submitted through the
Jobs API, the node running rank 0 SIGKILLed past the first checkpoint. Timed: submit -> first
step, and kill -> first resumed step. No shared disk: every artifact through S3 (moto_server) and
MLflow (a tracking server); shared disk: the nodes share this machine's disk and a folder is the
durable store (the baseline). Needs root (mount namespaces).

    .venv/bin/python bench/run.py multinode
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def run() -> dict:
    from tests.faults import start_moto_server
    from tests.integration.test_multinode import STEPS, run_no_shared_disk_scenario
    from tests.nodes import can_isolate

    why = can_isolate()
    if why:
        raise SystemExit(f"bench multinode: {why}")
    out: dict = {"steps": STEPS}
    url, moto = start_moto_server()
    try:
        for name, isolate in (("shared_disk", False), ("no_shared_disk_s3", True)):
            with tempfile.TemporaryDirectory() as d:
                r = run_no_shared_disk_scenario(Path(d), url, isolate=isolate)
            out[name] = {
                "status": r["status"],
                "submit_to_first_step_s": round(r["submit_to_first_step_s"], 1),
                "kill_to_resumed_step_s": round(r.get("kill_to_resumed_step_s", float("nan")), 1),
                "resumed_at_step": r.get("resumed_at_step"),
            }
    finally:
        moto.kill()
    a, b = out["shared_disk"], out["no_shared_disk_s3"]
    out["no_shared_disk_over_shared"] = {
        k: round(b[k] / a[k], 2)
        for k in ("submit_to_first_step_s", "kill_to_resumed_step_s")
        if a[k] and b[k] == b[k]
    }
    return out
